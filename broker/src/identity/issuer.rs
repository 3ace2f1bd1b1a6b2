//! Issuing a token = minting it and recording it durably, in that order, before anyone sees it.
//!
//! The types make the order hold: [`Issuer::mint`] returns a [`PendingToken`], whose claims can be
//! read (to put them in other records) but whose signed form cannot; only [`Issuer::release`]
//! turns it into a [`MintedToken`], and only after the audit log committed its `token.minted`
//! entry together with whatever else the caller needs on record with it (a decision, a consumed
//! subject token). So "every token's `jti` is on record before it is returned" holds by
//! construction.

use std::sync::Arc;

use keyward_proto::claims::RunClaims;

use super::mint::{MintError, MintRequest, MintedToken, Minter};
use crate::audit::{Append, AuditEvent, AuditLog, Committed, Context, Kind};
use crate::store::StoreError;

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

/// A signed token that is not on record yet, so it cannot be handed out. Its claims are readable.
#[derive(Debug)]
pub struct PendingToken(MintedToken);

impl PendingToken {
    /// The claims the token carries.
    pub fn claims(&self) -> &RunClaims {
        &self.0.claims
    }
}

/// Mints and records tokens.
#[derive(Debug, Clone)]
pub struct Issuer {
    minter: Arc<Minter>,
    log: AuditLog,
}

impl Issuer {
    /// An issuer over `minter`, recording in `log`.
    pub fn new(minter: Arc<Minter>, log: AuditLog) -> Self {
        Self { minter, log }
    }

    /// The underlying minter.
    pub fn minter(&self) -> &Minter {
        &self.minter
    }

    /// Signs a token for `request`; it can be handed out once [`released`](Self::release).
    pub fn mint(&self, request: MintRequest) -> Result<PendingToken, MintError> {
        Ok(PendingToken(self.minter.mint(request)?))
    }

    /// Mints a token for `request`, records it with `context` (who asked, which request), then
    /// returns it.
    pub async fn issue(&self, request: MintRequest, context: Context) -> Result<MintedToken, IssueError> {
        let pending = self.mint(request)?;
        self.release(pending, context, Append::default()).await
    }

    /// Commits the token's `token.minted` entry together with `append` (one transaction), then
    /// returns the token. If `append`'s claim was taken before, the token is dropped and
    /// [`IssueError::Replayed`] returned (the append's `if_replayed` entries are on record).
    pub async fn release(
        &self,
        pending: PendingToken,
        context: Context,
        mut append: Append,
    ) -> Result<MintedToken, IssueError> {
        let minted = pending.0;
        let event = minted_event(&minted, context);
        append.events.push(event);
        match self.log.append(append).await? {
            Committed::Recorded => {}
            Committed::Replayed => return Err(IssueError::Replayed),
            Committed::Refused(refusal) => return Err(IssueError::Refused(refusal)),
        }
        let claims = &minted.claims;
        tracing::info!(
            jti = %claims.jti, kid = %minted.kid, aud = %claims.aud, run_id = %claims.run_id,
            stack_id = %claims.stack_id, phase = %claims.phase, exp = claims.exp,
            "issued run token"
        );
        Ok(minted)
    }
}

/// The `token.minted` entry: the run chain from the token's own claims, who asked from `context`.
fn minted_event(minted: &MintedToken, context: Context) -> AuditEvent {
    let claims = &minted.claims;
    let context = Context {
        run_id: Some(claims.run_id.clone()),
        stack_id: Some(claims.stack_id.clone()),
        phase: Some(claims.phase.as_str().to_owned()),
        repository: claims.repository.clone(),
        commit_sha: claims.commit_sha.clone(),
        git_ref: claims.git_ref.clone(),
        pull_request: claims.pull_request,
        ticket: claims.ticket.clone(),
        triggered_by: claims.triggered_by.clone(),
        approved_by: claims.approved_by.clone(),
        asserted_by: claims.asserted_by.clone(),
        ..context
    };
    AuditEvent::new(Kind::TokenMinted, claims.iat, context)
        .with("jti", claims.jti.as_str())
        .with("kid", minted.kid.as_str())
        .with("alg", minted.algorithm.as_str())
        .with("sub", claims.sub.as_str())
        .with("aud", claims.aud.as_str())
        .with("iat", claims.iat)
        .with("exp", claims.exp)
        .with_ref("jti", &claims.jti)
}
