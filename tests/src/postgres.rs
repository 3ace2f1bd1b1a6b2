//! A throwaway PostgreSQL cluster from the machine's server binaries, on a free loopback port.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and run
//! as the `postgres` user (DESIGN.md §9).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::free_addr;

/// A running cluster, stopped and deleted on drop.
#[allow(missing_debug_implementations)]
pub struct PgCluster {
    dir: TempDir,
    bin: PathBuf,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
    port: u16,
    options: String,
}

fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYWARD_PG_BIN") {
        return PathBuf::from(dir);
    }
    let candidates = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"];
    candidates.iter().map(PathBuf::from).find(|dir| dir.join("initdb").exists()).unwrap_or_else(|| {
        panic!("PostgreSQL server binaries not found in {candidates:?}; install postgresql-15 or set KEYWARD_PG_BIN")
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn run_as_owner(bin: &Path, program: &str, args: &[&str]) {
    let program = bin.join(program);
    let output = if is_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(&program).args(args).output()
    } else {
        Command::new(&program).args(args).output()
    }
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PgCluster {
    /// Initializes and starts a cluster tuned for tests: no fsync, asynchronous commit by default
    /// (the broker turns `synchronous_commit` back on for its own sessions). Nothing here outlives
    /// the test, and durability is not what these tests measure.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A cluster that syncs like a production one (`fsync`, `synchronous_commit`, full page
    /// writes): for benchmarks whose numbers are about durable commits.
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("keyward-pg-").tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status().unwrap();
            assert!(status.success(), "chown of the cluster directory to postgres failed");
        }
        let data = dir.path().join("data");
        let data_str = data.to_str().unwrap().to_owned();
        run_as_owner(&bin, "initdb", &["-D", &data_str, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let port = free_addr().port();
        let relaxed = if durable { "" } else { " -c fsync=off -c synchronous_commit=off -c full_page_writes=off" };
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}{relaxed}", dir.path().display());
        let cluster = Self { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin, port, options };
        cluster.start_again();
        cluster
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("postgres.log");
        run_as_owner(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &self.options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// URL of a fresh, empty database named `name` (created now).
    pub fn database(&self, name: &str) -> String {
        run_as_owner(&self.bin, "createdb", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name]);
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server now (immediate shutdown, like a crash or a network cut for clients),
    /// failing the test if it does not stop.
    pub fn stop(&self) {
        let data = self.dir.path().join("data");
        run_as_owner(&self.bin, "pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Best effort: the server may be stopped already (a test stopped it), and a panic here
        // would hide the test's own failure.
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pg_ctl);
            command
        } else {
            Command::new(pg_ctl)
        };
        let _ = command.arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
    }
}
