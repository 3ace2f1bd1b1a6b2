//! A signed token on its way out: first [`PendingToken`], which cannot be handed out, then, once
//! the audit log has committed its `token.minted` entry, [`MintedToken`].
//!
//! The types make the order hold: the minter returns a [`PendingToken`], whose claims, key and
//! algorithm can be read (to put them in other records) but whose signed form cannot; only
//! [`PendingToken::release`] turns it into a [`MintedToken`], and it takes the audit log's
//! [`Recorded`] receipt, which nothing but a committed append creates. So "every token's `jti`
//! is on record before it is returned" holds by construction, without this module doing I/O.

use std::fmt;

use keyward_proto::claims::RunClaims;

use super::signer::SigningAlgorithm;
use crate::audit::Recorded;

/// A signed token string. Never printed by `Debug`; read it with [`TokenString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct TokenString(pub(super) String);

impl fmt::Debug for TokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenString(…)")
    }
}

impl TokenString {
    /// The compact JWS, for sending to the caller.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A freshly signed token, on record, and what it says.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The compact JWS.
    pub token: TokenString,
    /// Its claims.
    pub claims: RunClaims,
    /// The key that signed it.
    pub kid: String,
    /// That key's algorithm.
    pub algorithm: SigningAlgorithm,
}

/// A signed token that is not on record yet, so it cannot be handed out. Its claims are readable.
#[derive(Debug)]
pub struct PendingToken(MintedToken);

impl PendingToken {
    pub(super) fn new(minted: MintedToken) -> Self {
        Self(minted)
    }

    /// The claims the token carries.
    pub fn claims(&self) -> &RunClaims {
        &self.0.claims
    }

    /// The key that signed it.
    pub fn kid(&self) -> &str {
        &self.0.kid
    }

    /// That key's algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.0.algorithm
    }

    /// The token, now that `receipt` says its `token.minted` entry is durable.
    pub fn release(self, receipt: &Recorded) -> MintedToken {
        // Having a receipt is the whole check: only a committed append makes one.
        let _ = receipt;
        self.0
    }

    /// The signed form, for this module's tests only (they have no audit log to record in).
    #[cfg(test)]
    pub(crate) fn token_for_tests(&self) -> &TokenString {
        &self.0.token
    }
}
