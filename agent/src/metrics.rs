//! The agent's own Prometheus metrics: jobs by task and outcome, how long they ran, sandbox
//! failures, reconnections to the broker and whether it is connected.
//!
//! One process-wide set (like a Prometheus client's default registry), so the places that count
//! (the daemon's connection loop, the sandbox's verdict) need nothing threaded through to them.
//! Rendered by hand in the text exposition format, as the broker's are: a few atomics and one
//! fixed-bucket histogram per task do not warrant a metrics framework. Labels are closed sets;
//! no job, run or stack ID is ever a label. Served by [`crate::metrics_http`] only when asked.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::job::Task;

/// How a job ended on this agent (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// It succeeded (a drift check that found drift succeeded too).
    Succeeded,
    /// It failed.
    Failed,
    /// The broker canceled it.
    Canceled,
}

impl JobOutcome {
    const ALL: [Self; 3] = [Self::Succeeded, Self::Failed, Self::Canceled];

    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }
}

/// Why the sandbox ended a job's process early (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxFailure {
    /// The sandbox could not set itself up.
    Setup,
    /// The process ran past the job's deadline.
    Deadline,
    /// The process used more than its memory limit.
    Memory,
    /// The process reached its process limit.
    Pids,
    /// The sandbox left no status behind.
    NoStatus,
}

impl SandboxFailure {
    const ALL: [Self; 5] = [Self::Setup, Self::Deadline, Self::Memory, Self::Pids, Self::NoStatus];

    fn label(self) -> &'static str {
        match self {
            Self::Setup => "setup",
            Self::Deadline => "deadline",
            Self::Memory => "memory_limit",
            Self::Pids => "pids_limit",
            Self::NoStatus => "no_status",
        }
    }
}

const TASKS: [Task; 3] = [Task::Plan, Task::CheckDrift, Task::Apply];

fn task_label(task: Task) -> &'static str {
    match task {
        Task::Plan => "plan",
        Task::CheckDrift => "check_drift",
        Task::Apply => "apply",
    }
}

/// Upper bounds of the job duration histogram, in seconds: 1 s to 2 h.
const JOB_SECONDS: [f64; 11] = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// A fixed-bucket histogram of one task's job durations.
#[derive(Debug, Default)]
struct Durations {
    /// Per bound, not cumulative.
    buckets: [AtomicU64; JOB_SECONDS.len()],
    count: AtomicU64,
    /// Milliseconds, so the sum stays an integer atomic.
    sum_millis: AtomicU64,
}

impl Durations {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(index) = JOB_SECONDS.iter().position(|bound| seconds <= *bound)
            && let Some(bucket) = self.buckets.get(index)
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let millis = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.sum_millis.fetch_add(millis, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Per task, per outcome (in [`TASKS`] and [`JobOutcome::ALL`] order).
    jobs: [[AtomicU64; 3]; 3],
    /// Jobs the agent refused before running them (an assignment it could not read).
    refused: AtomicU64,
    durations: [Durations; 3],
    sandbox_failures: [AtomicU64; 5],
    reconnects: AtomicU64,
    connected: AtomicU64,
    running: AtomicU64,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    /// A job started.
    pub fn job_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// A job of `task` ended with `outcome` after `elapsed`.
    pub fn job_finished(&self, task: Task, outcome: JobOutcome, elapsed: Duration) {
        let _ = self.running.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(1)));
        let Some(at) = TASKS.iter().position(|t| *t == task) else { return };
        let which = JobOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(counter) = self.jobs.get(at).and_then(|row| row.get(which)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(durations) = self.durations.get(at) {
            durations.observe(elapsed);
        }
    }

    /// An assignment was refused before it ran.
    pub fn job_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The sandbox ended a job's process for `failure`.
    pub fn sandbox_failed(&self, failure: SandboxFailure) {
        let index = SandboxFailure::ALL.iter().position(|f| *f == failure).unwrap_or(0);
        if let Some(counter) = self.sandbox_failures.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The agent connects to the broker again after losing (or renewing) its connection.
    pub fn reconnecting(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a work stream to the broker is open.
    pub fn connected(&self, connected: bool) {
        self.connected.store(u64::from(connected), Ordering::Relaxed);
    }

    /// Every metric, in the text exposition format.
    pub fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        family(&mut out, "keyward_agent_build_info", "gauge", "Build information.");
        let _ = writeln!(out, "keyward_agent_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        family(&mut out, "keyward_agent_jobs_total", "counter", "Jobs this agent ran, by task and outcome.");
        for (task, row) in TASKS.iter().zip(&self.jobs) {
            for (outcome, counter) in JobOutcome::ALL.iter().zip(row) {
                let (task, outcome, n) = (task_label(*task), outcome.label(), load(counter));
                let _ = writeln!(out, "keyward_agent_jobs_total{{task=\"{task}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        family(&mut out, "keyward_agent_jobs_refused_total", "counter", "Job assignments refused before running.");
        let _ = writeln!(out, "keyward_agent_jobs_refused_total {}", load(&self.refused));
        family(&mut out, "keyward_agent_jobs_running", "gauge", "Jobs running now.");
        let _ = writeln!(out, "keyward_agent_jobs_running {}", load(&self.running));
        self.render_durations(&mut out);
        let name = "keyward_agent_sandbox_failures_total";
        family(&mut out, name, "counter", "Job processes the sandbox ended early, by reason.");
        for (failure, counter) in SandboxFailure::ALL.iter().zip(&self.sandbox_failures) {
            let _ = writeln!(out, "{name}{{reason=\"{}\"}} {}", failure.label(), load(counter));
        }
        family(&mut out, "keyward_agent_reconnects_total", "counter", "Connections to the broker made again.");
        let _ = writeln!(out, "keyward_agent_reconnects_total {}", load(&self.reconnects));
        family(&mut out, "keyward_agent_connected", "gauge", "Whether a work stream to the broker is open.");
        let _ = writeln!(out, "keyward_agent_connected {}", load(&self.connected));
        out
    }

    fn render_durations(&self, out: &mut String) {
        let name = "keyward_agent_job_seconds";
        family(out, name, "histogram", "How long jobs ran, by task (credentials, checkout and the phase).");
        for (task, durations) in TASKS.iter().zip(&self.durations) {
            let task = task_label(*task);
            let mut running = 0_u64;
            for (bound, bucket) in JOB_SECONDS.iter().zip(&durations.buckets) {
                running = running.saturating_add(bucket.load(Ordering::Relaxed));
                let _ = writeln!(out, "{name}_bucket{{task=\"{task}\",le=\"{bound}\"}} {running}");
            }
            let count = durations.count.load(Ordering::Relaxed).max(running);
            let _ = writeln!(out, "{name}_bucket{{task=\"{task}\",le=\"+Inf\"}} {count}");
            let sum = Duration::from_millis(durations.sum_millis.load(Ordering::Relaxed)).as_secs_f64();
            let _ = writeln!(out, "{name}_sum{{task=\"{task}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{task=\"{task}\"}} {count}");
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_jobs_durations_and_connection() {
        let metrics = Metrics::default();
        metrics.job_started();
        metrics.job_finished(Task::Plan, JobOutcome::Succeeded, Duration::from_millis(2500));
        metrics.sandbox_failed(SandboxFailure::Memory);
        metrics.reconnecting();
        metrics.connected(true);
        let text = metrics.render();
        assert!(text.contains("keyward_agent_jobs_total{task=\"plan\",outcome=\"succeeded\"} 1\n"), "{text}");
        assert!(text.contains("keyward_agent_jobs_total{task=\"apply\",outcome=\"failed\"} 0\n"));
        assert!(text.contains("keyward_agent_job_seconds_bucket{task=\"plan\",le=\"1\"} 0\n"));
        assert!(text.contains("keyward_agent_job_seconds_bucket{task=\"plan\",le=\"5\"} 1\n"));
        assert!(text.contains("keyward_agent_job_seconds_sum{task=\"plan\"} 2.5\n"));
        assert!(text.contains("keyward_agent_sandbox_failures_total{reason=\"memory_limit\"} 1\n"));
        assert!(text.contains("keyward_agent_reconnects_total 1\n") && text.contains("keyward_agent_connected 1\n"));
        assert!(text.contains("keyward_agent_jobs_running 0\n"));
    }
}
