//! Prometheus counters and gauges, rendered in the text exposition format.
//!
//! A handful of atomics is all the broker needs; a metrics framework would cost more to build than
//! it saves. Labels are closed sets (algorithms, refusal reasons) so cardinality cannot grow with
//! input, and no label ever carries a token, a name or an audience chosen by a caller.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::audit::Stats as AuditStats;
use crate::audit::sinks::{Sink, SinkStats};
use crate::policy::PolicyEngine;
use keyward_proto::prometheus::{Exposition, Histogram, escape};

mod work;

pub use work::{ExchangeOutcome, NotificationOutcome, WorkCounts};

/// Why an API request was refused (a closed set, used as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No or bad API token.
    Unauthenticated,
    /// API token lacks the scope.
    Forbidden,
    /// Audience not allowed.
    Audience,
    /// Lifetime too long.
    Ttl,
    /// Malformed request.
    Invalid,
    /// Broker-side failure.
    Internal,
}

impl Refusal {
    const ALL: [Self; 6] =
        [Self::Unauthenticated, Self::Forbidden, Self::Audience, Self::Ttl, Self::Invalid, Self::Internal];

    fn label(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::Audience => "audience",
            Self::Ttl => "ttl",
            Self::Invalid => "invalid",
            Self::Internal => "internal",
        }
    }
}

/// What the drift scheduler did about one fire time of a stack's schedule (a closed set, used
/// as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftCheck {
    /// It queued a drift run.
    Queued,
    /// A drift run of the stack was still queued or running.
    Skipped,
    /// `keyward.run` refused the check.
    Refused,
    /// The check could not be queued (the repository or branch could not be read).
    Failed,
}

impl DriftCheck {
    const ALL: [Self; 4] = [Self::Queued, Self::Skipped, Self::Refused, Self::Failed];

    fn label(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Skipped => "skipped",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }
}

/// How many stacks are in each drift state, read from the database when metrics are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackDrift {
    /// `drifted`: the last check found drift.
    pub drifted: u64,
    /// `failed`: the last check failed.
    pub failed: u64,
    /// `in_sync`.
    pub in_sync: u64,
}

/// The broker's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    issued_es256: AtomicU64,
    issued_rs256: AtomicU64,
    refused: [AtomicU64; 6],
    rotations: AtomicU64,
    rotation_failures: AtomicU64,
    policy_reloads: AtomicU64,
    policy_reload_failures: AtomicU64,
    vault_revocation_failures: AtomicU64,
    drift_checks: [AtomicU64; 4],
    drift_scheduler_leader: AtomicU64,
    work: work::WorkMetrics,
}

/// What the caller of [`Metrics::render`] sampled: from the key ring, the audit writer, the
/// database (`None`: it did not answer in time) and the policy engine.
#[derive(Debug)]
pub struct Sampled<'a> {
    /// Keys published in the JWKS.
    pub published_keys: usize,
    /// The audit writer's counters and histograms.
    pub audit: &'a AuditStats,
    /// The configured audit sinks.
    pub sinks: &'a [Arc<Sink>],
    /// Whether the broker reports ready.
    pub ready: bool,
    /// Stacks by drift state.
    pub stacks: Option<StackDrift>,
    /// Runs, jobs and agents by state.
    pub work: Option<WorkCounts>,
    /// Agents with a work stream open to this replica.
    pub agents_connected: usize,
    /// The policy engine, for its decision latencies.
    pub policies: Option<&'a PolicyEngine>,
}

impl Metrics {
    /// Counts one issued token.
    pub fn token_issued(&self, algorithm: crate::tokens::SigningAlgorithm) {
        let counter = match algorithm {
            crate::tokens::SigningAlgorithm::ES256 => &self.issued_es256,
            crate::tokens::SigningAlgorithm::RS256 => &self.issued_rs256,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused API request (authentication, authorization or a refused mint).
    pub fn request_refused(&self, reason: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        if let Some(counter) = self.refused.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a key rotation, or a failed attempt.
    pub fn rotation(&self, succeeded: bool) {
        let counter = if succeeded { &self.rotations } else { &self.rotation_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a policy reload, or a refused one.
    pub fn policy_reload(&self, succeeded: bool) {
        let counter = if succeeded { &self.policy_reloads } else { &self.policy_reload_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Vault token the broker did not hand out and could not revoke.
    pub fn vault_revocation_failed(&self) {
        self.vault_revocation_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what the drift scheduler did about one fire time.
    pub fn drift_check(&self, outcome: DriftCheck) {
        let index = DriftCheck::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(counter) = self.drift_checks.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this replica holds the drift scheduler's lease, as of its last wake.
    pub fn drift_scheduler_leader(&self, leader: bool) {
        self.drift_scheduler_leader.store(u64::from(leader), Ordering::Relaxed);
    }

    /// Counts one exchange for the configured `target` and times it.
    pub fn exchange(&self, target: &str, outcome: ExchangeOutcome, elapsed: Duration) {
        self.work.exchange(target, outcome, elapsed);
    }

    /// Times one job from queued to leased.
    pub fn job_dispatched(&self, waited_seconds: i64) {
        self.work.job_dispatched(waited_seconds);
    }

    /// Counts one attempt at delivering a configured notification.
    pub fn notification(&self, notification: &str, outcome: NotificationOutcome) {
        self.work.notification(notification, outcome);
    }

    /// Renders every metric, with what the caller sampled.
    pub fn render(&self, sampled: &Sampled<'_>) -> String {
        let mut out = Exposition::with_capacity(8192);
        out.family("keyward_build_info", "gauge", "Build information.");
        out.sample("keyward_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1);
        self.render_counters(&mut out);
        self.render_drift(&mut out, sampled.stacks);
        render_audit(&mut out, sampled.audit, sampled.sinks);
        self.work.render(&mut out, sampled);
        out.family("keyward_jwks_keys", "gauge", "Keys published in the JWKS.");
        out.sample("keyward_jwks_keys", "", sampled.published_keys);
        out.family("keyward_ready", "gauge", "Whether the broker reports ready.");
        out.sample("keyward_ready", "", u8::from(sampled.ready));
        out.into_text()
    }

    /// The broker's own counters: tokens, refusals, key rotations, policy reloads, revocations.
    fn render_counters(&self, out: &mut Exposition) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.family("keyward_tokens_issued_total", "counter", "Run tokens signed and recorded.");
        out.sample("keyward_tokens_issued_total", "alg=\"ES256\"", load(&self.issued_es256));
        out.sample("keyward_tokens_issued_total", "alg=\"RS256\"", load(&self.issued_rs256));
        out.family("keyward_requests_refused_total", "counter", "API requests refused, by reason.");
        for (reason, counter) in Refusal::ALL.iter().zip(&self.refused) {
            out.sample("keyward_requests_refused_total", &format!("reason=\"{}\"", reason.label()), load(counter));
        }
        let plain = [
            ("keyward_signing_key_rotations_total", "Signing key rotations.", &self.rotations),
            ("keyward_signing_key_rotation_failures_total", "Failed rotation attempts.", &self.rotation_failures),
            ("keyward_policy_reloads_total", "Policy sets reloaded.", &self.policy_reloads),
            (
                "keyward_policy_reload_failures_total",
                "Reloads refused (the last good set stayed).",
                &self.policy_reload_failures,
            ),
            (
                "keyward_vault_token_revocation_failures_total",
                "Vault tokens the broker did not hand out and could not revoke (each lives until its TTL ends; \
                 the broker log names its accessor).",
                &self.vault_revocation_failures,
            ),
        ];
        for (name, help, counter) in plain {
            out.family(name, "counter", help);
            out.sample(name, "", load(counter));
        }
    }
}

impl Metrics {
    /// Stacks by drift state (every replica reports the database's numbers) and this replica's
    /// drift scheduler.
    fn render_drift(&self, out: &mut Exposition, stacks: Option<StackDrift>) {
        if let Some(stacks) = stacks {
            out.family("keyward_stacks_drifted", "gauge", "Stacks whose last drift check found drift.");
            out.sample("keyward_stacks_drifted", "", stacks.drifted);
            out.family("keyward_stacks_drift_check_failed", "gauge", "Stacks whose last drift check failed.");
            out.sample("keyward_stacks_drift_check_failed", "", stacks.failed);
            out.family("keyward_stacks_in_sync", "gauge", "Stacks whose last drift check found no drift.");
            out.sample("keyward_stacks_in_sync", "", stacks.in_sync);
        }
        let name = "keyward_drift_checks_scheduled_total";
        out.family(name, "counter", "Fire times of drift schedules this replica handled, by what it did.");
        for (outcome, counter) in DriftCheck::ALL.iter().zip(&self.drift_checks) {
            out.sample(name, &format!("outcome=\"{}\"", outcome.label()), counter.load(Ordering::Relaxed));
        }
        out.family(
            "keyward_drift_scheduler_leader",
            "gauge",
            "Whether this replica holds the drift scheduler's lease.",
        );
        out.sample("keyward_drift_scheduler_leader", "", self.drift_scheduler_leader.load(Ordering::Relaxed));
    }
}

/// The audit writer's commits and health, and each sink's delivery.
fn render_audit(out: &mut Exposition, audit: &AuditStats, sinks: &[Arc<Sink>]) {
    out.family("keyward_audit_commits_total", "counter", "Group commits of the audit log.");
    out.sample("keyward_audit_commits_total", "", audit.commits());
    out.family("keyward_audit_entries_total", "counter", "Audit entries made durable by those commits.");
    out.sample("keyward_audit_entries_total", "", audit.entries());
    out.family(
        "keyward_audit_failed_commits_total",
        "counter",
        "Audit log commits that failed (their requests got 503).",
    );
    out.sample("keyward_audit_failed_commits_total", "", audit.failed_commits());
    out.family("keyward_audit_healthy", "gauge", "Whether the last audit log commit succeeded.");
    out.sample("keyward_audit_healthy", "", u8::from(audit.healthy()));
    out.family(
        "keyward_audit_integrated_entries",
        "gauge",
        "Audit entries covered by tiles and lookup keys (the rest are read from their batches).",
    );
    out.sample("keyward_audit_integrated_entries", "", audit.integrated());
    out.family("keyward_audit_integration_failures_total", "counter", "Audit integrator steps that failed.");
    out.sample("keyward_audit_integration_failures_total", "", audit.integration_failures());
    out.family("keyward_audit_commit_seconds", "histogram", "How long audit group commits took.");
    out.histogram("keyward_audit_commit_seconds", "", &audit.commit_seconds());
    out.family("keyward_audit_batch_entries", "histogram", "Entries per audit group commit.");
    out.histogram("keyward_audit_batch_entries", "", &audit.batch_size());
    let per_sink: [SinkFamily; 4] = [
        ("delivered_total", "Audit entries delivered by a sink.", "counter", SinkStats::delivered),
        ("failures_total", "Failed sink delivery attempts (each is retried).", "counter", SinkStats::failures),
        ("dead_letters_total", "Audit entries a sink's receiver refused for good.", "counter", SinkStats::dead_letters),
        ("backlog", "Audit entries committed but not yet delivered by a sink.", "gauge", SinkStats::backlog),
    ];
    for (name, help, kind, value) in per_sink {
        let name = format!("keyward_audit_sink_{name}");
        out.family(&name, kind, help);
        for sink in sinks {
            out.sample(&name, &format!("sink=\"{}\"", sink.name()), value(sink.stats()));
        }
    }
}

/// A per-sink metric family: name suffix, help, type, and how to read it from a sink's stats.
type SinkFamily = (&'static str, &'static str, &'static str, fn(&SinkStats) -> u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_closed_labels() {
        let metrics = Metrics::default();
        metrics.token_issued(crate::tokens::SigningAlgorithm::ES256);
        metrics.request_refused(Refusal::Audience);
        metrics.request_refused(Refusal::Audience);
        metrics.drift_check(DriftCheck::Skipped);
        metrics.drift_scheduler_leader(true);
        let stacks = StackDrift { drifted: 3, failed: 1, in_sync: 0 };
        let audit = AuditStats::default();
        let text = metrics.render(&sampled(&audit, Some(stacks)));
        assert!(text.contains("keyward_tokens_issued_total{alg=\"ES256\"} 1"));
        assert!(text.contains("keyward_requests_refused_total{reason=\"audience\"} 2"));
        assert!(text.contains("keyward_jwks_keys 2"));
        assert!(text.contains("keyward_audit_commits_total 0"));
        assert!(text.contains("keyward_ready 1"));
        assert!(text.contains("keyward_stacks_drifted 3\n") && text.contains("keyward_stacks_drift_check_failed 1\n"));
        assert!(text.contains("keyward_drift_checks_scheduled_total{outcome=\"skipped\"} 1"));
        assert!(text.contains("keyward_drift_checks_scheduled_total{outcome=\"queued\"} 0"));
        assert!(text.contains("keyward_drift_scheduler_leader 1"));
        let unknown = metrics.render(&sampled(&audit, None));
        assert!(!unknown.contains("keyward_stacks_drifted"), "no number when the database did not answer");
    }

    fn sampled(audit: &AuditStats, stacks: Option<StackDrift>) -> Sampled<'_> {
        Sampled {
            published_keys: 2,
            audit,
            sinks: &[],
            ready: true,
            stacks,
            work: None,
            agents_connected: 0,
            policies: None,
        }
    }

    #[test]
    fn renders_work_histograms_and_gauges() {
        let metrics = Metrics::default();
        metrics.exchange("aws:deploy", ExchangeOutcome::Issued, Duration::from_millis(3));
        metrics.exchange("aws:deploy", ExchangeOutcome::Denied, Duration::from_millis(30));
        metrics.job_dispatched(2);
        metrics.notification("chat", NotificationOutcome::Delivered);
        let audit = AuditStats::default();
        let mut sampled = sampled(&audit, None);
        sampled.work = Some(WorkCounts {
            runs: vec![("finished".to_owned(), 2)],
            jobs: vec![("queued".to_owned(), 1)],
            agents: vec![("active".to_owned(), 1)],
        });
        let text = metrics.render(&sampled);
        assert!(text.contains("keyward_exchanges_total{target=\"aws:deploy\",outcome=\"issued\"} 1\n"));
        assert!(
            text.contains("keyward_exchange_seconds_bucket{target=\"aws:deploy\",outcome=\"issued\",le=\"0.005\"} 1\n")
        );
        assert!(text.contains("keyward_exchange_seconds_count{target=\"aws:deploy\",outcome=\"denied\"} 1\n"));
        assert!(text.contains("keyward_job_dispatch_seconds_bucket{le=\"1\"} 0\n"));
        assert!(text.contains("keyward_job_dispatch_seconds_bucket{le=\"5\"} 1\n"));
        assert!(
            text.contains("keyward_runs{state=\"finished\"} 2\n")
                && text.contains("keyward_runs{state=\"failed\"} 0\n")
        );
        assert!(
            text.contains("keyward_jobs{state=\"queued\"} 1\n") && text.contains("keyward_jobs{state=\"leased\"} 0\n")
        );
        assert!(text.contains("keyward_agents{state=\"active\"} 1\n"));
        assert!(
            text.contains("keyward_notification_deliveries_total{notification=\"chat\",outcome=\"delivered\"} 1\n")
        );
        assert!(text.contains("keyward_audit_commit_seconds_count 0\n"));
    }
}
