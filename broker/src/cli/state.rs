//! `keyward state list|show|pull|push|rollback|unlock STACK`: the Terraform state the broker
//! keeps for a stack (docs/state.md). Every command needs an `admin` API token; pulls, pushes,
//! rollbacks and unlocks are recorded in the audit log.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::Value;

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;

#[derive(Debug, Subcommand)]
pub(super) enum StateCommand {
    /// Every kept version of a stack's state, newest first, and its lock.
    List {
        /// The stack.
        stack: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// One version's details (the newest by default) and the lock.
    #[command(disable_version_flag = true)]
    Show {
        /// The stack.
        stack: String,
        /// The version number (see `state list`).
        #[arg(long)]
        version: Option<i64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a version's state (the newest by default). It holds secrets: the pull is recorded.
    #[command(disable_version_flag = true)]
    Pull {
        /// The stack.
        stack: String,
        /// The version number.
        #[arg(long)]
        version: Option<i64>,
        /// Write it to this file (created with mode 0600) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Keep a state file as the stack's newest version: import an existing state into an empty
    /// stack, or a fix with a higher serial and the same lineage.
    Push {
        /// The stack.
        stack: String,
        /// The state file (`-`: standard input).
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Keep an earlier version's content again as the newest version (with the next serial).
    #[command(disable_version_flag = true)]
    Rollback {
        /// The stack.
        stack: String,
        /// The version to return to.
        #[arg(long)]
        version: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove the stack's state lock, whoever holds it (a job's lock is released with its lease
    /// anyway: this is for a lock that must go now).
    Unlock {
        /// The stack.
        stack: String,
        /// Only if the lock is still this one (the ID `state show` prints).
        #[arg(long)]
        lock_id: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: StateCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        StateCommand::List { stack, json, connection } => {
            let summary = summary(&Client::new(&connection, env)?, &stack).await?;
            if json {
                return print_json(&summary);
            }
            print_lock(&summary)?;
            outln!("{:<8} {:<8} {:<10} {:<10} {:<28} WRITTEN BY", "VERSION", "SERIAL", "SOURCE", "SIZE", "RUN")?;
            for version in items(&summary, "versions") {
                outln!(
                    "{:<8} {:<8} {:<10} {:<10} {:<28} {}",
                    number(version, "version"),
                    number(version, "serial"),
                    text(version, "source"),
                    number(version, "size"),
                    or_dash(text(version, "run_id")),
                    text(version, "written_by")
                )?;
            }
        }
        StateCommand::Show { stack, version, json, connection } => {
            let summary = summary(&Client::new(&connection, env)?, &stack).await?;
            let chosen = items(&summary, "versions")
                .find(|v| version.is_none_or(|n| v.get("version").and_then(Value::as_i64) == Some(n)))
                .cloned();
            if json {
                return print_json(
                    &serde_json::json!({ "stack": stack, "lock": summary.get("lock"), "version": chosen }),
                );
            }
            match (&chosen, version) {
                (Some(found), _) => print_version(found)?,
                (None, Some(n)) => anyhow::bail!("stack `{stack}` has no state version {n}"),
                (None, None) => outln!("stack {stack} has no state yet")?,
            }
            print_lock(&summary)?;
        }
        StateCommand::Pull { stack, version, output, connection } => {
            let client = Client::new(&connection, env)?;
            let path = match version {
                Some(n) => format!("/v1/stacks/{}/state/versions/{n}", segment(&stack)),
                None => format!("/v1/stacks/{}/state", segment(&stack)),
            };
            let content = client.get_bytes(&path).await?;
            match output {
                Some(file) => write_private(&file, &content)?,
                None => std::io::stdout().write_all(&content).context("writing the state to standard output")?,
            }
        }
        StateCommand::Push { stack, file, json, connection } => {
            let content = read_input(&file)?;
            let path = format!("/v1/stacks/{}/state/versions", segment(&stack));
            let kept = Client::new(&connection, env)?.post_bytes(&path, content).await?;
            report_kept(&stack, &kept, json)?;
        }
        StateCommand::Rollback { stack, version, json, connection } => {
            let path = format!("/v1/stacks/{}/state/rollback", segment(&stack));
            let kept = Client::new(&connection, env)?.post(&path, &serde_json::json!({ "version": version })).await?;
            report_kept(&stack, &kept, json)?;
        }
        StateCommand::Unlock { stack, lock_id, json, connection } => {
            let mut path = format!("/v1/stacks/{}/state/lock", segment(&stack));
            if let Some(id) = &lock_id {
                path.push_str(&format!("?id={}", segment(id)));
            }
            let answer = Client::new(&connection, env)?.delete(&path).await?;
            if json {
                return print_json(&answer);
            }
            match answer.get("released").filter(|l| !l.is_null()) {
                Some(lock) => {
                    outln!("released lock {} of stack {stack} (held by {})", text(lock, "id"), text(lock, "locked_by"))?
                }
                None => outln!("stack {stack} was not locked")?,
            }
        }
    }
    Ok(())
}

async fn summary(client: &Client, stack: &str) -> anyhow::Result<Value> {
    client.get(&format!("/v1/stacks/{}/state/versions", segment(stack))).await
}

fn report_kept(stack: &str, kept: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(kept);
    }
    if kept.get("unchanged").and_then(Value::as_bool) == Some(true) {
        outln!("stack {stack}: that state is already the newest version; nothing changed")?;
    } else {
        outln!("stack {stack}: kept as version {}", number(kept, "version"))?;
        print_version(kept)?;
    }
    Ok(())
}

fn print_version(version: &Value) -> anyhow::Result<()> {
    outln!("  stack       {}", text(version, "stack"))?;
    outln!("  version     {}", number(version, "version"))?;
    outln!("  serial      {}", number(version, "serial"))?;
    outln!("  lineage     {}", text(version, "lineage"))?;
    outln!("  sha256      {}", text(version, "sha256"))?;
    outln!("  size        {} bytes", number(version, "size"))?;
    outln!("  source      {}", text(version, "source"))?;
    outln!("  run         {}", or_dash(text(version, "run_id")))?;
    outln!("  job         {}", or_dash(text(version, "job_id")))?;
    outln!("  written by  {}", text(version, "written_by"))?;
    outln!("  written at  {}", number(version, "created_at"))?;
    Ok(())
}

fn print_lock(summary: &Value) -> anyhow::Result<()> {
    match summary.get("lock").filter(|l| !l.is_null()) {
        Some(lock) => outln!(
            "  locked      by {} (lock {}, since {})",
            text(lock, "locked_by"),
            text(lock, "id"),
            number(lock, "created_at")
        ),
        None => outln!("  locked      no"),
    }
}

fn number(value: &Value, key: &str) -> String {
    value.get(key).and_then(Value::as_i64).map_or_else(|| "-".to_owned(), |n| n.to_string())
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() { "-" } else { text }
}

fn read_input(file: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut content = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut content).context("reading the state from standard input")?;
    } else {
        content = std::fs::read(file).with_context(|| format!("cannot read state file {}", file.display()))?;
    }
    Ok(content)
}

/// Writes `content` to a new file only its owner can read: state holds secrets.
fn write_private(path: &PathBuf, content: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content).with_context(|| format!("cannot write {}", path.display()))
}
