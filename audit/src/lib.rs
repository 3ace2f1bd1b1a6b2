//! Keyward's evidence, and how to check it without a broker.
//!
//! The broker writes three kinds of evidence an auditor keeps: the audit log (entries hashed into
//! an RFC 6962 Merkle tree, whose heads are signed as C2SP checkpoints), exports of it, and job
//! logs (chains of chunks signed by agents, bundled with their certificates). Their formats and
//! every check of them live here, in a crate with no async runtime, database or network stack, so
//! the same code that the broker runs is what `keyward-verify` runs on an auditor's machine:
//!
//! - [`entry`]: what an entry says (kind, context chain, details), never a secret;
//! - [`canonical`]: the byte encoding that is hashed, reproducible by anyone;
//! - [`merkle`]: RFC 6962 tree heads, inclusion and consistency proofs, and their verification;
//! - [`checkpoint`]: signed tree heads (C2SP signed notes, Ed25519): signing and verification;
//! - [`export`]: offline verification of an export against checkpoints;
//! - [`proof`]: the broker's proof answers (`/v1/audit/proof/…`), checked here;
//! - [`joblog`]: a job-log chunk's checks and a run's log bundle.
//!
//! Storage, the KEK-sealed checkpoint key and the writer stay in the broker.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod canonical;
pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod joblog;
pub mod merkle;
pub mod proof;
pub mod tiles;

pub use entry::{AuditEvent, Context, Entry, Kind, kinds};
