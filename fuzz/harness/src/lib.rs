//! What each fuzz target feeds the broker, and what must hold whatever the input.
//!
//! One module per parser that faces untrusted input; each has a `check(data)` that never panics
//! on its own account: a panic is either a crash in the code under test or a broken property,
//! and both are findings. `check` returns an [`Outcome`] so the corpus test can tell that the
//! checked-in seeds still reach past the parsers (a valid token is still accepted).
//!
//! The keys in `keys/` are test keys made for fuzzing; nothing trusts them.

#![allow(clippy::panic, clippy::expect_used)]

pub mod fixtures;

pub mod agent_proto;
pub mod audit_export;
pub mod jwks;
pub mod jwt;
pub mod log_bundle;
pub mod log_chunk;
pub mod plan_json;
pub mod policy_input;
pub mod token_form;
pub mod vcs_event;

/// How far one input got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted: the token verified, the export verified, the form was a valid exchange, …
    Accepted,
    /// Refused with an error (the expected fate of most fuzz inputs).
    Refused,
}

impl Outcome {
    /// `Accepted` when `accepted`.
    pub fn from_bool(accepted: bool) -> Self {
        if accepted { Self::Accepted } else { Self::Refused }
    }
}

/// The names of the targets, as `fuzz/Cargo.toml` and `fuzz/corpus/` name them.
pub const TARGETS: &[&str] = &[
    "jwt",
    "jwks",
    "token_form",
    "policy_input",
    "audit_export",
    "log_chunk",
    "log_bundle",
    "agent_proto",
    "plan_json",
    "vcs_event",
];

/// Runs the check of `target` on `data`; `None` for an unknown target.
pub fn check(target: &str, data: &[u8]) -> Option<Outcome> {
    Some(match target {
        "jwt" => jwt::check(data),
        "jwks" => jwks::check(data),
        "token_form" => token_form::check(data),
        "policy_input" => policy_input::check(data),
        "audit_export" => audit_export::check(data),
        "log_chunk" => log_chunk::check(data),
        "log_bundle" => log_bundle::check(data),
        "agent_proto" => agent_proto::check(data),
        "plan_json" => plan_json::check(data),
        "vcs_event" => vcs_event::check(data),
        _ => return None,
    })
}
