//! Prometheus counters and gauges, rendered in the text exposition format.
//!
//! A handful of atomics is all the broker needs; a metrics framework would cost more to build than
//! it saves. Labels are closed sets (algorithms, refusal reasons) so cardinality cannot grow with
//! input, and no label ever carries a token, a name or an audience chosen by a caller.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::Arc;

use crate::audit::Stats as AuditStats;
use crate::audit::sinks::{Sink, SinkStats};

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
}

impl Metrics {
    /// Counts one issued token.
    pub fn token_issued(&self, algorithm: crate::identity::SigningAlgorithm) {
        let counter = match algorithm {
            crate::identity::SigningAlgorithm::ES256 => &self.issued_es256,
            crate::identity::SigningAlgorithm::RS256 => &self.issued_rs256,
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

    /// Renders every metric; `published_keys` and `ready` are sampled by the caller.
    pub fn render(&self, published_keys: usize, audit: &AuditStats, sinks: &[Arc<Sink>], ready: bool) -> String {
        let mut out = String::with_capacity(1024);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP keyward_build_info Build information.");
        let _ = writeln!(out, "# TYPE keyward_build_info gauge");
        let _ = writeln!(out, "keyward_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        let _ = writeln!(out, "# HELP keyward_tokens_issued_total Run tokens signed and recorded.");
        let _ = writeln!(out, "# TYPE keyward_tokens_issued_total counter");
        let _ = writeln!(out, "keyward_tokens_issued_total{{alg=\"ES256\"}} {}", load(&self.issued_es256));
        let _ = writeln!(out, "keyward_tokens_issued_total{{alg=\"RS256\"}} {}", load(&self.issued_rs256));
        let _ = writeln!(out, "# HELP keyward_requests_refused_total API requests refused, by reason.");
        let _ = writeln!(out, "# TYPE keyward_requests_refused_total counter");
        for (reason, counter) in Refusal::ALL.iter().zip(&self.refused) {
            let _ = writeln!(out, "keyward_requests_refused_total{{reason=\"{}\"}} {}", reason.label(), load(counter));
        }
        let _ = writeln!(out, "# HELP keyward_signing_key_rotations_total Signing key rotations.");
        let _ = writeln!(out, "# TYPE keyward_signing_key_rotations_total counter");
        let _ = writeln!(out, "keyward_signing_key_rotations_total {}", load(&self.rotations));
        let _ = writeln!(out, "# HELP keyward_signing_key_rotation_failures_total Failed rotation attempts.");
        let _ = writeln!(out, "# TYPE keyward_signing_key_rotation_failures_total counter");
        let _ = writeln!(out, "keyward_signing_key_rotation_failures_total {}", load(&self.rotation_failures));
        let _ = writeln!(out, "# HELP keyward_policy_reloads_total Policy sets reloaded.");
        let _ = writeln!(out, "# TYPE keyward_policy_reloads_total counter");
        let _ = writeln!(out, "keyward_policy_reloads_total {}", load(&self.policy_reloads));
        let _ =
            writeln!(out, "# HELP keyward_policy_reload_failures_total Reloads refused (the last good set stayed).");
        let _ = writeln!(out, "# TYPE keyward_policy_reload_failures_total counter");
        let _ = writeln!(out, "keyward_policy_reload_failures_total {}", load(&self.policy_reload_failures));
        let _ = writeln!(
            out,
            "# HELP keyward_vault_token_revocation_failures_total Vault tokens the broker did not hand out and could \
             not revoke (each lives until its TTL ends; the broker log names its accessor)."
        );
        let _ = writeln!(out, "# TYPE keyward_vault_token_revocation_failures_total counter");
        let _ =
            writeln!(out, "keyward_vault_token_revocation_failures_total {}", load(&self.vault_revocation_failures));
        let _ = writeln!(out, "# HELP keyward_audit_commits_total Group commits of the audit log.");
        let _ = writeln!(out, "# TYPE keyward_audit_commits_total counter");
        let _ = writeln!(out, "keyward_audit_commits_total {}", audit.commits());
        let _ = writeln!(out, "# HELP keyward_audit_entries_total Audit entries made durable by those commits.");
        let _ = writeln!(out, "# TYPE keyward_audit_entries_total counter");
        let _ = writeln!(out, "keyward_audit_entries_total {}", audit.entries());
        let _ = writeln!(
            out,
            "# HELP keyward_audit_failed_commits_total Audit log commits that failed (their requests got 503)."
        );
        let _ = writeln!(out, "# TYPE keyward_audit_failed_commits_total counter");
        let _ = writeln!(out, "keyward_audit_failed_commits_total {}", audit.failed_commits());
        let _ = writeln!(out, "# HELP keyward_audit_healthy Whether the last audit log commit succeeded.");
        let _ = writeln!(out, "# TYPE keyward_audit_healthy gauge");
        let _ = writeln!(out, "keyward_audit_healthy {}", u8::from(audit.healthy()));
        for (name, help, kind, value) in [
            (
                "delivered_total",
                "Audit entries delivered by a sink.",
                "counter",
                SinkStats::delivered as fn(&SinkStats) -> u64,
            ),
            ("failures_total", "Failed sink delivery attempts (each is retried).", "counter", SinkStats::failures),
            (
                "dead_letters_total",
                "Audit entries a sink's receiver refused for good.",
                "counter",
                SinkStats::dead_letters,
            ),
            ("backlog", "Audit entries committed but not yet delivered by a sink.", "gauge", SinkStats::backlog),
        ] {
            let _ = writeln!(out, "# HELP keyward_audit_sink_{name} {help}");
            let _ = writeln!(out, "# TYPE keyward_audit_sink_{name} {kind}");
            for sink in sinks {
                let _ = writeln!(out, "keyward_audit_sink_{name}{{sink=\"{}\"}} {}", sink.name(), value(sink.stats()));
            }
        }
        let _ = writeln!(out, "# HELP keyward_jwks_keys Keys published in the JWKS.");
        let _ = writeln!(out, "# TYPE keyward_jwks_keys gauge");
        let _ = writeln!(out, "keyward_jwks_keys {published_keys}");
        let _ = writeln!(out, "# HELP keyward_ready Whether the broker reports ready.");
        let _ = writeln!(out, "# TYPE keyward_ready gauge");
        let _ = writeln!(out, "keyward_ready {}", u8::from(ready));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_closed_labels() {
        let metrics = Metrics::default();
        metrics.token_issued(crate::identity::SigningAlgorithm::ES256);
        metrics.request_refused(Refusal::Audience);
        metrics.request_refused(Refusal::Audience);
        let text = metrics.render(2, &AuditStats::default(), &[], true);
        assert!(text.contains("keyward_tokens_issued_total{alg=\"ES256\"} 1"));
        assert!(text.contains("keyward_requests_refused_total{reason=\"audience\"} 2"));
        assert!(text.contains("keyward_jwks_keys 2"));
        assert!(text.contains("keyward_audit_commits_total 0"));
        assert!(text.contains("keyward_ready 1"));
    }
}
