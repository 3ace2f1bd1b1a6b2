//! `keyward pool …`: worker pools and their one-time join tokens.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;
use super::table::{Table, date};

#[derive(Debug, Subcommand)]
pub(super) enum PoolCommand {
    /// Create a worker pool.
    Create {
        /// Unique name.
        name: String,
        /// The space it belongs to (docs/access.md).
        #[arg(long, default_value = crate::roles::ROOT)]
        space: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List pools.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Issue a one-time join token for an agent of the pool (`keyward-agent join --token …`).
    JoinToken {
        /// The pool.
        name: String,
        /// How long the token works.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: PoolCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        PoolCommand::Create { name, space, json, connection } => {
            let pool =
                Client::new(&connection, env)?.post("/v1/pools", &json!({ "name": name, "space": space })).await?;
            if json {
                return print_json(&pool);
            }
            outln!("created pool {}", text(&pool, "name"))?;
        }
        PoolCommand::List { json, connection } => {
            let listing = Client::new(&connection, env)?.get("/v1/pools").await?;
            if json {
                return print_json(&listing);
            }
            let mut table = Table::new(&["NAME", "SPACE", "CREATED", "CREATED BY"]);
            for pool in items(&listing, "pools") {
                table.row(vec![
                    text(pool, "name").to_owned(),
                    text(pool, "space").to_owned(),
                    date(pool.get("created_at").and_then(serde_json::Value::as_i64)),
                    text(pool, "created_by").to_owned(),
                ]);
            }
            table.print()?;
        }
        PoolCommand::JoinToken { name, ttl, json, connection } => {
            let client = Client::new(&connection, env)?;
            let path = format!("/v1/pools/{}/join-tokens", segment(&name));
            let token = client.post(&path, &json!({ "ttl_seconds": ttl.as_secs() })).await?;
            if json {
                return print_json(&token);
            }
            // The token alone on stdout, so `$(keyward pool join-token p)` captures it.
            outln!("{}", text(&token, "token"))?;
            eprintln!(
                "one-time join token for pool {} (expires in {}); on the agent's host run:\n  \
                 keyward-agent join --broker {} --token <token> --data-dir <dir>",
                text(&token, "pool"),
                humantime::format_duration(ttl),
                connection.addr()
            );
        }
    }
    Ok(())
}
