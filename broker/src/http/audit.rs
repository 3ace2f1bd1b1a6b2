//! `/v1/audit/…`: read the log, prove entries and tree heads, sign checkpoints, trace a run.
//!
//! Everything but the public key and the entries needs `viewer` on `root` (an old `audit` scope
//! token has it). The entries need `viewer` somewhere: a caller without it on `root` sees only
//! the entries whose context names a stack of a space it may view (docs/access.md); an entry
//! about no stack needs `root`.
//! Entries are returned as `{"entry": {…}, "leaf_hash": "<hex>"}`, the export line format that
//! `keyward audit verify` checks offline.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{Authorized, Scoped, can};
use super::guard::{Guard, stack_spaces};
use crate::access::Permission;
use crate::audit::export_line;
use crate::audit::merkle::{self, Hash};
use crate::audit::tree::{self, TreeError};
use crate::store::StoredEntry;
use keyward_proto::encoding::hex;

/// Most entries one request returns.
const MAX_PAGE: u64 = 5000;

impl From<TreeError> for ApiError {
    fn from(error: TreeError) -> Self {
        match error {
            TreeError::Proof(merkle::ProofError::Range(message)) => Self::invalid_request(message),
            TreeError::Store(store) => Self::store(&store),
            other => Self::internal(&other),
        }
    }
}

fn lines(entries: &[StoredEntry]) -> Result<Vec<Value>, ApiError> {
    entries.iter().map(|e| export_line(e).map_err(|e| ApiError::internal(&e))).collect()
}

fn store_error(error: crate::store::StoreError) -> ApiError {
    ApiError::store(&error)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntriesQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<u64>,
    /// The last N entries (of `kind`, if given) instead of a range.
    tail: Option<u64>,
    kind: Option<String>,
}

/// `GET /v1/audit/entries`.
pub(super) async fn entries(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadAudit>,
    query: Result<Query<EntriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let guard = Guard::new(&state, operator).await?;
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let size = state.store.audit_size().await.map_err(store_error)?;
    let entries = if let Some(tail) = query.tail {
        state.store.audit_tail(query.kind.as_deref(), tail.min(MAX_PAGE)).await.map_err(store_error)?
    } else {
        if query.kind.is_some() {
            return Err(ApiError::invalid_request("kind filters a tail (tail=N&kind=K); ranges return every kind"));
        }
        let from = query.from.unwrap_or(0);
        let to = query.to.unwrap_or(size).min(size);
        let limit = query.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        state.store.audit_entries(from, to, limit).await.map_err(store_error)?
    };
    let entries = visible(&state, &guard, entries).await?;
    Ok(Json(json!({ "size": size, "entries": lines(&entries)? })))
}

/// The entries `guard`'s caller may read: all with `viewer` on `root`; else those whose context
/// names a stack in a space it may view.
async fn visible(state: &AppState, guard: &Guard, entries: Vec<StoredEntry>) -> Result<Vec<StoredEntry>, ApiError> {
    if guard.may(Permission::ReadAudit, crate::roles::ROOT) {
        return Ok(entries);
    }
    let spaces = stack_spaces(state).await?;
    let stack_of = |entry: &StoredEntry| {
        let body: Value = serde_json::from_str(&entry.body).ok()?;
        body.get("context")?.get("stack_id")?.as_str().map(str::to_owned)
    };
    Ok(entries
        .into_iter()
        .filter(|entry| {
            stack_of(entry)
                .and_then(|stack| spaces.get(&stack).cloned())
                .is_some_and(|space| guard.may(Permission::ReadAudit, &space))
        })
        .collect())
}

/// `GET /v1/audit/public-key`: the checkpoint verifier key. Public.
pub(super) async fn public_key(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "verifier_key": state.log_key.verifier().to_string() }))
}

fn checkpoint_json(row: &crate::store::CheckpointRow) -> Value {
    json!({ "size": row.size, "root": hex(&row.root), "note": row.note, "at": row.at })
}

/// `GET /v1/audit/checkpoint`: the latest signed checkpoint.
pub(super) async fn latest_checkpoint(
    State(state): State<AppState>,
    _: Authorized<can::ReadAudit>,
) -> Result<Json<Value>, ApiError> {
    let latest = state.store.latest_checkpoint().await.map_err(store_error)?;
    let row =
        latest.ok_or_else(|| ApiError::not_found("no checkpoint yet; make one with `keyward audit checkpoint`"))?;
    Ok(Json(checkpoint_json(&row)))
}

/// `POST /v1/audit/checkpoint`: sign one now.
pub(super) async fn make_checkpoint(
    State(state): State<AppState>,
    _: Authorized<can::ReadAudit>,
) -> Result<Json<Value>, ApiError> {
    let row = tree::checkpoint(&state.store, &state.log_key, state.clock_now()).await?;
    Ok(Json(checkpoint_json(&row)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InclusionQuery {
    seq: u64,
    size: Option<u64>,
}

/// `GET /v1/audit/proof/inclusion?seq=N[&size=S]`.
pub(super) async fn inclusion(
    State(state): State<AppState>,
    _: Authorized<can::ReadAudit>,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let size = match query.size {
        Some(size) => size,
        None => state.store.audit_size().await.map_err(store_error)?,
    };
    let proof = tree::inclusion(&state.store, query.seq, size).await?;
    let root = tree::root(&state.store, size).await?;
    // The leaf hash from the tree, not the entry: it is there for pruned entries too.
    let leaf = state.store.audit_subtrees(&[(0, query.seq)], size).await.map_err(store_error)?;
    let leaf = leaf.get(&(0, query.seq)).ok_or_else(|| ApiError::not_found(format!("no entry {}", query.seq)))?;
    Ok(Json(json!({
        "seq": query.seq,
        "size": size,
        "leaf_hash": hex(leaf),
        "root": hex(&root),
        "proof": hexes(&proof),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsistencyQuery {
    old: u64,
    new: Option<u64>,
}

/// `GET /v1/audit/proof/consistency?old=M[&new=N]`.
pub(super) async fn consistency(
    State(state): State<AppState>,
    _: Authorized<can::ReadAudit>,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let new = match query.new {
        Some(new) => new,
        None => state.store.audit_size().await.map_err(store_error)?,
    };
    let proof = tree::consistency(&state.store, query.old, new).await?;
    Ok(Json(json!({
        "old": query.old,
        "new": new,
        "old_root": hex(&tree::root(&state.store, query.old).await?),
        "new_root": hex(&tree::root(&state.store, new).await?),
        "proof": hexes(&proof),
    })))
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| hex(h)).collect()
}

/// `GET /v1/audit/trace/{key}`: every entry about the run that `key` names. The key may be a
/// run ID, an AWS access key ID, a token's `jti`, a role session name or a Vault accessor; the
/// entries it finds name their runs, whose entries are added.
pub(super) async fn trace(
    State(state): State<AppState>,
    _: Authorized<can::ReadAudit>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let traced = trace_of(&state, &key).await?;
    Ok(Json(json!({
        "key": key,
        "entries": traced.lines,
        "log": { "size": traced.size, "root": traced.root },
    })))
}

/// What the log holds about a key, and the log it is in.
pub(super) struct Traced {
    /// The entries (export lines: `{"entry": …}`), in log order.
    pub(super) lines: Vec<Value>,
    /// The log's size.
    pub(super) size: u64,
    /// Its root (hex).
    pub(super) root: String,
    /// The entries as stored (their hashed bytes), in log order.
    pub(super) stored: Vec<StoredEntry>,
}

/// The entries that name `key` (as a run, access key ID, `jti`, role session or Vault accessor),
/// with every entry of the runs they belong to.
pub(super) async fn trace_of(state: &AppState, key: &str) -> Result<Traced, ApiError> {
    let direct: Vec<String> =
        ["run", "akid", "jti", "session", "accessor"].iter().map(|prefix| format!("{prefix}:{key}")).collect();
    let found = state.store.audit_entries_for(&direct).await.map_err(store_error)?;
    let runs: BTreeSet<String> = found
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.body).ok())
        .filter_map(|v| v.pointer("/context/run_id").and_then(Value::as_str).map(|r| format!("run:{r}")))
        .collect();
    let mut entries = found;
    if !runs.is_empty() {
        entries
            .extend(state.store.audit_entries_for(&runs.into_iter().collect::<Vec<_>>()).await.map_err(store_error)?);
    }
    entries.sort_by_key(|e| e.seq);
    entries.dedup_by_key(|e| e.seq);
    let size = state.store.audit_size().await.map_err(store_error)?;
    let root = tree::root(&state.store, size).await?;
    Ok(Traced { lines: lines(&entries)?, size, root: hex(&root), stored: entries })
}

/// The inclusion proof of each entry of `seqs`, with the tree size it is against: the signed
/// checkpoint's (`checkpoint`, its size) for the entries it covers, else the log's `size`.
pub(super) async fn inclusions(
    state: &AppState,
    seqs: &[u64],
    checkpoint: Option<u64>,
    size: u64,
) -> Result<Vec<(u64, tree::Inclusion)>, ApiError> {
    let covered = checkpoint.unwrap_or(0);
    let (old, new): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|&&seq| seq < covered);
    let mut proofs = Vec::with_capacity(seqs.len());
    for (seqs, size) in [(old, covered), (new, size)] {
        if !seqs.is_empty() {
            proofs.extend(tree::inclusions(&state.store, &seqs, size).await?.into_iter().map(|p| (size, p)));
        }
    }
    proofs.sort_by_key(|(_, proof)| proof.index);
    Ok(proofs)
}

/// The newest `limit` entries of any of `kinds`, newest first.
pub(super) async fn recent_of_kinds(state: &AppState, kinds: &[&str], limit: u64) -> Result<Vec<Value>, ApiError> {
    let mut entries = Vec::new();
    for kind in kinds {
        entries.extend(state.store.audit_tail(Some(kind), limit).await.map_err(store_error)?);
    }
    entries.sort_by_key(|e| std::cmp::Reverse(e.seq));
    entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    Ok(entries.iter().filter_map(|e| serde_json::from_str(&e.body).ok()).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PruneBody {
    before: u64,
}

/// `POST /v1/audit/prune`: delete entries below `before`, keeping the tree. Only entries that a
/// signed checkpoint covers can go; the pruning itself is an entry.
pub(super) async fn prune(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<super::extract::ApiJson<PruneBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let super::extract::ApiJson(body) = body?;
    let covered = state.store.latest_checkpoint().await.map_err(store_error)?.map_or(0, |c| c.size);
    if body.before > covered {
        return Err(ApiError::conflict(format!(
            "entries up to {} are covered by a signed checkpoint; sign one covering {} first (`keyward audit checkpoint`)",
            covered, body.before
        )));
    }
    let head = tree::root(&state.store, body.before).await?;
    let pruned = state.store.prune_audit_entries(body.before).await.map_err(store_error)?;
    let context = crate::audit::Context { actor: Some(operator.name.clone()), ..super::caller(&extensions) };
    let event = crate::audit::AuditEvent::new(crate::audit::Kind::AuditPruned, state.clock_now(), context)
        .with("before", body.before)
        .with("pruned", pruned)
        .with("root_at_before", hex(&head));
    state.audit.append(crate::audit::Append::events(vec![event])).await.map_err(|e| {
        tracing::error!(error = %e, "the pruning happened but could not be recorded");
        ApiError::unavailable("the entries were pruned, but the record of it failed; retry to record it")
    })?;
    tracing::info!(before = body.before, pruned, operator = %operator.name, "pruned audit entries");
    Ok(Json(json!({ "before": body.before, "pruned": pruned, "root_at_before": hex(&head) })))
}
