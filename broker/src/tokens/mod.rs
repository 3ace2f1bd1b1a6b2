//! Run tokens: signed, checked, and held back until they are on record. Pure: no I/O, no store, no
//! configuration; the keys that sign come in through [`mint::CurrentKey`] (the DB-backed key ring
//! is `keys/`), and a token is handed out only against the audit log's [`Recorded`] receipt.
//!
//! - [`signer`] holds a parsed key and produces compact JWS.
//! - [`rules`] are what every minted token follows (`[tokens]`), checked and parsed once.
//! - [`mint`] turns a validated request into a run token's claims and signs them.
//! - [`pending`] holds a signed token until its `token.minted` entry is durable.
//! - [`verify`] checks incoming JWTs (subject tokens) strictly, against a trusted key set.
//!
//! Nothing here knows about HTTP; `http/` adapts these types to the wire.
//!
//! [`Recorded`]: crate::audit::Recorded

pub mod mint;
pub mod pending;
pub mod rules;
pub mod signer;
pub mod verify;

pub use mint::{CurrentKey, FixedKey, MintError, MintRequest, Minter};
pub use pending::{MintedToken, PendingToken, TokenString};
pub use rules::{MintRules, SourceIdentity};
pub use signer::{Jwk, Signer, SigningAlgorithm};
