//! The audit log at a million entries: `keyward audit verify` throughput over an export, and the
//! size and cost of inclusion and consistency proofs.
//!
//! `cargo bench -p keyward-broker --bench audit_proofs` (`KEYWARD_BENCH_ENTRIES=N` to change the
//! size). Baselines in the same run: SHA-256 over the same bytes (the floor of verification) and
//! one interior-node hash (the unit a proof costs). Proofs are answered from a map of every
//! perfect subtree, as the broker answers them from `audit_nodes` (which adds one indexed query
//! for the ~2·log2(n) nodes a proof needs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write as _;
use std::time::Instant;

use keyward_broker::audit::merkle::{self, NodeMap};
use keyward_broker::audit::verify::verify_export;
use keyward_broker::audit::{AuditEvent, Context, Kind};
use keyward_proto::encoding::hex;

fn main() {
    let n: u64 = std::env::var("KEYWARD_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    println!("\naudit log at {n} entries\n");

    // An export of realistic entries.
    let started = Instant::now();
    let mut export = Vec::with_capacity(usize::try_from(n).unwrap() * 700);
    let mut leaves = Vec::with_capacity(usize::try_from(n).unwrap());
    for seq in 0..n {
        let context = Context {
            run_id: Some(format!("run-{seq:08}")),
            stack_id: Some("network".into()),
            phase: Some("apply".into()),
            commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
            git_ref: Some("refs/heads/main".into()),
            triggered_by: Some("alice".into()),
            approved_by: vec!["bob".into()],
            target: Some("aws:network-apply".into()),
            request_id: Some(format!("01a2071d-177d-7469-bc76-{seq:012}")),
            ..Context::default()
        };
        let event = AuditEvent::new(Kind::CredentialsIssued, 1_795_400_000, context)
            .with("access_key_id", format!("ASIA{seq:016}"))
            .with("role_session_name", format!("run-{seq:08}"));
        let body = event.prepare().unwrap().body(seq);
        let leaf = merkle::leaf_hash(body.as_bytes());
        writeln!(export, "{{\"entry\":{body},\"leaf_hash\":\"{}\"}}", hex(&leaf)).unwrap();
        leaves.push(leaf);
    }
    println!("built the export: {:.1} MB in {:.1?}", export.len() as f64 / 1e6, started.elapsed());

    // Baseline: hashing the same bytes.
    let started = Instant::now();
    for line in export.split(|b| *b == b'\n') {
        black_box(merkle::leaf_hash(line));
    }
    let floor = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let report = verify_export(std::io::Cursor::new(&export), &[], None).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.entries, n);
    let rate = n as f64 / elapsed.as_secs_f64();
    println!("SHA-256 of every line (floor):  {floor:>10.0} lines/s");
    println!("audit verify:                   {rate:>10.0} entries/s  ({elapsed:.2?}; {:.2}x the floor)", rate / floor);

    // Every perfect subtree, as the broker stores them.
    let started = Instant::now();
    let mut nodes = HashMap::with_capacity(leaves.len() * 2);
    let mut level_hashes = leaves.clone();
    let mut level = 0u32;
    while !level_hashes.is_empty() {
        for (i, h) in level_hashes.iter().enumerate() {
            nodes.insert((level, i as u64), *h);
        }
        level_hashes = level_hashes.chunks_exact(2).map(|pair| merkle::node_hash(&pair[0], &pair[1])).collect();
        level += 1;
    }
    let tree = NodeMap(nodes);
    println!("stored tree: {} nodes, built in {:.1?}", tree.0.len(), started.elapsed());
    let head = merkle::root(&tree, n).unwrap();
    assert_eq!(Some(head), report.root, "the stored tree and the export agree");

    let started = Instant::now();
    for i in 0..100_000u64 {
        black_box(merkle::node_hash(&leaves[(i % n) as usize], &head));
    }
    let node_cost = started.elapsed().as_secs_f64() / 100_000.0;

    let rounds = 2000u64;
    let (mut make, mut check, mut hashes) = (0.0, 0.0, 0usize);
    for r in 0..rounds {
        let index = (r * 7_919 * 104_729) % n;
        let started = Instant::now();
        let proof = merkle::inclusion_proof(&tree, index, n).unwrap();
        make += started.elapsed().as_secs_f64();
        let started = Instant::now();
        merkle::verify_inclusion(&leaves[index as usize], index, n, &proof, &head).unwrap();
        check += started.elapsed().as_secs_f64();
        hashes += proof.len();
    }
    println!(
        "inclusion proof: {:.1} hashes ({:.0} bytes); make {:.1} µs, verify {:.1} µs ({:.0} node hashes' worth)",
        hashes as f64 / rounds as f64,
        hashes as f64 * 32.0 / rounds as f64,
        make / rounds as f64 * 1e6,
        check / rounds as f64 * 1e6,
        check / rounds as f64 / node_cost
    );
    let (mut make, mut check, mut hashes) = (0.0, 0.0, 0usize);
    for r in 1..=rounds {
        let old = (r * 104_729) % n + 1;
        let old_head = merkle::root(&tree, old).unwrap();
        let started = Instant::now();
        let proof = merkle::consistency_proof(&tree, old, n).unwrap();
        make += started.elapsed().as_secs_f64();
        let started = Instant::now();
        merkle::verify_consistency(old, n, &old_head, &head, &proof).unwrap();
        check += started.elapsed().as_secs_f64();
        hashes += proof.len();
    }
    println!(
        "consistency proof: {:.1} hashes ({:.0} bytes); make {:.1} µs, verify {:.1} µs",
        hashes as f64 / rounds as f64,
        hashes as f64 * 32.0 / rounds as f64,
        make / rounds as f64 * 1e6,
        check / rounds as f64 * 1e6
    );
    println!("one interior-node hash (unit):  {:.2} µs\n", node_cost * 1e6);
}
