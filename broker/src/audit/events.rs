//! Entries for the broker's own security-relevant actions (policy loads here; key rotations in
//! `keys/`), built in one place so the scheduled, signal-driven and on-request paths record the
//! same thing.

use super::entry::{AuditEvent, Context, Kind};
use super::writer::{Append, AuditLog};
use crate::policy::PolicyEngine;

/// Who or what caused an action: an operator's API token name, `schedule`, `signal`, `start`.
pub fn by(actor: &str, context: Context) -> Context {
    Context { actor: Some(actor.to_owned()), ..context }
}

/// Records a policy load, or its refusal (`failure`: why; the last good set stayed). Recording
/// failures are logged: the load already happened.
pub async fn policy_load(
    log: &AuditLog,
    at: i64,
    actor: &str,
    context: Context,
    engine: &PolicyEngine,
    failure: Option<&str>,
) {
    let set = engine.current();
    let event = match failure {
        None => AuditEvent::new(Kind::PolicyLoaded, at, by(actor, context))
            .with("digest", set.digest())
            .with("files", set.files().to_vec()),
        Some(error) => AuditEvent::new(Kind::PolicyLoadFailed, at, by(actor, context))
            .with("error", error)
            .with("kept_digest", set.digest()),
    }
    .with("dir", engine.dir().display().to_string());
    append(log, event).await;
}

/// Appends `event` alone; a failure is logged, not returned: the action it records already
/// happened.
pub async fn append(log: &AuditLog, event: AuditEvent) {
    let kind = event.kind;
    if let Err(error) = log.append(Append::events(vec![event])).await {
        tracing::error!(%error, kind = kind.as_str(), "could not record this action in the audit log");
    }
}
