//! The audit log's writer: group commit of entries, with the Merkle tree kept up to date in the
//! same transaction.
//!
//! Every request that must be on record before it is answered (a credential decision, a minted
//! token, a consumed subject-token ID) hands an [`Append`] to [`AuditLog::append`] and waits. One
//! writer task takes whatever appends are waiting, and in a single transaction: bumps the log's
//! size in `audit_head` (which serialises appenders across replicas, so sequence numbers are
//! gap-free and totally ordered), writes each entry as its canonical JSON, the new leaf and
//! interior hashes, and the lookup keys; commits (the sync: `fsync` on SQLite, the WAL flush on
//! PostgreSQL); and only then answers every waiter. While a commit is in flight, new appends queue
//! and form the next batch, so syncs per second stay what the disk allows while entries per
//! second grow with concurrency.
//!
//! If the commit fails, every waiter gets the error and nothing of the batch exists: callers
//! answer 503 and hand nothing out (fail closed). The log reports itself unhealthy until a commit
//! succeeds again; [`AuditLog::probe`] makes one (an empty append writes `audit_head` and a
//! batch-sized scratch row).
//!
//! An append may carry a [`TokenClaim`]: "this subject token is used now". The claim and the
//! append's entries commit together or not at all, and a claim that was made before (a replay,
//! possibly by another append in the same batch) makes the append write its `if_replayed`
//! entries instead. Each token is therefore exchanged at most once, and the refusal of a replay
//! is on record too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::entry::{AuditEvent, PreparedEvent};
use super::merkle::{self, Hash, NodeMap};
use crate::store::audit_batch as batch;
use crate::store::audit_codec::BatchEncoder;
use crate::store::write::{self as guarded, Refusal, Write};
use crate::store::{Backend, Store, StoreError};
use keyward_proto::prometheus::{Histogram, Snapshot};

/// Largest number of entries one transaction takes. Bounds the statement size and how long one
/// commit holds SQLite's write lock.
const MAX_BATCH: usize = 4096;

/// Entries that may wait for the writer before `write` itself waits (back-pressure).
const QUEUE_DEPTH: usize = 4096;

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

/// What one request needs on record, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Append {
    /// A subject token to consume; `None` appends `events` unconditionally.
    pub claim: Option<TokenClaim>,
    /// Row changes the events record (a run's new state): committed with them, or, when one's
    /// condition fails, the append is [`Committed::Refused`] and nothing of it is written.
    pub writes: Vec<Write>,
    /// Appended when there is no claim, or the claim is new.
    pub events: Vec<AuditEvent>,
    /// Appended instead of `events` when the claim was made before.
    pub if_replayed: Vec<AuditEvent>,
}

impl Append {
    /// Events to append with no claim.
    pub fn events(events: Vec<AuditEvent>) -> Self {
        Self { claim: None, writes: Vec::new(), events, if_replayed: Vec::new() }
    }

    /// `writes` and the `events` that record them, all or nothing.
    pub fn changes(writes: Vec<Write>, events: Vec<AuditEvent>) -> Self {
        Self { claim: None, writes, events, if_replayed: Vec::new() }
    }
}

/// The receipt for an append whose `events` are durable. Its field is private, so only this
/// module's writer makes one, after the commit: a [`PendingToken`] is released against it, which
/// is how "every token is on record before it is handed out" holds by construction.
///
/// [`PendingToken`]: crate::tokens::PendingToken
#[derive(Debug, PartialEq, Eq)]
pub struct Recorded(());

/// How an append was committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// `events` are durable (and the claim, if any, is now taken; the writes are made).
    Recorded(Recorded),
    /// The claim was taken before: `if_replayed` are durable, `events` were not written.
    Replayed,
    /// A write's condition failed: nothing of the append was written.
    Refused(Refusal),
}

/// Why row changes appended with their audit entries were not made, by cause; each edge picks
/// its status. `what` names the row in the caller's words (from the guarded write).
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The row already exists.
    #[error("{what} already exists")]
    Duplicate {
        /// The row.
        what: String,
    },
    /// The state the change was decided on moved on.
    #[error("{what} changed meanwhile; nothing was done, look again and retry")]
    Moved {
        /// The row.
        what: String,
    },
    /// The database refused the row (a foreign key, a check).
    #[error("{what} was refused")]
    Rejected {
        /// The row.
        what: String,
    },
    /// The append itself failed or replayed unexpectedly; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Committed {
    /// The outcome of an append of row changes without a claim: `Ok` when recorded, else why not.
    pub fn into_change(self) -> Result<(), ChangeError> {
        match self {
            Self::Recorded(_) => Ok(()),
            Self::Refused(Refusal::Duplicate { what }) => Err(ChangeError::Duplicate { what }),
            Self::Refused(Refusal::Unmet { what }) => Err(ChangeError::Moved { what }),
            Self::Refused(Refusal::Invalid { what }) => Err(ChangeError::Rejected { what }),
            Self::Replayed => Err(StoreError::Append("unexpected replay outcome".to_owned()).into()),
        }
    }
}

/// An append with its events encoded (by the caller's task, not the writer).
#[derive(Debug)]
struct Prepared {
    claim: Option<TokenClaim>,
    writes: Vec<Write>,
    events: Vec<PreparedEvent>,
    if_replayed: Vec<PreparedEvent>,
}

struct Pending {
    entry: Prepared,
    reply: oneshot::Sender<Result<Committed, String>>,
}

/// The handle requests append through. Cheap to clone; the writer stops when every handle is
/// gone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    stats: Arc<Stats>,
    committed: Arc<tokio::sync::Notify>,
}

/// Counters of the writer's work, for `/metrics` and for tests that check batching happens.
#[derive(Debug)]
pub struct Stats {
    commits: AtomicU64,
    entries: AtomicU64,
    failed_commits: AtomicU64,
    healthy: AtomicBool,
    /// Entries the integrator has covered with tiles and lookup keys (set by `integrator`).
    pub(super) integrated: AtomicU64,
    /// Integrator steps that failed.
    pub(super) integration_failures: AtomicU64,
    /// How long each group commit took, successful or not.
    commit_seconds: Histogram,
    /// Entries per group commit.
    batch_size: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            integrated: AtomicU64::new(0),
            integration_failures: AtomicU64::new(0),
            commit_seconds: Histogram::new(keyward_proto::prometheus::LATENCY_SECONDS),
            batch_size: Histogram::new(keyward_proto::prometheus::BATCH_SIZE),
        }
    }
}

impl Stats {
    /// How long group commits took, in seconds.
    pub fn commit_seconds(&self) -> Snapshot {
        self.commit_seconds.snapshot()
    }

    /// Entries per group commit.
    pub fn batch_size(&self) -> Snapshot {
        self.batch_size.snapshot()
    }

    /// Transactions committed.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Log entries made durable by those commits.
    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Batches that failed to commit (every entry in them was refused).
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Entries the integrator has covered with tiles and lookup keys, as it last reported.
    pub fn integrated(&self) -> u64 {
        self.integrated.load(Ordering::Relaxed)
    }

    /// Integrator steps that failed.
    pub fn integration_failures(&self) -> u64 {
        self.integration_failures.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("entry", &self.entry).finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer task on the current Tokio runtime.
    pub fn start(store: Store) -> Self {
        let (queue, incoming) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Stats::default());
        let committed = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(run_writer(store, incoming, Arc::clone(&stats), Arc::clone(&committed)));
        Self { queue, stats, committed }
    }

    /// Notified after every commit that appended entries (sinks wait on it).
    pub fn committed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.committed)
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Writes an empty append: proves the log can commit (it writes `audit_head` and 64 KiB of
    /// scratch, about a large batch, so a nearly full disk does not pass it). Clears the
    /// unhealthy state when it succeeds.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.append(Append::default()).await.map(drop)
    }

    /// Makes `entry` durable, sharing the commit with whatever else is waiting. Returns once it
    /// is committed; an error means nothing of it was written.
    pub async fn append(&self, entry: Append) -> Result<Committed, StoreError> {
        let prepare = |events: &[AuditEvent]| {
            events
                .iter()
                .map(AuditEvent::prepare)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let entry = Prepared {
            events: prepare(&entry.events)?,
            if_replayed: prepare(&entry.if_replayed)?,
            claim: entry.claim,
            writes: entry.writes,
        };
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { entry, reply }).await.map_err(|_| StoreError::Append(WRITER_GONE.to_owned()))?;
        answer.await.map_err(|_| StoreError::Append(WRITER_GONE.to_owned()))?.map_err(StoreError::Append)
    }
}

const WRITER_GONE: &str = "the audit log writer has stopped";

async fn run_writer(
    store: Store,
    mut incoming: mpsc::Receiver<Pending>,
    stats: Arc<Stats>,
    committed: Arc<tokio::sync::Notify>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut tree = Frontier::default();
    while incoming.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let entries: Vec<&Prepared> = batch.iter().map(|p| &p.entry).collect();
        let started = std::time::Instant::now();
        let committed_batch = commit(&store, &entries, &mut tree).await;
        stats.commit_seconds.observe_duration(started.elapsed());
        stats.batch_size.observe(u32::try_from(entries.len()).map_or(f64::MAX, f64::from));
        match committed_batch {
            Ok((outcomes, appended)) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.entries.fetch_add(appended, Ordering::Relaxed);
                stats.healthy.store(true, Ordering::Relaxed);
                if appended > 0 {
                    committed.notify_waiters();
                }
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    // A waiter that went away (its request was cancelled) changes nothing: the
                    // entry is on record either way.
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                stats.healthy.store(false, Ordering::Relaxed);
                // What the database holds is unknown now (another replica may have appended):
                // re-read the frontier before the next batch.
                tree = Frontier::default();
                tracing::error!(%error, entries = batch.len(), "group commit failed; nothing of the batch was written");
                let message = error.to_string();
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(message.clone()));
                }
            }
        }
    }
}

/// The perfect subtrees at the right edge of the tree (see [`merkle::frontier`]), for the size
/// the writer last committed. Appending needs exactly these to compute new interior nodes.
#[derive(Debug, Default)]
struct Frontier {
    /// `None` until read from the database.
    size: Option<u64>,
    nodes: HashMap<(u32, u64), Hash>,
}

/// Writes `entries` in one transaction; returns each entry's outcome, in order, and how many
/// log entries were appended.
///
/// The transaction is driven by hand on one pooled connection, and a connection whose batch
/// failed is closed, never returned to the pool: a failed `COMMIT` (a full disk) can leave the
/// connection believing a transaction is still open, and every later `BEGIN` on it would fail,
/// so the log would never recover.
async fn commit(
    store: &Store,
    entries: &[&Prepared],
    tree: &mut Frontier,
) -> Result<(Vec<Committed>, u64), StoreError> {
    let mut conn = store.pool.acquire().await?;
    let _turn = store.audit_write_turn().await;
    match write_batch(&mut conn, store.backend(), entries, tree).await {
        Ok(done) => Ok(done),
        Err(error) => {
            batch::rollback(&mut conn).await;
            let _ = conn.close().await;
            Err(error)
        }
    }
}

/// Writes one batch inside one transaction: claim the subject tokens (a replay writes its
/// refusal instead), run each request's guarded writes, bump the head, then number, hash and
/// insert the entries with their lookup keys and new tree nodes, and commit.
async fn write_batch(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    entries: &[&Prepared],
    tree: &mut Frontier,
) -> Result<(Vec<Committed>, u64), StoreError> {
    batch::begin(conn, backend).await?;
    let fresh = claim(conn, backend, entries).await?;
    if backend == Backend::Postgres && entries.iter().any(|entry| !entry.writes.is_empty()) {
        guarded::lock_head(conn).await?;
    }
    let mut events = Vec::new();
    let mut outcomes = Vec::with_capacity(entries.len());
    for (entry, fresh) in entries.iter().zip(fresh) {
        if !fresh {
            events.extend(entry.if_replayed.iter());
            outcomes.push(Committed::Replayed);
            continue;
        }
        if !entry.writes.is_empty()
            && let Err(refusal) = guarded::execute_all(conn, &entry.writes).await?
        {
            outcomes.push(Committed::Refused(refusal));
            continue;
        }
        events.extend(entry.events.iter());
        outcomes.push(Committed::Recorded(Recorded(())));
    }
    let count = events.len() as u64;
    let written_at = events.iter().map(|e| e.at).max().unwrap_or_else(unix_now);
    // First statement that writes the head: from here on, other appenders wait for this commit.
    let end = batch::grow_head(conn, count, written_at).await?;
    if count == 0 {
        // A probe: prove the database takes a write of a real batch's size.
        batch::probe(conn).await?;
        batch::commit(conn).await?;
        return Ok((outcomes, 0));
    }
    let start = end - count;
    let mut nodes =
        if tree.size == Some(start) { std::mem::take(&mut tree.nodes) } else { load_frontier(conn, start).await? };
    let mut encoder = BatchEncoder::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        let seq = start + offset as u64;
        let leaf = merkle::leaf_hash(encoder.push(event.kind, &event.refs, &event.body(seq))?);
        extend(&mut nodes, seq, leaf)?;
    }
    let keep = merkle::frontier(end);
    nodes.retain(|key, _| keep.contains(key));
    let frontier: Vec<Hash> = keep.iter().filter_map(|key| nodes.get(key).copied()).collect();
    let root = merkle::root(&NodeMap(nodes), end).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let body = encoder.finish()?;
    let row = batch::NewBatch { first_seq: start, n: count, body: &body, root: &root, frontier: &frontier };
    batch::insert_batch(conn, &row).await?;
    batch::commit(conn).await?;
    let nodes = keep.iter().copied().zip(frontier).collect();
    *tree = Frontier { size: Some(end), nodes };
    Ok((outcomes, count))
}

/// Adds leaf `seq` to the right edge `nodes`, with every subtree it completes.
fn extend(nodes: &mut HashMap<(u32, u64), Hash>, seq: u64, leaf: Hash) -> Result<(), StoreError> {
    let (mut level, mut index, mut hash) = (0u32, seq, leaf);
    nodes.insert((level, index), hash);
    while !index.is_multiple_of(2) {
        let left = nodes.get(&(level, index - 1)).ok_or_else(|| {
            StoreError::Corrupt(format!("audit tree has no node at level {level}, index {}", index - 1))
        })?;
        hash = merkle::node_hash(left, &hash);
        level += 1;
        index /= 2;
        nodes.insert((level, index), hash);
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads the frontier of a tree of `size` leaves: recorded with the last batch, or (when that
/// batch was pruned) recomputed from the tiles.
async fn load_frontier(conn: &mut sqlx::AnyConnection, size: u64) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    let wanted = merkle::frontier(size);
    if let Some(hashes) = batch::frontier_at(conn, size).await? {
        if hashes.len() != wanted.len() {
            return Err(StoreError::Corrupt(format!(
                "the last audit batch records {} frontier hashes, a tree of {size} entries has {}",
                hashes.len(),
                wanted.len()
            )));
        }
        return Ok(wanted.into_iter().zip(hashes).collect());
    }
    let nodes = crate::store::audit::subtrees_on(&mut *conn, &wanted, size).await?;
    if nodes.len() != wanted.len() {
        return Err(StoreError::Corrupt(format!(
            "the audit tree of {size} entries is missing {} of its {} frontier nodes",
            wanted.len() - nodes.len(),
            wanted.len()
        )));
    }
    Ok(nodes)
}

/// Takes every entry's claim. `true` for entries without a claim and for claims that were new;
/// of two entries in one batch claiming the same token, the first wins.
async fn claim(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    entries: &[&Prepared],
) -> Result<Vec<bool>, StoreError> {
    let mut seen = HashSet::new();
    let mut first_claims = Vec::new();
    for entry in entries {
        if let Some(claim) = &entry.claim
            && seen.insert((claim.issuer.as_str(), claim.jti.as_str()))
        {
            first_claims.push(batch::Claim {
                issuer: &claim.issuer,
                jti: &claim.jti,
                expires_at: claim.expires_at,
                used_at: claim.used_at,
            });
        }
    }
    let mut taken = batch::claim_tokens(conn, backend, &first_claims).await?;
    Ok(entries
        .iter()
        .map(|entry| match &entry.claim {
            None => true,
            // `remove`: a second entry with the same claim finds it gone and counts as a replay.
            Some(claim) => taken.remove(&(claim.issuer.clone(), claim.jti.clone())),
        })
        .collect())
}

/// The export line of a stored entry: `{"entry": {…}, "leaf_hash": "<hex>"}`, as `export`,
/// the API and the sinks all write it (and `keyward_audit::export` reads it).
pub fn export_line(stored: &crate::store::StoredEntry) -> Result<serde_json::Value, serde_json::Error> {
    let entry: serde_json::Value = serde_json::from_str(&stored.body)?;
    Ok(
        serde_json::json!({ "entry": entry, "leaf_hash": keyward_proto::encoding::hex(&merkle::leaf_hash(stored.body.as_bytes())) }),
    )
}
