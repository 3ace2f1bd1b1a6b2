//! Delivering the log elsewhere: a JSON Lines file (rotated by size) and signed webhooks.
//!
//! A sink reads committed entries and never sits in the append path, so a sink that is down
//! never blocks issuance: only the log itself is fail-closed. Each sink keeps a cursor (the next
//! sequence number to deliver) in the database and advances it only after a delivery succeeded,
//! so delivery is at-least-once across crashes and restarts, in order of sequence number;
//! receivers drop duplicates by sequence number. Failures are retried with exponential backoff
//! (0.5 s doubling to 60 s) and jitter. A webhook that answers a batch with a client error other
//! than 408/429 will refuse it however often it is sent: the batch is counted as dead letters
//! and skipped, and the next one is sent. Progress, failures, dead letters and the backlog are in
//! `/metrics`.
//!
//! Webhook requests: `POST` of `{"entries": [{"entry": {…}, "leaf_hash": "…"}, …]}` (the export
//! line format) with `X-Keyward-Signature-256: sha256=<hex HMAC-SHA256 of the body>`,
//! `X-Keyward-First-Seq` and `X-Keyward-Last-Seq`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use keyward_proto::secret::Secret;
use serde_json::{Value, json};

use super::canonical::to_canonical;
use super::export_line;
use crate::store::{Store, StoredEntry};
use keyward_proto::encoding::hex;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often an idle sink looks for entries even without a commit notification (another replica
/// may have appended).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Counters of one sink, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    delivered: AtomicU64,
    failures: AtomicU64,
    dead_letters: AtomicU64,
    backlog: AtomicU64,
}

impl SinkStats {
    /// Entries delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Failed delivery attempts (each is retried).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Entries a receiver refused for good.
    pub fn dead_letters(&self) -> u64 {
        self.dead_letters.load(Ordering::Relaxed)
    }

    /// Entries committed but not yet delivered, as of the sink's last look.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// Where one sink delivers (`[[audit.sinks]]`).
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// JSON Lines (the export format) appended to a file, rotated by size.
    File {
        /// Unique name (metrics label, delivery cursor).
        name: String,
        /// The file.
        path: PathBuf,
        /// Rotate when the file would grow past this many bytes.
        max_bytes: u64,
        /// Rotated files kept (`path.1` … `path.N`).
        keep: u32,
    },
    /// Batches of entries POSTed as JSON, signed with HMAC-SHA256.
    Webhook {
        /// Unique name (metrics label, delivery cursor).
        name: String,
        /// Where to POST.
        url: String,
        /// The HMAC key.
        secret: Secret,
        /// Most entries per request.
        batch: u32,
    },
}

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            Self::File { name, .. } | Self::Webhook { name, .. } => name,
        }
    }
}

/// A configured sink.
pub struct Sink {
    name: String,
    target: Target,
    batch: u64,
    stats: Arc<SinkStats>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("name", &self.name).field("stats", &self.stats).finish_non_exhaustive()
    }
}

enum Target {
    File { path: PathBuf, max_bytes: u64, keep: u32 },
    // Boxed: an HMAC key is over a kilobyte, the file variant a few words.
    Webhook { url: String, key: Box<hmac::Key>, client: reqwest::Client },
}

/// Why one delivery attempt failed.
enum Failure {
    /// Worth retrying: a network error, a timeout, a 5xx, a 408/429, a file error.
    Transient(String),
    /// The receiver refuses this batch and will keep refusing it.
    Permanent(String),
}

impl Sink {
    /// A sink from its configuration.
    pub fn new(config: &SinkConfig) -> Result<Self, String> {
        let (target, batch) = match config {
            SinkConfig::File { path, max_bytes, keep, .. } => {
                (Target::File { path: path.clone(), max_bytes: *max_bytes, keep: *keep }, 500)
            }
            SinkConfig::Webhook { url, secret, batch, .. } => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .connect_timeout(Duration::from_secs(3))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())?;
                let key = Box::new(hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()));
                (Target::Webhook { url: url.clone(), key, client }, u64::from(*batch))
            }
        };
        Ok(Self { name: config.name().to_owned(), target, batch, stats: Arc::new(SinkStats::default()) })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its counters.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Delivers entries forever, from where the sink's cursor says.
    pub async fn run(self: Arc<Self>, store: Store, committed: Arc<tokio::sync::Notify>) {
        let mut backoff = FIRST_BACKOFF;
        let mut next = loop {
            match store.sink_cursor(&self.name).await {
                Ok(next) => break next,
                Err(error) => {
                    tracing::warn!(sink = %self.name, %error, "cannot read the sink's cursor; will retry");
                    tokio::time::sleep(jittered(&mut backoff)).await;
                }
            }
        };
        backoff = FIRST_BACKOFF;
        loop {
            // Registered before looking, so a commit between the look and the wait is not missed.
            let notified = committed.notified();
            let size = match store.audit_size().await {
                Ok(size) => size,
                Err(error) => {
                    tracing::warn!(sink = %self.name, %error, "cannot read the audit log; will retry");
                    tokio::time::sleep(jittered(&mut backoff)).await;
                    continue;
                }
            };
            self.stats.backlog.store(size.saturating_sub(next), Ordering::Relaxed);
            if next >= size {
                let _ = tokio::time::timeout(IDLE_POLL, notified).await;
                continue;
            }
            let entries = match store.audit_entries(next, size, self.batch).await {
                Ok(entries) if !entries.is_empty() => entries,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(sink = %self.name, %error, "cannot read the audit log; will retry");
                    tokio::time::sleep(jittered(&mut backoff)).await;
                    continue;
                }
            };
            let last = entries.last().map_or(next, |e| e.seq);
            let count = entries.len() as u64;
            match self.deliver(&entries).await {
                Ok(()) => {
                    self.stats.delivered.fetch_add(count, Ordering::Relaxed);
                    backoff = FIRST_BACKOFF;
                }
                Err(Failure::Permanent(reason)) => {
                    self.stats.dead_letters.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(sink = %self.name, first = next, last, %reason, "the receiver refused these entries for good; skipped");
                }
                Err(Failure::Transient(reason)) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    let wait = jittered(&mut backoff);
                    tracing::warn!(sink = %self.name, first = next, last, %reason, retry_in = ?wait, "delivery failed; will retry");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            next = last + 1;
            // If this write fails the batch is sent again after a restart: at-least-once.
            if let Err(error) = store.set_sink_cursor(&self.name, next).await {
                tracing::warn!(sink = %self.name, %error, "cannot save the sink's cursor");
            }
        }
    }

    async fn deliver(&self, entries: &[StoredEntry]) -> Result<(), Failure> {
        let lines = entries
            .iter()
            .map(|entry| export_line(entry).map_err(|e| Failure::Transient(e.to_string())))
            .collect::<Result<Vec<Value>, Failure>>()?;
        let (first, last) = (entries.first().map_or(0, |e| e.seq), entries.last().map_or(0, |e| e.seq));
        match &self.target {
            Target::File { path, max_bytes, keep } => {
                let mut text = String::new();
                for line in &lines {
                    text.push_str(&to_canonical(line).map_err(|e| Failure::Transient(e.to_string()))?);
                    text.push('\n');
                }
                let (path, max_bytes, keep) = (path.clone(), *max_bytes, *keep);
                tokio::task::spawn_blocking(move || append_rotating(&path, text.as_bytes(), max_bytes, keep))
                    .await
                    .map_err(|e| Failure::Transient(e.to_string()))?
                    .map_err(|e| Failure::Transient(e.to_string()))
            }
            Target::Webhook { url, key, client } => {
                let body =
                    serde_json::to_vec(&json!({ "entries": lines })).map_err(|e| Failure::Transient(e.to_string()))?;
                let signature = hex(hmac::sign(key, &body).as_ref());
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-keyward-signature-256", format!("sha256={signature}"))
                    .header("x-keyward-first-seq", first.to_string())
                    .header("x-keyward-last-seq", last.to_string())
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| Failure::Transient(e.without_url().to_string()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                    Err(Failure::Transient(format!("HTTP {}", status.as_u16())))
                } else {
                    Err(Failure::Permanent(format!("HTTP {}", status.as_u16())))
                }
            }
        }
    }
}

/// The current backoff with up to 50 % random jitter added; doubles the backoff for next time.
fn jittered(backoff: &mut Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = SystemRandom::new().fill(&mut byte);
    let wait = *backoff + backoff.mul_f64(f64::from(byte[0]) / 510.0);
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    wait
}

/// Appends `bytes` to `path`, first rotating it (`path` → `path.1` → … → `path.keep`) if it would
/// grow past `max_bytes`; syncs before returning, so a delivered batch is on disk.
fn append_rotating(path: &Path, bytes: &[u8], max_bytes: u64, keep: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path).map_or(0, |m| m.len());
    if current > 0 && current + bytes.len() as u64 > max_bytes {
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            let _ = std::fs::remove_file(rotated(keep));
            for n in (1..keep).rev() {
                if rotated(n).exists() {
                    std::fs::rename(rotated(n), rotated(n + 1))?;
                }
            }
            std::fs::rename(path, rotated(1))?;
        }
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        for i in 0..10 {
            append_rotating(&path, format!("{i:0>99}\n").as_bytes(), 250, 2).unwrap();
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path).lines().count(), 2, "two 100-byte lines fit under 250");
        assert!(read(&path).starts_with(&format!("{:0>99}", 8)));
        assert!(read(&dir.path().join("audit.jsonl.1")).starts_with(&format!("{:0>99}", 6)));
        assert!(read(&dir.path().join("audit.jsonl.2")).starts_with(&format!("{:0>99}", 4)));
        assert!(!dir.path().join("audit.jsonl.3").exists(), "only `keep` rotated files stay");
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_bounded_jitter() {
        let mut backoff = FIRST_BACKOFF;
        let first = jittered(&mut backoff);
        assert!(first >= FIRST_BACKOFF && first <= FIRST_BACKOFF.mul_f64(1.5));
        for _ in 0..20 {
            jittered(&mut backoff);
        }
        assert_eq!(backoff, MAX_BACKOFF);
    }
}
