//! Keyward's shared contract.
//!
//! The broker and the agent never depend on each other; everything they both need to agree on lives
//! here: the gRPC agent protocol (`keyward.agent.v1`, compiled from `proto/` by `protox`), the
//! run-token claim set that relying parties, agents and the broker all read, the digest that
//! chains and signs a job's log chunks, how git is handed a private repository's credentials,
//! which paths a mounted file may take, the hex and PEM encodings they all write, the redacting type
//! secrets travel in, and the Prometheus histograms and text format both `/metrics` pages use.
//!
//! The gRPC protocol is behind the `grpc` feature (on by default), so the offline verifier
//! (`keyward-audit`) uses the log digest and encodings without prost or tonic.

#![forbid(unsafe_code)]

pub mod claims;
pub mod encoding;
pub mod git;
pub mod logs;
pub mod mount;
pub mod prometheus;
pub mod secret;

/// The agent protocol, `keyward.agent.v1`, generated at build time from `proto/keyward/agent/v1/agent.proto`.
#[cfg(feature = "grpc")]
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
pub mod agent_v1 {
    include!(concat!(env!("OUT_DIR"), "/keyward.agent.v1.rs"));
}
