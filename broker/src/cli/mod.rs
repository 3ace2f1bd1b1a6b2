//! The `keyward` command line. Parsing lives here; each command is a small function in its own module.
//!
//! Commands that talk to a running broker read `KEYWARD_ADDR` and `KEYWARD_TOKEN` or
//! `KEYWARD_TOKEN_FILE` (the lines `keyward dev` prints), and every command that prints data takes
//! `--json` so scripts never parse tables.

mod agent;
mod audit;
mod backup;
mod client;
mod console;
mod context;
mod creds;
mod creds_cache;
mod creds_subject;
mod dev;
mod dev_agent;
mod keys;
mod logging;
mod login;
mod output;
mod policy;
mod pool;
mod run;
mod serve;
mod space;
mod stack;
mod state;
mod table;
mod token;
mod trace;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default address of a local broker (`keyward dev`).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8422";

/// Keyward: short-lived, run-scoped credentials for infrastructure pipelines.
#[derive(Debug, Parser)]
#[command(name = "keyward", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local broker with no configuration: SQLite and keys in a data directory, loopback only.
    Dev(dev::DevArgs),
    /// Run the broker from a configuration file.
    Serve(serve::ServeArgs),
    /// Validate a configuration file without starting; prints the first problem and exits non-zero.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Mint run tokens and manage operator API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List and rotate signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Trade a subject token for cloud credentials (for CI jobs and AWS `credential_process`).
    #[command(subcommand)]
    Creds(creds::CredsCommand),
    /// Test, evaluate and document Rego policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Read, export, prove, verify and trace the tamper-evident audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Create and inspect stacks (what to run, where, with which credentials).
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Contexts: named sets of variables (plain or secret) for stacks' jobs.
    #[command(subcommand)]
    Context(context::ContextCommand),
    /// The Terraform state the broker keeps for each stack: versions, pull, push, rollback, unlock.
    #[command(subcommand)]
    State(state::StateCommand),
    /// Submit, follow, review and cancel runs.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Create worker pools and issue agents' one-time join tokens.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// List, drain and revoke enrolled agents.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Sign in as a person with the broker's identity provider ([sso]); the session is kept in
    /// ~/.config/keyward/session and used when no API token is given.
    Login(login::LoginArgs),
    /// Sign out: revoke the session `keyward login` made and forget it.
    Logout(login::SessionArgs),
    /// Who the broker takes you for (`GET /v1/me`).
    Whoami(login::SessionArgs),
    /// Spaces (a tree under `root`) and who holds which role in them.
    #[command(subcommand)]
    Space(space::SpaceCommand),
    /// Open the web console: a one-time sign-in link for your API token (valid once, for a
    /// minute), printed and opened in a browser.
    Console(console::ConsoleArgs),
    /// Copy a running broker's SQLite database to a new file (online, consistent, 0600); on the
    /// broker's host. PostgreSQL: use pg_dump (docs/operations.md).
    Backup(backup::BackupArgs),
}

/// How to reach a running broker.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Broker URL.
    #[arg(long, env = "KEYWARD_ADDR", default_value = DEFAULT_ADDR, global = true)]
    addr: String,
    /// File holding the API token; wins over KEYWARD_TOKEN and KEYWARD_TOKEN_FILE.
    // Not `env = "KEYWARD_TOKEN_FILE"`: clap would then make the variable and the flag the same
    // thing, and `KEYWARD_TOKEN` could not sit between them (see `client::api_token_source`).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

impl Connection {
    /// The broker URL.
    fn addr(&self) -> &str {
        &self.addr
    }
}

/// Parses arguments and runs the command; returns the process exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // One TLS stack, chosen explicitly (DESIGN.md §10).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args, &env).await,
            Command::Serve(args) => serve::serve(args, &env).await,
            Command::CheckConfig { file } => serve::check_config(&file, &env),
            Command::Token(command) => token::run(command, &env).await,
            Command::Keys(command) => keys::run(command, &env).await,
            Command::Policy(command) => policy::run(command, &env).await,
            Command::Creds(command) => creds::run(command, &env).await,
            Command::Audit(command) => audit::run(command, &env).await,
            Command::Stack(command) => stack::run(command, &env).await,
            Command::State(command) => state::run(command, &env).await,
            Command::Context(command) => context::run(command, &env).await,
            Command::Run(command) => run::run(command, &env).await,
            Command::Pool(command) => pool::run(command, &env).await,
            Command::Agent(command) => agent::run(command, &env).await,
            Command::Login(args) => login::login(args, &env).await,
            Command::Logout(args) => login::logout(args, &env).await,
            Command::Whoami(args) => login::whoami(args, &env).await,
            Command::Space(command) => space::run(command, &env).await,
            Command::Console(args) => console::console(args, &env).await,
            Command::Backup(args) => backup::run(args, &env).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of stdout went away (`… | head`): it wanted no more; see `output`.
        Err(error) if output::is_stdout_closed(&error) => std::process::ExitCode::SUCCESS,
        // `run submit --drift --wait` found drift: exit 2, as `terraform plan -detailed-exitcode`.
        Err(error) if error.downcast_ref::<run::DriftFound>().is_some() => {
            eprintln!("{error}");
            std::process::ExitCode::from(2)
        }
        // `run submit --wait` stopped at a run that waits for approval: exit 3.
        Err(error) if error.downcast_ref::<run::AwaitingApproval>().is_some() => {
            eprintln!("{error}");
            std::process::ExitCode::from(3)
        }
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping causes the message already spells out (typed
/// errors here include their source's text; `anyhow` context lines do not).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
    }
    message
}
