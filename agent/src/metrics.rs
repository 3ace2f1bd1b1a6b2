//! The agent's own Prometheus metrics: jobs by task and outcome, how long they ran, sandbox
//! failures, reconnections to the broker and whether it is connected.
//!
//! One process-wide set (like a Prometheus client's default registry), so the places that count
//! (the daemon's connection loop, the sandbox's verdict) need nothing threaded through to them.
//! Written with the broker's exposition writer and histograms (`keyward_proto::prometheus`): a
//! few atomics and one fixed-bucket histogram per task do not warrant a metrics framework. Labels are closed sets;
//! no job, run or stack ID is ever a label. Served by [`crate::metrics_http`] only when asked.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keyward_proto::prometheus::{Exposition, Histogram, PHASE_SECONDS};

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

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Per task, per outcome (in [`TASKS`] and [`JobOutcome::ALL`] order).
    jobs: [[AtomicU64; 3]; 3],
    /// Jobs the agent refused before running them (an assignment it could not read).
    refused: AtomicU64,
    /// Per task (in [`TASKS`] order), 1 s to 2 h.
    durations: [Histogram; 3],
    sandbox_failures: [AtomicU64; 5],
    reconnects: AtomicU64,
    connected: AtomicU64,
    running: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            jobs: Default::default(),
            refused: AtomicU64::default(),
            durations: std::array::from_fn(|_| Histogram::new(PHASE_SECONDS)),
            sandbox_failures: Default::default(),
            reconnects: AtomicU64::default(),
            connected: AtomicU64::default(),
            running: AtomicU64::default(),
        }
    }
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
            durations.observe_duration(elapsed);
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
        let mut out = Exposition::with_capacity(4096);
        out.family("keyward_agent_build_info", "gauge", "Build information.");
        out.sample("keyward_agent_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1);
        out.family("keyward_agent_jobs_total", "counter", "Jobs this agent ran, by task and outcome.");
        for (task, row) in TASKS.iter().zip(&self.jobs) {
            for (outcome, counter) in JobOutcome::ALL.iter().zip(row) {
                let labels = format!("task=\"{}\",outcome=\"{}\"", task_label(*task), outcome.label());
                out.sample("keyward_agent_jobs_total", &labels, load(counter));
            }
        }
        out.family("keyward_agent_jobs_refused_total", "counter", "Job assignments refused before running.");
        out.sample("keyward_agent_jobs_refused_total", "", load(&self.refused));
        out.family("keyward_agent_jobs_running", "gauge", "Jobs running now.");
        out.sample("keyward_agent_jobs_running", "", load(&self.running));
        let name = "keyward_agent_job_seconds";
        out.family(name, "histogram", "How long jobs ran, by task (credentials, checkout and the phase).");
        for (task, durations) in TASKS.iter().zip(&self.durations) {
            out.histogram(name, &format!("task=\"{}\"", task_label(*task)), &durations.snapshot());
        }
        let name = "keyward_agent_sandbox_failures_total";
        out.family(name, "counter", "Job processes the sandbox ended early, by reason.");
        for (failure, counter) in SandboxFailure::ALL.iter().zip(&self.sandbox_failures) {
            out.sample(name, &format!("reason=\"{}\"", failure.label()), load(counter));
        }
        out.family("keyward_agent_reconnects_total", "counter", "Connections to the broker made again.");
        out.sample("keyward_agent_reconnects_total", "", load(&self.reconnects));
        out.family("keyward_agent_connected", "gauge", "Whether a work stream to the broker is open.");
        out.sample("keyward_agent_connected", "", load(&self.connected));
        out.into_text()
    }
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
