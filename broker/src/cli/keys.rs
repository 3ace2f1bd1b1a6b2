//! `keyward keys …`: list and rotate signing keys.

use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::client::{Client, items, print_json, text};
use super::output::outln;
use super::table::{Table, date};

#[derive(Debug, Subcommand)]
pub(super) enum KeysCommand {
    /// Rotate now: the pre-published next key starts signing; the current key retires but stays
    /// published until its last token has expired.
    Rotate {
        /// Rotate even if relying parties may not have fetched the next key yet.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List signing keys and their lifecycle.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: KeysCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        KeysCommand::Rotate { force, json, connection } => {
            let rotated = Client::new(&connection, env)?.post("/v1/keys/rotate", &json!({ "force": force })).await?;
            if json {
                return print_json(&rotated);
            }
            let rotation = rotated.get("rotation").cloned().unwrap_or_default();
            outln!("signing with {}", text(&rotation, "current_kid"))?;
            outln!(
                "retired {} (published until {})",
                text(&rotation, "retired_kid"),
                date(rotation.get("retired_publish_until").and_then(serde_json::Value::as_i64))
            )?;
            outln!("next    {}", text(&rotation, "next_kid"))?;
            Ok(())
        }
        KeysCommand::List { json, connection } => {
            let listed = Client::new(&connection, env)?.get("/v1/keys").await?;
            if json {
                return print_json(&listed);
            }
            let mut table = Table::new(&["KID", "ALG", "STATE", "PUBLISH UNTIL"]);
            for key in items(&listed, "keys") {
                table.row(vec![
                    text(key, "kid").to_owned(),
                    text(key, "algorithm").to_owned(),
                    text(key, "state").to_owned(),
                    date(key.get("publish_until").and_then(serde_json::Value::as_i64)),
                ]);
            }
            table.print()?;
            Ok(())
        }
    }
}
