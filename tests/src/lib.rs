//! Shared support for Keyward's end-to-end tests: free ports, the binaries under test, and the real
//! peers they run against (OpenBao, PostgreSQL, PyJWT), and the test provider `kwobjects` with its
//! object store, for Terraform runs with real drift. Modelled on linkerd's `test-util`.
//!
//! Peers come from the machine (PostgreSQL, Terraform) or from the pinned venv that
//! `scripts/install-test-peers` builds (OpenBao, PyJWT). A missing peer fails the test with a message
//! saying how to install it; nothing is skipped silently.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, unreachable_pub)]

pub mod agent;
pub mod audit;
pub mod broker;
pub mod browser;
pub mod console_session;
pub mod fake_github;
pub mod fake_issuer;
pub mod fake_upstream;
pub mod forge;
pub mod frozen;
pub mod git;
pub mod git_http;
pub mod github_webhooks;
pub mod held;
pub mod legacy;
pub mod moto;
pub mod object_store;
pub mod openbao;
pub mod openbao_oidc;
pub mod postgres;
pub mod pyjwt;
pub mod regopy;
pub mod tf_provider;

use std::net::SocketAddr;
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

/// A loopback address for a server whose address must be known before it starts: the broker's
/// (its issuer URL is in its configuration), an agent endpoint that must keep its port across
/// restarts, OpenBao's (it derives its API address and cluster port from it), PostgreSQL's (no
/// port 0). Peers that can report the port they bound use port 0 instead (moto).
///
/// Binding port 0 and dropping the listener would race: until the peer binds, the kernel may hand
/// the port to any other test's outgoing connection or port-0 bind. So the port comes from below
/// the kernel's ephemeral range, which neither ever uses, and it is reserved against other test
/// processes by an exclusive lock on a file named after it, held until this process exits. A
/// bind checks that nothing else (a peer left over from a killed test, say) holds it.
pub fn free_addr() -> SocketAddr {
    ports::reserve(1)
}

/// Two consecutive free loopback ports, reserved like [`free_addr`]'s; the first is returned
/// (OpenBao listens for its cluster on the port after its API's).
pub fn free_addr_pair() -> SocketAddr {
    ports::reserve(2)
}

mod ports {
    use std::fs::{File, OpenOptions, TryLockError};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::sync::{Mutex, PoisonError};

    /// The locks this process holds (released by the kernel when it exits, however it exits).
    static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());
    /// The lowest port handed out.
    const LOWEST: u16 = 20_000;

    /// The first port the kernel uses for ephemeral ports (`ip_local_port_range`).
    fn ephemeral_start() -> u16 {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next().and_then(|low| low.parse().ok()))
            .unwrap_or(32_768)
    }

    /// `count` consecutive ports, locked and bindable; the first as a loopback address.
    pub(super) fn reserve(count: u16) -> SocketAddr {
        let dir = std::env::temp_dir().join("keyward-test-ports");
        std::fs::create_dir_all(&dir).expect("the port reservation directory");
        let end = ephemeral_start().max(LOWEST + 1_000);
        let span = end - LOWEST - count;
        // Start somewhere different in each process, so concurrent tests rarely contend.
        let mut seed = [0_u8; 2];
        getrandom(&mut seed);
        let offset = u16::from_le_bytes(seed) % span;
        for step in 0..span {
            let first = LOWEST + (offset + step) % span;
            let mut locks = Vec::new();
            for port in first..first + count {
                match lock(&dir, port) {
                    Some(file) if bindable(port) => locks.push(file),
                    _ => break,
                }
            }
            if locks.len() == usize::from(count) {
                HELD.lock().unwrap_or_else(PoisonError::into_inner).extend(locks);
                return SocketAddr::from((Ipv4Addr::LOCALHOST, first));
            }
        }
        panic!("no free loopback port between {LOWEST} and {end}");
    }

    /// An exclusive lock on `port`'s file, unless another process holds it.
    fn lock(dir: &std::path::Path, port: u16) -> Option<File> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(port.to_string())).ok()?;
        match file.try_lock() {
            Ok(()) => Some(file),
            Err(TryLockError::WouldBlock) => None,
            Err(TryLockError::Error(error)) => panic!("cannot lock a port reservation: {error}"),
        }
    }

    fn bindable(port: u16) -> bool {
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
    }

    /// Random bytes from the kernel.
    fn getrandom(bytes: &mut [u8]) {
        use std::io::Read as _;
        File::open("/dev/urandom").and_then(|mut f| f.read_exact(bytes)).expect("/dev/urandom");
    }
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
