//! A real peer that stops answering: its process stopped with `SIGSTOP`. The kernel still
//! accepts connections into the listen backlog and buffers what is sent, but nothing answers, which
//! is exactly the hang the broker's per-call deadlines exist for. Resumed with `SIGCONT` on drop.

use std::process::Command;

/// A stopped process, resumed when dropped.
#[derive(Debug)]
pub struct Frozen {
    pid: u32,
}

impl Frozen {
    /// Stops `pid` until the returned guard is dropped.
    pub fn stop(pid: u32) -> Self {
        signal("-STOP", pid);
        Self { pid }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", self.pid);
    }
}

fn signal(which: &str, pid: u32) {
    let status = Command::new("kill").args([which, &pid.to_string()]).status().expect("run kill");
    assert!(status.success(), "kill {which} {pid} failed");
}
