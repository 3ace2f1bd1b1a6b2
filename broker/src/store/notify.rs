//! Rows of notification deliveries (`notification_deliveries`, migration 0015): created once
//! per (notification, audit entry), claimed before each attempt, settled once.

use sqlx::Row as _;

use super::{Store, StoreError};

/// A delivery to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    /// Its ID (also the `X-Keyward-Delivery` header).
    pub id: String,
    /// The notification's name.
    pub notification: String,
    /// The event, e.g. `run.failed`.
    pub event: String,
    /// The audit entry it reports.
    pub seq: i64,
    /// The request body, as it will be sent.
    pub body: String,
    /// Attempts made so far.
    pub attempts: i64,
}

/// A new delivery.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// Its ID.
    pub id: &'a str,
    /// The notification's name.
    pub notification: &'a str,
    /// The event.
    pub event: &'a str,
    /// The audit entry.
    pub seq: i64,
    /// The body.
    pub body: &'a str,
}

impl Store {
    /// Adds `delivery` unless one for the same notification and entry exists (another replica,
    /// or this one before a restart, saw the entry first). Returns whether it was added.
    pub async fn add_delivery(&self, delivery: &NewDelivery<'_>, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO notification_deliveries (id, notification, event, seq, body, state, attempts, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6) \
             ON CONFLICT (notification, seq) DO NOTHING",
        )
        .bind(delivery.id)
        .bind(delivery.notification)
        .bind(delivery.event)
        .bind(delivery.seq)
        .bind(delivery.body)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims the oldest due delivery until `claimed_until`: a pending one whose next attempt is
    /// due, or one whose sender's claim ran out. `None` when nothing is due.
    pub async fn claim_delivery(&self, now: i64, claimed_until: i64) -> Result<Option<DeliveryRow>, StoreError> {
        for _ in 0..4 {
            let row = sqlx::query(
                "SELECT id, notification, event, seq, body, attempts FROM notification_deliveries \
                 WHERE (state = 'pending' AND next_attempt_at <= $1) OR (state = 'sending' AND claimed_until < $1) \
                 ORDER BY next_attempt_at, seq LIMIT 1",
            )
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let delivery = DeliveryRow {
                id: row.try_get("id")?,
                notification: row.try_get("notification")?,
                event: row.try_get("event")?,
                seq: row.try_get("seq")?,
                body: row.try_get("body")?,
                attempts: row.try_get("attempts")?,
            };
            // Only if nobody claimed it meanwhile: the attempt count is the version.
            let claimed = sqlx::query(
                "UPDATE notification_deliveries SET state = 'sending', claimed_until = $1, updated_at = $2 \
                 WHERE id = $3 AND attempts = $4 AND state IN ('pending', 'sending') \
                 AND (state = 'pending' OR claimed_until < $2)",
            )
            .bind(claimed_until)
            .bind(now)
            .bind(&delivery.id)
            .bind(delivery.attempts)
            .execute(&self.pool)
            .await?;
            if claimed.rows_affected() == 1 {
                return Ok(Some(delivery));
            }
        }
        Ok(None)
    }

    /// Settles a claimed delivery: `delivered`, `failed` (for good), or back to `pending` with
    /// its next attempt at `retry_at`.
    pub async fn settle_delivery(
        &self,
        id: &str,
        outcome: Settled<'_>,
        attempts: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let (state, next, error) = match outcome {
            Settled::Delivered => ("delivered", now, None),
            Settled::Failed(why) => ("failed", now, Some(why)),
            Settled::Retry { at, error } => ("pending", at, Some(error)),
        };
        sqlx::query(
            "UPDATE notification_deliveries SET state = $1, attempts = $2, next_attempt_at = $3, claimed_until = NULL, \
             last_error = $4, updated_at = $5 WHERE id = $6",
        )
        .bind(state)
        .bind(attempts)
        .bind(next)
        .bind(error)
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Settled<'a> {
    /// The receiver took it.
    Delivered,
    /// No more attempts: why the last one failed.
    Failed(&'a str),
    /// Try again at `at`.
    Retry {
        /// When.
        at: i64,
        /// Why this attempt failed.
        error: &'a str,
    },
}
