//! The `keyward.agent.v1` messages the broker receives (prost decoding), and the first thing the
//! broker does with the bytes inside them: the join token (`agents::join::JoinToken::parse`), the
//! CSR (`agents::ca::check_csr`) and a log chunk (`log_chunk::check_one`).
//!
//! Input: the first byte picks the message type (modulo 7: `EnrollRequest`, `RenewRequest`,
//! `AgentMessage`, `CredentialsRequest`, `PlanPart`, `FetchPlanRequest`,
//! `SourceCredentialsRequest`); the rest is its encoding. What must hold:
//! - a message that decodes re-encodes to `encoded_len` bytes and decodes to itself;
//! - a join token that parses prints as a token that parses to the same token.

use std::fmt::Debug;

use keyward_broker::agents::ca::check_csr;
use keyward_broker::agents::join::JoinToken;
use keyward_proto::agent_v1::{
    AgentMessage, CredentialsRequest, EnrollRequest, FetchPlanRequest, PlanPart, RenewRequest,
    SourceCredentialsRequest, agent_message,
};
use prost::Message;

use crate::{Outcome, log_chunk};

/// The message types, in the order the selector byte picks them.
pub const MESSAGES: [&str; 7] = [
    "EnrollRequest",
    "RenewRequest",
    "AgentMessage",
    "CredentialsRequest",
    "PlanPart",
    "FetchPlanRequest",
    "SourceCredentialsRequest",
];

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&selector, bytes)) = data.split_first() else { return Outcome::Refused };
    let decoded = match selector % 7 {
        0 => round_trip::<EnrollRequest>(bytes).map(|request| {
            if let Some(token) = JoinToken::parse(&request.join_token) {
                assert_eq!(JoinToken::parse(&token.expose()).as_ref(), Some(&token), "a join token round-trips");
            }
            let _ = check_csr(&request.csr_der);
        }),
        1 => round_trip::<RenewRequest>(bytes).map(|request| {
            let _ = check_csr(&request.csr_der);
        }),
        2 => round_trip::<AgentMessage>(bytes).map(|message| {
            if let Some(agent_message::Kind::LogChunk(chunk)) = &message.kind {
                log_chunk::check_one(chunk, false);
            }
        }),
        3 => round_trip::<CredentialsRequest>(bytes).map(drop),
        4 => round_trip::<PlanPart>(bytes).map(drop),
        5 => round_trip::<FetchPlanRequest>(bytes).map(drop),
        _ => round_trip::<SourceCredentialsRequest>(bytes).map(drop),
    };
    Outcome::from_bool(decoded.is_some())
}

fn round_trip<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len(), "encoded_len is the encoding's length");
    let again = M::decode(&encoded[..]).expect("a re-encoded message decodes");
    assert_eq!(again, message, "a message round-trips");
    Some(message)
}
