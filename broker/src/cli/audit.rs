//! `keyward audit …`: read, export, prove, verify and trace the audit log.
//!
//! `verify` is offline (a file, checkpoints and the public key); everything else asks a broker.
//! `prove` and `trace` check what the broker returns against the tree head themselves, so a
//! broker cannot show an entry that its signed log does not contain.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::Connection;
use super::client::{Client, items, print_json, text};
use super::output::{self, out, outln};
use crate::audit::canonical::to_canonical;
use crate::audit::checkpoint::VerifierKey;
use crate::audit::merkle::{self, Hash};
use crate::audit::trace_view::{at, summary, time};
use crate::audit::verify::{verify_export, verify_export_leaves};
use keyward_audit::proof::InclusionAnswer;
use keyward_proto::encoding::percent_encode;
use keyward_proto::encoding::{hex, hex_decode};

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Print the latest entries; `--follow` keeps printing new ones.
    Tail {
        /// How many.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        /// Only this kind (`credentials.issued`, `credentials.denied`, `token.minted`…).
        #[arg(long)]
        kind: Option<String>,
        /// Keep printing entries as they are appended.
        #[arg(long)]
        follow: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write entries as JSON lines (the format `verify` checks): `keyward audit export > log.jsonl`.
    Export {
        /// First sequence number.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// One past the last sequence number (default: the whole log).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Sign a checkpoint of the log now; prints the signed note.
    Checkpoint {
        /// Print JSON (size, root, note).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print the log's public checkpoint key (a signed-note verifier key).
    PublicKey {
        #[command(flatten)]
        connection: Connection,
    },
    /// Prove that an entry is in the log (inclusion proof, checked here), or that the log is an
    /// extension of an earlier checkpoint (consistency proof, checked here).
    Prove {
        /// The entry's sequence number.
        #[arg(long, conflicts_with = "since")]
        entry: Option<u64>,
        /// Tree size to prove against (default: the current size).
        #[arg(long)]
        size: Option<u64>,
        /// An earlier checkpoint file: prove the log now extends it.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Verify an export offline: entry order and hashes, and each checkpoint's signature and
    /// tree head. Names the first bad sequence number.
    Verify {
        /// The export (`keyward audit export` output).
        file: PathBuf,
        /// A checkpoint file (signed note) the export must match; repeatable.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The log's verifier key, or a file holding it (`keyward audit public-key`).
        #[arg(long)]
        public_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete entries below `--before` from the broker, after checking that `--archive` (an
    /// export) holds exactly them: its first N entries must hash to the signed log's head at N.
    /// Tree nodes stay, so proofs and checkpoints still cover the whole log.
    Prune {
        /// First entry to keep.
        #[arg(long)]
        before: u64,
        /// The export that keeps the pruned entries (`keyward audit export --to N > FILE`).
        #[arg(long)]
        archive: PathBuf,
        #[command(flatten)]
        connection: Connection,
    },
    /// Everything behind a run ID, AWS access key ID, token `jti`, role session name or Vault
    /// accessor: the run, its commit and approvals, tokens, credentials, denials, and the log head.
    Trace {
        /// What to trace.
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: AuditCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        AuditCommand::Tail { lines, kind, follow, json, connection } => {
            tail(&Client::new(&connection, env)?, lines, kind.as_deref(), follow, json).await
        }
        AuditCommand::Export { from, to, connection } => export(&Client::new(&connection, env)?, from, to).await,
        AuditCommand::Checkpoint { json, connection } => {
            let made = Client::new(&connection, env)?.post("/v1/audit/checkpoint", &json!({})).await?;
            if json {
                return print_json(&made);
            }
            out!("{}", text(&made, "note"))?;
            Ok(())
        }
        AuditCommand::PublicKey { connection } => {
            let key = Client::new(&connection, env)?.get("/v1/audit/public-key").await?;
            outln!("{}", text(&key, "verifier_key"))?;
            Ok(())
        }
        AuditCommand::Prove { entry: Some(seq), size, json, connection, .. } => {
            prove_entry(&Client::new(&connection, env)?, seq, size, json).await
        }
        AuditCommand::Prove { since: Some(file), json, connection, .. } => {
            prove_since(&Client::new(&connection, env)?, &file, json).await
        }
        AuditCommand::Prove { .. } => bail!("name an entry (--entry N) or an earlier checkpoint (--since FILE)"),
        AuditCommand::Verify { file, checkpoint, public_key, json } => verify(&file, &checkpoint, public_key, json),
        AuditCommand::Trace { key, json, connection } => {
            super::trace::trace(&Client::new(&connection, env)?, &key, json).await
        }
        AuditCommand::Prune { before, archive, connection } => {
            prune(&Client::new(&connection, env)?, before, &archive).await
        }
    }
}

async fn tail(client: &Client, lines: u64, kind: Option<&str>, follow: bool, json: bool) -> anyhow::Result<()> {
    let mut path = format!("/v1/audit/entries?tail={lines}");
    if let Some(kind) = kind {
        path.push_str(&format!("&kind={}", percent_encode(kind)));
    }
    let page = client.get(&path).await?;
    let mut next = at(&page, "/size").as_u64().unwrap_or(0);
    for line in items(&page, "entries") {
        print_entry(line, json)?;
    }
    if !follow {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let page = client.get(&format!("/v1/audit/entries?from={next}")).await?;
        for line in items(&page, "entries") {
            next = next.max(at(line, "/entry/seq").as_u64().unwrap_or(0) + 1);
            if kind.is_none_or(|k| at(line, "/entry/kind") == k) {
                print_entry(line, json)?;
            }
        }
    }
}

fn print_entry(line: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        outln!("{}", to_canonical(line)?)?;
        return Ok(());
    }
    let entry = &at(line, "/entry");
    let context = &at(entry, "/context");
    outln!(
        "#{:<6} {} {:<20} {:<24} {}",
        at(entry, "/seq"),
        time(at(entry, "/at").as_i64().unwrap_or(0)),
        text(entry, "kind"),
        at(context, "/run_id").as_str().unwrap_or("-"),
        summary(entry),
    )?;
    Ok(())
}

async fn export(client: &Client, from: u64, to: Option<u64>) -> anyhow::Result<()> {
    let mut next = from;
    let mut written = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let mut path = format!("/v1/audit/entries?from={next}");
        if let Some(to) = to {
            path.push_str(&format!("&to={to}"));
        }
        let page = client.get(&path).await?;
        let lines: Vec<&Value> = items(&page, "entries").collect();
        if lines.is_empty() {
            break;
        }
        let first = lines.first().and_then(|l| at(l, "/entry/seq").as_u64()).unwrap_or(next);
        if written == 0 && first > from {
            eprintln!(
                "entries {from}..{first} were pruned from the broker; they are in the archive made before pruning"
            );
        }
        for line in lines {
            writeln!(out, "{}", to_canonical(line)?).map_err(output::stdout_error)?;
            next = at(line, "/entry/seq").as_u64().unwrap_or(next) + 1;
            written += 1;
        }
        out.flush().map_err(output::stdout_error)?;
        eprintln!("exported {written} entries…");
    }
    eprintln!("exported {written} entries ({from}..{next})");
    Ok(())
}

pub(super) fn parse_hash(value: &Value) -> anyhow::Result<Hash> {
    let text = value.as_str().context("a hash is missing")?;
    let bytes = hex_decode(text).context("a hash is not hex")?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("a hash is not 32 bytes"))
}

pub(super) fn parse_hashes(value: &Value) -> anyhow::Result<Vec<Hash>> {
    value.as_array().context("the proof is missing")?.iter().map(parse_hash).collect()
}

async fn prove_entry(client: &Client, seq: u64, size: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut path = format!("/v1/audit/proof/inclusion?seq={seq}");
    if let Some(size) = size {
        path.push_str(&format!("&size={size}"));
    }
    let answer = client.get(&path).await?;
    let proof: InclusionAnswer =
        serde_json::from_value(answer.clone()).context("the broker's inclusion proof is malformed")?;
    if proof.seq != seq {
        bail!("the broker answered with a proof for entry {}, not entry {seq}", proof.seq);
    }
    proof.verify()?;
    if json {
        return print_json(&json!({ "verified": true, "proof": answer }));
    }
    outln!("entry {seq} is in the log of {} entries with head {} (verified here)", proof.size, hex(&proof.root))?;
    Ok(())
}

async fn prove_since(client: &Client, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let note = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let key: VerifierKey = text(&client.get("/v1/audit/public-key").await?, "verifier_key").parse()?;
    let old = key.verify(&note).with_context(|| format!("{} is not a checkpoint of this log", file.display()))?;
    let latest = client.post("/v1/audit/checkpoint", &json!({})).await?;
    let new = key.verify(text(&latest, "note"))?;
    let answer = client.get(&format!("/v1/audit/proof/consistency?old={}&new={}", old.size, new.size)).await?;
    merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &parse_hashes(at(&answer, "/proof"))?)
        .with_context(|| {
            format!(
                "the log of {} entries is NOT an extension of the checkpoint of {} entries: history was rewritten",
                new.size, old.size
            )
        })?;
    if json {
        return print_json(
            &json!({ "verified": true, "old": old.size, "new": new.size, "new_note": text(&latest, "note") }),
        );
    }
    outln!(
        "the log of {} entries (head {}) extends the checkpoint of {} entries (verified here)",
        new.size,
        hex(&new.root),
        old.size
    )?;
    Ok(())
}

/// What an offline verification trusts (`audit verify`, `backup verify`): the checkpoint files'
/// signed notes, and the log's public key if one was given.
pub(super) fn trusted(
    checkpoints: &[PathBuf],
    key: Option<&str>,
) -> anyhow::Result<(Vec<String>, Option<VerifierKey>)> {
    let key = key.map(read_public_key).transpose()?;
    let notes = checkpoints
        .iter()
        .map(|c| std::fs::read_to_string(c).with_context(|| format!("cannot read {}", c.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((notes, key))
}

/// The log's public key given on the command line: the key itself, or a file holding it.
fn read_public_key(k: &str) -> anyhow::Result<VerifierKey> {
    let path = std::path::Path::new(k);
    // A key is `<name>+<key id>+<key>`; anything else was meant as a file name.
    let text = if path.is_file() || !k.contains('+') {
        std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the public key file {k} (`keyward audit public-key > {k}` writes it)")
        })?
    } else {
        k.to_owned()
    };
    Ok(text.trim().parse::<VerifierKey>()?)
}

fn verify(file: &std::path::Path, checkpoints: &[PathBuf], key: Option<String>, json: bool) -> anyhow::Result<()> {
    let (notes, key) = trusted(checkpoints, key.as_deref())?;
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let report = verify_export(std::io::BufReader::new(input), &notes, key.as_ref())?;
    if json {
        return print_json(&json!({
            "verified": true,
            "first": report.first,
            "entries": report.entries,
            "root": report.root.map(|r| hex(&r)),
            "checkpoints": report.checkpoints.iter().map(|c| json!({"size": c.size, "root": hex(&c.root)})).collect::<Vec<_>>(),
        }));
    }
    outln!("{} entries ({}..{}) verified", report.entries, report.first, report.first + report.entries)?;
    if let Some(root) = report.root {
        outln!("tree head at {}: {}", report.first + report.entries, hex(&root))?;
    }
    for checkpoint in &report.checkpoints {
        outln!("checkpoint {} at size {}: signature and head match", checkpoint.origin, checkpoint.size)?;
    }
    Ok(())
}

async fn prune(client: &Client, before: u64, archive: &std::path::Path) -> anyhow::Result<()> {
    let key: VerifierKey = text(&client.get("/v1/audit/public-key").await?, "verifier_key").parse()?;
    let latest = client.get("/v1/audit/checkpoint").await?;
    let signed = key.verify(text(&latest, "note"))?;
    if before > signed.size {
        bail!(
            "the latest checkpoint covers {} entries; sign one covering {before} first (`keyward audit checkpoint`)",
            signed.size
        );
    }
    let input = std::fs::File::open(archive).with_context(|| format!("cannot open {}", archive.display()))?;
    let (report, leaves) = verify_export_leaves(std::io::BufReader::new(input), &[], None)
        .with_context(|| format!("{} is not a sound export", archive.display()))?;
    if report.first != 0 || report.entries < before {
        bail!(
            "{} holds entries {}..{}; pruning before {before} needs an archive of 0..{before}",
            archive.display(),
            report.first,
            report.first + report.entries
        );
    }
    let archived_head = merkle::root(&leaves[..], before)?;
    let answer = client.get(&format!("/v1/audit/proof/consistency?old={before}&new={}", signed.size)).await?;
    merkle::verify_consistency(
        before,
        signed.size,
        &archived_head,
        &signed.root,
        &parse_hashes(at(&answer, "/proof"))?,
    )
    .with_context(|| format!("{} is not the signed log's first {before} entries; nothing pruned", archive.display()))?;
    let pruned = client.post("/v1/audit/prune", &json!({ "before": before })).await?;
    outln!(
        "pruned {} entries before {before}; {} holds them (head at {before}: {})",
        at(&pruned, "/pruned"),
        archive.display(),
        hex(&archived_head)
    )?;
    Ok(())
}
