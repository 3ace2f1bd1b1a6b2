//! Reading a broker's audit log in tests: entries of a run, counts by kind, and the tree checked
//! against an independent recomputation from the stored entry bodies.

use std::path::Path;

use keyward_broker::audit::merkle;
use keyward_broker::store::{DatabaseLocation, Store};
use serde_json::Value;

/// One entry, flattened for assertions.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Sequence number.
    pub seq: u64,
    /// The kind without its family: `issued`, `allowed`, `denied`, `minted`.
    pub kind: String,
    /// The context chain.
    pub context: Value,
    /// The details object, as JSON text.
    pub details: String,
    /// `details.reasons` as JSON text (`[]` when there are none), for `contains` checks.
    pub reasons: String,
    /// The canonical JSON as stored.
    pub body: String,
}

/// A broker's audit log, opened read-side.
#[derive(Debug)]
pub struct Audit(pub Store);

impl Audit {
    /// Opens the SQLite database in a broker's data directory.
    pub async fn open(data_dir: &Path) -> Self {
        Self(Store::open(&DatabaseLocation::Sqlite(data_dir.join("keyward.db"))).await.expect("open the store"))
    }

    /// How many entries of `kind` (`credentials.issued`, `token.minted`, …).
    pub async fn count(&self, kind: &str) -> u64 {
        self.0.audit_count(kind).await.expect("count")
    }

    /// Every entry about run `run_id`, in order.
    pub async fn for_run(&self, run_id: &str) -> Vec<Logged> {
        self.referencing(&format!("run:{run_id}")).await
    }

    /// Every entry carrying the lookup key `reference`, in order.
    pub async fn referencing(&self, reference: &str) -> Vec<Logged> {
        let stored = self.0.audit_entries_for(&[reference.to_owned()]).await.expect("entries");
        stored
            .into_iter()
            .map(|entry| {
                let parsed: Value = serde_json::from_str(&entry.body).expect("entry JSON");
                let details = parsed["details"].clone();
                Logged {
                    seq: entry.seq,
                    kind: entry.kind.rsplit('.').next().unwrap_or_default().to_owned(),
                    context: parsed["context"].clone(),
                    reasons: details.get("reasons").map_or_else(|| "[]".to_owned(), Value::to_string),
                    details: details.to_string(),
                    body: entry.body,
                }
            })
            .collect()
    }

    /// Recomputes the tree head from the stored entry bodies alone and compares it with the one
    /// the broker's stored tree (tiles and batch heads) gives. Returns the size.
    pub async fn check_tree(&self) -> u64 {
        let size = self.0.audit_size().await.expect("size");
        let entries = self.0.audit_entries(0, size, size).await.expect("entries");
        assert_eq!(entries.len() as u64, size, "the log has gaps");
        let leaves: Vec<merkle::Hash> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                assert_eq!(e.seq, i as u64, "sequence numbers are gap-free and ordered");
                merkle::leaf_hash(e.body.as_bytes())
            })
            .collect();
        let recomputed = merkle::root(&leaves[..], size).expect("root");
        let stored = keyward_broker::audit::tree::root(&self.0, size).await.expect("stored root");
        assert_eq!(stored, recomputed, "stored tree disagrees");
        size
    }
}
