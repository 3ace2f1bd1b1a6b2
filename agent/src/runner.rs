//! Running a job's phase as a plain command (`keyward-agent run --exec CMD`).
//!
//! Until the sandboxed Terraform runner lands, a phase is `sh -c CMD` with the job described in
//! `KEYWARD_*` environment variables, so the whole lifecycle — dispatch, leases, results,
//! cancellation, credentials — runs end to end with real processes. Output is logged line by line and the
//! last lines of a failing command become the job's error.

use std::collections::VecDeque;
use std::process::Stdio;

use keyward_proto::agent_v1::JobAssignment;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::credentials::JobCredentials;

/// Lines of output kept for the error of a failed command.
const TAIL_LINES: usize = 20;

/// How a job's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Succeeded,
    /// Anything else, with why.
    Failed(String),
    /// Stopped on request.
    Canceled,
}

/// How the plain runner isolates a job: its own process group, killed as a whole; nothing more.
pub const ISOLATION: &str = "process";

/// The version of the `terraform` on `PATH` (`terraform version -json`), or `None` when there is
/// none or it does not answer within 10 s.
pub async fn terraform_version() -> Option<String> {
    let output = Command::new("terraform")
        .args(["version", "-json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), output).await.ok()?.ok()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    report.get("terraform_version")?.as_str().map(str::to_owned)
}

/// Runs phases as `sh -c <command>`.
#[derive(Debug, Clone)]
pub struct Runner {
    command: Option<String>,
}

impl Runner {
    /// A runner for `command`; without one every job fails with an explanation.
    pub fn new(command: Option<String>) -> Self {
        Self { command }
    }

    /// Runs `job`, with `credentials` in its environment, until it ends or `cancel` fires.
    pub async fn run(
        &self,
        job: &JobAssignment,
        credentials: &JobCredentials,
        cancel: oneshot::Receiver<String>,
    ) -> Outcome {
        let Some(command) = &self.command else {
            return Outcome::Failed(
                "this agent has no runner for Terraform yet; start it with --exec CMD to run a command per phase"
                    .to_owned(),
            );
        };
        let mut child = match Command::new("sh")
            .arg("-c")
            .arg(command)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".to_owned()))
            .env("KEYWARD_JOB_ID", &job.job_id)
            .env("KEYWARD_RUN_ID", &job.run_id)
            .env("KEYWARD_STACK", &job.stack_id)
            .env("KEYWARD_PHASE", &job.phase)
            .env("KEYWARD_REPOSITORY", &job.repository)
            .env("KEYWARD_COMMIT_SHA", &job.commit_sha)
            .env("KEYWARD_PATH", &job.path)
            .envs(credentials.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
        {
            Ok(child) => child,
            Err(error) => return Outcome::Failed(format!("cannot start the job's command: {error}")),
        };
        let tail = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let mut readers = Vec::new();
        for (stream, name) in [
            (child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), "stdout"),
            (child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>), "stderr"),
        ] {
            let Some(stream) = stream else { continue };
            let tail = std::sync::Arc::clone(&tail);
            let job_id = job.job_id.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(job_id = %job_id, stream = name, "{line}");
                    if let Ok(mut tail) = tail.lock() {
                        if tail.len() == TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                }
            }));
        }
        let outcome = tokio::select! {
            status = child.wait() => match status {
                Ok(status) if status.success() => Outcome::Succeeded,
                Ok(status) => {
                    for reader in readers.drain(..) {
                        let _ = reader.await;
                    }
                    let tail: Vec<String> = tail.lock().map(|t| t.iter().cloned().collect()).unwrap_or_default();
                    Outcome::Failed(format!("the command exited with {status}: {}", tail.join("\n")))
                }
                Err(error) => Outcome::Failed(format!("cannot wait for the job's command: {error}")),
            },
            reason = cancel => {
                kill_group(&mut child).await;
                tracing::info!(job_id = %job.job_id, reason = %reason.unwrap_or_default(), "job canceled");
                Outcome::Canceled
            }
        };
        for reader in readers {
            reader.abort();
        }
        outcome
    }
}

/// Kills the command and everything it started (it leads its own process group).
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{pid}")).status().await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobAssignment {
        JobAssignment { job_id: "j1".into(), phase: "plan".into(), ..JobAssignment::default() }
    }

    #[tokio::test]
    async fn a_command_sees_its_job_and_its_exit_status_counts() {
        let (_keep, cancel) = oneshot::channel();
        let ok = Runner::new(Some("test \"$KEYWARD_PHASE\" = plan".into()))
            .run(&job(), &JobCredentials::default(), cancel)
            .await;
        assert_eq!(ok, Outcome::Succeeded);
        let (_keep, cancel) = oneshot::channel();
        let failed =
            Runner::new(Some("echo boom; exit 3".into())).run(&job(), &JobCredentials::default(), cancel).await;
        assert!(matches!(&failed, Outcome::Failed(why) if why.contains("boom") && why.contains('3')), "{failed:?}");
    }

    #[tokio::test]
    async fn the_terraform_on_path_reports_its_version() {
        // The machines this runs on have Terraform (DESIGN.md §9).
        let version = terraform_version().await.expect("terraform on PATH");
        assert!(version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()), "{version}");
    }

    #[tokio::test]
    async fn a_canceled_command_is_killed() {
        let (cancel, canceled) = oneshot::channel();
        let runner = Runner::new(Some("sleep 30".into()));
        let job = job();
        let running = tokio::spawn(async move { runner.run(&job, &JobCredentials::default(), canceled).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        cancel.send("test".into()).expect("send");
        assert_eq!(running.await.expect("joined"), Outcome::Canceled);
    }
}
