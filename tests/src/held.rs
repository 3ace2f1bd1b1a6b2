//! A TCP pass-through to a real peer that holds every connection until the test releases it, and
//! keeps what the peer answered. Not a stand-in: every byte either way is the client's or the
//! peer's. It lets a test act at one precise moment of a request in flight: for instance, fail the
//! broker's database after STS has been asked for credentials but before the broker can record
//! what STS answered.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A running pass-through, stopped on drop.
#[allow(missing_debug_implementations)]
pub struct HeldPassThrough {
    /// `http://127.0.0.1:PORT`, to configure in place of the peer's address.
    pub endpoint: String,
    arrived: mpsc::UnboundedReceiver<()>,
    release: watch::Sender<bool>,
    answers: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HeldPassThrough {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HeldPassThrough {
    /// Listens on a loopback port of its own and forwards to `upstream` (`http://host:port` or
    /// `host:port`), holding each connection until [`release`](Self::release).
    pub async fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the pass-through");
        let addr: SocketAddr = listener.local_addr().expect("local_addr");
        let (arrivals, arrived) = mpsc::unbounded_channel();
        let (release, released) = watch::channel(false);
        let answers = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&answers);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, arrivals, released, kept) =
                    (upstream.clone(), arrivals.clone(), released.clone(), Arc::clone(&kept));
                tokio::spawn(forward(client, upstream, arrivals, released, kept));
            }
        });
        Self { endpoint: format!("http://{addr}"), arrived, release, answers, task }
    }

    /// Waits until a client has connected and sent the start of its request, which is now held.
    pub async fn request_arrived(&mut self, timeout: Duration) {
        tokio::time::timeout(timeout, self.arrived.recv())
            .await
            .unwrap_or_else(|_| panic!("no request reached the pass-through within {} s", timeout.as_secs()))
            .expect("the pass-through stopped");
    }

    /// Lets every held connection (and every later one) through to the peer.
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    /// Holds connections again from now on.
    pub fn hold(&self) {
        self.release.send_replace(false);
    }

    /// Everything the peer has sent back so far, on every connection, as text.
    pub fn answered(&self) -> String {
        String::from_utf8_lossy(&self.answers.lock().expect("answers lock")).into_owned()
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: String,
    arrivals: mpsc::UnboundedSender<()>,
    mut released: watch::Receiver<bool>,
    kept: Arc<Mutex<Vec<u8>>>,
) {
    let mut first = vec![0_u8; 64 * 1024];
    let n = match client.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    let _ = arrivals.send(());
    if released.wait_for(|released| *released).await.is_err() {
        return;
    }
    let Ok(mut peer) = TcpStream::connect(&upstream).await else { return };
    if peer.write_all(&first[..n]).await.is_err() {
        return;
    }
    let (mut client_read, mut client_write) = client.into_split();
    let (mut peer_read, mut peer_write) = peer.into_split();
    let requests = async move {
        let _ = tokio::io::copy(&mut client_read, &mut peer_write).await;
        let _ = peer_write.shutdown().await;
    };
    let answers = async move {
        let mut buffer = vec![0_u8; 64 * 1024];
        loop {
            let n = match peer_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Kept before it is passed on: once the client has read it, the test can see it.
            kept.lock().expect("answers lock").extend_from_slice(&buffer[..n]);
            if client_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, answers);
}
