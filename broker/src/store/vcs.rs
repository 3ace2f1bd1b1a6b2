//! The queue of verified VCS webhook deliveries (docs/vcs.md): one row per delivery ID, written
//! with its `vcs.delivery_accepted` audit entry in one commit.

use super::write::Write;

/// A delivery to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// The provider's delivery ID (`X-GitHub-Delivery`), unique.
    pub delivery_id: String,
    /// `github`.
    pub provider: &'static str,
    /// The event name (`pull_request`, `push`, `ping`).
    pub event: String,
    /// When it was received (Unix seconds).
    pub received_at: i64,
    /// The raw signed body.
    pub payload: Vec<u8>,
}

/// Queues `row` as `queued`; a delivery ID seen before is refused as a duplicate.
pub fn insert_delivery(row: &DeliveryRow) -> Write {
    Write::one(
        format!("delivery `{}`", row.delivery_id),
        "INSERT INTO vcs_deliveries (delivery_id, provider, event, received_at, payload, status) \
         VALUES ($1, $2, $3, $4, $5, 'queued')",
        vec![
            row.delivery_id.as_str().into(),
            row.provider.into(),
            row.event.as_str().into(),
            row.received_at.into(),
            row.payload.clone().into(),
        ],
    )
}
