//! The provider's side of HashiCorp go-plugin, the launcher Terraform uses for providers: check
//! that Terraform started us, listen on loopback, announce the address and our certificate on
//! stdout in the handshake line, and serve gRPC until Terraform says to shut down.
//!
//! What Terraform 1.11 (go-plugin 1.6) expects, from its `client.go` and `grpc_client.go`:
//! - `TF_PLUGIN_MAGIC_COOKIE` set to Terraform's value: anything else means a person ran the
//!   binary, which must say so and exit rather than wait for a gRPC client that never comes.
//! - One stdout line `CORE|APP|NETWORK|ADDR|PROTOCOL|CERT`: core protocol `1`, plugin protocol
//!   `6` (one of `PLUGIN_PROTOCOL_VERSIONS`), `tcp` and `127.0.0.1:PORT` (`unix` and a socket path
//!   would do too), `grpc`, and the server certificate as unpadded standard base64 of its DER.
//! - Besides `tfplugin6.Provider`, the services `plugin.GRPCController` (its `Shutdown` is how
//!   Terraform ends a provider; without it every provider process costs Terraform a 2 s wait
//!   before it is killed) and `plugin.GRPCStdio` (without it go-plugin logs a warning on every
//!   start). `plugin.GRPCBroker` is only for plugins that call back into Terraform: its stream
//!   failing is ignored.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::go_plugin::grpc_controller_server::{GrpcController, GrpcControllerServer};
use crate::go_plugin::grpc_stdio_server::{GrpcStdio, GrpcStdioServer};
use crate::go_plugin::{Empty, StdioData};
use crate::provider::KwObjects;
use crate::tfplugin6::provider_server::ProviderServer;
use crate::tls::{self, TlsError};

/// The variable go-plugin sets to [`MAGIC_COOKIE`] for Terraform's providers.
pub(crate) const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// Terraform's magic cookie (`internal/plugin/serve.go`).
pub(crate) const MAGIC_COOKIE: &str = "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";
/// go-plugin's own protocol version.
const CORE_PROTOCOL: u32 = 1;
/// Terraform's plugin protocol major version this provider speaks.
const PLUGIN_PROTOCOL: &str = "6";
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the provider checks that Terraform, its parent, is still there.
const PARENT_CHECK: Duration = Duration::from_secs(1);

/// Why the provider cannot serve.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    /// Not started by Terraform.
    #[error(
        "this binary is a Terraform provider plugin and is not meant to be run directly: Terraform starts it \
         ({MAGIC_COOKIE_KEY} is not set to Terraform's value)"
    )]
    NotTerraform,
    /// Terraform wants protocol versions this provider does not speak.
    #[error("Terraform offered plugin protocol versions {0:?}; this provider speaks only version {PLUGIN_PROTOCOL}")]
    Protocol(String),
    /// go-plugin's automatic mutual TLS is off.
    #[error("PLUGIN_CLIENT_CERT is not set: this provider needs Terraform's automatic mutual TLS")]
    NoClientCertificate,
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No loopback port.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Listen(std::io::Error),
    /// Stdout is gone.
    #[error("cannot write the handshake line to stdout: {0}")]
    Announce(std::io::Error),
    /// The gRPC server failed.
    #[error("the gRPC server stopped: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What go-plugin passed in the environment.
#[derive(Debug)]
pub(crate) struct Launch {
    client_certificate: String,
}

impl Launch {
    /// Reads the launch from `var` (the process environment in `main`).
    pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, PluginError> {
        if var(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE) {
            return Err(PluginError::NotTerraform);
        }
        if let Some(versions) = var("PLUGIN_PROTOCOL_VERSIONS")
            && !versions.split(',').any(|version| version.trim() == PLUGIN_PROTOCOL)
        {
            return Err(PluginError::Protocol(versions));
        }
        let client_certificate = var("PLUGIN_CLIENT_CERT").filter(|pem| !pem.is_empty());
        Ok(Launch { client_certificate: client_certificate.ok_or(PluginError::NoClientCertificate)? })
    }
}

/// The handshake line for a server at `addr` with `certificate`.
fn handshake_line(addr: SocketAddr, certificate: &CertificateDer<'_>) -> String {
    let certificate = base64::engine::general_purpose::STANDARD_NO_PAD.encode(certificate);
    format!("{CORE_PROTOCOL}|{PLUGIN_PROTOCOL}|tcp|{addr}|grpc|{certificate}")
}

/// Serves the provider until Terraform calls `Shutdown` or goes away.
pub(crate) async fn serve(launch: Launch) -> Result<(), PluginError> {
    let tls = tls::server(&launch.client_certificate)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.map_err(PluginError::Listen)?;
    let addr = listener.local_addr().map_err(PluginError::Listen)?;
    let (stop, stopped) = watch::channel(false);
    let (connections, incoming) = mpsc::channel(16);
    let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(tls.config), connections));
    let watching = tokio::spawn(exit_with_parent(stop.clone()));
    ignore_interrupts();

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", handshake_line(addr, &tls.certificate))
        .and_then(|()| stdout.flush())
        .map_err(PluginError::Announce)?;
    drop(stdout);

    let mut until_stopped = stopped.clone();
    let served = tonic::transport::Server::builder()
        .add_service(ProviderServer::new(KwObjects::default()))
        .add_service(GrpcControllerServer::new(Controller { stop }))
        .add_service(GrpcStdioServer::new(Stdio { stopped }))
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), async move {
            let _ = until_stopped.wait_for(|stop| *stop).await;
        })
        .await;
    accepting.abort();
    watching.abort();
    Ok(served?)
}

/// Terraform's Ctrl-C reaches the whole process group; go-plugin servers ignore it and let
/// Terraform stop them (`StopProvider`, then `Shutdown`), so an apply in flight can finish.
fn ignore_interrupts() {
    tokio::spawn(async { while tokio::signal::ctrl_c().await.is_ok() {} });
}

/// Stops the server if Terraform goes away without `Shutdown` (killed): the provider is then
/// reparented, and nobody else will ever connect.
async fn exit_with_parent(stop: watch::Sender<bool>) {
    let parent = std::os::unix::process::parent_id();
    let mut ticks = tokio::time::interval(PARENT_CHECK);
    while std::os::unix::process::parent_id() == parent {
        ticks.tick().await;
    }
    stop.send_replace(true);
}

/// Accepts connections and hands each one whose TLS handshake completes in time to the server.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                eprintln!("terraform-provider-kwobjects: accept failed: {error}");
                // Out of descriptors, say: give the connections in flight time to end.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send(Ok(tls)).await;
                }
                Ok(Err(error)) => eprintln!("terraform-provider-kwobjects: TLS handshake refused: {error}"),
                Err(_) => eprintln!("terraform-provider-kwobjects: TLS handshake timed out"),
            }
        });
    }
}

/// `plugin.GRPCController`: Terraform's way to end the provider.
#[derive(Debug)]
struct Controller {
    stop: watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.stop.send_replace(true);
        Ok(Response::new(Empty {}))
    }
}

/// `plugin.GRPCStdio`: go-plugin mirrors a plugin's output through this stream. The provider
/// writes nothing worth mirroring (its stderr reaches Terraform's log directly), so the stream
/// stays open and empty until shutdown.
#[derive(Debug)]
struct Stdio {
    stopped: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = ReceiverStream<Result<StdioData, Status>>;

    async fn stream_stdio(&self, _request: Request<()>) -> Result<Response<Self::StreamStdioStream>, Status> {
        let (open, stream) = mpsc::channel(1);
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
            drop(open);
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn only_terraform_with_mutual_tls_and_protocol_6_may_start_it() {
        let cookie = (MAGIC_COOKIE_KEY, MAGIC_COOKIE);
        let cert = ("PLUGIN_CLIENT_CERT", "-----BEGIN CERTIFICATE-----");
        assert!(matches!(Launch::from_env(env(&[cert])), Err(PluginError::NotTerraform)));
        assert!(matches!(Launch::from_env(env(&[(MAGIC_COOKIE_KEY, "x"), cert])), Err(PluginError::NotTerraform)));
        assert!(matches!(Launch::from_env(env(&[cookie])), Err(PluginError::NoClientCertificate)));
        let five = ("PLUGIN_PROTOCOL_VERSIONS", "5");
        assert!(matches!(Launch::from_env(env(&[cookie, cert, five])), Err(PluginError::Protocol(_))));
        assert!(Launch::from_env(env(&[cookie, cert, ("PLUGIN_PROTOCOL_VERSIONS", "5,6")])).is_ok());
        assert!(Launch::from_env(env(&[cookie, cert])).is_ok());
        assert!(PluginError::NotTerraform.to_string().contains("not meant to be run directly"));
    }

    #[test]
    fn the_handshake_line_carries_the_certificate_as_unpadded_base64() {
        // Four bytes: standard base64 would end in "==".
        let line =
            handshake_line(SocketAddr::from((Ipv4Addr::LOCALHOST, 4242)), &CertificateDer::from(vec![1, 2, 3, 4]));
        assert_eq!(line, "1|6|tcp|127.0.0.1:4242|grpc|AQIDBA");
    }
}
