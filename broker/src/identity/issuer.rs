//! Issuing a token = minting it and recording it durably, in that order, before anyone sees it.
//!
//! Every path that hands a token to someone goes through [`Issuer::issue`], so "every token's `jti`
//! is on record" holds by construction. The audit log will replace the record with a tamper-evident
//! entry; the contract (durable before returned, or not returned at all) stays.

use std::sync::Arc;

use super::mint::{MintError, MintRequest, MintedToken, Minter};
use crate::store::{IssuedTokenRow, Store, StoreError};

/// Why a token was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request was refused.
    #[error(transparent)]
    Mint(#[from] MintError),
    /// The record could not be made durable, so the token was discarded.
    #[error("token could not be recorded: {0}")]
    Record(#[from] StoreError),
}

/// Mints and records tokens.
#[derive(Debug, Clone)]
pub struct Issuer {
    minter: Arc<Minter>,
    store: Store,
}

impl Issuer {
    /// An issuer over `minter`, recording into `store`.
    pub fn new(minter: Arc<Minter>, store: Store) -> Self {
        Self { minter, store }
    }

    /// The underlying minter.
    pub fn minter(&self) -> &Minter {
        &self.minter
    }

    /// Mints a token for `request` on behalf of `requested_by`, records it, then returns it.
    pub async fn issue(&self, request: MintRequest, requested_by: &str) -> Result<MintedToken, IssueError> {
        let minted = self.minter.mint(request)?;
        let claims = &minted.claims;
        let row = IssuedTokenRow {
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
        };
        self.store.record_issued_token(&row).await?;
        tracing::info!(
            jti = %claims.jti, kid = %minted.kid, aud = %claims.aud, run_id = %claims.run_id,
            stack_id = %claims.stack_id, phase = %claims.phase, exp = claims.exp, requested_by,
            "issued run token"
        );
        Ok(minted)
    }
}
