//! Notifications (`[[notifications]]`, docs/notifications.md): telling people and systems when a
//! stack drifts or is back in sync, a run awaits approval, fails or finishes, or credentials are
//! denied.
//!
//! Two loops on every replica, both driven by the database so replicas never send twice:
//! - the **scanner** reads the audit log past its cursor (`events`: which entries are events)
//!   and adds one delivery row per matching notification; the row is unique per (notification,
//!   entry), so whichever replica adds it first owns it, and a restart adds nothing twice. A new
//!   broker starts at the log's end: notifications are about what happens from now on;
//! - the **sender** claims due deliveries one at a time, sends each (`deliver`), and settles it:
//!   delivered, retried later with exponential backoff, or failed for good after the configured
//!   attempts (or at once on a 4xx other than 408/429). Final outcomes are audit entries too
//!   (`notification.delivered`, `notification.failed`), which are never events themselves.

pub mod deliver;
pub mod events;

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use keyward_proto::secret::Secret;

use crate::audit::{AuditEvent, AuditLog, Context, Entry, Kind};
use crate::clock::SharedClock;
use crate::metrics::{Metrics, NotificationOutcome};
use crate::store::Store;
use crate::store::notify::{DeliveryRow, NewDelivery, Settled};
use deliver::{AttemptError, Format};
use events::EventName;

/// The scanner's cursor (`audit_sink_cursors`; a sink name cannot contain `:`).
const CURSOR: &str = "notify:scanner";
/// Entries the scanner reads at a time.
const SCAN_BATCH: u64 = 500;
/// How often an idle loop looks again (another replica may have appended or added).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long a claimed delivery is the claimer's: longer than one attempt can take.
const CLAIM: i64 = 60;
/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 1;
const MAX_BACKOFF: i64 = 300;

/// One `[[notifications]]` entry, checked.
#[derive(Debug, Clone)]
pub struct NotificationConfig {
    /// Unique name.
    pub name: String,
    /// The events it is sent for.
    pub events: Vec<EventName>,
    /// Where to POST.
    pub url: String,
    /// The body's format.
    pub format: Format,
    /// The HMAC key of `X-Keyward-Signature`, if any.
    pub secret: Option<Secret>,
    /// Attempts before a delivery fails for good.
    pub max_attempts: u32,
}

/// A configured notification, ready to send.
struct Target {
    config: NotificationConfig,
    key: Option<hmac::Key>,
}

/// The notifier: both loops over every configured notification.
pub struct Notifier {
    targets: Vec<Target>,
    store: Store,
    audit: AuditLog,
    clock: SharedClock,
    client: reqwest::Client,
    /// Where delivery attempts are counted.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.targets.iter().map(|t| t.config.name.as_str()).collect();
        f.debug_struct("Notifier").field("notifications", &names).finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for `configs`, counting delivery attempts in `metrics`; `None` when there are
    /// none.
    pub fn new(
        configs: &[NotificationConfig],
        store: Store,
        audit: AuditLog,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<Self>>, String> {
        if configs.is_empty() {
            return Ok(None);
        }
        let targets = configs
            .iter()
            .map(|config| Target {
                key: config.secret.as_ref().map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.expose().as_bytes())),
                config: config.clone(),
            })
            .collect();
        Ok(Some(Arc::new(Self { targets, store, audit, clock, client: deliver::client()?, metrics })))
    }

    /// Reads the log and adds deliveries, forever.
    pub async fn scan(self: Arc<Self>) {
        let committed = self.audit.committed();
        let mut next = loop {
            match self.start_cursor().await {
                Ok(next) => break next,
                Err(error) => {
                    tracing::warn!(%error, "notifications: cannot read the scanner's cursor; will retry");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        };
        loop {
            let notified = committed.notified();
            match self.scan_once(next).await {
                Ok(Some(after)) => next = after,
                Ok(None) => {
                    let _ = tokio::time::timeout(IDLE_POLL, notified).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "notifications: scanning the audit log failed; will retry");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// Where the scanner goes on: its cursor, or (the first time) the log's end.
    async fn start_cursor(&self) -> Result<u64, crate::store::StoreError> {
        if let Some(next) = self.store.sink_cursor_if_set(CURSOR).await? {
            return Ok(next);
        }
        let size = self.store.audit_size().await?;
        self.store.set_sink_cursor(CURSOR, size).await?;
        self.store.sink_cursor(CURSOR).await
    }

    /// One batch from `next`; the cursor after it, or `None` when there was nothing new.
    async fn scan_once(&self, next: u64) -> Result<Option<u64>, crate::store::StoreError> {
        let size = self.store.audit_size().await?;
        // Another replica may have gone further: start from the shared cursor.
        let next = next.max(self.store.sink_cursor(CURSOR).await?);
        if next >= size {
            return Ok(None);
        }
        let entries = self.store.audit_entries(next, size, SCAN_BATCH).await?;
        let Some(last) = entries.last().map(|e| e.seq) else { return Ok(None) };
        let now = self.clock.now();
        // Most entries are issuances: only the kinds events come from are parsed.
        for stored in entries.iter().filter(|e| events::EVENT_KINDS.contains(&e.kind.as_str())) {
            let Ok(entry) = serde_json::from_str::<Entry>(&stored.body) else { continue };
            let Some(event) = events::event_of(&entry) else { continue };
            for target in self.targets.iter().filter(|t| t.config.events.contains(&event.name)) {
                let id = uuid::Uuid::now_v7().to_string();
                let body = deliver::body(&event, target.config.format, &id);
                let new = NewDelivery {
                    id: &id,
                    notification: &target.config.name,
                    event: event.name.as_str(),
                    seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
                    body: &body,
                };
                self.store.add_delivery(&new, now).await?;
            }
        }
        self.store.set_sink_cursor(CURSOR, last + 1).await?;
        Ok(Some(last + 1))
    }

    /// Sends due deliveries, forever.
    pub async fn send(self: Arc<Self>) {
        loop {
            let now = self.clock.now();
            match self.store.claim_delivery(now, now + CLAIM).await {
                Ok(Some(delivery)) => self.attempt(delivery).await,
                Ok(None) => tokio::time::sleep(IDLE_POLL).await,
                Err(error) => {
                    tracing::warn!(%error, "notifications: cannot claim a delivery; will retry");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// One attempt at a claimed delivery, and its settlement.
    async fn attempt(&self, delivery: DeliveryRow) {
        let Some(target) = self.targets.iter().find(|t| t.config.name == delivery.notification) else {
            // Removed from the configuration since: nobody to send it to.
            let now = self.clock.now();
            let why = "the notification is no longer configured";
            let _ = self.store.settle_delivery(&delivery.id, Settled::Failed(why), delivery.attempts, now).await;
            return;
        };
        let now = self.clock.now();
        let mut headers =
            vec![("x-keyward-event", delivery.event.clone()), ("x-keyward-delivery", delivery.id.clone())];
        if let Some(key) = &target.key {
            headers.push(("x-keyward-signature", deliver::signature(key, now, &delivery.body)));
        }
        let result = deliver::send(&self.client, &target.config.url, &delivery.body, &headers).await;
        let attempts = delivery.attempts + 1;
        let now = self.clock.now();
        let settled = match &result {
            Ok(()) => Settled::Delivered,
            Err(AttemptError::Permanent(why)) => Settled::Failed(why),
            Err(AttemptError::Transient(why)) if attempts >= i64::from(target.config.max_attempts) => {
                Settled::Failed(why)
            }
            Err(AttemptError::Transient(why)) => Settled::Retry { at: now + backoff(attempts), error: why },
        };
        if let Err(error) = self.store.settle_delivery(&delivery.id, settled, attempts, now).await {
            tracing::warn!(%error, delivery = %delivery.id, "notifications: cannot record the attempt; it will be retried");
            return;
        }
        let outcome = match settled {
            Settled::Delivered => NotificationOutcome::Delivered,
            Settled::Failed(_) => NotificationOutcome::Failed,
            Settled::Retry { .. } => NotificationOutcome::Retried,
        };
        self.metrics.notification(&target.config.name, outcome);
        match settled {
            Settled::Delivered => self.record(&delivery, target, attempts, None).await,
            Settled::Failed(why) => self.record(&delivery, target, attempts, Some(why)).await,
            Settled::Retry { at, error } => {
                tracing::info!(notification = %target.config.name, delivery = %delivery.id, %error, retry_at = at, "notification attempt failed; will retry");
            }
        }
    }

    /// The delivery's final outcome, on the audit log.
    async fn record(&self, delivery: &DeliveryRow, target: &Target, attempts: i64, failure: Option<&str>) {
        let kind = if failure.is_some() { Kind::NotificationFailed } else { Kind::NotificationDelivered };
        let mut event = AuditEvent::new(kind, self.clock.now(), Context::default())
            .with("notification", target.config.name.as_str())
            .with("event", delivery.event.as_str())
            .with("delivery", delivery.id.as_str())
            .with("audit_seq", delivery.seq)
            .with("attempts", attempts);
        if let Some(why) = failure {
            event = event.with("error", why);
            tracing::warn!(notification = %target.config.name, delivery = %delivery.id, error = why, "notification failed for good");
        }
        crate::audit::events::append(&self.audit, event).await;
    }
}

/// The delay before attempt `attempts + 1`.
fn backoff(attempts: i64) -> i64 {
    crate::backoff::delay(attempts, FIRST_BACKOFF, MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        assert_eq!([1, 2, 3, 4].map(backoff), [1, 2, 4, 8]);
        assert_eq!(backoff(30), 300);
    }
}
