//! `keyward stack …`: create, list and show stacks.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;

#[derive(Debug, Subcommand)]
pub(super) enum StackCommand {
    /// Create a stack: what to run (repository, path, branch), where (pool), with which targets.
    Create {
        /// Unique name.
        name: String,
        /// Git URL (https://, ssh:// or file://).
        #[arg(long)]
        repository: String,
        /// Directory of the Terraform configuration inside the repository.
        #[arg(long, default_value = "")]
        path: String,
        /// Default branch: runs take its head unless they name a commit.
        #[arg(long, default_value = "main")]
        branch: String,
        /// Worker pool that runs its jobs.
        #[arg(long, default_value = crate::runs::DEFAULT_POOL)]
        pool: String,
        /// Credential target plans may use (read access only); repeatable.
        #[arg(long = "plan-target")]
        plan_targets: Vec<String>,
        /// Credential target applies may use; repeatable.
        #[arg(long = "apply-target")]
        apply_targets: Vec<String>,
        /// Label for policies, `KEY=VALUE`; repeatable.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Attach a policy by name (policies see `input.stack.policies`); repeatable.
        #[arg(long = "policy")]
        policies: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List stacks.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one stack.
    Show {
        /// Its name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

pub(super) async fn run(command: StackCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        StackCommand::Create {
            name,
            repository,
            path,
            branch,
            pool,
            plan_targets,
            apply_targets,
            labels,
            policies,
            json,
            connection,
        } => {
            let client = Client::new(&connection, env)?;
            let labels: Map<String, Value> = labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = json!({
                "name": name, "repository": repository, "path": path, "branch": branch, "pool": pool,
                "plan_targets": plan_targets, "apply_targets": apply_targets, "labels": labels, "policies": policies,
            });
            let stack = client.post("/v1/stacks", &body).await?;
            if json {
                return print_json(&stack);
            }
            outln!("created stack {}", text(&stack, "name"))?;
            print_stack(&stack)?;
        }
        StackCommand::List { json, connection } => {
            let listing = Client::new(&connection, env)?.get("/v1/stacks").await?;
            if json {
                return print_json(&listing);
            }
            outln!("{:<24} {:<12} {:<12} REPOSITORY", "NAME", "BRANCH", "POOL")?;
            for stack in items(&listing, "stacks") {
                outln!(
                    "{:<24} {:<12} {:<12} {}",
                    text(stack, "name"),
                    text(stack, "branch"),
                    text(stack, "pool"),
                    text(stack, "repository")
                )?;
            }
        }
        StackCommand::Show { name, json, connection } => {
            let stack = Client::new(&connection, env)?.get(&format!("/v1/stacks/{}", segment(&name))).await?;
            if json {
                return print_json(&stack);
            }
            print_stack(&stack)?;
        }
    }
    Ok(())
}

fn print_stack(stack: &Value) -> anyhow::Result<()> {
    let list = |key: &str| {
        let names: Vec<&str> = items(stack, key).filter_map(Value::as_str).collect();
        if names.is_empty() { "-".to_owned() } else { names.join(", ") }
    };
    outln!("  name           {}", text(stack, "name"))?;
    outln!("  repository     {}", text(stack, "repository"))?;
    outln!("  path           {}", if text(stack, "path").is_empty() { "." } else { text(stack, "path") })?;
    outln!("  branch         {}", text(stack, "branch"))?;
    outln!("  pool           {}", text(stack, "pool"))?;
    outln!("  plan targets   {}", list("plan_targets"))?;
    outln!("  apply targets  {}", list("apply_targets"))?;
    outln!("  policies       {}", list("policies"))?;
    if let Some(labels) = stack.get("labels").and_then(Value::as_object).filter(|l| !l.is_empty()) {
        let pairs: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        outln!("  labels         {}", pairs.join(", "))?;
    }
    Ok(())
}
