//! The stored tree: heads, proofs and checkpoints, each answered from exactly the tiles it needs
//! (plus the leaf hashes of entries the integrator has not reached yet).

use super::log_key::LogKey;
use std::collections::BTreeSet;

use super::merkle::{self, Hash, NodeMap, ProofError, Query, Subtrees as _};
use crate::store::{CheckpointRow, Store, StoreError};

/// Why a proof could not be served.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sizes or index asked for do not exist, or the stored tree is incomplete.
    #[error(transparent)]
    Proof(#[from] ProofError),
}

async fn fetch(store: &Store, query: Query, size: u64) -> Result<NodeMap, TreeError> {
    let wanted: Vec<(u32, u64)> = merkle::needed_subtrees(query)?.into_iter().collect();
    Ok(NodeMap(store.audit_subtrees(&wanted, size).await?))
}

/// Checks that `size` entries exist.
async fn within(store: &Store, size: u64) -> Result<(), TreeError> {
    let current = store.audit_size().await?;
    if size > current {
        return Err(ProofError::Range(format!("the log has {current} entries, not {size}")).into());
    }
    Ok(())
}

/// The head of the tree of the first `size` entries.
pub async fn root(store: &Store, size: u64) -> Result<Hash, TreeError> {
    within(store, size).await?;
    Ok(merkle::root(&fetch(store, Query::Root(size), size).await?, size)?)
}

/// The inclusion proof of entry `index` in the tree of `size` entries.
pub async fn inclusion(store: &Store, index: u64, size: u64) -> Result<Vec<Hash>, TreeError> {
    within(store, size).await?;
    Ok(merkle::inclusion_proof(&fetch(store, Query::Inclusion { index, size }, size).await?, index, size)?)
}

/// One entry's leaf hash (from the tree, so it is there for pruned entries too) and its
/// inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inclusion {
    /// The entry's sequence number: its leaf index.
    pub index: u64,
    /// Its leaf hash in the tree.
    pub leaf: Hash,
    /// Its audit path, bottom-up.
    pub proof: Vec<Hash>,
}

/// The inclusion proofs of every entry of `indexes` in the tree of `size` entries, read in one
/// query: a trace page proves each entry it shows.
pub async fn inclusions(store: &Store, indexes: &[u64], size: u64) -> Result<Vec<Inclusion>, TreeError> {
    within(store, size).await?;
    let mut wanted = BTreeSet::new();
    for &index in indexes {
        wanted.extend(merkle::needed_subtrees(Query::Inclusion { index, size })?);
        wanted.insert((0, index));
    }
    let nodes = NodeMap(store.audit_subtrees(&wanted.into_iter().collect::<Vec<_>>(), size).await?);
    indexes
        .iter()
        .map(|&index| {
            Ok(Inclusion { index, leaf: nodes.hash(0, index)?, proof: merkle::inclusion_proof(&nodes, index, size)? })
        })
        .collect()
}

/// The consistency proof between the trees of `old` and `new` entries.
pub async fn consistency(store: &Store, old: u64, new: u64) -> Result<Vec<Hash>, TreeError> {
    within(store, new).await?;
    Ok(merkle::consistency_proof(&fetch(store, Query::Consistency { old, new }, new).await?, old, new)?)
}

/// Signs and stores a checkpoint of the log as it is now.
pub async fn checkpoint(store: &Store, key: &LogKey, now: i64) -> Result<CheckpointRow, TreeError> {
    let size = store.audit_size().await?;
    let head = root(store, size).await?;
    let row = CheckpointRow { size, root: head, note: key.sign(size, &head), at: now };
    store.save_checkpoint(&row).await?;
    Ok(row)
}
