//! One job's log: masks what its processes write, cuts it into chunks by size and time, chains
//! them and hands them to the [`Outbox`].
//!
//! Output is masked per stream ([`Masker`]) before anything else sees it; only masked bytes are
//! buffered, chained, kept for the job's error message or counted. A job may write at most
//! `limit` bytes: past that, one signed `keyward` line says the output was truncated and the rest
//! is read and discarded (the process is not blocked, and memory stays bounded).

use std::collections::VecDeque;
use std::sync::Arc;

use keyward_proto::logs::MAX_CHUNK_DATA;
use tokio::sync::Mutex;

use super::chain::{Chain, Chunk};
use super::mask::{MaskRules, Masker};
use super::outbox::Outbox;
use crate::job::Job;

/// The default most bytes of output one job may log.
pub const DEFAULT_LIMIT: u64 = 32 * 1024 * 1024;
/// Masked output kept for a failed job's error message.
const TAIL_BYTES: usize = 2048;

/// Which stream output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// Its standard error.
    Stderr,
    /// The agent's own lines about the job.
    Keyward,
}

impl Stream {
    const ALL: [Self; 3] = [Self::Stdout, Self::Stderr, Self::Keyward];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Keyward => "keyward",
        }
    }
}

/// The log's end: what the job's result reports and the broker seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSummary {
    /// The last chunk's digest, if there was any chunk.
    pub head: Option<[u8; 32]>,
    /// How many chunks.
    pub chunks: u64,
    /// Bytes discarded past the limit.
    pub discarded: u64,
}

struct Buffer {
    masker: Masker,
    masked: Vec<u8>,
}

struct Buffers {
    stdout: Buffer,
    stderr: Buffer,
    keyward: Buffer,
}

impl Buffers {
    fn of(&mut self, stream: Stream) -> &mut Buffer {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
            Stream::Keyward => &mut self.keyward,
        }
    }
}

struct State {
    rules: Arc<MaskRules>,
    chain: Chain,
    buffers: Buffers,
    logged: u64,
    limit: u64,
    discarded: u64,
    tail: VecDeque<u8>,
}

/// The log of one job.
pub struct JobLog {
    state: Mutex<State>,
    outbox: Arc<Outbox>,
}

impl std::fmt::Debug for JobLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLog").finish_non_exhaustive()
    }
}

impl JobLog {
    /// A log for `job`'s current lease, masked with `rules`, at most `limit` bytes.
    pub fn new(job: &Job, rules: &Arc<MaskRules>, limit: u64, outbox: Arc<Outbox>) -> Self {
        let buffer = || Buffer { masker: Masker::new(Arc::clone(rules)), masked: Vec::new() };
        Self {
            state: Mutex::new(State {
                rules: Arc::clone(rules),
                chain: Chain::new(&job.run_id, &job.job_id, job.fencing_token),
                buffers: Buffers { stdout: buffer(), stderr: buffer(), keyward: buffer() },
                logged: 0,
                limit,
                discarded: 0,
                tail: VecDeque::with_capacity(TAIL_BYTES),
            }),
            outbox,
        }
    }

    /// Output read from `stream`.
    pub async fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.state.lock().await;
        if state.logged >= state.limit {
            state.discarded += bytes.len() as u64;
            return;
        }
        let mut masked = Vec::with_capacity(bytes.len());
        let buffer = &mut state.buffers.of(stream);
        buffer.masker.push(bytes, &mut masked);
        self.take(&mut state, stream, masked).await;
    }

    /// A line of the agent's own about the job (`keyward` stream), masked like the rest.
    pub async fn note(&self, line: &str) {
        let mut text = line.as_bytes().to_vec();
        text.push(b'\n');
        let mut state = self.state.lock().await;
        let mut masked = Vec::with_capacity(text.len());
        let buffer = &mut state.buffers.of(Stream::Keyward);
        buffer.masker.push(&text, &mut masked);
        buffer.masker.finish(&mut masked);
        buffer.masked.extend_from_slice(&masked);
        self.cut(&mut state, Stream::Keyward, true).await;
    }

    /// Sends what is buffered (called on a timer, so a quiet job's last lines still arrive).
    pub async fn flush(&self) {
        let mut state = self.state.lock().await;
        for stream in Stream::ALL {
            self.cut(&mut state, stream, true).await;
        }
    }

    /// `stream` ended (its process closed it): what the masker held back goes out.
    pub async fn close(&self, stream: Stream) {
        let mut state = self.state.lock().await;
        let mut masked = Vec::new();
        state.buffers.of(stream).masker.finish(&mut masked);
        self.take(&mut state, stream, masked).await;
        self.cut(&mut state, stream, true).await;
    }

    /// The job ended: closes every stream, notes any truncation, and returns the chain's head.
    pub async fn finish(&self) -> LogSummary {
        for stream in Stream::ALL {
            self.close(stream).await;
        }
        let discarded = self.state.lock().await.discarded;
        if discarded > 0 {
            self.note(&format!("keyward: {discarded} further bytes of output were discarded")).await;
        }
        let state = self.state.lock().await;
        let (head, chunks) = state.chain.head().map_or((None, 0), |(head, count)| (Some(head), count));
        LogSummary { head, chunks, discarded }
    }

    /// `text` masked with the job's rules as a whole (a plan's JSON, before it leaves the agent).
    pub async fn mask(&self, text: &[u8]) -> Vec<u8> {
        let state = self.state.lock().await;
        let mut masker = Masker::new(Arc::clone(&state.rules));
        drop(state);
        let mut out = Vec::with_capacity(text.len());
        masker.push(text, &mut out);
        masker.finish(&mut out);
        out
    }

    /// Masks `secrets` from now on (with the patterns): for credentials a job receives after its
    /// log began (a scanned job's, once its scan is allowed). `secrets` is every value to mask,
    /// those already masked included. Call it between steps: what the maskers hold back is sent
    /// first, under the rules it was written with.
    pub async fn mask_from_now<'a>(&self, secrets: impl IntoIterator<Item = &'a [u8]>) {
        for stream in Stream::ALL {
            self.close(stream).await;
        }
        let mut state = self.state.lock().await;
        let rules = MaskRules::new(secrets, state.rules.patterns().clone());
        for stream in Stream::ALL {
            state.buffers.of(stream).masker = Masker::new(Arc::clone(&rules));
        }
        state.rules = rules;
    }

    /// The last masked output of the job's processes, for its error message.
    pub async fn tail(&self) -> String {
        let state = self.state.lock().await;
        let bytes: Vec<u8> = state.tail.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        // Start at a line boundary when there is one.
        let text = text.split_once('\n').filter(|_| bytes.len() >= TAIL_BYTES).map_or(&*text, |(_, rest)| rest);
        text.trim_end().to_owned()
    }

    /// Takes masked output of `stream` into its buffer, within the limit; cuts full chunks.
    async fn take(&self, state: &mut State, stream: Stream, mut masked: Vec<u8>) {
        let room = usize::try_from(state.limit.saturating_sub(state.logged)).unwrap_or(usize::MAX);
        let over = masked.len() > room;
        if over {
            state.discarded += (masked.len() - room) as u64;
            masked.truncate(room);
        }
        state.logged += masked.len() as u64;
        if stream != Stream::Keyward {
            state.tail.extend(masked.iter().copied());
            let excess = state.tail.len().saturating_sub(TAIL_BYTES);
            state.tail.drain(..excess);
        }
        state.buffers.of(stream).masked.extend_from_slice(&masked);
        self.cut(state, stream, false).await;
        if over {
            let limit = state.limit;
            self.cut(state, stream, true).await;
            let line = format!("keyward: output truncated at {limit} bytes (the agent's --log-limit)\n");
            state.buffers.of(Stream::Keyward).masked.extend_from_slice(line.as_bytes());
            self.cut(state, Stream::Keyward, true).await;
        }
    }

    /// Chains and queues `stream`'s buffered output: whole chunks, and with `all` the rest too.
    async fn cut(&self, state: &mut State, stream: Stream, all: bool) {
        loop {
            let buffered = state.buffers.of(stream).masked.len();
            if buffered == 0 || (!all && buffered < MAX_CHUNK_DATA) {
                return;
            }
            let take = buffered.min(MAX_CHUNK_DATA);
            let data: Vec<u8> = state.buffers.of(stream).masked.drain(..take).collect();
            let chunk: Chunk = state.chain.append(stream.name(), data);
            self.outbox.push(chunk).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::mask::Patterns;

    fn job() -> Job {
        Job { job_id: "j".into(), run_id: "r".into(), fencing_token: 2, ..Job::default() }
    }

    fn text(chunks: &[Chunk], stream: &str) -> String {
        let bytes: Vec<u8> = chunks.iter().filter(|c| c.stream == stream).flat_map(|c| c.data.clone()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn output_is_masked_chained_and_cut_into_bounded_chunks() {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let rules = MaskRules::new([b"s3cr3t-value".as_slice()], Patterns::default());
        let log = JobLog::new(&job(), &rules, DEFAULT_LIMIT, Arc::clone(&outbox));
        log.note("$ terraform plan").await;
        log.write(Stream::Stdout, b"token=s3cr3").await;
        log.write(Stream::Stdout, b"t-value\n").await;
        log.write(Stream::Stderr, &vec![b'e'; MAX_CHUNK_DATA + 10]).await;
        let summary = log.finish().await;
        let chunks = outbox.take_unsent();
        assert_eq!(summary.chunks, chunks.len() as u64);
        assert_eq!(summary.head, chunks.last().map(|c| c.digest));
        assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_DATA && c.fencing_token == 2));
        assert!(chunks.windows(2).all(|w| w[1].prev_digest == w[0].digest && w[1].seq == w[0].seq + 1));
        assert_eq!(text(&chunks, "stdout"), "token=***\n");
        assert_eq!(text(&chunks, "keyward"), "$ terraform plan\n");
        assert_eq!(text(&chunks, "stderr").len(), MAX_CHUNK_DATA + 10);
        assert!(log.tail().await.ends_with("eee"));
    }

    /// Secrets a job receives mid-way are masked from then on, and the old ones stay masked.
    #[tokio::test]
    async fn secrets_added_later_are_masked_from_then_on() {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let rules = MaskRules::new([b"git-password-1".as_slice()], Patterns::default());
        let log = JobLog::new(&job(), &rules, DEFAULT_LIMIT, Arc::clone(&outbox));
        log.write(Stream::Stdout, b"checkout with git-password-1\n").await;
        log.mask_from_now([b"git-password-1".as_slice(), b"aws-secret-key-2".as_slice()]).await;
        log.write(Stream::Stdout, b"plan with aws-secret-key-2 and git-password-1\n").await;
        log.finish().await;
        let chunks = outbox.take_unsent();
        assert_eq!(text(&chunks, "stdout"), "checkout with ***\nplan with *** and ***\n");
        assert!(chunks.windows(2).all(|w| w[1].prev_digest == w[0].digest), "one chain");
    }

    #[tokio::test]
    async fn a_flood_is_cut_at_the_limit_with_a_signed_marker() {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let log = JobLog::new(&job(), &MaskRules::patterns_only(Patterns::default()), 1000, Arc::clone(&outbox));
        for _ in 0..100 {
            log.write(Stream::Stdout, &[b'y'; 100]).await;
        }
        let summary = log.finish().await;
        let chunks = outbox.take_unsent();
        assert_eq!(text(&chunks, "stdout").len(), 1000);
        let notes = text(&chunks, "keyward");
        assert!(notes.contains("output truncated at 1000 bytes"), "{notes}");
        assert!(notes.contains("9000 further bytes"), "{notes}");
        assert_eq!(summary.discarded, 9000);
    }
}
