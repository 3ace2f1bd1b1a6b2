//! The metrics of the broker's work: exchanges by target and outcome, policy decision latency,
//! runs, jobs and agents by state, job dispatch latency and notification deliveries.
//!
//! Kept apart from the counters of `metrics.rs` because these carry histograms and configured
//! names as labels. Every label is bounded: a target ID or notification name comes from the
//! configuration (an unknown target is never counted), an outcome or state is a closed set, and
//! no run ID, subject or token is ever a label.

use super::{BTreeMap, Duration, Exposition, Histogram, Mutex, Sampled, escape};
use keyward_proto::prometheus::{LATENCY_SECONDS, WAIT_SECONDS};

/// How an exchange for a configured target ended (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExchangeOutcome {
    /// Credentials were issued.
    Issued,
    /// The broker's rules or the policy refused.
    Denied,
    /// The subject token was refused.
    SubjectRefused,
    /// The relying party refused.
    UpstreamRefused,
    /// The relying party could not be reached in time.
    UpstreamUnavailable,
    /// The broker could not decide or record (database, audit log).
    Unavailable,
}

impl ExchangeOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Denied => "denied",
            Self::SubjectRefused => "subject_refused",
            Self::UpstreamRefused => "upstream_refused",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Unavailable => "unavailable",
        }
    }
}

/// What one attempt at delivering a notification came to (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NotificationOutcome {
    /// The receiver took it.
    Delivered,
    /// It failed and will be retried.
    Retried,
    /// It failed for good (refused, or out of attempts).
    Failed,
}

impl NotificationOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retried => "retried",
            Self::Failed => "failed",
        }
    }
}

/// Runs, jobs and agents by state, counted in the database when metrics are rendered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkCounts {
    /// `(run state, runs)`.
    pub runs: Vec<(String, u64)>,
    /// `(job state, jobs)`, queued and leased only.
    pub jobs: Vec<(String, u64)>,
    /// `(agent state, agents)`.
    pub agents: Vec<(String, u64)>,
}

/// Every run state, so that each has a series even at zero.
const RUN_STATES: [&str; 9] =
    ["queued", "planning", "planned", "applying", "finished", "failed", "canceled", "discarded", "interrupted"];
/// The job states worth a gauge: waiting for an agent, and held by one.
const JOB_STATES: [&str; 2] = ["queued", "leased"];
/// Every agent state.
const AGENT_STATES: [&str; 3] = ["active", "draining", "revoked"];

/// The work metrics' state.
#[derive(Debug)]
pub(super) struct WorkMetrics {
    exchanges: Mutex<BTreeMap<(String, ExchangeOutcome), Histogram>>,
    dispatch: Histogram,
    notifications: Mutex<BTreeMap<(String, NotificationOutcome), u64>>,
}

impl Default for WorkMetrics {
    fn default() -> Self {
        Self { exchanges: Mutex::default(), dispatch: Histogram::new(WAIT_SECONDS), notifications: Mutex::default() }
    }
}

impl WorkMetrics {
    pub(super) fn exchange(&self, target: &str, outcome: ExchangeOutcome, elapsed: Duration) {
        let mut exchanges = self.exchanges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        exchanges
            .entry((target.to_owned(), outcome))
            .or_insert_with(|| Histogram::new(LATENCY_SECONDS))
            .observe_duration(elapsed);
    }

    pub(super) fn job_dispatched(&self, waited_seconds: i64) {
        self.dispatch.observe(u32::try_from(waited_seconds.max(0)).map_or(f64::MAX, f64::from));
    }

    pub(super) fn notification(&self, notification: &str, outcome: NotificationOutcome) {
        let mut notifications = self.notifications.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *notifications.entry((notification.to_owned(), outcome)).or_insert(0) += 1;
    }

    pub(super) fn render(&self, out: &mut Exposition, sampled: &Sampled<'_>) {
        self.render_exchanges(out);
        if let Some(policies) = sampled.policies {
            let name = "keyward_policy_decision_seconds";
            out.family(name, "histogram", "How long policy decisions took, by policy kind.");
            for (kind, snapshot) in policies.decision_seconds() {
                out.histogram(name, &format!("kind=\"{}\"", kind.as_str()), &snapshot);
            }
        }
        out.family("keyward_job_dispatch_seconds", "histogram", "How long jobs waited from queued to leased.");
        out.histogram("keyward_job_dispatch_seconds", "", &self.dispatch.snapshot());
        if let Some(work) = &sampled.work {
            gauge_by_state(out, "keyward_runs", "Runs by state.", &RUN_STATES, &work.runs);
            gauge_by_state(out, "keyward_jobs", "Jobs waiting for an agent or held by one.", &JOB_STATES, &work.jobs);
            gauge_by_state(out, "keyward_agents", "Enrolled agents by state.", &AGENT_STATES, &work.agents);
        }
        out.family("keyward_agents_connected", "gauge", "Agents with a work stream open to this replica.");
        out.sample("keyward_agents_connected", "", sampled.agents_connected);
        let notifications = self.notifications.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = "keyward_notification_deliveries_total";
        out.family(name, "counter", "Attempts at delivering notifications, by notification and outcome.");
        for ((notification, outcome), count) in notifications.iter() {
            out.sample(
                name,
                &format!("notification=\"{}\",outcome=\"{}\"", escape(notification), outcome.label()),
                count,
            );
        }
    }

    fn render_exchanges(&self, out: &mut Exposition) {
        let exchanges = self.exchanges.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshots: Vec<(String, _)> = exchanges
            .iter()
            .map(|((target, outcome), histogram)| {
                (format!("target=\"{}\",outcome=\"{}\"", escape(target), outcome.label()), histogram.snapshot())
            })
            .collect();
        drop(exchanges);
        out.family("keyward_exchanges_total", "counter", "Token exchanges for configured targets, by outcome.");
        for (labels, snapshot) in &snapshots {
            out.sample("keyward_exchanges_total", labels, snapshot.count);
        }
        out.family("keyward_exchange_seconds", "histogram", "How long token exchanges took, by target and outcome.");
        for (labels, snapshot) in &snapshots {
            out.histogram("keyward_exchange_seconds", labels, snapshot);
        }
    }
}

/// A gauge with one series per known state (zero when the database counted none).
fn gauge_by_state(out: &mut Exposition, name: &str, help: &str, states: &[&str], counted: &[(String, u64)]) {
    out.family(name, "gauge", help);
    for state in states {
        let count = counted.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
        out.sample(name, &format!("state=\"{state}\""), count);
    }
}
