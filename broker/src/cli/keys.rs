//! `keyward keys …`: list and rotate signing keys.

use clap::Subcommand;
use serde_json::json;

use super::Connection;
use super::client::{Client, print_json};

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
            let rotation = &rotated["rotation"];
            println!("signing with {}", rotation["current_kid"].as_str().unwrap_or_default());
            println!(
                "retired {} (published until {})",
                rotation["retired_kid"].as_str().unwrap_or_default(),
                rotation["retired_publish_until"]
            );
            println!("next    {}", rotation["next_kid"].as_str().unwrap_or_default());
            Ok(())
        }
        KeysCommand::List { json, connection } => {
            let listed = Client::new(&connection, env)?.get("/v1/keys").await?;
            if json {
                return print_json(&listed);
            }
            println!("{:<44} {:<6} {:<8} PUBLISH UNTIL", "KID", "ALG", "STATE");
            for key in listed["keys"].as_array().into_iter().flatten() {
                println!(
                    "{:<44} {:<6} {:<8} {}",
                    key["kid"].as_str().unwrap_or_default(),
                    key["algorithm"].as_str().unwrap_or_default(),
                    key["state"].as_str().unwrap_or_default(),
                    key["publish_until"].as_i64().map_or_else(|| "-".to_owned(), |t| t.to_string()),
                );
            }
            Ok(())
        }
    }
}
