//! The tamper-evident audit log (DESIGN.md §4).
//!
//! The formats and their checks are the `keyward-audit` crate's, shared with the offline verifier
//! `keyward-verify`; they are re-exported here under their old paths:
//!
//! - [`entry`]: what an entry says (kind, context chain, details), never a secret;
//! - [`canonical`]: the byte encoding that is hashed, reproducible by anyone;
//! - [`merkle`]: RFC 6962 tree heads and proofs;
//! - [`checkpoint`]: the signed-note format of tree heads;
//! - [`verify`]: offline verification of an export, as `keyward audit verify` runs it.
//!
//! What needs the store, the KEK or the network is the broker's:
//!
//! - [`writer`]: the group-commit writer; an entry is durable before the action it records is
//!   acknowledged, and a failed write fails the action (fail closed);
//! - [`integrator`]: tiles and lookup keys built from committed batches, off the append path;
//! - [`tree`]: heads and proofs from the stored tree; [`log_key`]: the checkpoint key, sealed;
//! - [`stored`]: the log inside a database file (a backup) verified offline;
//! - [`sinks`]: at-least-once delivery to a rotated file and signed webhooks, off the append path.

pub mod events;
pub mod integrator;
pub mod log_key;
pub mod run_evidence;
pub mod sinks;
pub mod stored;
pub mod trace_view;
pub mod tree;
pub mod writer;

pub use keyward_audit::export as verify;
pub use keyward_audit::{canonical, checkpoint, entry, merkle};

pub use entry::{AuditEvent, Context, Entry, Kind, kinds};
pub use log_key::{LogKey, LogKeyError};
pub use writer::{Append, AuditLog, ChangeError, Committed, Recorded, Stats, TokenClaim, export_line};
