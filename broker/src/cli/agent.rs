//! `keyward agent …`: list, show, drain and revoke enrolled agents.

use clap::Subcommand;
use serde_json::{Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};

#[derive(Debug, Subcommand)]
pub(super) enum AgentCommand {
    /// List agents.
    List {
        /// Only this pool's.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one agent.
    Show {
        /// Agent ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke an agent: its stream is cut at once, its leases end, its certificate is refused.
    Revoke {
        /// Agent ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Drain an agent: it finishes its current jobs and takes no new ones.
    Drain {
        /// Agent ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: AgentCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        AgentCommand::List { pool, json, connection } => {
            let path = match &pool {
                Some(pool) => format!("/v1/agents?pool={}", segment(pool)),
                None => "/v1/agents".to_owned(),
            };
            let listing = Client::new(&connection, env)?.get(&path).await?;
            if json {
                return print_json(&listing);
            }
            println!(
                "{:<38} {:<12} {:<9} {:<9} {:<9} {:<9} HOST",
                "ID", "POOL", "STATE", "CONNECTED", "TERRAFORM", "ISOLATION"
            );
            for agent in items(&listing, "agents") {
                let or_dash = |key: &str| Some(text(agent, key)).filter(|t| !t.is_empty()).unwrap_or("-").to_owned();
                println!(
                    "{:<38} {:<12} {:<9} {:<9} {:<9} {:<9} {}",
                    text(agent, "id"),
                    text(agent, "pool"),
                    text(agent, "state"),
                    if agent["connected"] == json!(true) { "yes" } else { "no" },
                    or_dash("terraform_version"),
                    or_dash("isolation"),
                    text(agent, "hostname"),
                );
            }
        }
        AgentCommand::Show { id, json, connection } => {
            let agent = Client::new(&connection, env)?.get(&format!("/v1/agents/{}", segment(&id))).await?;
            finish(&agent, json)?;
        }
        AgentCommand::Revoke { id, json, connection } => {
            let path = format!("/v1/agents/{}/revoke", segment(&id));
            let agent = Client::new(&connection, env)?.post(&path, &json!({})).await?;
            finish(&agent, json)?;
        }
        AgentCommand::Drain { id, json, connection } => {
            let path = format!("/v1/agents/{}/drain", segment(&id));
            let agent = Client::new(&connection, env)?.post(&path, &json!({})).await?;
            finish(&agent, json)?;
        }
    }
    Ok(())
}

fn finish(agent: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(agent);
    }
    for key in ["id", "pool", "spiffe_id", "state", "hostname", "version", "serial", "terraform_version", "isolation"] {
        println!("{key:<12} {}", text(agent, key));
    }
    println!("{:<12} {}", "not_after", agent["not_after"]);
    println!("{:<12} {}", "connected", agent["connected"]);
    Ok(())
}
