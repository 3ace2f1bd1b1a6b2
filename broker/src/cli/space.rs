//! `keyward space …`: the space tree and its role bindings (docs/access.md, "Spaces and roles").

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;
use super::table::{Table, date};

#[derive(Debug, Subcommand)]
pub(super) enum SpaceCommand {
    /// Create a space under a parent (default `root`).
    Create {
        /// Unique name, like a stack name.
        name: String,
        /// The parent space.
        #[arg(long, default_value = crate::roles::ROOT)]
        parent: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the spaces you may view, with your role in each.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a space: its parent, children, bindings and your role there.
    Show {
        /// Its name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete an empty space (no stacks, pools, child spaces, bindings or API tokens).
    Delete {
        /// Its name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Give a group or a person a role in a space (and every space under it).
    Bind(BindArgs),
    /// Remove a binding.
    Unbind(BindArgs),
}

#[derive(Debug, Args)]
pub(super) struct BindArgs {
    /// The space.
    name: String,
    /// `viewer`, `submitter`, `reviewer` or `admin`.
    #[arg(long)]
    role: String,
    /// The identity provider's group.
    #[arg(long, conflicts_with = "subject", required_unless_present = "subject")]
    group: Option<String>,
    /// The person, `issuer#subject`.
    #[arg(long)]
    subject: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

pub(super) async fn run(command: SpaceCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        SpaceCommand::Create { name, parent, json, connection } => {
            let body = json!({ "name": name, "parent": parent });
            let space = Client::new(&connection, env)?.post("/v1/spaces", &body).await?;
            if json {
                return print_json(&space);
            }
            outln!("created space {} under {}", text(&space, "name"), text(&space, "parent"))?;
        }
        SpaceCommand::List { json, connection } => {
            let listing = Client::new(&connection, env)?.get("/v1/spaces").await?;
            if json {
                return print_json(&listing);
            }
            let mut table = Table::new(&["NAME", "PARENT", "YOUR ROLE", "CREATED", "CREATED BY"]);
            for space in items(&listing, "spaces") {
                table.row(vec![
                    text(space, "name").to_owned(),
                    text(space, "parent").to_owned(),
                    text(space, "role").to_owned(),
                    date(space.get("created_at").and_then(Value::as_i64)),
                    text(space, "created_by").to_owned(),
                ]);
            }
            table.print()?;
        }
        SpaceCommand::Show { name, json, connection } => {
            let space = Client::new(&connection, env)?.get(&format!("/v1/spaces/{}", segment(&name))).await?;
            if json {
                return print_json(&space);
            }
            print_space(&space)?;
        }
        SpaceCommand::Delete { name, connection } => {
            Client::new(&connection, env)?.delete(&format!("/v1/spaces/{}", segment(&name))).await?;
            outln!("deleted space {name}")?;
        }
        SpaceCommand::Bind(args) => bind(args, "bind", env).await?,
        SpaceCommand::Unbind(args) => bind(args, "unbind", env).await?,
    }
    Ok(())
}

async fn bind(args: BindArgs, verb: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let body = json!({ "role": args.role, "group": args.group, "subject": args.subject });
    let path = format!("/v1/spaces/{}/{verb}", segment(&args.name));
    Client::new(&args.connection, env)?.post(&path, &body).await?;
    let whom =
        args.group.map_or_else(|| format!("subject {}", args.subject.unwrap_or_default()), |g| format!("group {g}"));
    outln!("{verb}: {} in space {} for {whom}", args.role, args.name)?;
    Ok(())
}

fn print_space(space: &Value) -> anyhow::Result<()> {
    outln!("name:      {}", text(space, "name"))?;
    outln!("parent:    {}", text(space, "parent"))?;
    outln!("your role: {}", text(space, "role"))?;
    let children: Vec<&str> = items(space, "children").filter_map(Value::as_str).collect();
    outln!("children:  {}", children.join(", "))?;
    for binding in items(space, "bindings") {
        let whom = match binding.get("group").and_then(Value::as_str) {
            Some(group) => format!("group {group}"),
            None => format!("subject {}", text(binding, "subject")),
        };
        outln!("binding:   {} for {whom}", text(binding, "role"))?;
    }
    Ok(())
}
