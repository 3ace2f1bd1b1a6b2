//! `keyward backup --to FILE`: an online copy of a running broker's SQLite database, taken on the
//! broker's host (it opens the database file, not the API: a database-sized response body would
//! tie up the broker, and the operator who can read the data directory is the one who may copy it).
//!
//! The copy itself is [`crate::store::backup`]; this finds the database from `--config` (its
//! `[storage]` table only, so the shell needs none of the broker's other secrets), `--data-dir`,
//! or `keyward dev`'s default data directory.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::client::print_json;
use super::output::outln;
use crate::config::Config;
use crate::store::DatabaseLocation;
use crate::store::backup::backup;

#[derive(Debug, Args)]
pub(super) struct BackupArgs {
    /// Where to write the copy; it must not exist (a backup never overwrites a file).
    #[arg(long)]
    to: PathBuf,
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

pub(super) async fn run(args: BackupArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let location = match (&args.config, args.data_dir) {
        (Some(file), _) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("cannot read config file {}", file.display()))?;
            Config::parse(&text, &file.display().to_string())?.database_location(env)?
        }
        (None, Some(dir)) => DatabaseLocation::Sqlite(dir.join("keyward.db")),
        (None, None) => DatabaseLocation::Sqlite(super::dev::default_data_dir(env)?.join("keyward.db")),
    };
    let report = backup(&location, &args.to).await?;
    if args.json {
        return print_json(&json!({
            "file": args.to,
            "bytes": report.bytes,
            "schema": report.schema,
            "audit_entries": report.audit_entries,
        }));
    }
    outln!(
        "{}: {} bytes, schema {}, audit log of {} entries",
        args.to.display(),
        report.bytes,
        report.schema,
        report.audit_entries
    )?;
    outln!("The key-encryption key is not in the backup: keep it, separately, to restore (docs/operations.md).")?;
    Ok(())
}
