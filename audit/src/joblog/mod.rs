//! Jobs' signed logs: the checks one chunk passes ([`chunk`]) and a run's whole log as an
//! exportable bundle ([`bundle`]).
//!
//! The broker runs [`chunk::check_chunk`] on every chunk an agent sends, before storing it;
//! `keyward run logs --verify` and `keyward-verify logs` run the same check on every chunk of a
//! bundle, with the certificate chain and the heads sealed in the audit log on top. One
//! implementation, so what the broker accepted is exactly what an auditor can re-check.

pub mod bundle;
pub mod chunk;

pub use bundle::{Bundle, BundleError, verify as verify_bundle};
pub use chunk::{AgentKey, ChunkToCheck, Head, Rejection, check_chunk, fingerprint};
