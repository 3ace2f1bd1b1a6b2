//! The signed log chunk's digest: the one definition the agent (which chains and signs chunks)
//! and the broker and `keyward run logs --verify` (which check them) must agree on byte for byte.
//!
//! A job's log is one hash chain per lease (a job leased again starts a new chain under its new
//! fencing token). Each chunk's digest covers everything the chunk says: which run, job and lease
//! it belongs to, which stream, its place in the chain, the previous digest and the (already
//! masked) bytes. Every variable-length field is length-prefixed, so no two different chunks
//! encode to the same input. The signature is over this digest, so a verified signature on the
//! last chunk vouches for the whole chain before it.

use aws_lc_rs::digest;

/// The `prev_digest` of a chain's first chunk.
pub const GENESIS: [u8; 32] = [0; 32];

/// The largest `data` one chunk carries; the agent cuts output into pieces no larger.
pub const MAX_CHUNK_DATA: usize = 64 * 1024;

/// The streams a chunk may belong to: the job's own output, and the agent's lines about it
/// (each step's command, how it ended, truncation).
pub const STREAMS: [&str; 3] = ["stdout", "stderr", "keyward"];

/// What a chunk's digest covers.
#[derive(Debug, Clone, Copy)]
pub struct ChunkFields<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The job.
    pub job_id: &'a str,
    /// The lease the chain belongs to.
    pub fencing_token: u64,
    /// `stdout`, `stderr` or `keyward`.
    pub stream: &'a str,
    /// Position in the chain, from 0.
    pub seq: u64,
    /// The previous chunk's digest ([`GENESIS`] for the first).
    pub prev_digest: &'a [u8],
    /// The masked output.
    pub data: &'a [u8],
}

/// SHA-256 over the domain tag and every field, each variable-length one prefixed by its length.
pub fn chunk_digest(chunk: &ChunkFields<'_>) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"keyward.log-chunk.v1\0");
    for field in [chunk.run_id.as_bytes(), chunk.job_id.as_bytes()] {
        context.update(&(field.len() as u64).to_be_bytes());
        context.update(field);
    }
    context.update(&chunk.fencing_token.to_be_bytes());
    context.update(&(chunk.stream.len() as u64).to_be_bytes());
    context.update(chunk.stream.as_bytes());
    context.update(&chunk.seq.to_be_bytes());
    context.update(&(chunk.prev_digest.len() as u64).to_be_bytes());
    context.update(chunk.prev_digest);
    context.update(&(chunk.data.len() as u64).to_be_bytes());
    context.update(chunk.data);
    let mut out = [0_u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(data: &'a [u8], stream: &'a str) -> ChunkFields<'a> {
        ChunkFields { run_id: "r", job_id: "j", fencing_token: 1, stream, seq: 0, prev_digest: &GENESIS, data }
    }

    #[test]
    fn every_field_changes_the_digest() {
        let base = chunk_digest(&fields(b"hello", "stdout"));
        assert_ne!(base, chunk_digest(&fields(b"hellO", "stdout")));
        assert_ne!(base, chunk_digest(&fields(b"hello", "stderr")));
        assert_ne!(base, chunk_digest(&ChunkFields { seq: 1, ..fields(b"hello", "stdout") }));
        assert_ne!(base, chunk_digest(&ChunkFields { fencing_token: 2, ..fields(b"hello", "stdout") }));
        assert_ne!(base, chunk_digest(&ChunkFields { job_id: "k", ..fields(b"hello", "stdout") }));
        assert_ne!(base, chunk_digest(&ChunkFields { prev_digest: &[1; 32], ..fields(b"hello", "stdout") }));
        // Length prefixes: moving a byte from one field to the next is a different chunk.
        let a = chunk_digest(&ChunkFields { run_id: "ab", job_id: "c", ..fields(b"", "stdout") });
        let b = chunk_digest(&ChunkFields { run_id: "a", job_id: "bc", ..fields(b"", "stdout") });
        assert_ne!(a, b);
        assert_eq!(base, chunk_digest(&fields(b"hello", "stdout")));
    }
}
