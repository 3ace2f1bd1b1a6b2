//! The broker as an OIDC issuer: signing keys, their rotation, and run-token minting.
//!
//! - [`kek`] seals private keys at rest under the operator's key-encryption key.
//! - [`signer`] holds a parsed key and produces compact JWS.
//! - [`keyring`] owns the key lifecycle (`next → current → retired`) and the published JWKS.
//! - [`rules`] are what every minted token follows (`[tokens]`), checked and parsed once.
//! - [`mint`] turns a validated request into a run token's claims and signs them.
//! - [`issuer`] records each minted token durably before handing it out.
//! - [`verify`] checks incoming JWTs (subject tokens) strictly, against a trusted key set.
//!
//! Nothing here knows about HTTP; `http/` adapts these types to the wire.

pub mod issuer;
pub mod kek;
pub mod keyring;
pub mod mint;
pub mod rules;
pub mod signer;
pub mod verify;

pub use rules::{MintRules, SourceIdentity};
pub use signer::{Jwk, Signer, SigningAlgorithm};
