//! The tamper-evident audit log (DESIGN.md §4).
//!
//! - [`entry`]: what an entry says (kind, context chain, details), never a secret;
//! - [`canonical`]: the byte encoding that is hashed, reproducible by anyone;
//! - [`merkle`]: RFC 6962 tree heads and proofs;
//! - [`log`]: the group-commit writer; an entry is durable before the action it records is
//!   acknowledged, and a failed write fails the action (fail closed);
//! - [`tree`]: heads and proofs from the stored tree; [`checkpoint`]: signed tree heads;
//! - [`verify`]: offline verification of an export, as `keyward audit verify` runs it;
//! - [`sinks`]: at-least-once delivery to a rotated file and signed webhooks, off the append path.

pub mod canonical;
pub mod checkpoint;
pub mod entry;
pub mod events;
pub mod log;
pub mod merkle;
pub mod sinks;
pub mod tree;
pub mod verify;

pub use entry::{AuditEvent, Context, Entry, Kind, kinds};
pub use log::{Append, AuditLog, ChangeError, Committed, Stats, TokenClaim};
