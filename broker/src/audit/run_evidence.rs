//! What a run's audit entries say about its jobs, for the run's page (docs/console.md): every
//! credentials decision each job's requests got — allowed, issued or denied, with the policy's
//! reasons — and what was issued, by its identifiers only; and the head of each job's log that
//! the broker sealed into its `job.finished` entry.
//!
//! A pure function of the entries, like [`super::trace_view`], so what the page shows, and that
//! it shows nothing else, is tested without a broker. Entries hold no secret (§8.5), and this
//! module still reads details through an allow-list ([`IDENTIFIERS`]): a field added to an entry
//! later is not shown until someone decides it may be.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Entry, kinds};

/// The detail fields a credentials entry may show, with their labels, in this order: names of
/// roles, sessions, keys, leases and policies — never a value that grants anything.
pub const IDENTIFIERS: &[(&str, &str)] = &[
    ("access_key_id", "access key ID"),
    ("role_arn", "role"),
    ("assumed_role_arn", "assumed role"),
    ("role_session_name", "session"),
    ("mode", "mode"),
    ("duration_seconds", "seconds"),
    ("address", "Vault"),
    ("role", "Vault role"),
    ("accessor", "Vault accessor"),
    ("vault_token", "Vault token"),
    ("policies", "Vault policies"),
    ("secrets_read", "secrets read"),
    ("certificate_serials", "certificate serials"),
    ("minted_jti", "token jti"),
    ("agent_id", "agent"),
    ("fencing_token", "lease"),
    ("policy_digest", "policy digest"),
];

/// What became of one credentials request at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The policy allowed it (`credentials.allowed`); what was issued follows.
    Allowed,
    /// Credentials were issued (`credentials.issued`).
    Issued,
    /// It was refused, by the broker's rules, the policy or the relying party (`credentials.denied`).
    Denied,
}

impl Decision {
    /// How the page names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Issued => "issued",
            Self::Denied => "denied",
        }
    }
}

/// One credentials entry of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEvent {
    /// Its position in the audit log.
    pub seq: u64,
    /// When (Unix seconds).
    pub at: i64,
    /// The target, `<type>:<name>`.
    pub target: String,
    /// The phase whose token asked.
    pub phase: Option<String>,
    /// Allowed, issued or denied.
    pub decision: Decision,
    /// The [`IDENTIFIERS`] present, as (label, value).
    pub identifiers: Vec<(&'static str, String)>,
    /// When what was issued expires (Unix seconds), when the entry says.
    pub expires_at: Option<i64>,
    /// The policy's (or the broker's) reasons.
    pub reasons: Vec<String>,
    /// Who asked (`exchange:job`, an operator's token…).
    pub actor: Option<String>,
}

/// The head of a job's log as the broker verified and sealed it when the job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    /// Chunks in the sealed chain.
    pub chunks: i64,
    /// Bytes of output.
    pub bytes: i64,
    /// The last chunk's digest (hex), `None` for an empty log.
    pub digest: Option<String>,
    /// Whether that is the head the agent reported (else chunks it sent are missing).
    pub complete: bool,
}

/// One job's evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobEvidence {
    /// Its credentials entries, in log order.
    pub credentials: Vec<CredentialEvent>,
    /// Its sealed log head, once it ended.
    pub seal: Option<Seal>,
}

/// A run's evidence, by job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunEvidence {
    /// By job ID.
    pub jobs: BTreeMap<String, JobEvidence>,
    /// Credentials entries about the run that no job asked for (a run token an operator minted
    /// and exchanged), in log order.
    pub outside_jobs: Vec<CredentialEvent>,
    /// The pull request or push that started the run, as its provider described it (from
    /// `run.created`), when one did.
    pub observed: Option<Observed>,
    /// What happened to the run, in log order: created, each state change, each review, each
    /// job leased and finished.
    pub timeline: Vec<Moment>,
}

/// One moment of a run's life, as its audit entry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moment {
    /// When.
    pub at: i64,
    /// What happened (`planning → planned`, `approve by …`, `plan job succeeded`…).
    pub what: String,
    /// Why or how, when the entry says (a state's detail, an agent's ID).
    pub note: Option<String>,
}

/// What a version control provider said about the change that started a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `github`.
    pub source: String,
    /// Who sent the event (the pusher, or the pull request's actor).
    pub sender: String,
    /// The pull request, when there was one: number, title, author, base, head and its address.
    pub pull_request: Option<ObservedPullRequest>,
}

/// A pull request as its provider described it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedPullRequest {
    /// Its number.
    pub number: i64,
    /// Its title, as its author wrote it.
    pub title: String,
    /// Its author's login.
    pub author: String,
    /// The branch it merges into.
    pub base: String,
    /// The branch it merges from.
    pub head: String,
    /// Its web address, only when it is `https://`.
    pub url: Option<String>,
}

impl RunEvidence {
    /// Job `id`'s evidence, if there is any.
    pub fn job(&self, id: &str) -> Option<&JobEvidence> {
        self.jobs.get(id)
    }
}

/// The evidence in `entries` (a run's, in log order).
pub fn evidence(entries: &[Entry]) -> RunEvidence {
    let mut out = RunEvidence::default();
    for entry in entries {
        let job = entry.details.get("job_id").and_then(Value::as_str).map(str::to_owned);
        if let Some(moment) = moment(entry) {
            out.timeline.push(moment);
        }
        if entry.kind == kinds::RUN_CREATED {
            out.observed = observed(&entry.details);
            continue;
        }
        if entry.kind == kinds::JOB_FINISHED {
            if let Some(job) = job {
                out.jobs.entry(job).or_default().seal = seal(&entry.details);
            }
            continue;
        }
        let Some(event) = credential(entry) else { continue };
        match job {
            Some(job) => out.jobs.entry(job).or_default().credentials.push(event),
            None => out.outside_jobs.push(event),
        }
    }
    out
}

/// `entry` as a moment of the run's life; `None` for entries that are not one. A failed job's
/// error is not repeated here (the log shows what happened).
fn moment(entry: &Entry) -> Option<Moment> {
    let text = |key: &str| entry.details.get(key).and_then(Value::as_str).map(str::to_owned);
    let phase = entry.context.phase.clone().unwrap_or_else(|| "a".to_owned());
    let (what, note) = match entry.kind.as_str() {
        kinds::RUN_CREATED => {
            let by = entry.context.triggered_by.clone().or_else(|| entry.context.actor.clone());
            (
                format!("created ({})", text("kind").unwrap_or_else(|| "deploy".to_owned())),
                by.map(|b| format!("by {b}")),
            )
        }
        kinds::RUN_STATE_CHANGED => {
            (format!("{} → {}", text("from").unwrap_or_default(), text("to").unwrap_or_default()), text("detail"))
        }
        kinds::RUN_REVIEWED => {
            let counted = entry.details.get("counted").and_then(Value::as_bool).unwrap_or(false);
            let by = entry.context.actor.clone().unwrap_or_default();
            let what = format!("{} by {by}", text("decision").unwrap_or_default());
            (what, (!counted).then(|| text("note").unwrap_or_else(|| "did not count".to_owned())))
        }
        kinds::JOB_LEASED => (format!("{phase} job leased"), text("agent_id").map(|a| format!("to agent {a}"))),
        kinds::JOB_FINISHED => (format!("{phase} job {}", text("outcome").unwrap_or_default()), None),
        _ => return None,
    };
    Some(Moment { at: entry.at, what, note })
}

/// `run.created`'s `observed`, when the run was started by a provider's event.
fn observed(details: &serde_json::Map<String, Value>) -> Option<Observed> {
    let observed = details.get("observed")?;
    let text = |value: &Value, key: &str| value.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let pull_request = observed.get("pull_request").filter(|pr| pr.is_object()).map(|pr| ObservedPullRequest {
        number: pr.get("number").and_then(Value::as_i64).unwrap_or_default(),
        title: text(pr, "title"),
        author: text(pr, "author"),
        base: text(pr, "base"),
        head: text(pr, "head"),
        url: Some(text(pr, "url")).filter(|url| url.starts_with("https://")),
    });
    Some(Observed { source: text(observed, "source"), sender: text(observed, "sender"), pull_request })
}

/// A `credentials.*` entry as the page shows it; `None` for any other kind.
fn credential(entry: &Entry) -> Option<CredentialEvent> {
    let decision = match entry.kind.as_str() {
        kinds::CREDENTIALS_ALLOWED => Decision::Allowed,
        kinds::CREDENTIALS_ISSUED => Decision::Issued,
        kinds::CREDENTIALS_DENIED => Decision::Denied,
        _ => return None,
    };
    let details = &entry.details;
    let identifiers = IDENTIFIERS
        .iter()
        .filter_map(|(field, label)| shown(details.get(*field)?).map(|value| (*label, value)))
        .collect();
    let reasons = details
        .get("reasons")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    Some(CredentialEvent {
        seq: entry.seq,
        at: entry.at,
        target: entry.context.target.clone().unwrap_or_default(),
        phase: entry.context.phase.clone(),
        decision,
        identifiers,
        expires_at: expiry(entry.at, details),
        reasons,
        actor: entry.context.actor.clone(),
    })
}

/// When what an entry records expires: STS's expiry, else the token's, else the Vault lease's end.
fn expiry(at: i64, details: &Map<String, Value>) -> Option<i64> {
    let number = |field: &str| details.get(field).and_then(Value::as_i64);
    number("credentials_expire_at")
        .or_else(|| number("expires_at"))
        .or_else(|| number("lease_duration").filter(|s| *s > 0).map(|s| at.saturating_add(s)))
}

/// A detail as text: a string, a number, or a list of strings.
fn shown(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Array(items) if !items.is_empty() => {
            Some(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        }
        _ => None,
    }
}

/// The sealed head in a `job.finished` entry (none for entries from before logs were sealed).
fn seal(details: &Map<String, Value>) -> Option<Seal> {
    Some(Seal {
        chunks: details.get("log_chunks")?.as_i64()?,
        bytes: details.get("log_bytes").and_then(Value::as_i64).unwrap_or_default(),
        digest: details.get("log_digest").and_then(Value::as_str).map(str::to_owned),
        complete: details.get("log_complete").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Context;
    use serde_json::json;

    fn entry(seq: u64, kind: &str, details: Value) -> Entry {
        let context = Context {
            run_id: Some("run-1".to_owned()),
            phase: Some("plan".to_owned()),
            target: Some("aws:state-read".to_owned()),
            actor: Some("exchange:job".to_owned()),
            ..Context::default()
        };
        let Value::Object(details) = details else { panic!("details are an object") };
        Entry { seq, at: 100, kind: kind.to_owned(), context, details }
    }

    #[test]
    fn each_jobs_decisions_and_seal_are_gathered_and_only_identifiers_are_kept() {
        let entries = [
            entry(
                1,
                "credentials.allowed",
                json!({"job_id": "j1", "reasons": ["read is fine"], "policy_digest": "ab"}),
            ),
            entry(
                2,
                "credentials.issued",
                json!({"job_id": "j1", "access_key_id": "ASIAEXAMPLE", "role_arn": "arn:aws:iam::1:role/r",
                       "credentials_expire_at": 1000, "secret_access_key": "must-not-show", "session_token": "nor-this"}),
            ),
            entry(3, "credentials.denied", json!({"job_id": "j2", "reasons": ["plan may not write"]})),
            entry(
                4,
                "job.finished",
                json!({"job_id": "j1", "log_chunks": 3, "log_bytes": 40, "log_digest": "cd", "log_complete": true}),
            ),
            entry(
                5,
                "credentials.issued",
                json!({"accessor": "acc-1", "lease_duration": 60, "policies": ["p1", "p2"]}),
            ),
            entry(6, "run.created", json!({"job_id": "j1"})),
        ];
        let evidence = evidence(&entries);
        let j1 = evidence.job("j1").unwrap();
        assert_eq!(j1.credentials.len(), 2);
        assert_eq!(j1.credentials[0].decision, Decision::Allowed);
        assert_eq!(j1.credentials[0].reasons, ["read is fine"]);
        let issued = &j1.credentials[1];
        assert_eq!(issued.decision, Decision::Issued);
        assert_eq!(issued.expires_at, Some(1000));
        assert_eq!(
            issued.identifiers,
            [("access key ID", "ASIAEXAMPLE".to_owned()), ("role", "arn:aws:iam::1:role/r".to_owned())]
        );
        let shown = format!("{evidence:?}");
        assert!(!shown.contains("must-not-show") && !shown.contains("nor-this"), "{shown}");
        assert_eq!(j1.seal, Some(Seal { chunks: 3, bytes: 40, digest: Some("cd".to_owned()), complete: true }));
        let j2 = evidence.job("j2").unwrap();
        assert_eq!((j2.credentials[0].decision, j2.seal.as_ref()), (Decision::Denied, None));
        assert_eq!(evidence.outside_jobs.len(), 1);
        assert_eq!(evidence.outside_jobs[0].expires_at, Some(160), "a Vault lease ends lease_duration after");
        assert_eq!(evidence.outside_jobs[0].identifiers[1], ("Vault policies", "p1, p2".to_owned()));
    }

    #[test]
    fn the_observed_change_comes_from_run_created_and_links_only_https() {
        let pr = json!({"number": 7, "title": "<t>", "author": "a", "base": "main", "head": "f",
                        "url": "javascript:alert(1)"});
        let created =
            entry(1, kinds::RUN_CREATED, json!({"observed": {"source": "github", "sender": "s", "pull_request": pr}}));
        let observed = evidence(&[created]).observed.unwrap();
        let pr = observed.pull_request.unwrap();
        assert_eq!((observed.source.as_str(), pr.number, pr.title.as_str()), ("github", 7, "<t>"));
        assert_eq!(pr.url, None, "only an https:// address is linked");
        let asserted = entry(1, kinds::RUN_CREATED, json!({"kind": "deploy"}));
        assert_eq!(evidence(&[asserted]).observed, None, "a run nobody observed");
    }

    #[test]
    fn the_timeline_is_the_runs_life_without_a_failed_jobs_error() {
        let entries = [
            entry(1, kinds::RUN_CREATED, json!({"kind": "deploy"})),
            entry(2, kinds::RUN_STATE_CHANGED, json!({"from": "queued", "to": "planning", "detail": null})),
            entry(3, kinds::JOB_LEASED, json!({"job_id": "j-1", "agent_id": "a-1"})),
            entry(4, kinds::JOB_FINISHED, json!({"job_id": "j-1", "outcome": "failed", "error": "secret-ish output"})),
            entry(
                5,
                kinds::RUN_REVIEWED,
                json!({"decision": "approve", "counted": false, "note": "the run's author cannot approve it"}),
            ),
            entry(6, kinds::CREDENTIALS_ISSUED, json!({"job_id": "j-1"})),
        ];
        let timeline = evidence(&entries).timeline;
        let what: Vec<&str> = timeline.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(what.len(), 5, "{what:?}");
        assert!(what[0].starts_with("created (deploy)") && what[1] == "queued → planning", "{what:?}");
        assert!(what[2].ends_with("job leased") && what[3].ends_with("job failed"), "{what:?}");
        assert_eq!(timeline[2].note.as_deref(), Some("to agent a-1"));
        assert_eq!(timeline[3].note, None, "a failed job's error is not repeated");
        assert!(what[4].starts_with("approve by"), "{what:?}");
        assert_eq!(timeline[4].note.as_deref(), Some("the run's author cannot approve it"));
    }
}
