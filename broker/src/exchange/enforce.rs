//! What a decision asks for that the broker can actually carry out for a target (DESIGN.md §8.12):
//! the credential's lifetime, and whether the decision's extras (a lifetime cap, an AWS session
//! policy) can be applied to that target at all.
//!
//! A decision the broker could carry out only in part is refused, with a reason that says what
//! to change, and never silently weakened: an `allow` with a `ttl_seconds` the job could ignore
//! is not what the policy decided.

use std::fmt;
use std::time::Duration;

use crate::policy::Decision;
use crate::targets::{ExchangeMode, TargetConfig, TargetKind};

/// STS refuses `AssumeRoleWithWebIdentity` sessions shorter than this.
const STS_MINIMUM_SESSION: Duration = Duration::from_secs(900);

/// Which cap set a credential's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// The target's configured `duration`.
    Target,
    /// The policy's `ttl_seconds`.
    Policy,
    /// The request's own `ttl_seconds`.
    Request,
}

/// How long what an exchange issues may live: the smallest of the target's duration, the
/// policy's `ttl_seconds` and the request's, and which of them that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The lifetime.
    pub duration: Duration,
    /// Who set it.
    pub cap: Cap,
}

impl Lifetime {
    /// The target's cap, lowered by the policy and then by the request; never raised.
    pub fn of(target: Duration, policy_ttl: Option<u64>, requested: Option<Duration>) -> Self {
        let mut lifetime = Self { duration: target, cap: Cap::Target };
        for (cap, duration) in [(Cap::Policy, policy_ttl.map(Duration::from_secs)), (Cap::Request, requested)] {
            if let Some(duration) = duration
                && duration < lifetime.duration
            {
                lifetime = Self { duration, cap };
            }
        }
        lifetime
    }

    /// Whole seconds.
    pub fn seconds(&self) -> u64 {
        self.duration.as_secs()
    }
}

impl fmt::Display for Lifetime {
    /// `300s (the policy's ttl_seconds)`: the value and who set it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.cap {
            Cap::Target => "the target's duration",
            Cap::Policy => "the policy's ttl_seconds",
            Cap::Request => "the request's ttl_seconds",
        };
        write!(f, "{}s ({who})", self.seconds())
    }
}

/// Why `decision` cannot be carried out for `target` as decided; empty when it can.
pub fn unenforceable(target: &TargetConfig, decision: &Decision, lifetime: Lifetime) -> Vec<String> {
    let id = target.id();
    let mut reasons = Vec::new();
    match &target.kind {
        TargetKind::Aws(aws) => {
            // Never stretch a cap to STS's minimum: refuse instead, and say why.
            if lifetime.duration < STS_MINIMUM_SESSION {
                reasons.push(format!(
                    "the session would last {}s (target, policy and request caps), below STS's minimum of 900s",
                    lifetime.seconds()
                ));
            }
            if aws.mode == ExchangeMode::Worker {
                // The job takes the token to STS itself: it picks `DurationSeconds` and sends no
                // session policy, whatever the broker says in the response.
                let worker_mode = format!(
                    "for target `{id}`, which is in worker mode where the broker cannot apply it (the job \
                     calls STS itself)"
                );
                if decision.session_policy.is_some() {
                    reasons.push(format!(
                        "the policy set a session_policy {worker_mode}; use broker mode for this target \
                         (mode = \"broker\") or drop the session_policy"
                    ));
                }
                if let Some(ttl) = decision.ttl_seconds.filter(|ttl| Duration::from_secs(*ttl) < target.duration) {
                    reasons.push(format!(
                        "the policy set ttl_seconds {ttl} {worker_mode} and picks the session's duration up to the \
                         role's maximum); use broker mode for this target (mode = \"broker\") or drop the ttl_seconds"
                    ));
                }
            }
        }
        TargetKind::Vault(_) => {
            if decision.session_policy.is_some() {
                reasons.push(format!(
                    "the policy set a session_policy for target `{id}`, but session policies are an AWS STS \
                     feature with no meaning for Vault (the role's token_policies decide what its token may do); \
                     drop the session_policy for this target"
                ));
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Outcome, PolicyKind};
    use crate::targets::{AwsTarget, TargetAccess, VaultTarget};

    const HOUR: Duration = Duration::from_secs(3600);

    fn aws(mode: ExchangeMode) -> TargetConfig {
        target(TargetKind::Aws(AwsTarget {
            role_arn: "arn:aws:iam::123456789012:role/network-apply".to_owned(),
            region: "us-east-1".to_owned(),
            sts_endpoint: None,
            audience: "sts.amazonaws.com".to_owned(),
            mode,
            session_tags: None,
            source_identity: None,
        }))
    }

    fn vault() -> TargetConfig {
        target(TargetKind::Vault(VaultTarget {
            address: "http://127.0.0.1:8200".to_owned(),
            auth_mount: "jwt".to_owned(),
            role: "network".to_owned(),
            audience: "vault".to_owned(),
            return_token: true,
            kv_reads: Vec::new(),
            pki_issues: Vec::new(),
        }))
    }

    fn target(kind: TargetKind) -> TargetConfig {
        TargetConfig {
            name: "network".to_owned(),
            access: TargetAccess::Read,
            duration: HOUR,
            labels: std::collections::BTreeMap::new(),
            write_subjects: Vec::new(),
            spaces: vec!["root".to_owned()],
            kind,
        }
    }

    fn allow(ttl_seconds: Option<u64>, session_policy: bool) -> Decision {
        Decision {
            kind: PolicyKind::Credentials,
            outcome: Outcome::Allow,
            reasons: Vec::new(),
            warnings: Vec::new(),
            ttl_seconds,
            session_policy: session_policy.then(|| serde_json::json!({ "Version": "2012-10-17", "Statement": [] })),
            policy_digest: String::new(),
        }
    }

    fn check(target: &TargetConfig, decision: &Decision) -> Vec<String> {
        unenforceable(target, decision, Lifetime::of(target.duration, decision.ttl_seconds, None))
    }

    #[test]
    fn broker_mode_carries_out_a_session_policy_and_a_lower_ttl() {
        assert!(check(&aws(ExchangeMode::Broker), &allow(Some(900), true)).is_empty());
    }

    #[test]
    fn worker_mode_refuses_what_only_the_broker_could_apply() {
        let worker = aws(ExchangeMode::Worker);
        assert!(check(&worker, &allow(None, false)).is_empty());
        assert!(check(&worker, &allow(Some(3600), false)).is_empty(), "not below the target's duration");
        assert!(check(&worker, &allow(Some(7200), false)).is_empty());

        let ttl = check(&worker, &allow(Some(900), false));
        assert_eq!(ttl.len(), 1, "{ttl:?}");
        assert!(ttl[0].starts_with("the policy set ttl_seconds 900 for target `aws:network`, which is in worker mode"));
        assert!(ttl[0].contains("use broker mode for this target"), "{ttl:?}");

        let policy = check(&worker, &allow(None, true));
        assert_eq!(policy.len(), 1, "{policy:?}");
        assert!(policy[0].starts_with("the policy set a session_policy for target `aws:network`, which is in worker"));
        assert!(policy[0].contains("or drop the session_policy"), "{policy:?}");

        assert_eq!(check(&worker, &allow(Some(1200), true)).len(), 2, "both are named");
    }

    #[test]
    fn sts_minimum_is_never_stretched() {
        let reasons = check(&aws(ExchangeMode::Broker), &allow(Some(600), false));
        assert_eq!(
            reasons,
            ["the session would last 600s (target, policy and request caps), below STS's minimum of 900s"]
        );
    }

    #[test]
    fn vault_refuses_a_session_policy_and_takes_a_ttl() {
        assert!(check(&vault(), &allow(Some(60), false)).is_empty(), "applied by the Vault exchange itself");
        let reasons = check(&vault(), &allow(None, true));
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("no meaning for Vault"), "{reasons:?}");
    }

    #[test]
    fn lifetimes_take_the_smallest_cap_and_say_whose_it_is() {
        let hour = Duration::from_secs(3600);
        assert_eq!(Lifetime::of(hour, None, None), Lifetime { duration: hour, cap: Cap::Target });
        assert_eq!(Lifetime::of(hour, Some(1800), None).duration, Duration::from_secs(1800));
        let requested = Lifetime::of(hour, Some(1800), Some(Duration::from_secs(1200)));
        assert_eq!(requested, Lifetime { duration: Duration::from_secs(1200), cap: Cap::Request });
        let policy = Lifetime::of(hour, Some(60), Some(Duration::from_secs(1200)));
        assert_eq!(policy, Lifetime { duration: Duration::from_secs(60), cap: Cap::Policy }, "never stretched");
        assert_eq!(policy.to_string(), "60s (the policy's ttl_seconds)");
        let target = Lifetime::of(Duration::from_secs(600), Some(3600), None);
        assert_eq!(target, Lifetime { duration: Duration::from_secs(600), cap: Cap::Target });
        assert_eq!(target.to_string(), "600s (the target's duration)");
        assert_eq!(Lifetime::of(hour, Some(3600), None).cap, Cap::Target, "an equal cap changes nothing");
    }
}
