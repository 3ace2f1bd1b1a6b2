//! `keyward context create|update|list|show|delete|set|unset|attach|detach`: the variables, files
//! and hooks a stack's jobs get (docs/contexts.md). A secret value is sent once and never shown
//! again: `show` prints its name, version, a SHA-256 prefix and, for a file, its path.

use std::io::Read as _;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;
use super::stack::{HOOK_POINTS, HookChanges, hooks_object, parse_hook};

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
        /// Lifecycle hook, `POINT=COMMAND` (points: before_init, before_plan, after_plan,
        /// before_apply, after_apply); repeatable, run in the order given, before the stack's own
        /// at the same point (docs/runs.md).
        #[arg(long = "hook", value_parser = parse_hook)]
        hooks: Vec<(String, String)>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Change a context's hooks: `--clear-hooks POINT|all`, then `--hook POINT=COMMAND` appended.
    Update(UpdateArgs),
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
    /// secrets: nothing in the shell's history). With `--file PATH` the value is mounted as a
    /// file, not put into the environment.
    Set {
        /// The context.
        name: String,
        /// `KEY=VALUE` or `KEY`.
        assignment: String,
        /// Write-only: sealed at rest, never shown, masked in job logs.
        #[arg(long)]
        secret: bool,
        /// Mount the value as a file at PATH, relative to the stack's configuration directory
        /// (standard input is then kept byte for byte, its last newline too).
        #[arg(long, value_name = "PATH")]
        file: Option<String>,
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

/// `keyward context update NAME …`.
#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// The context.
    name: String,
    #[command(flatten)]
    hook_changes: HookChanges,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

impl UpdateArgs {
    /// The `PATCH /v1/contexts/{name}` body: only what was given.
    fn body(&self) -> Value {
        let mut body = Map::new();
        self.hook_changes.put(&mut |key, value| {
            body.insert(key.to_owned(), value);
        });
        Value::Object(body)
    }
}

/// `keyward context update`: sends what was given, prints the context as it is now.
async fn update(args: &UpdateArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let body = args.body();
    if body.as_object().is_some_and(Map::is_empty) {
        anyhow::bail!("nothing to update: give --hook or --clear-hooks");
    }
    let client = Client::new(&args.connection, env)?;
    let context = client.patch(&format!("/v1/contexts/{}", segment(&args.name)), &body).await?;
    if args.json {
        return print_json(&context);
    }
    outln!("updated context {}", text(&context, "name"))?;
    print_context(&context)
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("`{text}` is not KEY=VALUE"))
}

/// `KEY=VALUE`, or `KEY` with the value read from standard input: for a variable one trailing
/// newline dropped, for a file (`whole`) kept byte for byte.
pub(super) fn assignment(text: &str, whole: bool) -> anyhow::Result<(String, String)> {
    if let Some((key, value)) = text.split_once('=') {
        return Ok((key.to_owned(), value.to_owned()));
    }
    let mut value = String::new();
    std::io::stdin().read_to_string(&mut value).context("reading the value from standard input")?;
    if !whole && value.ends_with('\n') {
        value.pop();
    }
    Ok((text.to_owned(), value))
}

/// The `PUT …/variables/{key}` body.
pub(super) fn variable_body(value: &str, secret: bool, file: Option<&str>) -> Value {
    let mut body = json!({ "value": value, "secret": secret });
    if let (Some(path), Some(object)) = (file, body.as_object_mut()) {
        object.insert("file".to_owned(), json!(path));
    }
    body
}

pub(super) async fn run(command: ContextCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        ContextCommand::Create { name, description, autoattach, priority, hooks, json, connection } => {
            let autoattach: Map<String, Value> = autoattach.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = json!({
                "name": name, "description": description, "autoattach": autoattach, "priority": priority,
                "hooks": hooks_object(&hooks),
            });
            let context = Client::new(&connection, env)?.post("/v1/contexts", &body).await?;
            if json {
                return print_json(&context);
            }
            outln!("created context {}", text(&context, "name"))?;
        }
        ContextCommand::Update(args) => update(&args, env).await?,
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
        ContextCommand::Set { name, assignment: text, secret, file, json, connection } => {
            let (key, value) = assignment(&text, file.is_some())?;
            let path = format!("/v1/contexts/{}/variables/{}", segment(&name), segment(&key));
            let body = variable_body(&value, secret, file.as_deref());
            let set = Client::new(&connection, env)?.put(&path, &body).await?;
            if json {
                return print_json(&set);
            }
            outln!("{name}: {key} set (version {}{})", shown(&set, "version"), mounted(&set))?;
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

/// `, file PATH` for a variable mounted as a file; nothing for one in the environment.
pub(super) fn mounted(variable: &Value) -> String {
    variable.get("file").and_then(Value::as_str).map(|path| format!(", file {path}")).unwrap_or_default()
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
            "  {} = {value}  (version {}{}, set by {})",
            text(variable, "name"),
            shown(variable, "version"),
            mounted(variable),
            text(variable, "set_by")
        )?;
    }
    for point in HOOK_POINTS {
        for command in items(context.get("hooks").unwrap_or(&Value::Null), point).filter_map(Value::as_str) {
            outln!("  hook         {point}: {command}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ContextCommand,
    }

    #[test]
    fn update_sends_only_the_hooks_given() {
        let body = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["context", "update", "base"], args].concat()).unwrap();
            let ContextCommand::Update(update) = cli.command else { panic!("an update") };
            update.body()
        };
        assert_eq!(body(&[]), json!({}));
        assert_eq!(
            body(&["--clear-hooks", "before_plan", "--hook", "before_plan=tflint", "--hook", "after_plan=echo a=b"]),
            json!({"hooks": {"before_plan": []}, "append_hooks": {"before_plan": ["tflint"], "after_plan": ["echo a=b"]}})
        );
        let all: Map<String, Value> = HOOK_POINTS.iter().map(|p| ((*p).to_owned(), json!([]))).collect();
        assert_eq!(body(&["--clear-hooks", "all"]), json!({"hooks": all}));
        let error = Cli::try_parse_from(["context", "update", "base", "--hook", "after_init=x"]).unwrap_err();
        assert!(error.to_string().contains("unknown hook point `after_init`"), "{error}");
    }

    #[test]
    fn a_file_is_sent_with_its_path_and_a_variable_without() {
        assert_eq!(variable_body("v", true, Some("a/b.pem")), json!({"value": "v", "secret": true, "file": "a/b.pem"}));
        assert_eq!(variable_body("v", false, None), json!({"value": "v", "secret": false}));
        assert_eq!(mounted(&json!({"file": "a/b.pem"})), ", file a/b.pem");
        assert_eq!(mounted(&json!({"file": null})), "");
    }
}
