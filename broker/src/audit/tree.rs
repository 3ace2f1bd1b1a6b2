//! The stored tree: heads, proofs and checkpoints, each answered from exactly the tiles it needs
//! (plus the leaf hashes of entries the integrator has not reached yet).

use super::log_key::LogKey;
use super::merkle::{self, Hash, NodeMap, ProofError, Query};
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
