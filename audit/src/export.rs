//! Offline verification of an export (`keyward audit export` output), as `keyward audit verify`
//! and `keyward-verify export` run it: no broker, no database, only the file, signed checkpoints
//! and the log's public key.
//!
//! Each export line is `{"entry":{…},"leaf_hash":"<hex>"}`. Verification walks the lines in
//! order and reports the **first bad sequence number**: a line that is not an entry, a sequence
//! number out of place (an entry deleted, duplicated or reordered), or an entry whose content no
//! longer matches its leaf hash (edited). Then, for each checkpoint, it checks the signature and
//! that the tree recomputed from the export has the checkpoint's head at the checkpoint's size,
//! which catches entries rewritten together with their hashes and entries cut off the end.

use std::io::BufRead;

use serde::{Deserialize, Serialize};

use keyward_proto::encoding::hex;

use crate::checkpoint::{Checkpoint, CheckpointError, VerifierKey};
use crate::entry::Entry;
use crate::merkle::{self, Hash};

/// One line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportLine {
    /// The entry.
    pub entry: Entry,
    /// Its leaf hash, hex, as the broker computed it.
    pub leaf_hash: String,
}

/// Why an export does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading the file failed.
    #[error("cannot read the export: {0}")]
    Io(#[from] std::io::Error),
    /// The first entry that is wrong, and how.
    #[error("entry {seq} is bad: {reason}")]
    BadEntry {
        /// Its sequence number (where it should be).
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint's signature or format.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The export's tree does not have the checkpoint's head.
    #[error(
        "the tree of the export's first {size} entries has head {actual}, the checkpoint says {expected}: \
         entries were rewritten together with their hashes, or the checkpoint is for another log"
    )]
    Mismatch {
        /// Checkpoint size.
        size: u64,
        /// Recomputed head, hex.
        actual: String,
        /// Signed head, hex.
        expected: String,
    },
    /// Checkpoints were given without the log's public key, so their signatures cannot be checked.
    #[error(
        "the log's public key is missing: checking a checkpoint needs it (--public-key FILE); \
         `keyward audit public-key > log.pub` prints it, and a verifier should keep a copy it trusts"
    )]
    MissingKey,
    /// The export does not start at the beginning of the log, so no head can be recomputed.
    #[error("the export starts at entry {0}; checking a checkpoint needs every entry from 0")]
    NotFromStart(u64),
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// First sequence number in the export.
    pub first: u64,
    /// Entries read.
    pub entries: u64,
    /// The head of the tree of entries `0..first+entries`, when the export starts at 0.
    pub root: Option<Hash>,
    /// The checkpoints that verified.
    pub checkpoints: Vec<Checkpoint>,
}

/// Verifies the export read from `input` against `checkpoints` (signed notes), each of which
/// must be signed by `key`.
pub fn verify_export(
    input: impl BufRead,
    checkpoints: &[String],
    key: Option<&VerifierKey>,
) -> Result<Report, VerifyError> {
    verify_export_leaves(input, checkpoints, key).map(|(report, _)| report)
}

/// [`verify_export`], also returning the verified leaf hashes (for heads at other sizes).
pub fn verify_export_leaves(
    input: impl BufRead,
    checkpoints: &[String],
    key: Option<&VerifierKey>,
) -> Result<(Report, Vec<Hash>), VerifyError> {
    let mut leaves: Vec<Hash> = Vec::new();
    let mut first = None;
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        // The entry that belongs on this line; `None` past entry u64::MAX, where a log ends.
        let position = leaves.len() as u64;
        let after_last = |start: u64| VerifyError::BadEntry {
            seq: start.saturating_add(position),
            reason: format!("line {} follows entry {}, the last a log can have", number + 1, u64::MAX),
        };
        let expected = first.map_or(Some(0), |f: u64| f.checked_add(position));
        let parsed: ExportLine = serde_json::from_str(&line).map_err(|e| VerifyError::BadEntry {
            seq: expected.unwrap_or(u64::MAX),
            reason: format!("line {} is not an export entry: {e}", number + 1),
        })?;
        let seq = parsed.entry.seq;
        let start = *first.get_or_insert(seq);
        let expected = start.checked_add(position).ok_or_else(|| after_last(start))?;
        if seq != expected {
            return Err(VerifyError::BadEntry {
                seq: expected,
                reason: format!(
                    "line {} holds entry {seq} where entry {expected} belongs: entries were deleted, duplicated or reordered",
                    number + 1
                ),
            });
        }
        let canonical = parsed.entry.canonical().map_err(|e| VerifyError::BadEntry { seq, reason: e.to_string() })?;
        let leaf = merkle::leaf_hash(canonical.as_bytes());
        if hex(&leaf) != parsed.leaf_hash.to_ascii_lowercase() {
            return Err(VerifyError::BadEntry {
                seq,
                reason: "its content does not match its leaf hash: the entry was edited".to_owned(),
            });
        }
        leaves.push(leaf);
    }
    let first = first.unwrap_or(0);
    let entries = leaves.len() as u64;
    let root = (first == 0)
        .then(|| merkle::root(&leaves[..], entries))
        .transpose()
        .map_err(|e| VerifyError::BadEntry { seq: 0, reason: format!("cannot compute the tree head: {e}") })?;
    let mut verified = Vec::with_capacity(checkpoints.len());
    for note in checkpoints {
        let key = key.ok_or(VerifyError::MissingKey)?;
        let checkpoint = key.verify(note)?;
        if first != 0 {
            return Err(VerifyError::NotFromStart(first));
        }
        if checkpoint.size > entries {
            return Err(VerifyError::BadEntry {
                seq: entries,
                reason: format!(
                    "the export ends before entry {entries}, but the checkpoint covers {} entries: entries were cut off the end",
                    checkpoint.size
                ),
            });
        }
        let head = merkle::root(&leaves[..], checkpoint.size)
            .map_err(|e| VerifyError::BadEntry { seq: 0, reason: format!("cannot compute the tree head: {e}") })?;
        if head != checkpoint.root {
            return Err(VerifyError::Mismatch {
                size: checkpoint.size,
                actual: hex(&head),
                expected: hex(&checkpoint.root),
            });
        }
        verified.push(checkpoint);
    }
    Ok((Report { first, entries, root, checkpoints: verified }, leaves))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_without_the_key_says_the_key_is_missing() {
        let error = verify_export(&b""[..], &["origin\n0\nroot\n\n".to_owned()], None);
        assert!(matches!(error, Err(VerifyError::MissingKey)), "{error:?}");
        let message = VerifyError::MissingKey.to_string();
        assert!(message.contains("public key is missing") && message.contains("keyward audit public-key"));
    }

    /// Sequence numbers near the top of `u64` are an export's claim like any other: one that
    /// would run past entry u64::MAX is refused, never wrapped around to 0 or a panic (found by
    /// `fuzz/`, target `audit_export`).
    #[test]
    fn an_export_running_past_the_last_sequence_number_is_refused() {
        let line = |seq: u64| {
            let body = crate::AuditEvent::new(crate::Kind::TokenMinted, 1, crate::Context::default())
                .prepare()
                .unwrap_or_else(|e| panic!("{e}"))
                .body(seq);
            format!("{{\"entry\":{body},\"leaf_hash\":\"{}\"}}\n", hex(&merkle::leaf_hash(body.as_bytes())))
        };
        let last = verify_export(line(u64::MAX).as_bytes(), &[], None);
        assert!(matches!(last, Ok(Report { first: u64::MAX, entries: 1, .. })), "{last:?}");
        for next in [0, u64::MAX] {
            let export = format!("{}{}", line(u64::MAX), line(next));
            let refused = verify_export(export.as_bytes(), &[], None);
            assert!(
                matches!(&refused, Err(VerifyError::BadEntry { seq: u64::MAX, reason }) if reason.contains("line 2 follows")),
                "{refused:?}"
            );
        }
    }

    /// Garbage, truncations and byte flips of a real export never panic the verifier: each is
    /// either refused with an error or (for harmless edits such as a trailing blank line) accepted.
    #[test]
    fn hostile_exports_are_refused_without_panicking() {
        let event = crate::AuditEvent::new(crate::Kind::TokenMinted, 1, crate::Context::default()).with("jti", "j");
        let line = |seq: u64| {
            let body = event.prepare().unwrap_or_else(|e| panic!("{e}")).body(seq);
            format!("{{\"entry\":{body},\"leaf_hash\":\"{}\"}}\n", hex(&merkle::leaf_hash(body.as_bytes())))
        };
        let export: String = (0..4).map(line).collect();
        assert!(verify_export(export.as_bytes(), &[], None).is_ok());
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let bytes = export.as_bytes();
        for _ in 0..2000 {
            let mut mutated = bytes.to_vec();
            match next() % 3 {
                0 => mutated.truncate(usize::try_from(next() % bytes.len() as u64).unwrap_or(0)),
                1 => {
                    let at = usize::try_from(next() % bytes.len() as u64).unwrap_or(0);
                    mutated[at] = u8::try_from(next() % 256).unwrap_or(0);
                }
                _ => mutated = (0..next() % 300).map(|_| u8::try_from(next() % 256).unwrap_or(0)).collect(),
            }
            let _ = verify_export(&mutated[..], &[], None);
        }
    }
}
