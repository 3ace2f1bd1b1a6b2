//! Group commit: the records of concurrent requests share one transaction, so one sync makes a
//! whole batch durable.
//!
//! Every request that must be on record before it is answered (a credential decision, a minted
//! token, a consumed subject-token ID) hands a [`JournalEntry`] to [`Journal::write`] and waits.
//! One writer task takes whatever entries are waiting, writes them in a single transaction with
//! one multi-row `INSERT` per table, commits (the sync: `fsync` on SQLite, the WAL flush on
//! PostgreSQL) and only then answers every waiter. While a commit is in flight, new entries queue
//! and form the next batch, so the number of syncs per second stays what the disk allows while
//! the number of records per second grows with concurrency. This is the shape the audit log
//! (DESIGN.md §4) builds on.
//!
//! An entry may carry a [`TokenClaim`]: "this subject token is used now". The claim and the
//! entry's records commit together or not at all, and a claim that was made before (a replay,
//! possibly by another entry in the same batch) makes the entry write its `if_replayed` records
//! instead. Each token is therefore exchanged at most once, and the refusal of a replay is on
//! record too.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Row as _;
use tokio::sync::{mpsc, oneshot};

use super::{CredentialEvent, IssuedTokenRow, Store, StoreError};

/// Largest number of entries one transaction takes. Bounds the statement size and how long one
/// commit holds SQLite's write lock.
const MAX_BATCH: usize = 256;

/// Entries that may wait for the writer before `write` itself waits (back-pressure).
const QUEUE_DEPTH: usize = 4096;

/// Rows per multi-row `INSERT` (the widest table has 11 columns; SQLite allows 32,766 parameters).
const ROWS_PER_STATEMENT: usize = 64;

/// "This subject token is being used now": `(issuer, jti)` may be claimed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaim {
    /// The token's issuer.
    pub issuer: String,
    /// Its `jti` (or the replay key derived for issuers without one).
    pub jti: String,
    /// When the token expires; the claim can be forgotten after that.
    pub expires_at: i64,
    /// Now.
    pub used_at: i64,
}

/// One row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A credential decision or issuance.
    CredentialEvent(CredentialEvent),
    /// A signed token.
    IssuedToken(IssuedTokenRow),
}

/// What one request needs on record, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalEntry {
    /// A subject token to consume; `None` writes `records` unconditionally.
    pub claim: Option<TokenClaim>,
    /// Written when there is no claim, or the claim is new.
    pub records: Vec<Record>,
    /// Written instead of `records` when the claim was made before.
    pub if_replayed: Vec<Record>,
}

impl JournalEntry {
    /// Records to write with no claim.
    pub fn records(records: Vec<Record>) -> Self {
        Self { claim: None, records, if_replayed: Vec::new() }
    }
}

/// How an entry was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// `records` are durable (and the claim, if any, is now taken).
    Recorded,
    /// The claim was taken before: `if_replayed` are durable, `records` were not written.
    Replayed,
}

struct Pending {
    entry: JournalEntry,
    reply: oneshot::Sender<Result<Committed, String>>,
}

/// The handle requests write through. Cheap to clone; the writer stops when every handle is gone.
#[derive(Debug, Clone)]
pub struct Journal {
    queue: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
}

/// Counters of the writer's work, for `/metrics` and for tests that check batching happens.
#[derive(Debug, Default)]
pub struct Stats {
    commits: AtomicU64,
    entries: AtomicU64,
    failed_commits: AtomicU64,
}

impl Stats {
    /// Transactions committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Entries made durable by those commits.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Batches that failed to commit (every entry in them was refused).
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("entry", &self.entry).finish_non_exhaustive()
    }
}

impl Journal {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(store: Store) -> Self {
        let (queue, incoming) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Stats::default());
        tokio::spawn(run_writer(store, incoming, Arc::clone(&stats)));
        Self { queue, stats }
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Makes `entry` durable, sharing the commit with whatever else is waiting. Returns once it
    /// is committed; an error means nothing of it was written.
    pub async fn write(&self, entry: JournalEntry) -> Result<Committed, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { entry, reply }).await.map_err(|_| StoreError::Journal(WRITER_GONE.to_owned()))?;
        answer.await.map_err(|_| StoreError::Journal(WRITER_GONE.to_owned()))?.map_err(StoreError::Journal)
    }
}

const WRITER_GONE: &str = "the journal writer has stopped";

async fn run_writer(store: Store, mut incoming: mpsc::Receiver<Pending>, stats: Arc<Stats>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while incoming.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<&JournalEntry> = batch.iter().map(|p| &p.entry).collect();
        match commit(&store, &entries).await {
            Ok(outcomes) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.entries.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    // A waiter that went away (its request was cancelled) changes nothing: the
                    // entry is on record either way.
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, entries = batch.len(), "group commit failed; nothing of the batch was written");
                let message = error.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// Writes `entries` in one transaction; returns each entry's outcome, in order.
async fn commit(store: &Store, entries: &[&JournalEntry]) -> Result<Vec<Committed>, StoreError> {
    let mut tx = store.begin_write().await?;
    let fresh = claim(&mut tx, entries).await?;
    let mut events = Vec::new();
    let mut tokens = Vec::new();
    let mut outcomes = Vec::with_capacity(entries.len());
    for (entry, fresh) in entries.iter().zip(fresh) {
        let (records, outcome) =
            if fresh { (&entry.records, Committed::Recorded) } else { (&entry.if_replayed, Committed::Replayed) };
        for record in records {
            match record {
                Record::CredentialEvent(event) => events.push(event),
                Record::IssuedToken(token) => tokens.push(token),
            }
        }
        outcomes.push(outcome);
    }
    insert_events(&mut tx, &events).await?;
    insert_tokens(&mut tx, &tokens).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Takes every entry's claim. `true` for entries without a claim and for claims that were new;
/// of two entries in one batch claiming the same token, the first wins.
async fn claim(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    entries: &[&JournalEntry],
) -> Result<Vec<bool>, StoreError> {
    let mut seen = HashSet::new();
    let mut first_claims = Vec::new();
    for entry in entries {
        if let Some(claim) = &entry.claim
            && seen.insert((claim.issuer.as_str(), claim.jti.as_str()))
        {
            first_claims.push(claim);
        }
    }
    let mut taken = HashSet::new();
    for chunk in first_claims.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO used_token_ids (issuer, jti, expires_at, used_at) VALUES {} \
             ON CONFLICT (issuer, jti) DO NOTHING RETURNING issuer, jti",
            placeholders(chunk.len(), 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for claim in chunk {
            query = query.bind(&claim.issuer).bind(&claim.jti).bind(claim.expires_at).bind(claim.used_at);
        }
        for row in query.fetch_all(&mut **tx).await? {
            let issuer: String = row.try_get("issuer")?;
            let jti: String = row.try_get("jti")?;
            taken.insert((issuer, jti));
        }
    }
    Ok(entries
        .iter()
        .map(|entry| match &entry.claim {
            None => true,
            // `remove`: a second entry with the same claim finds it gone and counts as a replay.
            Some(claim) => taken.remove(&(claim.issuer.clone(), claim.jti.clone())),
        })
        .collect())
}

async fn insert_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    events: &[&CredentialEvent],
) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO credential_events (id, at, kind, target, subject_issuer, subject_jti, run_id, stack_id, phase, reasons, details) \
             VALUES {}",
            placeholders(chunk.len(), 11)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for event in chunk {
            query = query
                .bind(&event.id)
                .bind(event.at)
                .bind(&event.kind)
                .bind(&event.target)
                .bind(&event.subject_issuer)
                .bind(event.subject_jti.clone())
                .bind(event.run_id.clone())
                .bind(event.stack_id.clone())
                .bind(event.phase.clone())
                .bind(&event.reasons)
                .bind(&event.details);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_tokens(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    tokens: &[&IssuedTokenRow],
) -> Result<(), StoreError> {
    for chunk in tokens.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO issued_tokens (jti, kid, subject, audience, run_id, stack_id, phase, issued_at, expires_at, issued_by, claims) \
             VALUES {}",
            placeholders(chunk.len(), 11)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for token in chunk {
            query = query
                .bind(&token.jti)
                .bind(&token.kid)
                .bind(&token.subject)
                .bind(&token.audience)
                .bind(&token.run_id)
                .bind(&token.stack_id)
                .bind(&token.phase)
                .bind(token.issued_at)
                .bind(token.expires_at)
                .bind(&token.issued_by)
                .bind(&token.claims);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `($1, $2), ($3, $4)` for two rows of two columns: numbered placeholders, which both SQLite and
/// PostgreSQL accept.
fn placeholders(rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            let _ = write!(sql, "${}", row * columns + column + 1);
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(placeholders(1, 1), "($1)");
        assert_eq!(placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }
}
