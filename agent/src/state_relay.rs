//! How a sandboxed Terraform reaches the broker's state backend (docs/state.md).
//!
//! Why a relay: a job on `--network none` has a network namespace of its own with only loopback,
//! so it cannot reach the broker; and the job's state password should never enter the sandbox at
//! all. So the agent keeps the password, and two halves carry Terraform's requests:
//! - inside the sandbox, [`run_inside`] (`keyward-agent __keyward-state-relay`) is the program the
//!   sandbox starts: it listens on the job's own loopback, points Terraform at it
//!   (`TF_HTTP_ADDRESS`, `TF_HTTP_LOCK_ADDRESS`, `TF_HTTP_UNLOCK_ADDRESS`), runs Terraform as its
//!   child and pipes each connection, byte for byte, to a Unix socket bound into the sandbox;
//! - outside, [`StateRelay`] serves that socket: it answers only Terraform's state calls for the
//!   job's own stack (`GET`, `POST`, `LOCK`, `UNLOCK` on the state's path), adds the lease's
//!   credentials and forwards them to the broker; everything else gets `403` and never leaves.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

/// The argument that makes `keyward-agent` the inside half.
pub const RELAY_ARG: &str = "__keyward-state-relay";

/// The largest state a job may send (the broker keeps no more either).
const MAX_STATE: usize = 32 * 1024 * 1024;

/// How long one forwarded call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The state backend of one job's lease, as the broker gave it (`StateBackend`).
pub struct Backend {
    /// `https://broker/v1/stacks/NAME/state`.
    pub address: String,
    /// The job's ID.
    pub username: String,
    /// The lease's password; never into the sandbox, never logged.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("address", &self.address).field("username", &self.username).finish()
    }
}

impl Backend {
    /// The state's path on the broker (`/v1/stacks/NAME/state`): the only path relayed.
    fn path(&self) -> &str {
        let after_scheme = self.address.split_once("://").map_or(self.address.as_str(), |(_, rest)| rest);
        after_scheme.find('/').and_then(|at| after_scheme.get(at..)).unwrap_or("/")
    }
}

/// The outside half: serves the job's socket until dropped.
#[derive(Debug)]
pub struct StateRelay {
    socket: PathBuf,
    path: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StateRelay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl StateRelay {
    /// Listens on `socket` (a new path in a directory only the agent writes) and relays the
    /// job's state calls to `backend`. The socket is connectable by any uid: it is reached only
    /// through the sandbox's bind of it.
    pub fn start(socket: &Path, backend: Backend) -> io::Result<Self> {
        let listener = tokio::net::UnixListener::bind(socket)?;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
        let client = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| io::Error::other(format!("cannot build the state relay's HTTP client: {e}")))?;
        let path = backend.path().to_owned();
        let shared = Arc::new((backend, client));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, std::convert::Infallible>(relay(&shared.0, &shared.1, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { socket: socket.to_owned(), path, task })
    }

    /// The socket's path (bind it into the sandbox at the same path).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The argv that runs `program` under the inside half.
    pub fn wrap(&self, agent_exe: &Path, program: Vec<String>) -> Vec<String> {
        let mut argv = vec![
            agent_exe.display().to_string(),
            RELAY_ARG.to_owned(),
            self.socket.display().to_string(),
            self.path.clone(),
            "--".to_owned(),
        ];
        argv.extend(program);
        argv
    }
}

/// Forwards one request if it is a state call for the job's own stack.
async fn relay(backend: &Backend, client: &reqwest::Client, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let allowed = ["GET", "POST", "LOCK", "UNLOCK"].contains(&request.method().as_str());
    if !allowed || request.uri().path() != backend.path() {
        return answer(StatusCode::FORBIDDEN, "the state relay forwards only Terraform's calls for this job's state");
    }
    let method = request.method().clone();
    let query = request.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let body = match Limited::new(request.into_body(), MAX_STATE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return answer(StatusCode::PAYLOAD_TOO_LARGE, "the state is larger than the broker keeps"),
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_str().as_bytes()) else {
        return answer(StatusCode::FORBIDDEN, "unknown method");
    };
    let sent = client
        .request(method, format!("{}{query}", backend.address))
        .basic_auth(&backend.username, Some(backend.password.as_str()))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) => {
            let status = response.status().as_u16();
            let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).cloned();
            let body = response.bytes().await.unwrap_or_default();
            let mut relayed = Response::new(Full::new(body));
            *relayed.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(value) = content_type.and_then(|v| hyper::header::HeaderValue::from_bytes(v.as_bytes()).ok()) {
                relayed.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
            }
            relayed
        }
        Err(error) => {
            tracing::warn!(%error, "the state relay could not reach the broker");
            answer(StatusCode::BAD_GATEWAY, "the agent could not reach the broker's state backend")
        }
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The inside half: `RELAY_ARG SOCKET PATH -- PROGRAM ARGS…` (the agent's `main` calls this
/// before anything else when the first argument is [`RELAY_ARG`]). Returns the program's exit.
pub fn run_inside(args: &[String]) -> ExitCode {
    match inside(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("keyward state relay: {error}");
            ExitCode::from(125)
        }
    }
}

fn inside(args: &[String]) -> io::Result<ExitCode> {
    let usage = || io::Error::other(format!("usage: {RELAY_ARG} SOCKET PATH -- PROGRAM [ARGS…]"));
    let [socket, path, separator, program, rest @ ..] = args else { return Err(usage()) };
    if separator != "--" {
        return Err(usage());
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = format!("http://{}{path}", listener.local_addr()?);
    let socket = PathBuf::from(socket);
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let socket = socket.clone();
            std::thread::spawn(move || pipe(client, &socket));
        }
    });
    let status = Command::new(program)
        .args(rest)
        .env("TF_HTTP_ADDRESS", &address)
        .env("TF_HTTP_LOCK_ADDRESS", &address)
        .env("TF_HTTP_UNLOCK_ADDRESS", &address)
        .status()?;
    Ok(match status.code() {
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        // Killed by a signal: as a shell reports it.
        None => ExitCode::from(
            128 + u8::try_from(std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)).unwrap_or(0),
        ),
    })
}

/// Copies one loopback connection to and from the agent's socket until either side closes.
fn pipe(client: TcpStream, socket: &Path) {
    let Ok(agent) = UnixStream::connect(socket) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let (Ok(mut client_in), Ok(mut agent_out)) = (client.try_clone(), agent.try_clone()) else { return };
    let upstream = std::thread::spawn(move || {
        let _ = io::copy(&mut client_in, &mut agent_out);
        let _ = agent_out.shutdown(Shutdown::Write);
    });
    let (mut agent_in, mut client_out) = (agent, client);
    let _ = io::copy(&mut agent_in, &mut client_out);
    let _ = client_out.shutdown(Shutdown::Write);
    let _ = upstream.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_states_own_path_is_relayed() {
        let backend = Backend {
            address: "https://broker.example:8443/v1/stacks/network/state".into(),
            username: "job-1".into(),
            password: Zeroizing::new("secret".into()),
        };
        assert_eq!(backend.path(), "/v1/stacks/network/state");
        assert!(!format!("{backend:?}").contains("secret"), "the password never in Debug");
    }
}
