//! Offline verification of the audit log inside a database file, such as a backup, before it is
//! restored: the checks `keyward audit verify` runs on an export (sequence, leaf hashes, signed
//! checkpoints: the same code, [`keyward_audit::export`]), run on the entries as stored, plus the
//! stored tree, which a restored broker serves heads and proofs from, checked against them.
//!
//! Entries are streamed to the verifier page by page (a log of millions of entries is never held
//! as text); only their 32-byte leaf hashes are kept, to recompute heads.

use std::io::{BufReader, Read};

use keyward_audit::checkpoint::{Checkpoint, VerifierKey};
use keyward_audit::export::{Report, VerifyError, verify_export_leaves};
use keyward_proto::encoding::hex;
use tokio::sync::mpsc;

use super::merkle::{self, Hash, ProofError};
use super::tree::{self, TreeError};
use super::writer::export_line;
use crate::store::{Store, StoreError};

/// Entries read from the database per query.
const PAGE: u64 = 2_000;

/// What verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// The log's size.
    pub size: u64,
    /// The first entry still stored (entries below were pruned after archiving).
    pub first: u64,
    /// The head of the whole log.
    pub root: Hash,
    /// The checkpoints whose signature and head matched.
    pub checkpoints: Vec<Checkpoint>,
}

/// Why the stored log does not verify.
#[derive(Debug, thiserror::Error)]
pub enum StoredLogError {
    /// Reading the database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored tree is incomplete.
    #[error("the stored tree is incomplete: {0}")]
    Tree(#[from] TreeError),
    /// Recomputing a head failed.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// An entry or a checkpoint is bad (as `keyward audit verify` says it).
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A stored entry is not JSON.
    #[error("entry {seq} as stored is not JSON: {reason}")]
    Unreadable {
        /// The entry.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Fewer entries are stored than the log's head counts.
    #[error("the log counts {size} entries but entries {first}..{size} hold only {found}: entries were deleted")]
    Short {
        /// The head's size.
        size: u64,
        /// The first stored entry.
        first: u64,
        /// How many were found.
        found: u64,
    },
    /// The stored tree does not match the entries, or a checkpoint.
    #[error("at size {size} the {what} has head {actual}, but {expected_by} says {expected}")]
    Mismatch {
        /// The tree size.
        size: u64,
        /// What was recomputed: `stored tree` or `tree of the entries`.
        what: &'static str,
        /// Its head, hex.
        actual: String,
        /// What disagrees: `the tree of the entries` or `the checkpoint`.
        expected_by: &'static str,
        /// The other head, hex.
        expected: String,
    },
    /// The checkpoint covers more than this log holds.
    #[error(
        "the checkpoint of {checkpoint} entries is ahead of this log of {size}: it was signed after this copy was made"
    )]
    Ahead {
        /// The checkpoint's size.
        checkpoint: u64,
        /// The log's size.
        size: u64,
    },
}

/// Verifies the log in `store` against `notes` (signed checkpoints), each signed by `key`.
pub async fn verify_stored(
    store: &Store,
    notes: &[String],
    key: Option<&VerifierKey>,
) -> Result<StoredReport, StoredLogError> {
    let key = match (notes.is_empty(), key) {
        (true, _) => None,
        (false, None) => return Err(VerifyError::MissingKey.into()),
        (false, Some(key)) => Some(key),
    };
    let size = store.audit_size().await?;
    let (report, leaves) = verified_entries(store, size).await?;
    let first = store.audit_pruned_before().await?;
    let found = report.entries;
    if (found > 0 && report.first != first) || first.checked_add(found) != Some(size) {
        return Err(StoredLogError::Short { size, first, found });
    }
    let root = tree::root(store, size).await?;
    let from_entries = |at: u64| (first == 0).then(|| merkle::root(&leaves[..], at)).transpose();
    if let Some(recomputed) = from_entries(size)? {
        agree(size, "stored tree", &root, "the tree of the entries", &recomputed)?;
    }
    let mut checkpoints = Vec::new();
    for note in notes {
        let checkpoint = key.map(|key| key.verify(note)).transpose().map_err(VerifyError::from)?;
        let Some(checkpoint) = checkpoint else { continue };
        if checkpoint.size > size {
            return Err(StoredLogError::Ahead { checkpoint: checkpoint.size, size });
        }
        let stored = tree::root(store, checkpoint.size).await?;
        agree(checkpoint.size, "stored tree", &stored, "the checkpoint", &checkpoint.root)?;
        if let Some(recomputed) = from_entries(checkpoint.size)? {
            agree(checkpoint.size, "tree of the entries", &recomputed, "the checkpoint", &checkpoint.root)?;
        }
        checkpoints.push(checkpoint);
    }
    Ok(StoredReport { size, first, root, checkpoints })
}

fn agree(
    size: u64,
    what: &'static str,
    actual: &Hash,
    expected_by: &'static str,
    expected: &Hash,
) -> Result<(), StoredLogError> {
    if actual == expected {
        return Ok(());
    }
    Err(StoredLogError::Mismatch { size, what, actual: hex(actual), expected_by, expected: hex(expected) })
}

/// Streams the stored entries, as export lines, through the export verifier.
async fn verified_entries(store: &Store, size: u64) -> Result<(Report, Vec<Hash>), StoredLogError> {
    let (lines, received) = mpsc::channel::<Vec<u8>>(4);
    let verifier =
        tokio::task::spawn_blocking(move || verify_export_leaves(BufReader::new(Pages::new(received)), &[], None));
    // Sending ends (and the verifier sees the end of the stream) when `lines` drops here.
    let produced = send_pages(store, size, lines).await;
    let verified = verifier.await.map_err(|e| StoredLogError::Unreadable { seq: 0, reason: e.to_string() })?;
    produced?;
    Ok(verified?)
}

async fn send_pages(store: &Store, size: u64, lines: mpsc::Sender<Vec<u8>>) -> Result<(), StoredLogError> {
    let mut from = 0;
    while from < size {
        let page = store.audit_entries(from, size, PAGE).await?;
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        let mut text = Vec::new();
        for entry in &page {
            let line =
                export_line(entry).map_err(|e| StoredLogError::Unreadable { seq: entry.seq, reason: e.to_string() })?;
            text.extend_from_slice(line.to_string().as_bytes());
            text.push(b'\n');
        }
        if lines.send(text).await.is_err() {
            break; // the verifier stopped at a bad entry; its error says which
        }
    }
    Ok(())
}

/// The pages sent by the reading task, as one byte stream; ends when the sender is dropped.
struct Pages {
    pages: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Pages {
    fn new(pages: mpsc::Receiver<Vec<u8>>) -> Self {
        Self { pages, current: Vec::new(), at: 0 }
    }
}

impl Read for Pages {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.pages.blocking_recv() {
                Some(page) => (self.current, self.at) = (page, 0),
                None => return Ok(0),
            }
        }
        let n = self.current.get(self.at..).unwrap_or_default().read(buf)?;
        self.at += n;
        Ok(n)
    }
}
