//! `keyward stack …`: create, update, list and show stacks.

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::Connection;
use super::client::{Client, items, print_json, segment, text};
use super::output::outln;
use super::table::{Table, date};

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
        /// The configuration brings its own backend: the broker does not keep this stack's
        /// Terraform state (docs/state.md).
        #[arg(long)]
        no_managed_state: bool,
        /// Lifecycle hook, `POINT=COMMAND` (points: before_init, before_plan, after_plan,
        /// before_apply, after_apply); repeatable, run in the order given (docs/runs.md).
        #[arg(long = "hook", value_parser = parse_hook)]
        hooks: Vec<(String, String)>,
        /// Scan the checked-out code with this scanner before `init` (`checkov`); the
        /// `keyward.scan` policy judges what it finds (docs/scans.md).
        #[arg(long = "scan", value_parser = SCANNERS)]
        scanners: Vec<String>,
        /// A glob of repository files (relative to its root; `**` crosses directories) whose
        /// change concerns the stack, instead of the files under `--path`; repeatable
        /// (docs/vcs.md).
        #[arg(long = "trigger", value_name = "GLOB")]
        triggers: Vec<String>,
        /// The program its jobs run: `terraform` or `tofu` (OpenTofu); only agents that have it
        /// take its jobs (docs/agents.md, "OpenTofu").
        #[arg(long, default_value = "terraform", value_parser = TOOLS)]
        tool: String,
        /// The space it belongs to (docs/access.md); fixed once created.
        #[arg(long, default_value = crate::roles::ROOT)]
        space: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Change a stack: branch, pool, targets, labels, drift schedule, drift remediation. What
    /// is not given stays; the stack after it is checked like a new one, or nothing changes.
    Update(UpdateArgs),
    /// List stacks, with each one's drift state.
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
    /// Set one of the stack's own variables (they override its contexts'): `KEY=VALUE`, or
    /// `KEY` alone to read the value from standard input. With `--file PATH` the value is
    /// mounted as a file, not put into the environment.
    SetVar {
        /// The stack.
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
    /// Remove one of the stack's own variables.
    UnsetVar {
        /// The stack.
        name: String,
        /// The variable.
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
}

/// `keyward stack update NAME …`.
#[derive(Debug, Args)]
pub(super) struct UpdateArgs {
    /// The stack.
    name: String,
    /// New default branch.
    #[arg(long)]
    branch: Option<String>,
    /// New worker pool (it must exist).
    #[arg(long)]
    pool: Option<String>,
    /// Credential target plans may use (read access only); repeatable; replaces the list.
    #[arg(long = "plan-target")]
    plan_targets: Vec<String>,
    /// Remove every plan target.
    #[arg(long, conflicts_with = "plan_targets")]
    clear_plan_targets: bool,
    /// Credential target applies may use; repeatable; replaces the list.
    #[arg(long = "apply-target")]
    apply_targets: Vec<String>,
    /// Remove every apply target.
    #[arg(long, conflicts_with = "apply_targets")]
    clear_apply_targets: bool,
    /// Set a label, `KEY=VALUE`; repeatable; other labels stay.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Remove a label; repeatable.
    #[arg(long = "remove-label")]
    remove_labels: Vec<String>,
    /// Check for drift on this schedule: a 5-field cron expression in UTC (`"0 */6 * * *"`);
    /// `off` (or `""`) stops scheduled checks.
    #[arg(long)]
    drift_schedule: Option<String>,
    /// What to do about drift once a check finds it: `plan` queues a remediation run that waits
    /// for a review, `apply` one the approval policy may apply by itself (docs/drift.md).
    #[arg(long, value_parser = ["off", "plan", "apply"])]
    drift_remediation: Option<String>,
    /// Whether the broker keeps the stack's Terraform state (`false`: the configuration brings
    /// its own backend).
    #[arg(long, value_name = "BOOL")]
    managed_state: Option<bool>,
    #[command(flatten)]
    hook_changes: HookChanges,
    /// Scan with this scanner before `init` (`checkov`), replacing the stack's scanners;
    /// repeatable.
    #[arg(long = "scan", value_parser = SCANNERS, conflicts_with = "no_scan")]
    scanners: Vec<String>,
    /// Stop scanning the stack's code.
    #[arg(long)]
    no_scan: bool,
    /// A trigger glob (docs/vcs.md), replacing the stack's triggers; repeatable.
    #[arg(long = "trigger", value_name = "GLOB", conflicts_with = "clear_triggers")]
    triggers: Vec<String>,
    /// Remove every trigger glob: changes under the stack's path concern it again.
    #[arg(long)]
    clear_triggers: bool,
    /// The program its jobs run from now on: `terraform` or `tofu`.
    #[arg(long, value_parser = TOOLS)]
    tool: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

impl UpdateArgs {
    /// The `PATCH /v1/stacks/{name}` body: only what was given.
    fn body(&self) -> Value {
        let mut body = Map::new();
        let mut put = |key: &str, value: Value| {
            body.insert(key.to_owned(), value);
        };
        if let Some(branch) = &self.branch {
            put("branch", json!(branch));
        }
        if let Some(pool) = &self.pool {
            put("pool", json!(pool));
        }
        if !self.plan_targets.is_empty() || self.clear_plan_targets {
            put("plan_targets", json!(self.plan_targets));
        }
        if !self.apply_targets.is_empty() || self.clear_apply_targets {
            put("apply_targets", json!(self.apply_targets));
        }
        let mut labels: Map<String, Value> = self.remove_labels.iter().map(|k| (k.clone(), Value::Null)).collect();
        labels.extend(self.labels.iter().map(|(k, v)| (k.clone(), json!(v))));
        if !labels.is_empty() {
            put("labels", Value::Object(labels));
        }
        if let Some(schedule) = &self.drift_schedule {
            put("drift_schedule", json!(schedule));
        }
        if let Some(remediation) = &self.drift_remediation {
            put("drift_remediation", json!(remediation));
        }
        if let Some(managed) = self.managed_state {
            put("managed_state", json!(managed));
        }
        self.hook_changes.put(&mut put);
        if !self.scanners.is_empty() || self.no_scan {
            put("scanners", json!(self.scanners));
        }
        if !self.triggers.is_empty() || self.clear_triggers {
            put("triggers", json!(self.triggers));
        }
        if let Some(tool) = &self.tool {
            put("tool", json!(tool));
        }
        Value::Object(body)
    }
}

/// `--clear-hooks` and `--hook`, as `stack update` and `context update` take them.
#[derive(Debug, Args)]
pub(super) struct HookChanges {
    /// Remove every hook at a point (`before_init`, …), or `all`; repeatable; done before any
    /// `--hook` is added.
    #[arg(long = "clear-hooks", value_name = "POINT", value_parser = ["all", "before_init", "before_plan", "after_plan", "before_apply", "after_apply"])]
    clear_hooks: Vec<String>,
    /// Add a lifecycle hook after the point's others, `POINT=COMMAND`; repeatable, in order.
    #[arg(long = "hook", value_parser = parse_hook)]
    hooks: Vec<(String, String)>,
}

impl HookChanges {
    /// Adds to a `PATCH` body what was given: `hooks` clears the points named, `append_hooks`
    /// adds after each point's others.
    pub(super) fn put(&self, put: &mut impl FnMut(&str, Value)) {
        if !self.clear_hooks.is_empty() {
            let all = self.clear_hooks.iter().any(|point| point == "all");
            let points = if all { HOOK_POINTS.to_vec() } else { self.clear_hooks.iter().map(String::as_str).collect() };
            put("hooks", Value::Object(points.into_iter().map(|point| (point.to_owned(), json!([]))).collect()));
        }
        if !self.hooks.is_empty() {
            put("append_hooks", hooks_object(&self.hooks));
        }
    }
}

/// The programs a stack's jobs can run (docs/agents.md, "OpenTofu").
const TOOLS: [&str; 2] = ["terraform", "tofu"];

/// The scanners a stack can name (docs/scans.md).
const SCANNERS: [&str; 1] = ["checkov"];

/// The hook points, in the order they run.
pub(super) const HOOK_POINTS: [&str; 5] = ["before_init", "before_plan", "after_plan", "before_apply", "after_apply"];

/// `POINT=COMMAND`; the broker checks the command.
pub(super) fn parse_hook(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((point, command)) if HOOK_POINTS.contains(&point) => Ok((point.to_owned(), command.to_owned())),
        Some((point, _)) => Err(format!("unknown hook point `{point}`; points: {}", HOOK_POINTS.join(", "))),
        None => Err(format!("`{text}` is not POINT=COMMAND")),
    }
}

/// `{point: [command, …]}`, in the order given.
pub(super) fn hooks_object(hooks: &[(String, String)]) -> Value {
    let mut object = Map::new();
    for (point, command) in hooks {
        let list = object.entry(point.clone()).or_insert_with(|| json!([]));
        if let Value::Array(list) = list {
            list.push(json!(command));
        }
    }
    Value::Object(object)
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
            no_managed_state,
            hooks,
            scanners,
            triggers,
            tool,
            space,
            json,
            connection,
        } => {
            let client = Client::new(&connection, env)?;
            let labels: Map<String, Value> = labels.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let body = json!({
                "name": name, "repository": repository, "path": path, "branch": branch, "pool": pool,
                "plan_targets": plan_targets, "apply_targets": apply_targets, "labels": labels, "policies": policies,
                "managed_state": !no_managed_state, "hooks": hooks_object(&hooks), "scanners": scanners,
                "triggers": triggers, "space": space, "tool": tool,
            });
            let stack = client.post("/v1/stacks", &body).await?;
            if json {
                return print_json(&stack);
            }
            outln!("created stack {}", text(&stack, "name"))?;
            print_stack(&stack)?;
        }
        StackCommand::Update(args) => update(&args, env).await?,
        StackCommand::List { json, connection } => list(json, &connection, env).await?,
        StackCommand::Show { name, json, connection } => {
            let stack = Client::new(&connection, env)?.get(&format!("/v1/stacks/{}", segment(&name))).await?;
            if json {
                return print_json(&stack);
            }
            print_stack(&stack)?;
        }
        StackCommand::SetVar { name, assignment, secret, file, json, connection } => {
            let (key, value) = super::context::assignment(&assignment, file.is_some())?;
            let path = format!("/v1/stacks/{}/variables/{}", segment(&name), segment(&key));
            let body = super::context::variable_body(&value, secret, file.as_deref());
            let set = Client::new(&connection, env)?.put(&path, &body).await?;
            if json {
                return print_json(&set);
            }
            let (version, mounted) = (super::context::shown(&set, "version"), super::context::mounted(&set));
            outln!("stack {name}: {key} set (version {version}{mounted})")?;
        }
        StackCommand::UnsetVar { name, key, connection } => {
            let path = format!("/v1/stacks/{}/variables/{}", segment(&name), segment(&key));
            Client::new(&connection, env)?.delete(&path).await?;
            outln!("stack {name}: {key} unset")?;
        }
    }
    Ok(())
}

/// `keyward stack list`: a table with each stack's drift state, or JSON.
async fn list(json: bool, connection: &Connection, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let listing = Client::new(connection, env)?.get("/v1/stacks").await?;
    if json {
        return print_json(&listing);
    }
    let mut table = Table::new(&["NAME", "BRANCH", "POOL", "DRIFT", "REPOSITORY"]);
    for stack in items(&listing, "stacks") {
        let cell = |key: &str| text(stack, key).to_owned();
        table.row(vec![cell("name"), cell("branch"), cell("pool"), drift_state(stack), cell("repository")]);
    }
    table.print()
}

/// `keyward stack update`: sends what was given, prints the stack as it is now.
async fn update(args: &UpdateArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let body = args.body();
    if body.as_object().is_some_and(Map::is_empty) {
        anyhow::bail!(
            "nothing to update: give --branch, --pool, --plan-target, --apply-target, --label, --remove-label, \
             --drift-schedule, --drift-remediation, --managed-state, --hook, --clear-hooks, --scan, --no-scan, \
             --trigger or --clear-triggers"
        );
    }
    let client = Client::new(&args.connection, env)?;
    let stack = client.patch(&format!("/v1/stacks/{}", segment(&args.name)), &body).await?;
    if args.json {
        return print_json(&stack);
    }
    outln!("updated stack {}", text(&stack, "name"))?;
    print_stack(&stack)
}

/// A stack's drift state name (`drifted`, `in_sync`, `failed`, `unknown`).
fn drift_state(stack: &Value) -> String {
    stack.pointer("/drift/state").and_then(Value::as_str).unwrap_or("unknown").to_owned()
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
    outln!("  tool           {}", stack.get("tool").and_then(Value::as_str).unwrap_or("terraform"))?;
    outln!("  plan targets   {}", list("plan_targets"))?;
    outln!("  apply targets  {}", list("apply_targets"))?;
    outln!("  policies       {}", list("policies"))?;
    outln!("  scanned with   {}", list("scanners"))?;
    outln!("  triggers       {}", list("triggers"))?;
    let managed = stack.get("managed_state").and_then(Value::as_bool) != Some(false);
    outln!("  state          {}", if managed { "kept by the broker" } else { "the configuration's own backend" })?;
    if let Some(labels) = stack.get("labels").and_then(Value::as_object).filter(|l| !l.is_empty()) {
        let pairs: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
        outln!("  labels         {}", pairs.join(", "))?;
    }
    for point in HOOK_POINTS {
        for command in items(stack.get("hooks").unwrap_or(&Value::Null), point).filter_map(Value::as_str) {
            outln!("  hook           {point}: {command}")?;
        }
    }
    print_drift(stack)
}

/// The drift state first, then the schedule.
fn print_drift(stack: &Value) -> anyhow::Result<()> {
    let drift = stack.get("drift").cloned().unwrap_or(Value::Null);
    let number = |value: &Value, key: &str| value.get(key).and_then(Value::as_i64);
    let run =
        |value: &Value| value.get("run_id").and_then(Value::as_str).map(|id| format!(", run {id}")).unwrap_or_default();
    let checked = format!("checked {}{}", date(number(&drift, "checked_at")), run(&drift));
    match drift_state(stack).as_str() {
        "drifted" => {
            let count = |key: &str| number(&drift, key).unwrap_or_default();
            outln!(
                "  drift          drifted since {}: {} to add, {} to change, {} to destroy, {} changed outside ({checked})",
                date(number(&drift, "since")),
                count("to_add"),
                count("to_change"),
                count("to_destroy"),
                count("changed_outside")
            )?;
            for address in items(&drift, "addresses").filter_map(Value::as_str) {
                outln!("                   {address}")?;
            }
        }
        "failed" => outln!("  drift          failed: {} ({checked})", text(&drift, "error"))?,
        "in_sync" => outln!("  drift          in_sync ({checked})")?,
        _ => outln!("  drift          unknown (never checked)")?,
    }
    match stack.get("drift_schedule").and_then(Value::as_str) {
        Some(schedule) => {
            outln!("  drift schedule {schedule} (UTC); next {}", date(number(stack, "next_drift_check_at")))?;
            if let Some(last) = stack.get("last_drift_check").and_then(Value::as_str) {
                outln!("  last scheduled {}: {last}", date(number(stack, "last_drift_check_at")))?;
            }
        }
        None => outln!("  drift schedule off")?,
    }
    outln!("  remediation    {}", text(stack, "drift_remediation"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: StackCommand,
    }

    fn body(args: &[&str]) -> Value {
        let cli = Cli::try_parse_from([&["stack", "update", "network"], args].concat()).unwrap();
        let StackCommand::Update(update) = cli.command else { panic!("an update") };
        update.body()
    }

    #[test]
    fn update_sends_only_what_was_given() {
        assert_eq!(body(&[]), json!({}));
        assert_eq!(
            body(&["--label", "env=prod", "--remove-label", "team", "--drift-schedule", "*/15 * * * *"]),
            json!({"labels": {"env": "prod", "team": null}, "drift_schedule": "*/15 * * * *"})
        );
        assert_eq!(body(&["--clear-plan-targets"]), json!({"plan_targets": []}));
        assert_eq!(
            body(&["--apply-target", "aws:a", "--apply-target", "aws:b", "--drift-remediation", "plan"]),
            json!({"apply_targets": ["aws:a", "aws:b"], "drift_remediation": "plan"})
        );
        assert_eq!(body(&["--drift-schedule", "off", "--pool", "p"]), json!({"pool": "p", "drift_schedule": "off"}));
        assert_eq!(
            body(&["--clear-hooks", "after_plan", "--hook", "before_plan=echo a=b", "--hook", "before_plan=make"]),
            json!({"hooks": {"after_plan": []}, "append_hooks": {"before_plan": ["echo a=b", "make"]}})
        );
        let all: Map<String, Value> = HOOK_POINTS.iter().map(|p| ((*p).to_owned(), json!([]))).collect();
        assert_eq!(body(&["--clear-hooks", "all"]), json!({"hooks": all}));
        assert_eq!(
            body(&["--trigger", "modules/**", "--trigger", "*.tfvars"]),
            json!({"triggers": ["modules/**", "*.tfvars"]})
        );
        assert_eq!(body(&["--clear-triggers"]), json!({"triggers": []}));
        assert!(Cli::try_parse_from(["stack", "update", "network", "--trigger", "x", "--clear-triggers"]).is_err());
    }

    #[test]
    fn an_unknown_hook_point_is_refused_before_anything_is_sent() {
        let error = Cli::try_parse_from(["stack", "update", "network", "--hook", "after_init=true"]).unwrap_err();
        assert!(error.to_string().contains("unknown hook point `after_init`"), "{error}");
    }

    #[test]
    fn an_unknown_remediation_is_refused_before_anything_is_sent() {
        let error = Cli::try_parse_from(["stack", "update", "network", "--drift-remediation", "fix"]).unwrap_err();
        assert!(error.to_string().contains("possible values: off, plan, apply"), "{error}");
    }
}
