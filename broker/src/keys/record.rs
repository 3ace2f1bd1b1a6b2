//! The audit entry of a signing-key rotation, the same whether the schedule, an operator or a
//! signal caused it.

use super::ring::Rotation;
use crate::audit::events::{append, by};
use crate::audit::{AuditEvent, AuditLog, Context, Kind};

/// Records a signing key rotation. Recording failures are logged: the rotation already happened.
pub async fn key_rotated(log: &AuditLog, at: i64, actor: &str, context: Context, rotation: &Rotation, forced: bool) {
    let event = AuditEvent::new(Kind::SigningKeyRotated, at, by(actor, context))
        .with("retired_kid", rotation.retired_kid.as_str())
        .with("current_kid", rotation.current_kid.as_str())
        .with("next_kid", rotation.next_kid.as_str())
        .with("retired_publish_until", rotation.retired_publish_until)
        .with("forced", forced);
    append(log, event).await;
}
