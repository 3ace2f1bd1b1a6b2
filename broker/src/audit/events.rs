//! Entries for the broker's own security-relevant actions (policy loads, key rotations), built in
//! one place so the scheduled, signal-driven and on-request paths record the same thing.

use super::entry::{AuditEvent, Context, Kind};
use super::writer::{Append, AuditLog};
use crate::identity::keyring::Rotation;
use crate::policy::PolicyEngine;

/// Who or what caused an action: an operator's API token name, `schedule`, `signal`, `start`.
fn by(actor: &str, context: Context) -> Context {
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

/// Records a signing key rotation.
pub async fn key_rotated(log: &AuditLog, at: i64, actor: &str, context: Context, rotation: &Rotation, forced: bool) {
    let event = AuditEvent::new(Kind::SigningKeyRotated, at, by(actor, context))
        .with("retired_kid", rotation.retired_kid.as_str())
        .with("current_kid", rotation.current_kid.as_str())
        .with("next_kid", rotation.next_kid.as_str())
        .with("retired_publish_until", rotation.retired_publish_until)
        .with("forced", forced);
    append(log, event).await;
}

async fn append(log: &AuditLog, event: AuditEvent) {
    let kind = event.kind;
    if let Err(error) = log.append(Append::events(vec![event])).await {
        tracing::error!(%error, kind = kind.as_str(), "could not record this action in the audit log");
    }
}
