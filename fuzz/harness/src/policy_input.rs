//! The policy input built from a verified token's claims (`exchange::subject_view`: the subject,
//! the claims its audit entries keep, the `keyward.credentials` input) and the shipped policy's
//! decision on it. Claims are the token issuer's word; a CI system puts whatever its users'
//! workflow names contain in them.
//!
//! Input: the first byte chooses the subject (bit 0: a CI token, else a run token), the target
//! (bit 1: a write target, else a read one) and whether a lifetime is asked for (bit 2); the rest
//! is the JSON object of claims. What must hold:
//! - the input is an object with the documented parts;
//! - a CI token's phase is the issuer's configured one, never the token's; a run token's
//!   `approved_by` claim is never taken on its word;
//! - the claims kept for the audit log are bounded and encode canonically (or no entry could
//!   be written for this exchange);
//! - the AWS role session name fits STS's `[\w+=,.@-]{2,64}`;
//! - the policy decides (an allow or a deny with reasons), and a plan never gets a write target.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use keyward_broker::audit::canonical::to_canonical;
use keyward_broker::exchange::subject_view;
use keyward_broker::exchange::trusted_issuers::{ClaimMapping, IssuerConfig};
use keyward_broker::policy::PolicyKind;
use keyward_broker::targets::{
    AwsTarget, ExchangeMode, TargetAccess, TargetConfig, TargetKind, VaultTarget, WriteSubject,
};
use keyward_broker::tokens::verify::{Algorithm, VerifiedToken};
use keyward_proto::claims::Phase;
use serde_json::{Map, Value};

use crate::Outcome;
use crate::fixtures::{NOW, policies};

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&mode, rest)) = data.split_first() else { return Outcome::Refused };
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) else { return Outcome::Refused };
    let ci = (mode & 1 == 1).then(issuer);
    let target = if mode & 2 == 2 { &targets().1 } else { &targets().0 };
    let requested_ttl = (mode & 4 == 4).then_some(Duration::from_secs(900));
    let verified = VerifiedToken { algorithm: Algorithm::ES256, kid: None, claims, expires_at: NOW + 300 };
    let token = String::from_utf8_lossy(rest);
    let Ok(view) = subject_view(verified, ci, &token, target, requested_ttl, NOW) else {
        return Outcome::Refused;
    };
    let input = &view.input;
    for part in ["subject", "run", "target", "request", "time"] {
        assert!(input.get(part).is_some_and(Value::is_object), "the input has no `{part}` object");
    }
    let run = &input["run"];
    if ci.is_some() {
        assert_eq!(run["phase"], "plan", "a CI token's phase comes from its issuer's configuration");
    }
    assert!(run.get("approved_by").is_none(), "approvals are never taken from a token");
    holds_for_recorded(&view.recorded_claims);
    let name = &view.role_session_name;
    assert!(
        (2..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)),
        "an invalid STS role session name: {name:?}"
    );
    let apply = run["phase"] == "apply";
    let decision = policies().decide(PolicyKind::Credentials, view.input);
    if decision.permits() {
        assert!(apply || target.access == TargetAccess::Read, "the policy let a plan write");
    } else {
        assert!(!decision.reasons.is_empty(), "a deny says why");
    }
    Outcome::Accepted
}

fn holds_for_recorded(recorded: &Map<String, Value>) {
    assert!(recorded.len() <= 40, "{} claims recorded", recorded.len());
    for (name, value) in recorded {
        assert!(name.chars().count() <= 64, "a claim name of {} characters recorded", name.len());
        if let Value::String(text) = value {
            assert!(text.len() <= 256, "a claim value of {} bytes recorded", text.len());
        }
    }
    if let Err(error) = to_canonical(&Value::Object(recorded.clone())) {
        panic!("the recorded claims have no canonical form, so the exchange cannot be audited: {error}");
    }
}

/// A GitHub Actions-like issuer, as an `[[issuers]]` entry with only its name, issuer and
/// audience set resolves (the defaults of every other key; the default claim mapping).
fn issuer() -> &'static IssuerConfig {
    static ISSUER: OnceLock<IssuerConfig> = OnceLock::new();
    ISSUER.get_or_init(|| IssuerConfig {
        name: "github".to_owned(),
        issuer: "https://token.actions.githubusercontent.com".to_owned(),
        audience: "https://keyward.fuzz".to_owned(),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        require_nbf: true,
        required_claims: BTreeMap::new(),
        targets: Vec::new(),
        phase: Phase::Plan,
        single_use: true,
        jwks_refresh_interval: Duration::from_secs(30),
        claims: ClaimMapping::default(),
    })
}

/// A read target and a write target with production labels, as their `[[targets]]` entries
/// resolve (the defaults of every key not named).
fn targets() -> &'static (TargetConfig, TargetConfig) {
    static TARGETS: OnceLock<(TargetConfig, TargetConfig)> = OnceLock::new();
    TARGETS.get_or_init(|| {
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        let read = TargetConfig {
            name: "network-plan".to_owned(),
            access: TargetAccess::Read,
            duration: Duration::from_secs(3600),
            labels: labels.clone(),
            write_subjects: vec![WriteSubject::Job],
            spaces: vec!["root".to_owned()],
            kind: TargetKind::Aws(AwsTarget {
                role_arn: "arn:aws:iam::123456789012:role/plan".to_owned(),
                region: "us-east-1".to_owned(),
                sts_endpoint: None,
                audience: "sts.amazonaws.com".to_owned(),
                mode: ExchangeMode::Broker,
                session_tags: None,
                source_identity: None,
            }),
        };
        let write = TargetConfig {
            name: "prod-apply".to_owned(),
            access: TargetAccess::Write,
            duration: Duration::from_secs(30 * 60),
            labels,
            write_subjects: vec![WriteSubject::Job, WriteSubject::Run, WriteSubject::Ci],
            spaces: vec!["root".to_owned()],
            kind: TargetKind::Vault(VaultTarget {
                address: "https://vault.example".to_owned(),
                auth_mount: "jwt".to_owned(),
                role: "apply".to_owned(),
                audience: "vault".to_owned(),
                return_token: true,
                kv_reads: Vec::new(),
                pki_issues: Vec::new(),
            }),
        };
        (read, write)
    })
}
