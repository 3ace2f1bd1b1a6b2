//! The Keyward worker agent.
//!
//! The agent runs inside a customer's network, dials out to the broker (nothing dials in),
//! enrolls with a one-time join token ([`enroll`]), keeps its identity in a data directory
//! ([`datadir`]), connects over mTLS ([`channel`]) and takes jobs on a long-lived work stream
//! ([`daemon`]), parsing each assignment into a [`job::Job`] once and running its phase with the
//! [`runner`] and the job's [`credentials`]. It shares only `keyward-proto` with the
//! broker.

#![forbid(unsafe_code)]

pub mod channel;
pub mod credentials;
pub mod daemon;
pub mod datadir;
pub mod enroll;
pub mod hooks;
pub mod hostnet;
pub mod idrange;
pub mod job;
pub mod launch;
pub mod logs;
pub mod metrics;
pub mod metrics_http;
pub mod mounts;
pub mod planfile;
pub mod plans;
pub mod runner;
pub mod scan;
pub mod slots;
pub mod source;
pub mod state_relay;
pub mod step;
pub mod terraform;
pub mod tools;

/// The agent protocol version this build speaks.
pub const PROTOCOL_PACKAGE: &str = "keyward.agent.v1";

/// The agent's version string, as sent in `Hello`.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
