//! `keyward backup --to FILE`: an online copy of a running broker's SQLite database, taken on the
//! broker's host (it opens the database file, not the API: a database-sized response body would
//! tie up the broker, and the operator who can read the data directory is the one who may copy it).
//!
//! The copy itself is [`crate::store::backup`]; this finds the database from `--config` (its
//! `[storage]` table only, so the shell needs none of the broker's other secrets), `--data-dir`,
//! or `keyward dev`'s default data directory.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::print_json;
use super::output::outln;
use crate::audit::stored::verify_stored;
use crate::config::Config;
use crate::store::DatabaseLocation;
use crate::store::backup::{backup, open_read_only};
use keyward_proto::encoding::hex;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(super) struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// Where to write the copy; it must not exist (a backup never overwrites a file).
    #[arg(long, required = true)]
    to: Option<PathBuf>,
    /// The broker's configuration file; the database is found from its `[storage]` table.
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// A `keyward dev` data directory (default: `keyward dev`'s own).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Check a backup's audit log offline before restoring it: every entry's hash and order, the
    /// stored tree against the entries, and each checkpoint's signature and head.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// A checkpoint file (signed note) signed before the backup; repeatable.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The log's public key, or a file holding it (`keyward audit public-key`).
        #[arg(long)]
        public_key: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(args: BackupArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    if let Some(BackupCommand::Verify { file, checkpoint, public_key, json }) = args.command {
        return verify(&file, &checkpoint, public_key, json).await;
    }
    let to = args.to.context("--to FILE is required")?;
    let location = match (&args.config, args.data_dir) {
        (Some(file), _) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read config file {}", file.display()))?;
            Config::parse(&text, &file.display().to_string())?.database_location(env)?
        }
        (None, Some(dir)) => DatabaseLocation::Sqlite(dir.join("keyward.db")),
        (None, None) => DatabaseLocation::Sqlite(super::dev::default_data_dir(env)?.join("keyward.db")),
    };
    let report = backup(&location, &to).await?;
    if args.json {
        return print_json(&json!({
            "file": to,
            "bytes": report.bytes,
            "schema": report.schema,
            "audit_entries": report.audit_entries,
        }));
    }
    outln!(
        "{}: {} bytes, schema {}, audit log of {} entries",
        to.display(),
        report.bytes,
        report.schema,
        report.audit_entries
    )?;
    outln!("The key-encryption key is not in the backup: keep it, separately, to restore (docs/operations.md).")?;
    Ok(())
}

async fn verify(
    file: &std::path::Path,
    checkpoints: &[PathBuf],
    key: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (notes, key) = super::audit::trusted(checkpoints, key.as_deref())?;
    let store = open_read_only(file).await?;
    let verified = verify_stored(&store, &notes, key.as_ref()).await;
    store.close().await;
    let report = verified.with_context(|| format!("the audit log in {} does not verify", file.display()))?;
    if json {
        return print_json(&json!({
            "verified": true,
            "size": report.size,
            "first": report.first,
            "root": hex(&report.root),
            "checkpoints": report.checkpoints.iter().map(|c| json!({"size": c.size, "root": hex(&c.root)})).collect::<Vec<_>>(),
        }));
    }
    outln!(
        "{}: audit log of {} entries verified (entries {}..{} stored), head {}",
        file.display(),
        report.size,
        report.first,
        report.size,
        hex(&report.root)
    )?;
    for checkpoint in &report.checkpoints {
        outln!("checkpoint {} at size {}: signature and head match", checkpoint.origin, checkpoint.size)?;
    }
    Ok(())
}
