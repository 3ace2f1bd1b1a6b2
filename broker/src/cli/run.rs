//! `keyward run …`: submit, follow, review and cancel runs; print, export and verify their logs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::Connection;
use super::client::segment;
use super::client::{Client, items, print_json, text};
use super::output::{out, outln};
use super::table::date;
use crate::joblogs;
use crate::runs::RunState;

#[derive(Debug, Subcommand)]
pub(super) enum RunCommand {
    /// Submit a run of a stack (the `keyward.run` policy decides); prints the run ID.
    Submit(SubmitArgs),
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
        #[command(flatten)]
        filter: ListFilter,
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
    /// Print a run's log: its jobs' output, masked on the agent and verified by the broker.
    Logs {
        /// Run ID (optional with `--verify --bundle FILE`: the bundle names its run).
        id: Option<String>,
        /// Keep printing as output arrives, until the run finishes or waits for approval.
        #[arg(long, conflicts_with_all = ["verify", "export"])]
        follow: bool,
        /// Verify the log instead of printing it: every chunk's digest and agent signature, every
        /// chain from its first chunk to the head sealed in the audit log, every certificate to
        /// the agent CA. Exits non-zero, naming each problem, when anything fails.
        #[arg(long)]
        verify: bool,
        /// With `--verify`: verify this exported bundle offline instead of fetching one.
        #[arg(long, requires = "verify", value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// With `--verify`: trust this agent CA (PEM) instead of the one the bundle carries.
        #[arg(long, requires = "verify", value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Write the run's log bundle (chunks, signatures, certificates, sealed heads) to FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "verify")]
        export: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
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

/// What `keyward run submit` takes.
#[derive(Debug, Args)]
pub(super) struct SubmitArgs {
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
    /// Check for drift instead of deploying: a read-only `terraform plan -detailed-exitcode`
    /// that never applies. With `--wait`, exits 2 when it finds drift.
    #[arg(long)]
    drift: bool,
    /// Plan only: a `proposed` run (docs/vcs.md) plans the commit with the plan phase's
    /// read-only credentials, shows the plan, and never applies.
    #[arg(long, conflicts_with = "drift")]
    proposed: bool,
    /// Follow the run until it finishes or waits for approval. Exits 0 when it finished,
    /// 1 when it failed, 2 when a drift check found drift, 3 when it waits for approval.
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
        RunCommand::Submit(args) => submit(args, env).await?,
        RunCommand::Show { id, json, connection } => {
            let run = Client::new(&connection, env)?.get(&format!("/v1/runs/{}", segment(&id))).await?;
            if json {
                return print_json(&run);
            }
            print_run(&run)?;
        }
        RunCommand::List { filter, limit, json, connection } => list(filter, limit, json, &connection, env).await?,
        RunCommand::Logs { id, follow, verify, bundle, ca, export, json, connection } => {
            if verify {
                return verify_logs(id.as_deref(), bundle.as_deref(), ca.as_deref(), json, &connection, env).await;
            }
            let Some(id) = id else { bail!("name the run: keyward run logs RUN_ID") };
            let client = Client::new(&connection, env)?;
            if let Some(path) = export {
                return export_logs(&client, &id, &path).await;
            }
            print_logs(&client, &id, follow, json).await?;
        }
        RunCommand::Approve(args) => review(args, "approve", env).await?,
        RunCommand::Reject(args) => review(args, "reject", env).await?,
        RunCommand::Cancel { id, json, connection } => {
            let run =
                Client::new(&connection, env)?.post(&format!("/v1/runs/{}/cancel", segment(&id)), &json!({})).await?;
            if json {
                return print_json(&run);
            }
            outln!("canceled run {}", text(&run, "id"))?;
        }
    }
    Ok(())
}

/// `keyward run submit`: queues the run and, with `--wait`, follows it to an end whose exit
/// code says how it went.
async fn submit(args: SubmitArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let SubmitArgs { stack, commit, pr, ticket, drift, proposed, wait, timeout, json, connection } = args;
    let client = Client::new(&connection, env)?;
    let kind = match (drift, proposed) {
        (true, _) => "drift",
        (_, true) => "proposed",
        _ => "deploy",
    };
    let body = json!({ "stack": stack, "commit_sha": commit, "pull_request": pr, "ticket": ticket, "kind": kind });
    let mut run = client.post("/v1/runs", &body).await?;
    let id = text(&run, "id").to_owned();
    if !json {
        outln!("{id}")?;
        let what = match kind {
            "drift" => "drift check",
            "proposed" => "proposed plan",
            _ => "run",
        };
        eprintln!("queued {what} {id} of {stack} at {}", text(&run, "commit_sha"));
    }
    if wait {
        run = follow(&client, &id, !json, timeout).await?;
    }
    if json {
        print_json(&run)?;
    } else if wait {
        print_run(&run)?;
    }
    if wait { outcome(&run, &id) } else { Ok(()) }
}

/// The exit a followed run ends with: an error for a failure, drift found, or a wait for approval.
fn outcome(run: &Value, id: &str) -> anyhow::Result<()> {
    if failed(run) {
        bail!("run {id} ended {}", text(run, "state"));
    }
    if run.get("drift").and_then(Value::as_bool) == Some(true) {
        return Err(DriftFound(format!("drift found by run {id}: {}", text(run, "detail"))).into());
    }
    if text(run, "state") == "planned" {
        return Err(AwaitingApproval(format!(
            "run {id} is planned and {}; a token with the `review` scope approves it: \
             `keyward run approve {id}`",
            waiting_for(run)
        ))
        .into());
    }
    Ok(())
}

/// `keyward run list`: the newest runs, as a table or JSON.
/// `keyward run list`'s filters, each matched exactly by the broker.
#[derive(Debug, clap::Args)]
pub(super) struct ListFilter {
    /// Only this stack's.
    #[arg(long)]
    stack: Option<String>,
    /// Only runs in this state (`planned`, `finished`, `failed`…).
    #[arg(long)]
    state: Option<String>,
    /// Only runs of this kind (`deploy`, `drift`, `remediation`, `proposed`).
    #[arg(long)]
    kind: Option<String>,
    /// Only runs of this pull request number.
    #[arg(long = "pr")]
    pull_request: Option<u64>,
    /// Only runs submitted by (a token's name, a person's `issuer#subject`).
    #[arg(long)]
    submitter: Option<String>,
}

async fn list(
    filter: ListFilter,
    limit: u32,
    json: bool,
    connection: &Connection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/runs?limit={limit}");
    let number = filter.pull_request.map(|n| n.to_string());
    for (key, value) in [
        ("stack", &filter.stack),
        ("state", &filter.state),
        ("kind", &filter.kind),
        ("pull_request", &number),
        ("submitter", &filter.submitter),
    ] {
        if let Some(value) = value {
            path.push_str(&format!("&{key}={}", keyward_proto::encoding::percent_encode(value)));
        }
    }
    let listing = Client::new(connection, env)?.get(&path).await?;
    if json {
        return print_json(&listing);
    }
    outln!("{:<38} {:<20} {:<12} {:<10} TRIGGERED BY", "ID", "STACK", "STATE", "COMMIT")?;
    for run in items(&listing, "runs") {
        outln!(
            "{:<38} {:<20} {:<12} {:<10} {}",
            text(run, "id"),
            text(run, "stack"),
            text(run, "state"),
            text(run, "commit_sha").get(..10).unwrap_or_default(),
            text(run, "triggered_by")
        )?;
    }
    Ok(())
}

/// `keyward run logs --export FILE`: writes the run's log bundle for offline verification.
async fn export_logs(client: &Client, id: &str, path: &Path) -> anyhow::Result<()> {
    let bundle = client.get(&format!("/v1/runs/{}/logs/bundle", segment(id))).await?;
    std::fs::write(path, serde_json::to_vec_pretty(&bundle)?)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    eprintln!(
        "wrote the log bundle of run {id} to {}; check it with `keyward run logs --verify --bundle {} \
         --ca agent-ca.pem` (the agent CA: an agent's ca.pem, or `ca_certificate` from GET /v1/agents/bootstrap)",
        path.display(),
        path.display()
    );
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
        "approve" => outln!("recorded; the approval policy approves: run {id} is {state}")?,
        "reject" => {
            let reasons: Vec<&str> = items(&outcome, "reasons").filter_map(Value::as_str).collect();
            outln!("recorded; the approval policy rejects ({}): run {id} is {state}", reasons.join("; "))?;
        }
        _ => {
            let uncounted =
                outcome.get("run").into_iter().flat_map(|run| items(run, "reviews")).any(|r| {
                    r.get("counted").and_then(Value::as_bool) == Some(false) && text(r, "decision") == verdict
                });
            let reasons: Vec<&str> = items(&outcome, "reasons").filter_map(Value::as_str).collect();
            let own = if uncounted { " (the run's author's own approval does not count)" } else { "" };
            outln!("recorded{own}; run {id} stays {state}, waiting for approval: {}", reasons.join("; "))?;
        }
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

/// Prints the run's log from the start; with `follow`, keeps polling until the run settles.
async fn print_logs(client: &Client, id: &str, follow: bool, json: bool) -> anyhow::Result<()> {
    let mut cursor = 0;
    let mut job = String::new();
    let mut collected = Vec::new();
    // Polls (every 500 ms) a queued run may sit before `--follow` says why nothing comes.
    let mut queued_polls = 0;
    loop {
        let page = client.get(&format!("/v1/runs/{}/logs?after={cursor}&limit=500", segment(id))).await?;
        let chunks: Vec<&Value> = items(&page, "chunks").collect();
        let phases: Vec<(&str, &str)> = items(&page, "jobs").map(|j| (text(j, "id"), text(j, "phase"))).collect();
        for chunk in &chunks {
            if json {
                collected.push((*chunk).clone());
                continue;
            }
            if text(chunk, "job_id") != job {
                job = text(chunk, "job_id").to_owned();
                let phase = phases.iter().find(|(id, _)| *id == job).map_or("job", |(_, phase)| phase);
                outln!("── {phase} (job {job}) ──")?;
            }
            out!("{}", text(chunk, "text"))?;
        }
        cursor = page.get("cursor").and_then(Value::as_i64).unwrap_or(cursor);
        let settled = page.get("settled").and_then(Value::as_bool).unwrap_or(true);
        if chunks.len() >= 500 {
            continue;
        }
        if !follow || settled {
            if json {
                return print_json(&json!({ "run_id": id, "state": text(&page, "state"), "chunks": collected }));
            }
            if follow {
                eprintln!("run {id}: {}", text(&page, "state"));
            }
            return Ok(());
        }
        if text(&page, "state") == "queued" {
            queued_polls += 1;
            if queued_polls == 10 {
                eprintln!(
                    "run {id} is still queued: no agent of its pool has taken its job; is one connected? \
                     (`keyward agent list`, `keyward run show {id}`)"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `run logs --verify`: fetches the run's bundle (or reads `bundle`) and verifies it here.
async fn verify_logs(
    id: Option<&str>,
    bundle: Option<&Path>,
    ca: Option<&Path>,
    json: bool,
    connection: &Connection,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<()> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()));
    let bundle: joblogs::Bundle = match (bundle, id) {
        (Some(path), _) => serde_json::from_slice(&read(path)?)
            .map_err(|e| anyhow::anyhow!("{} is not a log bundle: {e}", path.display()))?,
        (None, Some(id)) => {
            let value = Client::new(connection, env)?.get(&format!("/v1/runs/{}/logs/bundle", segment(id))).await?;
            serde_json::from_value(value).map_err(|e| anyhow::anyhow!("the broker sent an unreadable bundle: {e}"))?
        }
        (None, None) => bail!("name the run (keyward run logs RUN_ID --verify) or a bundle (--bundle FILE)"),
    };
    if let Some(id) = id
        && id != bundle.run_id
    {
        bail!("the bundle is the log of run {}, not {id}", bundle.run_id);
    }
    let pinned = match ca {
        Some(path) => Some(
            keyward_proto::encoding::pem_der(&String::from_utf8_lossy(&read(path)?))
                .ok_or_else(|| anyhow::anyhow!("{} holds no PEM certificate", path.display()))?,
        ),
        None => None,
    };
    let report = joblogs::bundle::verify(&bundle, pinned.as_deref())?;
    if json {
        return print_json(&serde_json::to_value(&report)?);
    }
    out!("{report}")?;
    Ok(())
}

fn failed(run: &Value) -> bool {
    matches!(text(run, "state"), "failed" | "canceled" | "discarded" | "interrupted")
}

/// A drift check that found drift, for the exit code (2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct DriftFound(String);

/// A run that planned and now waits for reviews, for the exit code (3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct AwaitingApproval(String);

/// What a planned run waits for, from its detail (the approval policy's `pending` messages).
fn waiting_for(run: &Value) -> String {
    let detail = text(run, "detail");
    if detail.starts_with("waiting for approval") { detail.to_owned() } else { "waiting for approval".to_owned() }
}

/// A job's sandbox in one line: the isolation and the names of its layers (whole in `--json`).
fn isolation_line(job: &Value) -> String {
    let layers: Vec<&str> = items(job, "layers")
        .filter_map(Value::as_str)
        .map(|layer| layer.split_once(':').map_or(layer, |(name, _)| name).trim())
        .collect();
    if layers.is_empty() {
        text(job, "isolation").to_owned()
    } else {
        format!("{}: {}", text(job, "isolation"), layers.join(", "))
    }
}

fn print_run(run: &Value) -> anyhow::Result<()> {
    outln!("run {}", text(run, "id"))?;
    outln!("  stack         {}", text(run, "stack"))?;
    if text(run, "kind") == "drift" {
        let found = match run.get("drift").and_then(Value::as_bool) {
            Some(true) => "drift found",
            Some(false) => "no drift",
            None => "not checked yet",
        };
        outln!("  kind          drift check ({found})")?;
    }
    outln!("  state         {} (since {})", text(run, "state"), date(run.get("updated_at").and_then(Value::as_i64)))?;
    if text(run, "state") == "planned" {
        outln!("  waiting       {}", waiting_for(run))?;
    } else if !text(run, "detail").is_empty() {
        outln!("  detail        {}", text(run, "detail"))?;
    }
    outln!("  commit        {}", text(run, "commit_sha"))?;
    if !text(run, "ref").is_empty() {
        outln!("  ref           {}", text(run, "ref"))?;
    }
    if let Some(pr) = run.get("pull_request").and_then(Value::as_i64) {
        outln!("  pull request  #{pr}")?;
    }
    if !text(run, "ticket").is_empty() {
        outln!("  ticket        {}", text(run, "ticket"))?;
    }
    outln!("  submitted by  {} at {}", text(run, "triggered_by"), date(run.get("created_at").and_then(Value::as_i64)))?;
    let approvers: Vec<&str> = items(run, "reviews")
        .filter(|r| text(r, "decision") == "approve" && r.get("counted").and_then(Value::as_bool) == Some(true))
        .map(|r| text(r, "by"))
        .collect();
    outln!("  approved by   {}", if approvers.is_empty() { "nobody yet".to_owned() } else { approvers.join(", ") })?;
    for review in items(run, "reviews") {
        let comment = text(review, "comment");
        let counted = match review.get("counted").and_then(Value::as_bool) {
            Some(false) => format!(" (not counted: {})", text(review, "note")),
            _ => String::new(),
        };
        outln!(
            "  review        {} by {} at {}{counted}{}",
            text(review, "decision"),
            text(review, "by"),
            date(review.get("at").and_then(Value::as_i64)),
            if comment.is_empty() { String::new() } else { format!(": {comment}") }
        )?;
    }
    for job in items(run, "jobs") {
        outln!("  job           {} {} ({})", text(job, "phase"), text(job, "state"), text(job, "id"))?;
        if !text(job, "waiting_for").is_empty() {
            outln!("    waiting     {}", text(job, "waiting_for"))?;
        }
        if !text(job, "isolation").is_empty() {
            outln!("    isolation   {}", isolation_line(job))?;
        }
        if let Some(scan) = job.get("scan") {
            print_scan(scan)?;
        }
    }
    Ok(())
}

/// A plan job's scan: each scanner's counts and failed checks, then what the policy said.
fn print_scan(scan: &Value) -> anyhow::Result<()> {
    let scanners = scan.get("scanners").and_then(Value::as_object).into_iter().flatten();
    for (scanner, found) in scanners {
        let count = |key: &str| found.get(key).and_then(Value::as_u64).unwrap_or_default();
        let ids: Vec<&str> = items(found, "failed_check_ids").filter_map(Value::as_str).collect();
        let listed = if ids.is_empty() { String::new() } else { format!(": {}", ids.join(", ")) };
        outln!("    scan        {scanner}: {} passed, {} failed{listed}", count("passed"), count("failed"))?;
    }
    for deny in items(scan, "deny").filter_map(Value::as_str) {
        outln!("    refused     {deny}")?;
    }
    for warn in items(scan, "warn").filter_map(Value::as_str) {
        outln!("    warning     {warn}")?;
    }
    Ok(())
}
