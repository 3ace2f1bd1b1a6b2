//! `keyward run …`: submit, follow, review and cancel runs.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Connection;
use super::client::segment;
use super::client::{Client, items, print_json, text};
use crate::runs::RunState;

#[derive(Debug, Subcommand)]
pub(super) enum RunCommand {
    /// Submit a run of a stack (the `keyward.run` policy decides); prints the run ID.
    Submit {
        /// The stack.
        #[arg(long)]
        stack: String,
        /// Full commit SHA (default: the head of the stack's branch, resolved now).
        #[arg(long)]
        commit: Option<String>,
        /// Pull request number.
        #[arg(long)]
        pr: Option<u64>,
        /// Change ticket.
        #[arg(long)]
        ticket: Option<String>,
        /// Follow the run until it finishes or waits for approval.
        #[arg(long)]
        wait: bool,
        /// With `--wait`: give up waiting after this long (e.g. `10m`), exiting non-zero; the
        /// run itself goes on.
        #[arg(long, requires = "wait", value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
        /// Print JSON (`{"id": …}` and the run).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a run, its reviews and jobs.
    Show {
        /// Run ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the newest runs.
    List {
        /// Only this stack's.
        #[arg(long)]
        stack: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Approve a planned run (the `keyward.approval` policy decides when it may apply).
    Approve(ReviewArgs),
    /// Reject a planned run.
    Reject(ReviewArgs),
    /// Cancel a run that has not finished.
    Cancel {
        /// Run ID.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

/// What a review (`approve`, `reject`) takes.
#[derive(Debug, Args)]
pub(super) struct ReviewArgs {
    /// Run ID.
    id: String,
    /// Why.
    #[arg(long)]
    comment: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

pub(super) async fn run(command: RunCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        RunCommand::Submit { stack, commit, pr, ticket, wait, timeout, json, connection } => {
            let client = Client::new(&connection, env)?;
            let body = json!({ "stack": stack, "commit_sha": commit, "pull_request": pr, "ticket": ticket });
            let mut run = client.post("/v1/runs", &body).await?;
            let id = text(&run, "id").to_owned();
            if !json {
                println!("{id}");
                eprintln!("queued run {id} of {stack} at {}", text(&run, "commit_sha"));
            }
            if wait {
                run = follow(&client, &id, !json, timeout).await?;
            }
            if json {
                return print_json(&run);
            }
            if wait {
                print_run(&run);
                if failed(&run) {
                    bail!("run {id} ended {}", text(&run, "state"));
                }
            }
        }
        RunCommand::Show { id, json, connection } => {
            let run = Client::new(&connection, env)?.get(&format!("/v1/runs/{}", segment(&id))).await?;
            if json {
                return print_json(&run);
            }
            print_run(&run);
        }
        RunCommand::List { stack, limit, json, connection } => {
            let mut path = format!("/v1/runs?limit={limit}");
            if let Some(stack) = &stack {
                path.push_str(&format!("&stack={}", segment(stack)));
            }
            let listing = Client::new(&connection, env)?.get(&path).await?;
            if json {
                return print_json(&listing);
            }
            println!("{:<38} {:<20} {:<12} {:<10} TRIGGERED BY", "ID", "STACK", "STATE", "COMMIT");
            for run in items(&listing, "runs") {
                println!(
                    "{:<38} {:<20} {:<12} {:<10} {}",
                    text(run, "id"),
                    text(run, "stack"),
                    text(run, "state"),
                    text(run, "commit_sha").get(..10).unwrap_or_default(),
                    text(run, "triggered_by")
                );
            }
        }
        RunCommand::Approve(args) => review(args, "approve", env).await?,
        RunCommand::Reject(args) => review(args, "reject", env).await?,
        RunCommand::Cancel { id, json, connection } => {
            let run =
                Client::new(&connection, env)?.post(&format!("/v1/runs/{}/cancel", segment(&id)), &json!({})).await?;
            if json {
                return print_json(&run);
            }
            println!("canceled run {}", text(&run, "id"));
        }
    }
    Ok(())
}

async fn review(args: ReviewArgs, verdict: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let ReviewArgs { id, comment, json, connection } = args;
    let client = Client::new(&connection, env)?;
    let outcome = client.post(&format!("/v1/runs/{}/{verdict}", segment(&id)), &json!({ "comment": comment })).await?;
    if json {
        return print_json(&outcome);
    }
    let state = outcome.get("run").map(|run| text(run, "state")).unwrap_or_default();
    match text(&outcome, "approval") {
        "approve" => println!("recorded; the approval policy approves: run {id} is {state}"),
        "reject" => {
            let reasons: Vec<&str> = items(&outcome, "reasons").filter_map(Value::as_str).collect();
            println!("recorded; the approval policy rejects ({}): run {id} is {state}", reasons.join("; "));
        }
        _ => println!("recorded; the approval policy is not satisfied yet: run {id} stays {state}"),
    }
    Ok(())
}

/// Polls until the run is settled, printing each state change to stderr when `progress`; gives
/// up after `timeout`, saying why the run may be stuck.
async fn follow(client: &Client, id: &str, progress: bool, timeout: Option<Duration>) -> anyhow::Result<Value> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut last = String::new();
    loop {
        let run = client.get(&format!("/v1/runs/{}", segment(id))).await?;
        let state = text(&run, "state").to_owned();
        if progress && state != last {
            eprintln!("run {id}: {state}");
        }
        let settled = state.parse::<RunState>().is_ok_and(RunState::is_settled);
        if settled {
            return Ok(run);
        }
        if let (Some(deadline), Some(timeout)) = (deadline, timeout)
            && tokio::time::Instant::now() >= deadline
        {
            let mut message = format!("run {id} is still {state} after {}", humantime::format_duration(timeout));
            if state == "queued" {
                let pool = items(&run, "jobs").next().map(|job| text(job, "pool").to_owned()).unwrap_or_default();
                message.push_str(&format!(
                    "; no agent has taken its job: is an agent of pool `{pool}` connected? (`keyward agent list --pool {pool}`)"
                ));
            }
            bail!("{message}\nthe run goes on: `keyward run show {id}`");
        }
        last = state;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn failed(run: &Value) -> bool {
    matches!(text(run, "state"), "failed" | "canceled" | "discarded" | "interrupted")
}

fn print_run(run: &Value) {
    println!("run {}", text(run, "id"));
    println!("  stack         {}", text(run, "stack"));
    println!("  state         {}", text(run, "state"));
    if !text(run, "detail").is_empty() {
        println!("  detail        {}", text(run, "detail"));
    }
    println!("  commit        {}", text(run, "commit_sha"));
    if !text(run, "ref").is_empty() {
        println!("  ref           {}", text(run, "ref"));
    }
    if let Some(pr) = run.get("pull_request").and_then(Value::as_i64) {
        println!("  pull request  #{pr}");
    }
    if !text(run, "ticket").is_empty() {
        println!("  ticket        {}", text(run, "ticket"));
    }
    println!("  triggered by  {}", text(run, "triggered_by"));
    for review in items(run, "reviews") {
        let comment = text(review, "comment");
        println!(
            "  review        {} by {}{}",
            text(review, "decision"),
            text(review, "by"),
            if comment.is_empty() { String::new() } else { format!(": {comment}") }
        );
    }
    for job in items(run, "jobs") {
        println!("  job           {} {} ({})", text(job, "phase"), text(job, "state"), text(job, "id"));
    }
}
