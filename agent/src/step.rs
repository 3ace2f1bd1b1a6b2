//! Running one process of a job: its output into the job's log (optionally keeping stdout for the
//! agent instead), until it exits, the job is canceled, or its deadline passes.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::launch::Prepared;
use crate::logs::{JobLog, Stream};

/// How often buffered output is sent even when a chunk is not full.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// How long after its deadline a process is killed by the agent itself (the sandbox kills it at
/// the deadline; this is the backstop, and the only deadline without a sandbox).
const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// A job's cancellation, which several steps wait on in turn.
#[derive(Debug)]
pub struct Cancel {
    receiver: Option<oneshot::Receiver<String>>,
    reason: Option<String>,
}

impl Cancel {
    /// Fires when `receiver` does (or its sender is dropped).
    pub fn new(receiver: oneshot::Receiver<String>) -> Self {
        Self { receiver: Some(receiver), reason: None }
    }

    /// Why the job was canceled, once it was.
    pub fn reason(&mut self) -> Option<String> {
        if self.reason.is_none()
            && let Some(receiver) = &mut self.receiver
            && let Ok(reason) = receiver.try_recv()
        {
            self.reason = Some(reason);
            self.receiver = None;
        }
        self.reason.clone()
    }

    /// Waits until the job is canceled.
    async fn fired(&mut self) -> String {
        if let Some(reason) = &self.reason {
            return reason.clone();
        }
        let Some(receiver) = &mut self.receiver else { return std::future::pending().await };
        let reason = receiver.await.unwrap_or_else(|_| "the agent stopped the job".to_owned());
        self.receiver = None;
        self.reason = Some(reason.clone());
        reason
    }
}

/// How one process ended.
#[derive(Debug)]
pub enum StepEnd {
    /// It exited, or a signal killed it.
    Exited(std::process::ExitStatus),
    /// Killed, with everything it started, because the job was canceled.
    Canceled(String),
    /// Killed by the agent after its deadline.
    TimedOut,
    /// It could not be started.
    NotStarted(String),
}

/// What a step produced.
#[derive(Debug)]
pub struct Step {
    /// How it ended.
    pub end: StepEnd,
    /// Its stdout, when asked to keep it (cut at the limit).
    pub stdout: Vec<u8>,
}

/// Runs `prepared` in its own process group. Its stderr goes to `log`; so does its stdout unless
/// `keep_stdout` is set (then at most that many bytes are kept and returned instead).
pub async fn run(
    prepared: Prepared,
    log: &JobLog,
    cancel: &mut Cancel,
    deadline: SystemTime,
    keep_stdout: Option<usize>,
) -> Step {
    let mut command: Command = prepared.command;
    let mut child =
        match command.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0).spawn() {
            Ok(child) => child,
            Err(error) => return Step { end: StepEnd::NotStarted(error.to_string()), stdout: Vec::new() },
        };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut kept = Vec::new();
    let remaining = deadline.duration_since(SystemTime::now()).unwrap_or_default() + DEADLINE_GRACE;
    let end = {
        let waited = async {
            let out = async {
                match keep_stdout {
                    Some(limit) => keep(stdout, limit, &mut kept).await,
                    None => pump(stdout, Stream::Stdout, log).await,
                }
            };
            // The process's status counts once its output has been read to the end.
            let (_, _, status) = tokio::join!(out, pump(stderr, Stream::Stderr, log), child.wait());
            status
        };
        tokio::pin!(waited);
        let timeout = tokio::time::sleep(remaining);
        tokio::pin!(timeout);
        let mut every = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                status = &mut waited => break match status {
                    Ok(status) => StepEnd::Exited(status),
                    Err(error) => StepEnd::NotStarted(error.to_string()),
                },
                reason = cancel.fired() => break StepEnd::Canceled(reason),
                () = &mut timeout => break StepEnd::TimedOut,
                _ = every.tick() => log.flush().await,
            }
        }
    };
    if matches!(end, StepEnd::Canceled(_) | StepEnd::TimedOut) {
        kill_group(&mut child).await;
    }
    log.flush().await;
    Step { end, stdout: kept }
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

/// Reads a pipe to its end, keeping at most `limit` bytes.
async fn keep(pipe: Option<impl AsyncRead + Unpin>, limit: usize, kept: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = limit.saturating_sub(kept.len()).min(read);
                kept.extend_from_slice(buffer.get(..room).unwrap_or_default());
            }
        }
    }
}

/// Kills the process and everything in its group (a sandboxed job dies with its jailer).
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").arg("-KILL").arg("--").arg(format!("-{pid}")).status().await;
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}
