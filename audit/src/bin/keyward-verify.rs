//! `keyward-verify`: checks Keyward's evidence on an auditor's machine, with no broker, database
//! or network: an audit log export against signed checkpoints, the broker's inclusion and
//! consistency proof answers, and a run's job-log bundle against the agent CA.
//!
//! It runs the very checks the broker and `keyward audit verify` / `keyward run logs --verify`
//! run (they are this crate's), and says what it checked. Exit status: 0 verified, 1 the evidence
//! does not verify (the message names what broke), 2 a usage or I/O error (the evidence could not
//! be checked).

use std::io::{BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyward_audit::checkpoint::{Checkpoint, VerifierKey};
use keyward_audit::export::{VerifyError, verify_export, verify_export_leaves};
use keyward_audit::joblog::bundle::{self, Bundle};
use keyward_audit::proof::{self, ConsistencyAnswer, InclusionAnswer};
use keyward_proto::encoding::{hex, pem_der};
use serde_json::json;

/// Verifies Keyward's audit evidence offline, with no broker: exit status 0 verified, 1 NOT
/// verified (the message names what broke), 2 a usage or I/O error (the evidence could not be
/// checked).
#[derive(Debug, Parser)]
#[command(name = "keyward-verify", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// An audit log export (`keyward audit export` output): entry order and hashes, and each
    /// checkpoint's signature and tree head. Names the first bad sequence number.
    Export {
        /// The export, one `{"entry":…,"leaf_hash":…}` line per entry.
        file: PathBuf,
        /// A signed checkpoint (`keyward audit checkpoint` output) the export must match; repeatable.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The log's verifier key, or a file holding it (`keyward audit public-key`).
        #[arg(long)]
        public_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A proof answer of the broker's HTTP API, saved to a file.
    #[command(subcommand)]
    Proof(ProofCommand),
    /// A run's job-log bundle (`keyward run logs RUN --export FILE`): certificates, chunk
    /// signatures and digests, complete chains, and the heads sealed in the audit log.
    Logs {
        /// The bundle.
        file: PathBuf,
        /// The agent CA (PEM) to trust instead of the one the bundle carries.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// The run the bundle must be the log of.
        #[arg(long)]
        run: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ProofCommand {
    /// `GET /v1/audit/proof/inclusion?seq=N[&size=S]`: the entry is in the tree.
    Inclusion {
        /// The answer (JSON).
        file: PathBuf,
        /// An export holding the entry: its recomputed leaf hash must be the proven one.
        #[arg(long)]
        export: Option<PathBuf>,
        #[command(flatten)]
        anchors: Anchors,
    },
    /// `GET /v1/audit/proof/consistency?old=M[&new=N]`: the later tree extends the earlier.
    Consistency {
        /// The answer (JSON).
        file: PathBuf,
        #[command(flatten)]
        anchors: Anchors,
    },
}

/// Signed checkpoints that the answer's heads must match.
#[derive(Debug, clap::Args)]
struct Anchors {
    /// A signed checkpoint of one of the answer's sizes; its head must be the answer's. Repeatable.
    #[arg(long)]
    checkpoint: Vec<PathBuf>,
    /// The log's verifier key, or a file holding it (`keyward audit public-key`).
    #[arg(long)]
    public_key: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Why nothing was verified.
#[derive(Debug)]
enum Failure {
    /// The evidence does not verify: exit 1.
    Refused(String),
    /// Bad arguments or unreadable files: exit 2.
    Usage(String),
}

impl Failure {
    fn refused(error: impl std::fmt::Display) -> Self {
        Self::Refused(error.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Export { file, checkpoint, public_key, json } => export(&file, &checkpoint, public_key, json),
        Command::Proof(ProofCommand::Inclusion { file, export, anchors }) => {
            inclusion(&file, export.as_deref(), anchors)
        }
        Command::Proof(ProofCommand::Consistency { file, anchors }) => consistency(&file, anchors),
        Command::Logs { file, ca, run, json } => logs(&file, ca.as_deref(), run.as_deref(), json),
    };
    let outcome = result.and_then(|report| {
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(report.as_bytes()).and_then(|()| stdout.flush()) {
            Ok(()) => Ok(()),
            // The reader went away (`… | head`): it wanted no more.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(error) => Err(Failure::Usage(format!("cannot write to stdout: {error}"))),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(message)) => {
            eprintln!("NOT VERIFIED: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The verifier key given inline (`<name>+<key id>+<key>`) or as a file holding it.
fn verifier_key(argument: Option<String>) -> Result<Option<VerifierKey>, Failure> {
    let Some(argument) = argument else { return Ok(None) };
    let path = Path::new(&argument);
    // A key is `<name>+<key id>+<key>`; anything else was meant as a file name.
    let text = if path.is_file() || !argument.contains('+') {
        std::fs::read_to_string(path).map_err(|e| {
            Failure::Usage(format!(
                "cannot read the public key file {argument} ({e}; `keyward audit public-key > {argument}` writes it)"
            ))
        })?
    } else {
        argument
    };
    text.trim().parse().map(Some).map_err(|e| Failure::Usage(format!("the public key: {e}")))
}

/// Reads and verifies each checkpoint with `key`, which must be given if any checkpoint is.
fn checkpoints(files: &[PathBuf], key: Option<&VerifierKey>) -> Result<Vec<(PathBuf, Checkpoint)>, Failure> {
    files
        .iter()
        .map(|file| {
            let note = read(file)?;
            let key = key.ok_or_else(|| Failure::Usage(VerifyError::MissingKey.to_string()))?;
            let checkpoint =
                key.verify(&note).map_err(|e| Failure::Refused(format!("checkpoint {}: {e}", file.display())))?;
            Ok((file.clone(), checkpoint))
        })
        .collect()
}

fn export(file: &Path, checkpoint_files: &[PathBuf], key: Option<String>, json: bool) -> Result<String, Failure> {
    let key = verifier_key(key)?;
    let notes = checkpoint_files.iter().map(|c| read(c)).collect::<Result<Vec<_>, _>>()?;
    let input =
        std::fs::File::open(file).map_err(|e| Failure::Usage(format!("cannot open {}: {e}", file.display())))?;
    let report = verify_export(BufReader::new(input), &notes, key.as_ref()).map_err(|error| match error {
        VerifyError::Io(_) | VerifyError::MissingKey => Failure::Usage(format!("{}: {error}", file.display())),
        other => Failure::refused(other),
    })?;
    if json {
        return Ok(json!({
            "verified": true,
            "first": report.first,
            "entries": report.entries,
            "root": report.root.map(|r| hex(&r)),
            "checkpoints": report.checkpoints.iter().map(|c| json!({"size": c.size, "root": hex(&c.root)})).collect::<Vec<_>>(),
        })
        .to_string()
            + "\n");
    }
    let mut out =
        format!("{} entries ({}..{}) verified\n", report.entries, report.first, report.first + report.entries);
    if let Some(root) = report.root {
        out.push_str(&format!("tree head at {}: {}\n", report.first + report.entries, hex(&root)));
    }
    for checkpoint in &report.checkpoints {
        out.push_str(&format!(
            "checkpoint {} at size {}: signature and head match\n",
            checkpoint.origin, checkpoint.size
        ));
    }
    Ok(out)
}

fn answer<T: serde::de::DeserializeOwned>(file: &Path, what: &str) -> Result<T, Failure> {
    serde_json::from_str(&read(file)?)
        .map_err(|e| Failure::Refused(format!("{} is not {what} answer: {e}", file.display())))
}

/// Ties the answer's heads to each signed checkpoint; the lines saying so.
fn anchor(heads: &[(u64, [u8; 32])], anchors: &Anchors) -> Result<Vec<String>, Failure> {
    let key = verifier_key(anchors.public_key.clone())?;
    let mut lines = Vec::new();
    for (file, checkpoint) in checkpoints(&anchors.checkpoint, key.as_ref())? {
        proof::anchor(heads, &checkpoint)
            .map_err(|e| Failure::Refused(format!("checkpoint {}: {e}", file.display())))?;
        lines.push(format!(
            "the head at size {} is the one checkpoint {} signed ({})",
            checkpoint.size,
            checkpoint.origin,
            file.display()
        ));
    }
    if lines.is_empty() {
        eprintln!(
            "note: the tree heads are the broker's word; pass --checkpoint FILE --public-key KEY to tie them to a signed checkpoint"
        );
    }
    Ok(lines)
}

fn inclusion(file: &Path, export: Option<&Path>, anchors: Anchors) -> Result<String, Failure> {
    let answer: InclusionAnswer = answer(file, "an inclusion proof")?;
    answer.verify().map_err(Failure::refused)?;
    let mut lines = anchor(&answer.heads(), &anchors)?;
    if let Some(export) = export {
        lines.push(entry_in_export(&answer, export)?);
    }
    if anchors.json {
        return Ok(json!({
            "verified": true,
            "seq": answer.seq,
            "size": answer.size,
            "leaf_hash": hex(&answer.leaf_hash),
            "root": hex(&answer.root),
            "anchored": !anchors.checkpoint.is_empty(),
        })
        .to_string()
            + "\n");
    }
    let mut out = format!(
        "entry {} is in the log of {} entries with head {} (verified here)\n",
        answer.seq,
        answer.size,
        hex(&answer.root)
    );
    lines.iter().for_each(|line| out.push_str(&format!("{line}\n")));
    Ok(out)
}

/// Checks that `export` holds entry `answer.seq` with the proven leaf hash.
fn entry_in_export(answer: &InclusionAnswer, export: &Path) -> Result<String, Failure> {
    let input =
        std::fs::File::open(export).map_err(|e| Failure::Usage(format!("cannot open {}: {e}", export.display())))?;
    let (report, leaves) = verify_export_leaves(BufReader::new(input), &[], None).map_err(|error| match error {
        VerifyError::Io(_) => Failure::Usage(format!("{}: {error}", export.display())),
        other => Failure::Refused(format!("{}: {other}", export.display())),
    })?;
    let leaf = answer
        .seq
        .checked_sub(report.first)
        .and_then(|index| usize::try_from(index).ok())
        .and_then(|index| leaves.get(index))
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{} holds entries {}..{}, not entry {}",
                export.display(),
                report.first,
                report.first + report.entries,
                answer.seq
            ))
        })?;
    if *leaf != answer.leaf_hash {
        return Err(Failure::Refused(format!(
            "entry {} of {} hashes to {}, but the proof is for the leaf {}: the entry is not the one in the log",
            answer.seq,
            export.display(),
            hex(leaf),
            hex(&answer.leaf_hash)
        )));
    }
    Ok(format!("entry {} of {} is that leaf", answer.seq, export.display()))
}

fn consistency(file: &Path, anchors: Anchors) -> Result<String, Failure> {
    let answer: ConsistencyAnswer = answer(file, "a consistency proof")?;
    answer.verify().map_err(Failure::refused)?;
    let lines = anchor(&answer.heads(), &anchors)?;
    if anchors.json {
        return Ok(json!({
            "verified": true,
            "old": answer.old,
            "new": answer.new,
            "old_root": hex(&answer.old_root),
            "new_root": hex(&answer.new_root),
            "anchored": !anchors.checkpoint.is_empty(),
        })
        .to_string()
            + "\n");
    }
    let mut out = format!(
        "the log of {} entries (head {}) extends the checkpoint of {} entries (verified here)\n",
        answer.new,
        hex(&answer.new_root),
        answer.old
    );
    lines.iter().for_each(|line| out.push_str(&format!("{line}\n")));
    Ok(out)
}

fn logs(file: &Path, ca: Option<&Path>, run: Option<&str>, json: bool) -> Result<String, Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    let bundle: Bundle = serde_json::from_slice(&bytes)
        .map_err(|e| Failure::Refused(format!("{} is not a log bundle: {e}", file.display())))?;
    if let Some(run) = run
        && run != bundle.run_id
    {
        return Err(Failure::Refused(format!("the bundle is the log of run {}, not {run}", bundle.run_id)));
    }
    let pinned = match ca {
        Some(path) => Some(
            pem_der(&read(path)?)
                .ok_or_else(|| Failure::Usage(format!("{} holds no PEM certificate", path.display())))?,
        ),
        None => None,
    };
    let report = bundle::verify(&bundle, pinned.as_deref()).map_err(Failure::refused)?;
    if json {
        let value =
            serde_json::to_value(&report).map_err(|e| Failure::Usage(format!("cannot encode the report: {e}")))?;
        return Ok(value.to_string() + "\n");
    }
    Ok(report.to_string())
}
