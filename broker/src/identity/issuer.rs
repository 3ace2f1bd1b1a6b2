//! Issuing a token = minting it and recording it durably, in that order, before anyone sees it.
//!
//! The types make the order hold: [`Issuer::mint`] returns a [`PendingToken`], whose claims can be
//! read (to put them in other records) but whose signed form cannot; only [`Issuer::release`]
//! turns it into a [`MintedToken`], and only after the journal committed the token's record
//! together with whatever else the caller needs on record with it (a decision, a consumed
//! subject token). So "every token's `jti` is on record before it is returned" holds by
//! construction. The audit log will make the record tamper-evident; the contract stays.

use std::sync::Arc;

use keyward_proto::claims::RunClaims;

use super::mint::{MintError, MintRequest, MintedToken, Minter};
use crate::store::{Committed, IssuedTokenRow, Journal, JournalEntry, Record, StoreError};

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request was refused.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The record could not be made durable, so the token was discarded.
    #[error("token could not be recorded: {0}")]
    Record(#[from] StoreError),
    /// The entry's subject-token claim was taken before: the token was discarded, and the entry's
    /// `if_replayed` records were written instead.
    #[error("the subject token was already exchanged")]
    Replayed,
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
    journal: Journal,
}

impl Issuer {
    /// An issuer over `minter`, recording through `journal`.
    pub fn new(minter: Arc<Minter>, journal: Journal) -> Self {
        Self { minter, journal }
    }

    /// The underlying minter.
    pub fn minter(&self) -> &Minter {
        &self.minter
    }

    /// Signs a token for `request`; it can be handed out once [`released`](Self::release).
    pub fn mint(&self, request: MintRequest) -> Result<PendingToken, MintError> {
        Ok(PendingToken(self.minter.mint(request)?))
    }

    /// Mints a token for `request` on behalf of `requested_by`, records it, then returns it.
    pub async fn issue(&self, request: MintRequest, requested_by: &str) -> Result<MintedToken, IssueError> {
        let pending = self.mint(request)?;
        self.release(pending, requested_by, JournalEntry::default()).await
    }

    /// Commits the token's record together with `entry` (one transaction), then returns the
    /// token. If `entry`'s claim was taken before, the token is dropped and
    /// [`IssueError::Replayed`] returned (the entry's `if_replayed` records are on record).
    pub async fn release(
        &self,
        pending: PendingToken,
        requested_by: &str,
        mut entry: JournalEntry,
    ) -> Result<MintedToken, IssueError> {
        let minted = pending.0;
        let claims = &minted.claims;
        entry.records.push(Record::IssuedToken(IssuedTokenRow {
            jti: claims.jti.clone(),
            kid: minted.kid.clone(),
            subject: claims.sub.clone(),
            audience: claims.aud.clone(),
            run_id: claims.run_id.clone(),
            stack_id: claims.stack_id.clone(),
            phase: claims.phase.as_str().to_owned(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            issued_by: requested_by.to_owned(),
            claims: serde_json::to_string(claims).unwrap_or_default(),
        }));
        match self.journal.write(entry).await? {
            Committed::Recorded => {}
            Committed::Replayed => return Err(IssueError::Replayed),
        }
        tracing::info!(
            jti = %claims.jti, kid = %minted.kid, aud = %claims.aud, run_id = %claims.run_id,
            stack_id = %claims.stack_id, phase = %claims.phase, exp = claims.exp, requested_by,
            "issued run token"
        );
        Ok(minted)
    }
}
