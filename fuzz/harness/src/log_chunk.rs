//! A signed log chunk as it arrives on an agent's work stream: the protobuf `SignedLogChunk`,
//! as the broker reads it (`logs::chunk_to_check`), then the per-chunk checks
//! (`keyward_audit::joblog::chunk::check_chunk`: bounds, digest of
//! `keyward_proto::logs::chunk_digest`, the agent's signature, its place in the chain).
//!
//! Input: the first byte says whether the chunk's digest and signature are recomputed here with
//! the fixture agent key (bit 0: the fuzzer's fields then reach the chain checks) and which head
//! the chain has (bit 1: the chunk's own `prev_digest` at `seq - 1`, else none yet); the rest is
//! the encoded message. What must hold:
//! - a chunk that passes is within bounds, its digest covers its fields, its signature is the
//!   key's and it is exactly the chain's next link;
//! - the message re-encodes and decodes to itself.

use keyward_broker::joblogs::chunk_to_check;
use keyward_broker::joblogs::verify::{Head, check_chunk};
use keyward_proto::agent_v1::SignedLogChunk;
use keyward_proto::logs::{GENESIS, MAX_CHUNK_DATA, STREAMS, chunk_digest};
use prost::Message as _;

use crate::Outcome;
use crate::fixtures::{agent_key, agent_sign};

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&mode, rest)) = data.split_first() else { return Outcome::Refused };
    let Ok(mut chunk) = SignedLogChunk::decode(rest) else { return Outcome::Refused };
    let reencoded = chunk.encode_to_vec();
    assert_eq!(reencoded.len(), chunk.encoded_len(), "encoded_len is the encoding's length");
    assert_eq!(SignedLogChunk::decode(&reencoded[..]).ok().as_ref(), Some(&chunk), "the chunk round-trips");
    if mode & 1 == 1 {
        let digest = chunk_digest(&chunk_to_check(&chunk).fields);
        chunk.signature = agent_sign(&digest);
        chunk.digest = digest.to_vec();
    }
    Outcome::from_bool(check_one(&chunk, mode & 2 == 2))
}

/// Checks `chunk` against a chain whose head is its own link (`follows`) or that is empty;
/// `true` when it passed.
pub fn check_one(chunk: &SignedLogChunk, follows: bool) -> bool {
    let head: Head<'_> = match (follows, chunk.seq.checked_sub(1)) {
        (true, Some(previous)) => Some((previous, chunk.prev_digest.as_slice())),
        _ => None,
    };
    let to_check = chunk_to_check(chunk);
    let Ok(()) = check_chunk(&to_check, head, agent_key()) else { return false };
    assert!(STREAMS.contains(&chunk.stream.as_str()), "a passed chunk names a known stream");
    assert!(chunk.data.len() <= MAX_CHUNK_DATA, "a passed chunk is within bounds");
    assert_eq!(chunk_digest(&to_check.fields).as_slice(), chunk.digest.as_slice(), "the digest covers the fields");
    assert!(agent_key().verifies(&chunk.digest, &chunk.signature), "the agent signed it");
    match head {
        None => assert!(chunk.seq == 0 && chunk.prev_digest == GENESIS, "a first chunk starts the chain"),
        Some((previous, digest)) => assert!(chunk.seq == previous + 1 && chunk.prev_digest == digest),
    }
    true
}
