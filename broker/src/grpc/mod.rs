//! The agents' gRPC edge (`keyward.agent.v1`): the one place that speaks tonic.
//!
//! [`listener`] terminates TLS (client certificates checked against the agent CA) and serves
//! [`service`], which turns each call into a call on [`crate::agents::Agents`] or
//! [`crate::runs::Runs`] and their answers into protocol messages. [`status`] is the one table
//! that turns domain errors, and the reasons the broker ends a work stream, into gRPC status
//! codes; agents act on those codes (a revoked agent stops, the others reconnect), so they are
//! part of the contract.

pub mod listener;
pub mod service;
pub mod status;
mod wire;
