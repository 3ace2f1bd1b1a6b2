//! `keyward context create|list|show|delete|set|unset|attach|detach` and the variables a stack's
//! jobs get (docs/contexts.md). A secret value is sent once and never shown again: `show` prints
//! its name, version and a SHA-256 prefix.

use std::io::Read as _;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;

#[derive(Debug, Subcommand)]
pub(super) enum ContextCommand {
    /// Create a context: a named set of variables for stacks' jobs.
    Create {
        /// Unique name.
        name: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Attach to every stack with this label (`KEY=VALUE`); repeatable (all must match).
        #[arg(long = "autoattach", value_parser = parse_pair)]
        autoattach: Vec<(String, String)>,
        /// Lower first: a later context's variable overrides an earlier one's.
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List contexts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a context: its variables (secret values never), its stacks.
    Show {
        /// The context.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a context with its variables.
    Delete {
        /// The context.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Set a variable: `KEY=VALUE`, or `KEY` alone to read the value from standard input (for
    /// secrets: nothing in the shell's history).
    Set {
        /// The context.
        name: String,
        /// `KEY=VALUE` or `KEY`.
        assignment: String,
        /// Write-only: sealed at rest, never shown, masked in job logs.
        #[arg(long)]
        secret: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Remove a variable.
    Unset {
        /// The context.
        name: String,
        /// The variable.
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Attach a context to a stack by name.
    Attach {
        /// The context.
        name: String,
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Detach a context from a stack.
    Detach {
        /// The context.
        name: String,
        /// The stack.
        #[arg(long)]
        stack: String,
        #[command(flatten)]
        connection: Connection,
    },
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// `KEY=VALUE`, or `KEY` with the value read from standard input (one trailing newline dropped).
pub(super) fn assignment(text: &str) -> anyhow::Result<(String, String)> {
    if let Some((key, value)) = text.split_once('=') {
        return Ok((key.to_owned(), value.to_owned()));
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("reading the value from standard input")?;
    if value.ends_with('\n') {
        value.pop();
    }
    Ok((text.to_owned(), value))
}

pub(super) async fn run(command: ContextCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        ContextCommand::Create { name, description, autoattach, priority, json, connection } => {
            let autoattach: Map<String, Value> = autoattach.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body =
                json!({ "name": name, "description": description, "autoattach": autoattach, "priority": priority });
            let context = Client::new(&connection, env)?.post("/v1/contexts", &body).await?;
            if json {
                return print_json(&context);
            }
            outln!("created context {}", text(&context, "name"))?;
        }
        ContextCommand::List { json, connection } => {
            let listing = Client::new(&connection, env)?.get("/v1/contexts").await?;
            if json {
                return print_json(&listing);
            }
            outln!("{:<24} {:<9} {:<10} AUTOATTACH", "NAME", "PRIORITY", "VARIABLES")?;
            for context in items(&listing, "contexts") {
                outln!(
                    "{:<24} {:<9} {:<10} {}",
                    text(context, "name"),
                    shown(context, "priority"),
                    items(context, "variables").count(),
                    pairs(context.get("autoattach").unwrap_or(&Value::Null))
                )?;
            }
        }
        ContextCommand::Show { name, json, connection } => {
            let context = Client::new(&connection, env)?.get(&format!("/v1/contexts/{}", segment(&name))).await?;
            if json {
                return print_json(&context);
            }
            print_context(&context)?;
        }
        ContextCommand::Delete { name, connection } => {
            Client::new(&connection, env)?.delete(&format!("/v1/contexts/{}", segment(&name))).await?;
            outln!("deleted context {name}")?;
        }
        ContextCommand::Set { name, assignment: text, secret, json, connection } => {
            let (key, value) = assignment(&text)?;
            let path = format!("/v1/contexts/{}/variables/{}", segment(&name), segment(&key));
            let set = Client::new(&connection, env)?.put(&path, &json!({ "value": value, "secret": secret })).await?;
            if json {
                return print_json(&set);
            }
            outln!("{name}: {key} set (version {})", shown(&set, "version"))?;
        }
        ContextCommand::Unset { name, key, connection } => {
            let path = format!("/v1/contexts/{}/variables/{}", segment(&name), segment(&key));
            Client::new(&connection, env)?.delete(&path).await?;
            outln!("{name}: {key} unset")?;
        }
        ContextCommand::Attach { name, stack, connection } => {
            let path = format!("/v1/contexts/{}/attach", segment(&name));
            Client::new(&connection, env)?.post(&path, &json!({ "stack": stack })).await?;
            outln!("context {name} attached to stack {stack}")?;
        }
        ContextCommand::Detach { name, stack, connection } => {
            let path = format!("/v1/contexts/{}/detach", segment(&name));
            Client::new(&connection, env)?.post(&path, &json!({ "stack": stack })).await?;
            outln!("context {name} detached from stack {stack}")?;
        }
    }
    Ok(())
}

/// The field `key` of `value` as printed (`null` when absent).
pub(super) fn shown(value: &Value, key: &str) -> String {
    value.get(key).map_or_else(|| "null".to_owned(), Value::to_string)
}

fn pairs(object: &Value) -> String {
    let pairs: Vec<String> = object
        .as_object()
        .map(|o| o.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    if pairs.is_empty() { "-".to_owned() } else { pairs.join(",") }
}

fn print_context(context: &Value) -> anyhow::Result<()> {
    outln!("  name         {}", text(context, "name"))?;
    outln!("  description  {}", text(context, "description"))?;
    outln!("  priority     {}", shown(context, "priority"))?;
    outln!("  autoattach   {}", pairs(context.get("autoattach").unwrap_or(&Value::Null)))?;
    let stacks: Vec<&str> = items(context, "stacks").filter_map(Value::as_str).collect();
    outln!("  stacks       {}", if stacks.is_empty() { "-".to_owned() } else { stacks.join(", ") })?;
    for variable in items(context, "variables") {
        let value = match variable.get("value").and_then(Value::as_str) {
            Some(value) => value.to_owned(),
            None => format!("(secret, sha256 {}…)", text(variable, "sha256_prefix")),
        };
        outln!(
            "  {} = {value}  (version {}, set by {})",
            text(variable, "name"),
            shown(variable, "version"),
            text(variable, "set_by")
        )?;
    }
    Ok(())
}
