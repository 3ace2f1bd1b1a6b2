//! Starts the real `keyward-agent` binary: `join`, then `run` as a long-lived process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::binary;

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

    /// Starts `run --exec EXEC` over an enrolled data dir.
    pub fn run(data_dir: &Path, id: &str, exec: &str) -> Self {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = data_dir.with_extension(format!("{start}.log"));
        let child = Command::new(binary("keyward-agent"))
            .args(["run", "--exec", exec, "--data-dir"])
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log"))
            .spawn()
            .expect("spawn keyward-agent run");
        Self { child, id: id.to_owned(), log }
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
