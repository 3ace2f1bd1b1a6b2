//! Starts the real `keyward-agent` binary (`join`, then `run` as a long-lived process), and speaks
//! the agent protocol directly for tests and benchmarks that play an agent themselves: enrolling
//! in-process, holding a work stream, asking for credentials with any lease they like.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use keyward_proto::agent_v1::{
    AgentMessage, BrokerMessage, EnrollRequest, Heartbeat, Hello, Isolation, JobAssignment, LogReceipt, agent_message,
    broker_message,
};
use tokio::sync::mpsc;
use tonic::Streaming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::binary;

/// PEM armour, as the broker writes it.
pub use keyward_proto::encoding::pem;

/// The broker's agent endpoint and CA certificate (PEM), as agents learn them.
pub async fn bootstrap(broker_url: &str) -> (String, String) {
    let document: serde_json::Value = crate::http()
        .get(format!("{broker_url}/v1/agents/bootstrap"))
        .send()
        .await
        .expect("bootstrap request")
        .json()
        .await
        .expect("bootstrap document");
    let text = |key: &str| document[key].as_str().expect("bootstrap field").to_owned();
    (text("endpoint"), text("ca_certificate"))
}

/// An mTLS channel to the agent endpoint, trusting only `ca_pem`, presenting `identity` if any.
pub async fn channel(endpoint: &str, ca_pem: &str, identity: Option<Identity>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("127.0.0.1");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// The identity `keyward-agent join` stored in `data_dir`.
pub fn stored_identity(data_dir: &Path) -> Identity {
    let read = |name: &str| std::fs::read(data_dir.join(name)).expect("agent identity file");
    Identity::from_pem(read("cert.pem"), read("key.pem"))
}

/// Enrolls with `token` from inside the test process (a fresh P-256 key); returns the agent ID
/// and its identity.
pub async fn enroll_in_process(endpoint: &str, ca_pem: &str, token: &str) -> (String, Identity) {
    let (id, identity, _) = enroll_with_key(endpoint, ca_pem, token).await;
    (id, identity)
}

/// [`enroll_in_process`], also returning the private key (PKCS#8 PEM), for tests that sign as
/// the agent.
pub async fn enroll_with_key(endpoint: &str, ca_pem: &str, token: &str) -> (String, Identity, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .der()
        .to_vec();
    let mut client = AgentServiceClient::new(channel(endpoint, ca_pem, None).await.expect("channel"));
    let enrolled = client
        .enroll(EnrollRequest {
            join_token: token.to_owned(),
            csr_der: csr,
            hostname: "test".to_owned(),
            agent_version: "test".to_owned(),
        })
        .await
        .expect("enrolled")
        .into_inner();
    let certificate = pem("CERTIFICATE", &enrolled.certificate_der);
    (enrolled.agent_id, Identity::from_pem(certificate, key.serialize_pem()), key.serialize_pem())
}

/// An open work stream, driven by the test.
#[allow(missing_debug_implementations)]
pub struct WorkSession {
    /// The client, for unary calls (`Credentials`) on the same connection.
    pub client: AgentServiceClient<Channel>,
    outbound: mpsc::Sender<AgentMessage>,
    inbound: Streaming<BrokerMessage>,
}

impl WorkSession {
    /// Connects with `identity`, says `Hello` with `capacity`, and opens the stream.
    pub async fn open(endpoint: &str, ca_pem: &str, identity: Identity, capacity: u32) -> Result<Self, tonic::Status> {
        let channel = channel(endpoint, ca_pem, Some(identity)).await.map_err(tonic::Status::unavailable)?;
        Self::open_on(channel, capacity).await
    }

    /// Opens a stream on an existing `channel`.
    pub async fn open_on(channel: Channel, capacity: u32) -> Result<Self, tonic::Status> {
        let mut client = AgentServiceClient::new(channel);
        let (outbound, outbox) = mpsc::channel(16);
        let hello = Hello {
            agent_version: "test".to_owned(),
            capacity,
            job_isolation: Isolation::Process.into(),
            ..Hello::default()
        };
        outbound
            .send(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) })
            .await
            .map_err(|_| tonic::Status::internal("outbox closed"))?;
        let inbound = client.work(tokio_stream::wrappers::ReceiverStream::new(outbox)).await?.into_inner();
        Ok(Self { client, outbound, inbound })
    }

    /// The next assignment, skipping other messages, within `timeout`.
    pub async fn next_assignment(&mut self, timeout: Duration) -> Option<JobAssignment> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.inbound.message()).await.ok()?.ok()??;
            if let Some(broker_message::Kind::Assignment(job)) = message.kind {
                return Some(job);
            }
        }
    }

    /// The next log receipt, skipping other messages, within `timeout`; the stream's error if the
    /// broker ended it.
    pub async fn next_receipt(&mut self, timeout: Duration) -> Result<Option<LogReceipt>, tonic::Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Ok(message) = tokio::time::timeout_at(deadline, self.inbound.message()).await else { return Ok(None) };
            let Some(message) = message? else { return Ok(None) };
            if let Some(broker_message::Kind::LogReceipt(receipt)) = message.kind {
                return Ok(Some(receipt));
            }
        }
    }

    /// Sends a heartbeat naming `running` jobs; `Err` once the stream is closed.
    pub async fn heartbeat(&self, running: &[&str]) -> Result<(), tonic::Status> {
        let heartbeat = Heartbeat { running_job_ids: running.iter().map(|s| (*s).to_owned()).collect() };
        self.send(agent_message::Kind::Heartbeat(heartbeat)).await
    }

    /// Sends `kind`; `Err` once the stream is closed (the call ended: the broker's status, if
    /// it sent one, comes on the inbound side).
    pub async fn send(&self, kind: agent_message::Kind) -> Result<(), tonic::Status> {
        self.outbound
            .send(AgentMessage { kind: Some(kind) })
            .await
            .map_err(|_| tonic::Status::cancelled("the work stream is closed"))
    }
}

/// Runs `keyward-agent join` to completion; returns (success, stdout, stderr).
pub fn join(broker: &str, token: &str, data_dir: &Path) -> (bool, String, String) {
    let output = Command::new(binary("keyward-agent"))
        .args(["join", "--broker", broker, "--token", token, "--data-dir"])
        .arg(data_dir)
        .env_remove("KEYWARD_ADDR")
        .output()
        .expect("run keyward-agent join");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running `keyward-agent run`, killed on drop.
#[allow(missing_debug_implementations)]
pub struct Agent {
    child: Child,
    /// Its ID.
    pub id: String,
    log: PathBuf,
}

impl Agent {
    /// Enrolls with `token` (panicking if refused) and starts `run --exec EXEC`.
    pub fn enroll_and_run(broker: &str, token: &str, data_dir: &Path, exec: &str) -> Self {
        let (ok, id, stderr) = join(broker, token, data_dir);
        assert!(ok, "keyward-agent join failed: {stderr}");
        Self::run(data_dir, &id, exec)
    }

    /// Starts `run --exec EXEC --isolation process` over an enrolled data dir: the test's
    /// commands write marks outside their work directory, which the sandbox would refuse.
    pub fn run(data_dir: &Path, id: &str, exec: &str) -> Self {
        Self::start(data_dir, id, &["--exec", exec, "--isolation", "process"])
    }

    /// Starts `run ARGS…` over an enrolled data dir (Terraform, in the sandbox, unless `args`
    /// say otherwise).
    pub fn start(data_dir: &Path, id: &str, args: &[&str]) -> Self {
        Self::start_with_path(data_dir, id, args, None)
    }

    /// [`start`](Self::start), with `PATH` set to `path` when given (where it finds Terraform).
    pub fn start_with_path(data_dir: &Path, id: &str, args: &[&str], path: Option<&str>) -> Self {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data_dir.with_extension(format!("{start}.log"));
        let mut command = Command::new(binary("keyward-agent"));
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let child = command
            .arg("run")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("spawn keyward-agent run");
        Self { child, id: id.to_owned(), log }
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits up to `timeout` for it to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "agent did not exit; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, the way a crashed host ends it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (drain).
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- agent {} log ----\n{}", self.id, self.log_text());
        }
    }
}
