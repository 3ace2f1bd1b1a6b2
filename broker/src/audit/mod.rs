//! The tamper-evident audit log (DESIGN.md §4).
//!
//! - [`entry`]: what an entry says (kind, context chain, details), never a secret;
//! - [`canonical`]: the byte encoding that is hashed, reproducible by anyone;
//! - [`merkle`]: RFC 6962 tree heads and proofs;
//! - [`log`]: the group-commit writer; an entry is durable before the action it records is
//!   acknowledged, and a failed write fails the action (fail closed).

pub mod canonical;
pub mod entry;
pub mod log;
pub mod merkle;

pub use entry::{AuditEvent, Context, Entry, kinds};
pub use log::{Append, AuditLog, Committed, Stats, TokenClaim};
