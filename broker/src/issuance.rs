//! Issuing a token = minting it and recording it durably, in that order, before anyone sees it.
//!
//! The minter (`tokens/`) returns a [`PendingToken`]; [`record`] commits its `token.minted` entry
//! together with whatever else the caller needs on record with it (a decision, a consumed
//! subject token, a lease check) in one append, and releases the token against the log's
//! [`Recorded`](crate::audit::Recorded) receipt. Both paths that hand out tokens go through here:
//! the exchange (`exchange/`), which builds its own append, and an operator's
//! `POST /v1/run-tokens` ([`issue`]).

use crate::audit::{Append, AuditEvent, AuditLog, Committed, Context, Kind};
use crate::store::StoreError;
use crate::tokens::{MintError, MintRequest, MintedToken, Minter, PendingToken};

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request was refused.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The record could not be made durable, so the token was discarded.
    #[error("token could not be recorded: {0}")]
    Record(#[from] StoreError),
    /// The append's subject-token claim was taken before: the token was discarded, and the
    /// append's `if_replayed` entries were written instead.
    #[error("the subject token was already exchanged")]
    Replayed,
    /// A condition the append's writes depended on no longer held (a lease moved on): the
    /// token was discarded and nothing was written.
    #[error("token not issued: {0}")]
    Refused(crate::store::write::Refusal),
}

/// Mints a token for `request`, records it with `context` (who asked, which request), then
/// returns it: an operator's `POST /v1/run-tokens`.
pub async fn issue(
    minter: &Minter,
    log: &AuditLog,
    request: MintRequest,
    context: Context,
) -> Result<MintedToken, IssueError> {
    let pending = minter.mint(request)?;
    record(log, pending, context, Append::default()).await
}

/// Commits `pending`'s `token.minted` entry together with `append` (one transaction), then
/// returns the token. If `append`'s claim was taken before, the token is dropped and
/// [`IssueError::Replayed`] returned (the append's `if_replayed` entries are on record).
pub async fn record(
    log: &AuditLog,
    pending: PendingToken,
    context: Context,
    mut append: Append,
) -> Result<MintedToken, IssueError> {
    append.events.push(minted_event(&pending, context));
    let receipt = match log.append(append).await? {
        Committed::Recorded(receipt) => receipt,
        Committed::Replayed => return Err(IssueError::Replayed),
        Committed::Refused(refusal) => return Err(IssueError::Refused(refusal)),
    };
    let minted = pending.release(&receipt);
    let claims = &minted.claims;
    tracing::info!(
        jti = %claims.jti, kid = %minted.kid, aud = %claims.aud, run_id = %claims.run.run_id,
        stack_id = %claims.run.stack_id, phase = %claims.run.phase, exp = claims.exp,
        "issued run token"
    );
    Ok(minted)
}

/// The `token.minted` entry: the run chain from the token's own claims, who asked from `context`.
fn minted_event(pending: &PendingToken, context: Context) -> AuditEvent {
    let claims = pending.claims();
    let context = context.with_run(&claims.run);
    AuditEvent::new(Kind::TokenMinted, claims.iat, context)
        .with("jti", claims.jti.as_str())
        .with("kid", pending.kid())
        .with("alg", pending.algorithm().as_str())
        .with("sub", claims.sub.as_str())
        .with("aud", claims.aud.as_str())
        .with("iat", claims.iat)
        .with("exp", claims.exp)
        .with_ref("jti", &claims.jti)
}
