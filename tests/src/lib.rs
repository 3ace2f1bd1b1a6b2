//! Shared support for Keyward's end-to-end tests: free ports, the binaries under test, and the real
//! peers they run against (OpenBao, PostgreSQL, PyJWT). Modelled on linkerd's `test-util`.
//!
//! Peers come from the machine (PostgreSQL, Terraform) or from the pinned venv that
//! `scripts/install-test-peers` builds (OpenBao, PyJWT). A missing peer fails the test with a message
//! saying how to install it; nothing is skipped silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, unreachable_pub)]

pub mod agent;
pub mod audit;
pub mod broker;
pub mod fake_issuer;
pub mod fake_upstream;
pub mod forge;
pub mod git;
pub mod git_http;
pub mod held;
pub mod moto;
pub mod openbao;
pub mod postgres;
pub mod pyjwt;
pub mod regopy;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The directory the running test binary was built into (`target/debug`), where the workspace's
/// binaries are too.
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test-binary>
    exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Path of a workspace binary, failing clearly if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// The venv holding the pinned Python peers.
pub fn venv() -> PathBuf {
    let venv = std::env::var_os("KEYWARD_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-peers/venv"));
    assert!(
        venv.join("bin/bao").exists(),
        "test peers are not installed at {}: run scripts/install-test-peers (scripts/test does)",
        venv.display()
    );
    venv
}

/// A loopback address with a currently free port.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local_addr")
}

/// Polls `check` until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A process's resident set size and thread count, from `/proc/<pid>/status`.
pub fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_default()
    };
    (field("VmRSS:") * 1024, field("Threads:"))
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest client")
}

/// Seconds since the Unix epoch, by the wall clock (for tokens that real peers check).
pub fn now() -> i64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(elapsed.as_secs()).expect("seconds fit in i64")
}
