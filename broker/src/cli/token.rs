//! `keyward token …`: mint run tokens, manage API tokens.

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Connection;
use super::client::{Client, items, print_json, text};
use super::output::outln;

// Parsed once per process; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Mint a run token (prints the JWT; `--json` for the claims too). For a run the broker
    /// recorded, its facts and the approvals that count come from the record; for any other run
    /// ID the token carries `asserted_by` (your token's name): its context is your word, and the
    /// shipped policy gives such tokens no write credentials unless a target opts in.
    Mint(MintArgs),
    /// Create an API token holding one role in one space (the secret is printed once).
    Create {
        /// Unique name, e.g. `payments-ci`.
        name: String,
        /// The space it belongs to.
        #[arg(long, default_value = crate::roles::ROOT)]
        space: String,
        /// `viewer`, `submitter`, `reviewer` or `admin` (docs/access.md).
        #[arg(long)]
        role: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Create an operator API token with an old scope, its role on `root` (the secret is
    /// printed once).
    CreateApi {
        /// Unique name, e.g. `ci-deployer`.
        #[arg(long)]
        name: String,
        /// `admin` (everything), `submit` (submit, follow and cancel runs), `review` (approve or
        /// reject runs), or `audit` (read the audit log).
        #[arg(long)]
        scope: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List operator API tokens (never their secrets).
    ListApi {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Revoke an operator API token by name.
    RevokeApi {
        /// The token's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Debug, Args)]
pub(super) struct MintArgs {
    /// Stack name (also its ID until stacks are registered).
    #[arg(long)]
    stack: String,
    /// Run ID.
    #[arg(long)]
    run: String,
    /// `plan` or `apply`.
    #[arg(long)]
    phase: String,
    /// Audience; must be in the broker's allow-list.
    #[arg(long)]
    audience: String,
    /// Lifetime, e.g. `5m` (default: the broker's `tokens.default_ttl`).
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<std::time::Duration>,
    /// Commit SHA.
    #[arg(long)]
    commit: Option<String>,
    /// Repository URL.
    #[arg(long)]
    repository: Option<String>,
    /// Git ref (for a run the broker recorded, it must match the record).
    #[arg(long = "ref")]
    git_ref: Option<String>,
    /// Pull request number.
    #[arg(long)]
    pr: Option<u64>,
    /// Change ticket.
    #[arg(long)]
    ticket: Option<String>,
    /// Who triggered the run.
    #[arg(long)]
    triggered_by: Option<String>,
    /// Print JSON (token, jti, expiry, claims).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub(super) async fn run(command: TokenCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        TokenCommand::Mint(args) => mint(args, env).await,
        TokenCommand::Create { name, space, role, json, connection } => {
            let client = Client::new(&connection, env)?;
            let body = json!({ "name": name, "space": space, "role": role });
            let created = client.post("/v1/api-tokens", &body).await?;
            if json {
                return print_json(&created);
            }
            eprintln!("Created API token `{name}` with role `{role}` in space `{space}`. It is shown once:");
            outln!("{}", text(&created, "token"))?;
            Ok(())
        }
        TokenCommand::CreateApi { name, scope, json, connection } => {
            let client = Client::new(&connection, env)?;
            let created = client.post("/v1/api-tokens", &json!({ "name": name, "scope": scope })).await?;
            if json {
                return print_json(&created);
            }
            eprintln!("Created API token `{name}` with scope `{scope}`. It is shown once:");
            outln!("{}", text(&created, "token"))?;
            Ok(())
        }
        TokenCommand::ListApi { json, connection } => {
            let listed = Client::new(&connection, env)?.get("/v1/api-tokens").await?;
            if json {
                return print_json(&listed);
            }
            outln!("{:<32} {:<20} {:<10} {:<20} STATE", "NAME", "SPACE", "ROLE", "CREATED BY")?;
            for token in items(&listed, "api_tokens") {
                let state = if token.get("revoked_at").is_none_or(Value::is_null) { "live" } else { "revoked" };
                outln!(
                    "{:<32} {:<20} {:<10} {:<20} {state}",
                    text(token, "name"),
                    text(token, "space"),
                    text(token, "role"),
                    text(token, "created_by"),
                )?;
            }
            Ok(())
        }
        TokenCommand::RevokeApi { name, connection } => {
            Client::new(&connection, env)?.delete(&format!("/v1/api-tokens/{name}")).await?;
            eprintln!("Revoked API token `{name}`.");
            Ok(())
        }
    }
}

async fn mint(args: MintArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let client = Client::new(&args.connection, env)?;
    let mut body = serde_json::Map::new();
    let required = json!({
        "stack": args.stack,
        "run_id": args.run,
        "phase": args.phase,
        "audience": args.audience,
    });
    let optional = [
        ("commit_sha", args.commit.map(Value::from)),
        ("repository", args.repository.map(Value::from)),
        ("ref", args.git_ref.map(Value::from)),
        ("pull_request", args.pr.map(Value::from)),
        ("ticket", args.ticket.map(Value::from)),
        ("triggered_by", args.triggered_by.map(Value::from)),
        ("ttl_seconds", args.ttl.map(|ttl| Value::from(ttl.as_secs()))),
    ];
    if let Value::Object(required) = required {
        body.extend(required);
    }
    for (key, value) in optional {
        if let Some(value) = value {
            body.insert(key.to_owned(), value);
        }
    }
    let minted = client.post("/v1/run-tokens", &Value::Object(body)).await?;
    if args.json {
        return print_json(&minted);
    }
    outln!("{}", text(&minted, "token"))?;
    Ok(())
}
