//! `keyward agent …`: list, show, drain and revoke enrolled agents.

use clap::Subcommand;
use serde_json::{Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;
use super::table::{Table, date};

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
            // ISOLATION is free text (`sandbox network=none`), so it goes last.
            let mut table = Table::new(&["ID", "POOL", "STATE", "CONNECTED", "TERRAFORM", "HOST", "ISOLATION"]);
            for agent in items(&listing, "agents") {
                table.row(vec![
                    text(agent, "id").to_owned(),
                    text(agent, "pool").to_owned(),
                    text(agent, "state").to_owned(),
                    yes_no(agent, "connected").to_owned(),
                    or_dash(agent, "terraform_version"),
                    or_dash(agent, "hostname"),
                    or_dash(agent, "isolation"),
                ]);
            }
            table.print()?;
        }
        AgentCommand::Show { id, json, connection } => {
            let agent = Client::new(&connection, env)?.get(&format!("/v1/agents/{}", segment(&id))).await?;
            if json {
                return print_json(&agent);
            }
            print_agent(&agent)?;
        }
        AgentCommand::Revoke { id, json, connection } => {
            let path = format!("/v1/agents/{}/revoke", segment(&id));
            let agent = Client::new(&connection, env)?.post(&path, &json!({})).await?;
            if json {
                return print_json(&agent);
            }
            outln!(
                "agent {} revoked: its stream is cut, its leases end and its certificate is refused from now on",
                text(&agent, "id")
            )?;
        }
        AgentCommand::Drain { id, json, connection } => {
            let path = format!("/v1/agents/{}/drain", segment(&id));
            let agent = Client::new(&connection, env)?.post(&path, &json!({})).await?;
            if json {
                return print_json(&agent);
            }
            outln!(
                "agent {} drained: it finishes the jobs it holds, takes no new ones, then exits",
                text(&agent, "id")
            )?;
        }
    }
    Ok(())
}

fn or_dash(agent: &Value, key: &str) -> String {
    Some(text(agent, key)).filter(|t| !t.is_empty()).unwrap_or("-").to_owned()
}

/// `terraform 1.11.4, tofu 1.8.0` as the agent reported them, or `-` (an agent older than tool
/// reports runs Terraform alone).
fn tools(agent: &Value) -> String {
    let Some(tools) = agent.get("tools").and_then(Value::as_object).filter(|t| !t.is_empty()) else {
        return "-".to_owned();
    };
    let each: Vec<String> = tools.iter().map(|(tool, v)| format!("{tool} {}", v.as_str().unwrap_or("?"))).collect();
    each.join(", ")
}

fn yes_no(agent: &Value, key: &str) -> &'static str {
    if agent.get(key) == Some(&Value::Bool(true)) { "yes" } else { "no" }
}

fn print_agent(agent: &Value) -> anyhow::Result<()> {
    let time = |key: &str| date(agent.get(key).and_then(Value::as_i64));
    let mut rows = vec![
        ("Agent", or_dash(agent, "id")),
        ("Pool", or_dash(agent, "pool")),
        ("State", or_dash(agent, "state")),
        ("Connected", yes_no(agent, "connected").to_owned()),
        ("Host", or_dash(agent, "hostname")),
        ("Version", or_dash(agent, "version")),
        ("Terraform", or_dash(agent, "terraform_version")),
        ("Tools", tools(agent)),
        ("Isolation", or_dash(agent, "isolation")),
        ("SPIFFE ID", or_dash(agent, "spiffe_id")),
        ("Certificate", format!("serial {}, valid until {}", or_dash(agent, "serial"), time("not_after"))),
        ("Enrolled", time("enrolled_at")),
        ("Last seen", time("last_seen_at")),
    ];
    if agent.get("revoked_at").is_some_and(|t| !t.is_null()) {
        rows.push(("Revoked", format!("{} by {}", time("revoked_at"), or_dash(agent, "revoked_by"))));
    }
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    for (label, value) in rows {
        outln!("{label:<width$}  {value}")?;
    }
    Ok(())
}
