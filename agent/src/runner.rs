//! Running a job's phase as a plain command (`keyward-agent run --exec CMD`).
//!
//! Until the sandboxed Terraform runner lands, a phase is `sh -c CMD` with the job described in
//! `KEYWARD_*` environment variables, so the whole lifecycle — dispatch, leases, results,
//! cancellation, credentials — runs end to end with real processes. Output goes to the job's
//! masked, signed log ([`crate::logs`]); the last masked output of a failing command becomes the
//! job's error.

use std::process::Stdio;
use std::time::Duration;

use keyward_proto::agent_v1::JobAssignment;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::credentials::JobCredentials;
use crate::logs::{JobLog, Stream};

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

    /// Runs `job`, with `credentials` in its environment and its output in `log`, until it ends
    /// or `cancel` fires.
    pub async fn run(
        &self,
        job: &JobAssignment,
        credentials: &JobCredentials,
        log: &JobLog,
        cancel: oneshot::Receiver<String>,
    ) -> Outcome {
        let Some(command) = &self.command else {
            return Outcome::Failed(
                "this agent has no runner for Terraform yet; start it with --exec CMD to run a command per phase"
                    .to_owned(),
            );
        };
        let mut process = Command::new("sh");
        process
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
            .envs(credentials.environment());
        log.note(&format!("$ sh -c {command}")).await;
        match run_step(process, log, cancel).await {
            StepEnd::Exited(status) if status.success() => Outcome::Succeeded,
            StepEnd::Exited(status) => {
                log.note(&format!("keyward: the command exited with {status}")).await;
                Outcome::Failed(format!("the command exited with {status}: {}", log.tail().await))
            }
            StepEnd::NotStarted(error) => Outcome::Failed(format!("cannot start the job's command: {error}")),
            StepEnd::Canceled(reason) => {
                log.note(&format!("keyward: canceled: {reason}")).await;
                tracing::info!(job_id = %job.job_id, %reason, "job canceled");
                Outcome::Canceled
            }
        }
    }
}

/// How one process of a job ended.
#[derive(Debug)]
pub enum StepEnd {
    /// It exited (or was killed by a signal) on its own.
    Exited(std::process::ExitStatus),
    /// It was killed, with everything it started, because the job was canceled.
    Canceled(String),
    /// It could not be started.
    NotStarted(std::io::Error),
}

/// How often buffered output is sent even when a chunk is not full.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Runs `command` in its own process group, its stdout and stderr into `log`, until it exits or
/// `cancel` fires (then the whole group is killed).
pub async fn run_step(mut command: Command, log: &JobLog, cancel: oneshot::Receiver<String>) -> StepEnd {
    let mut child = match command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return StepEnd::NotStarted(error),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let end = {
        let waited = async {
            // The process's status counts once its output has been read to the end.
            let (_, _, status) =
                tokio::join!(pump(stdout, Stream::Stdout, log), pump(stderr, Stream::Stderr, log), child.wait());
            status
        };
        tokio::pin!(waited);
        let mut cancel = cancel;
        let mut every = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                status = &mut waited => break match status {
                    Ok(status) => StepEnd::Exited(status),
                    Err(error) => StepEnd::NotStarted(error),
                },
                reason = &mut cancel => {
                    break StepEnd::Canceled(reason.unwrap_or_else(|_| "the agent stopped the job".to_owned()));
                }
                _ = every.tick() => log.flush().await,
            }
        }
    };
    if matches!(end, StepEnd::Canceled(_)) {
        kill_group(&mut child).await;
    }
    log.flush().await;
    end
}

/// Copies one of a process's pipes into the log until it closes.
async fn pump(pipe: Option<impl AsyncRead + Unpin>, stream: Stream, log: &JobLog) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0_u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => log.write(stream, buffer.get(..read).unwrap_or_default()).await,
        }
    }
    log.close(stream).await;
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
    use std::sync::Arc;

    use super::*;
    use crate::logs::{MaskRules, Outbox, Patterns};

    fn job() -> JobAssignment {
        JobAssignment { job_id: "j1".into(), phase: "plan".into(), ..JobAssignment::default() }
    }

    fn new_log() -> (JobLog, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let rules = MaskRules::patterns_only(Patterns::default());
        (JobLog::new(&job(), &rules, 1 << 20, Arc::clone(&outbox)), outbox)
    }

    #[tokio::test]
    async fn a_command_sees_its_job_and_its_exit_status_counts() {
        let (log, outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let ok = Runner::new(Some("test \"$KEYWARD_PHASE\" = plan && echo planned".into()))
            .run(&job(), &JobCredentials::default(), &log, cancel)
            .await;
        assert_eq!(ok, Outcome::Succeeded);
        log.finish().await;
        let logged: Vec<u8> =
            outbox.take_unsent().into_iter().filter(|c| c.stream == "stdout").flat_map(|c| c.data).collect();
        assert_eq!(logged, b"planned\n");
        let (log, _outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let failed =
            Runner::new(Some("echo boom; exit 3".into())).run(&job(), &JobCredentials::default(), &log, cancel).await;
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
        let running = tokio::spawn(async move {
            let (log, _outbox) = new_log();
            runner.run(&job, &JobCredentials::default(), &log, canceled).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        cancel.send("test".into()).expect("send");
        assert_eq!(running.await.expect("joined"), Outcome::Canceled);
    }
}
