//! `keyward keys …`: list and rotate signing keys.

use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::client::{Client, items, print_json, text};

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
            println!("signing with {}", text(&rotation, "current_kid"));
            println!(
                "retired {} (published until {})",
                text(&rotation, "retired_kid"),
                rotation.get("retired_publish_until").and_then(serde_json::Value::as_i64).unwrap_or_default()
            );
            println!("next    {}", text(&rotation, "next_kid"));
            Ok(())
        }
        KeysCommand::List { json, connection } => {
            let listed = Client::new(&connection, env)?.get("/v1/keys").await?;
            if json {
                return print_json(&listed);
            }
            println!("{:<44} {:<6} {:<8} PUBLISH UNTIL", "KID", "ALG", "STATE");
            for key in items(&listed, "keys") {
                println!(
                    "{:<44} {:<6} {:<8} {}",
                    text(key, "kid"),
                    text(key, "algorithm"),
                    text(key, "state"),
                    key.get("publish_until")
                        .and_then(serde_json::Value::as_i64)
                        .map_or_else(|| "-".to_owned(), |t| t.to_string()),
                );
            }
            Ok(())
        }
    }
}
