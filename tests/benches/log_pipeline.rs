//! The signed log pipeline of DESIGN.md §11 (goal ≥ 100 MB/s): the agent masks a job's output,
//! cuts it into chunks, hash-chains and signs them; the broker checks every chunk (digest,
//! signature, link).
//!
//! `cargo bench -p keyward-tests --bench log_pipeline`. Knobs: `KEYWARD_BENCH_MIB` (size of the
//! input, 64), `KEYWARD_BENCH_ROUNDS` (rounds, 3; each round runs every case once, interleaved,
//! and the median round is reported).
//!
//! Input: Terraform-like plan and apply output (lines of 80–120 characters, a warning box now and
//! then) in which about 2 % of the lines carry a credential of the job, in the clear or encoded
//! (base64, percent-encoded), or an AWS access key ID that is not the job's (the built-in
//! pattern). The job's credentials are realistic: an AWS access key ID, secret key and ~700-byte
//! session token, and a Vault token. Baseline, same bytes, same run: SHA-256 over each 64 KiB
//! chunk (the floor of chaining and of the broker's check). Cases:
//! - masking alone, as the agent feeds it (16 KiB reads), and at other read sizes;
//! - masking with the built-in patterns only (no credentials), to split the cost;
//! - chain + sign + verify of already-masked chunks (no masking);
//! - the full pipeline, mask + chain + sign + verify, on the agent's types (`Masker`, `Chain`,
//!   `Signer`) and the broker's (`check_chunk`, `AgentKey` from the agent's certificate);
//! - the same through `JobLog` and its `Outbox` (drained and acknowledged as a connection does).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_agent::datadir::{AgentState, Identity};
use keyward_agent::job::Job;
use keyward_agent::logs::chain::{Chain, Signer};
use keyward_agent::logs::mask::{MaskRules, Masker, Patterns};
use keyward_agent::logs::{JobLog, Outbox, Stream};
use keyward_broker::joblogs::chunk_to_check;
use keyward_broker::joblogs::verify::{AgentKey, check_chunk};
use keyward_proto::agent_v1::SignedLogChunk;
use keyward_proto::logs::MAX_CHUNK_DATA;

/// What the agent reads from a pipe at a time (`runner.rs`).
const AGENT_READ: usize = 16 * 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A small deterministic generator (xorshift64*), so every run masks the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chars(&mut self, alphabet: &[u8], n: usize) -> String {
        (0..n).map(|_| alphabet[self.below(alphabet.len())] as char).collect()
    }
}

const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";

/// The job's credentials, shaped like the real ones.
struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    vault_token: String,
}

impl Credentials {
    fn new(rng: &mut Rng) -> Self {
        // STS session tokens are base64 of a binary blob, ~700 characters for an assumed role.
        let session_token = format!("IQoJb3JpZ2luX2VjE{}", rng.chars(BASE64, 683));
        Self {
            access_key_id: format!("ASIA{}", rng.chars(UPPER_DIGITS, 16)),
            secret_access_key: rng.chars(BASE64, 40),
            session_token,
            vault_token: format!("hvs.CAESI{}", rng.chars(ALNUM, 86)),
        }
    }

    fn values(&self) -> [&[u8]; 4] {
        [
            self.access_key_id.as_bytes(),
            self.secret_access_key.as_bytes(),
            self.session_token.as_bytes(),
            self.vault_token.as_bytes(),
        ]
    }
}

fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One line of ordinary plan/apply output, 80–120 characters.
fn ordinary_line(rng: &mut Rng) -> String {
    let kinds = ["aws_instance", "aws_security_group_rule", "aws_subnet", "aws_iam_role_policy", "aws_route53_record"];
    let names = ["web", "ingress_https", "private", "workers", "api_internal", "bastion"];
    let modules = ["module.network.", "module.eks.", "module.platform.module.dns.", ""];
    let address = format!("{}{}.{}[{}]", rng.pick(&modules), rng.pick(&kinds), rng.pick(&names), rng.below(24));
    let line = match rng.below(10) {
        0..=3 => format!(
            "{address}: Refreshing state... [id={}-0{}]",
            rng.pick(&["i", "sg", "subnet", "rtb"]),
            rng.chars(HEX, 16)
        ),
        4 => format!("  # {address} will be updated in-place"),
        5 => format!(
            "      ~ tags = {{ \"Environment\" = \"staging\" -> \"production\", \"Owner\" = \"team-{}\" }}",
            rng.chars(HEX, 6)
        ),
        6 => format!(
            "        id = \"{}-{}\" # (known after apply: arn:aws:iam::123456789012:role/{})",
            rng.pick(&names),
            rng.chars(HEX, 12),
            rng.pick(&names)
        ),
        7 => format!("{address}: Still creating... [{}m{}s elapsed]", rng.below(5), rng.below(60)),
        8 => format!(
            "{address}: Creation complete after {}m{}s [id=0{}]",
            rng.below(5),
            rng.below(60),
            rng.chars(HEX, 16)
        ),
        _ => format!(
            "      + cidr_blocks = [\"10.{}.{}.0/24\", \"10.{}.{}.0/24\"] -> (known after apply) # forces replacement",
            rng.below(255),
            rng.below(255),
            rng.below(255),
            rng.below(255)
        ),
    };
    let mut line = line;
    while line.len() < 80 {
        line.push_str(" ...");
    }
    line.truncate(120);
    line
}

/// A line carrying a credential (of the job, or an access key ID the built-in pattern catches).
fn secret_line(rng: &mut Rng, c: &Credentials) -> String {
    match rng.below(8) {
        0 => format!(
            "      + environment = {{ \"AWS_ACCESS_KEY_ID\" = \"{}\", \"AWS_REGION\" = \"eu-west-1\" }}",
            c.access_key_id
        ),
        1 => {
            format!("      + secret_access_key = \"{}\" # sensitive value printed by a local-exec", c.secret_access_key)
        }
        2 => format!("export AWS_SESSION_TOKEN={}", c.session_token),
        3 => format!("      + \"X-Vault-Token\" = \"{}\"", c.vault_token),
        4 => format!(
            "      + user_data = \"{}\"",
            STANDARD.encode(format!("#!/bin/sh\nexport AWS_SECRET_ACCESS_KEY={}\n", c.secret_access_key))
        ),
        5 => format!(
            "GET https://example-bucket.s3.amazonaws.com/?X-Amz-Security-Token={}&X-Amz-Date=20261123T000000Z",
            percent(&c.session_token)
        ),
        6 => format!(
            "      + access_key = \"AKIA{}\" # a key the job was not given: the built-in pattern",
            rng.chars(UPPER_DIGITS, 16)
        ),
        _ => format!("vault: token {} expires in 3600s (renewable)", c.vault_token),
    }
}

/// About `size` bytes of output and the number of lines in it that carry a secret.
fn terraform_output(rng: &mut Rng, c: &Credentials, size: usize) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(size + 1024);
    let mut secrets = 0;
    let mut line = 0usize;
    while out.len() < size {
        line += 1;
        if line.is_multiple_of(400) {
            // Terraform's diagnostics are drawn with box characters (non-ASCII).
            out.extend_from_slice(
                "╷\n│ Warning: Argument is deprecated\n│ \n│   with module.network.aws_subnet.private,\n│   on main.tf line 42, in resource \"aws_subnet\" \"private\":\n╵\n"
                    .as_bytes(),
            );
        }
        let text = if rng.below(100) < 2 {
            secrets += 1;
            secret_line(rng, c)
        } else {
            ordinary_line(rng)
        };
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    (out, secrets)
}

/// Masks `text` as one stream fed `read` bytes at a time into `out`.
fn mask(rules: &Arc<MaskRules>, text: &[u8], read: usize, out: &mut Vec<u8>) {
    let mut masker = Masker::new(Arc::clone(rules));
    for piece in text.chunks(read) {
        masker.push(piece, out);
    }
    masker.finish(out);
}

/// The broker's side: checks `chunk` against the chain so far and moves the head on.
fn verify(chunk: &SignedLogChunk, key: &AgentKey, head: &mut Option<(u64, Vec<u8>)>) {
    let to_check = chunk_to_check(chunk);
    check_chunk(&to_check, head.as_ref().map(|(seq, digest)| (*seq, digest.as_slice())), key).unwrap();
    *head = Some((chunk.seq, chunk.digest.clone()));
}

/// Chains, signs and verifies `data` (already masked) in chunks of at most `MAX_CHUNK_DATA`.
fn chain_sign_verify(
    chain: &mut Chain,
    signer: &Signer,
    key: &AgentKey,
    head: &mut Option<(u64, Vec<u8>)>,
    data: Vec<u8>,
) {
    let chunk = chain.append("stdout", data);
    let signed = signer.sign(&chunk).unwrap();
    verify(&signed, key, head);
}

/// The agent's path, piece by piece: 16 KiB reads masked, cut into full chunks, chained, signed
/// and checked by the broker's code. Returns the bytes that reached the broker.
fn full_pipeline(rules: &Arc<MaskRules>, text: &[u8], signer: &Signer, key: &AgentKey) -> usize {
    let mut masker = Masker::new(Arc::clone(rules));
    let mut chain = Chain::new("run-1", "job-1", 1);
    let mut head = None;
    let mut buffered = Vec::with_capacity(MAX_CHUNK_DATA + AGENT_READ);
    let mut delivered = 0;
    let mut cut = |buffered: &mut Vec<u8>, all: bool| {
        while buffered.len() >= MAX_CHUNK_DATA || (all && !buffered.is_empty()) {
            let take = buffered.len().min(MAX_CHUNK_DATA);
            let data: Vec<u8> = buffered.drain(..take).collect();
            delivered += data.len();
            chain_sign_verify(&mut chain, signer, key, &mut head, data);
        }
    };
    for piece in text.chunks(AGENT_READ) {
        masker.push(piece, &mut buffered);
        cut(&mut buffered, false);
    }
    masker.finish(&mut buffered);
    cut(&mut buffered, true);
    delivered
}

/// The same through `JobLog` and its `Outbox`, drained after every read as the connection would.
fn job_log(
    runtime: &tokio::runtime::Runtime,
    rules: &Arc<MaskRules>,
    text: &[u8],
    signer: &Signer,
    key: &AgentKey,
) -> usize {
    runtime.block_on(async {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let job = Job { job_id: "job-1".into(), run_id: "run-1".into(), fencing_token: 1, ..Job::default() };
        let log = JobLog::new(&job, rules, u64::MAX, Arc::clone(&outbox));
        let mut head = None;
        let mut delivered = 0;
        let mut drain = |outbox: &Outbox| {
            for chunk in outbox.take_unsent() {
                let signed = signer.sign(&chunk).unwrap();
                verify(&signed, key, &mut head);
                delivered += chunk.data.len();
                outbox.acknowledge(&chunk.job_id, chunk.fencing_token, chunk.seq);
            }
        };
        for piece in text.chunks(AGENT_READ) {
            log.write(Stream::Stdout, piece).await;
            drain(&outbox);
        }
        log.finish().await;
        drain(&outbox);
        delivered
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let size = env_or("KEYWARD_BENCH_MIB", 64) << 20;
    let rounds = env_or("KEYWARD_BENCH_ROUNDS", 3).max(1);
    let mut rng = Rng(0x6b65_7977_6172_6421);
    let credentials = Credentials::new(&mut rng);
    let (text, secret_lines) = terraform_output(&mut rng, &credentials, size);
    let lines = text.iter().filter(|&&b| b == b'\n').count();
    let mb = text.len() as f64 / 1e6;
    println!(
        "\nsigned log pipeline: {mb:.1} MB of Terraform-like output, {lines} lines (avg {:.0} bytes), {secret_lines} with a secret ({:.1} %)\n",
        text.len() as f64 / lines as f64,
        secret_lines as f64 * 100.0 / lines as f64
    );

    let rules = MaskRules::new(credentials.values(), Patterns::new(&[]).unwrap());
    let patterns_only = MaskRules::patterns_only(Patterns::new(&[]).unwrap());
    println!("{rules:?}\n");

    // The agent's identity: an ECDSA P-256 key and its certificate, as enrollment makes them.
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let certificate =
        rcgen::CertificateParams::new(vec!["agent-1".to_owned()]).unwrap().self_signed(&key_pair).unwrap();
    let identity = Identity {
        state: AgentState {
            agent_id: "agent-1".into(),
            pool: "default".into(),
            broker: "https://broker".into(),
            endpoint: "https://broker:8443".into(),
            not_after: 0,
            issued_at: 0,
        },
        key_pem: key_pair.serialize_pem().into(),
        cert_pem: certificate.pem(),
        ca_pem: String::new(),
    };
    let signer = Signer::new(&identity).unwrap();
    let agent_key = AgentKey::from_certificate(certificate.der()).unwrap();

    // Correctness first: nothing of a credential survives, and the chain verifies.
    let mut masked = Vec::with_capacity(text.len());
    mask(&rules, &text, AGENT_READ, &mut masked);
    for value in credentials.values() {
        assert!(!masked.windows(value.len()).any(|w| w == value), "a credential survived masking");
    }
    let masks = masked.windows(3).filter(|w| *w == b"***").count();
    println!("masked: {:.1} MB out, {masks} masks\n", masked.len() as f64 / 1e6);
    let masked_chunks: Vec<Vec<u8>> = masked.chunks(MAX_CHUNK_DATA).map(<[u8]>::to_vec).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(full_pipeline(&rules, &text, &signer, &agent_key), masked.len());
    assert_eq!(job_log(&runtime, &rules, &text, &signer, &agent_key), masked.len());

    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let mut out = Vec::with_capacity(text.len() + 1024);
    let out = std::cell::RefCell::new(&mut out);
    let mask_at = |read: usize| {
        let rules = &rules;
        let text = &text;
        let out = &out;
        move || {
            let mut out = out.borrow_mut();
            out.clear();
            mask(rules, text, read, &mut out);
            black_box(out.len());
        }
    };
    let cases: Vec<Case<'_>> = vec![
        (
            "SHA-256 of every 64 KiB chunk (baseline)",
            Box::new(|| {
                for chunk in text.chunks(MAX_CHUNK_DATA) {
                    black_box(digest::digest(&digest::SHA256, chunk));
                }
            }),
        ),
        ("mask, 1 KiB reads", Box::new(mask_at(1024))),
        ("mask, 4 KiB reads", Box::new(mask_at(4 * 1024))),
        ("mask, 16 KiB reads (the agent)", Box::new(mask_at(AGENT_READ))),
        ("mask, 64 KiB reads", Box::new(mask_at(64 * 1024))),
        (
            "mask, built-in patterns only, 16 KiB",
            Box::new(|| {
                let mut out = out.borrow_mut();
                out.clear();
                mask(&patterns_only, &text, AGENT_READ, &mut out);
                black_box(out.len());
            }),
        ),
        (
            "chain + sign + verify (no masking)",
            Box::new(|| {
                let mut chain = Chain::new("run-1", "job-1", 1);
                let mut head = None;
                for chunk in &masked_chunks {
                    chain_sign_verify(&mut chain, &signer, &agent_key, &mut head, chunk.clone());
                }
            }),
        ),
        (
            "mask + chain + sign + verify",
            Box::new(|| {
                black_box(full_pipeline(&rules, &text, &signer, &agent_key));
            }),
        ),
        (
            "the same through JobLog + Outbox",
            Box::new(|| {
                black_box(job_log(&runtime, &rules, &text, &signer, &agent_key));
            }),
        ),
    ];

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, (_, case)) in cases.iter().enumerate() {
            let started = Instant::now();
            case();
            rates[i].push(mb / started.elapsed().as_secs_f64());
        }
        let line: Vec<String> = rates.iter().map(|r| format!("{:.0}", r[round])).collect();
        println!("round {}: {} MB/s", round + 1, line.join(" / "));
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    let baseline = medians[0];
    println!("\n{:<42} {:>10} {:>16}", "median of rounds", "MB/s", "vs SHA-256");
    for ((name, _), rate) in cases.iter().zip(&medians) {
        println!("{name:<42} {rate:>10.0} {:>15.3}x", rate / baseline);
    }
    println!("\ngoal (DESIGN.md §11): mask + chain + sign + verify >= 100 MB/s\n");
}
