//! OpenTofu (issue 24): a stack with `tool = "tofu"` runs every command — `version`, `init`,
//! `plan`, `show`, `apply` — through the agent's `--tofu-binary`, and a Terraform stack on the
//! same agent through its `--terraform-binary`. OpenTofu cannot be downloaded here, so each binary
//! is a shim written by the test: it records its arguments, answers `version -json` as OpenTofu
//! does, and otherwise runs the real Terraform by its absolute path. The agent's PATH holds git
//! but no Terraform, so nothing can reach Terraform except through the shims.
//!
//! An agent without OpenTofu is never leased an OpenTofu stack's job: it runs a Terraform job
//! queued after it, the OpenTofu run stays queued, and an agent with OpenTofu then takes it. A
//! `--tofu-binary` that is missing or cannot run stops the agent at start, saying which.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, json, serve_with_agents};
use keyward_tests::eventually;
use keyward_tests::git::GitRepo;
use serde_json::Value;

/// The real Terraform, by absolute path.
fn real_terraform() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':').map(|dir| Path::new(dir).join("terraform")).find(|p| p.is_file()).expect("terraform on PATH")
}

/// A shim at `dir/name` that appends each invocation's arguments to `dir/name.calls`, answers
/// `version -json` with `version` in OpenTofu's shape, and runs the real Terraform otherwise.
fn shim(dir: &Path, name: &str, version: &str) -> (PathBuf, PathBuf) {
    let path = dir.join(name);
    let calls = dir.join(format!("{name}.calls"));
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{calls}'\n\
         if [ \"$1\" = version ] && [ \"$2\" = -json ]; then\n  \
         echo '{{\"terraform_version\": \"{version}\", \"platform\": \"linux_amd64\", \"provider_selections\": {{}}}}'\n  exit 0\nfi\n\
         exec '{real}' \"$@\"\n",
        calls = calls.display(),
        real = real_terraform().display(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, calls)
}

/// A PATH with git and the system's tools but no Terraform.
fn path_without_terraform(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let git = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("git"))
        .find(|p| p.is_file())
        .expect("git on PATH");
    std::os::unix::fs::symlink(git, bin.join("git")).unwrap();
    format!("{}:/usr/bin:/bin", bin.display())
}

/// An agent enrolled in `pool` and running with `args` (process isolation: the shims write their
/// records outside the job's directory, which the sandbox would refuse) and `path`.
fn agent(broker: &Broker, dir: &Path, pool: &str, args: &[&str], path: Option<&str>) -> Agent {
    let token = json(&broker.cli(&["pool", "join-token", pool, "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, dir);
    assert!(ok, "{stderr}");
    let mut all = vec!["--isolation", "process"];
    all.extend(args);
    Agent::start_with_path(dir, &agent_id, &all, path)
}

/// A stack `name` in `pool` run by `tool`, over a new repository with one `terraform_data`.
fn stack(broker: &Broker, dir: &Path, name: &str, pool: &str, tool: &str) {
    let repo = GitRepo::init(&dir.join(format!("repo-{name}")));
    repo.commit("main.tf", "resource \"terraform_data\" \"one\" {\n  input = \"hello\"\n}\n");
    let url = repo.url();
    let args = ["stack", "create", name, "--repository", &url, "--pool", pool, "--label", "env=dev", "--tool", tool];
    let mut args = args.to_vec();
    args.push("--json");
    let created = json(&broker.cli(&args));
    assert_eq!(created["tool"], tool, "{created}");
}

fn submit(broker: &Broker, stack: &str) -> String {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

async fn ended(broker: &Broker, id: &str) -> Value {
    eventually(&format!("run {id} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await
}

fn logs(broker: &Broker, id: &str) -> String {
    let out = broker.cli(&["run", "logs", id]);
    assert!(out.success, "{}", out.stderr);
    out.stdout
}

/// The commands (first argument) a shim was called with.
fn commands(calls: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(calls).unwrap_or_default();
    text.lines().map(|line| line.split(' ').next().unwrap_or_default().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stack_runs_every_command_through_its_own_tools_binary() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let (tofu, tofu_calls) = shim(dir.path(), "tofu", "1.8.0");
    let (terraform, terraform_calls) = shim(dir.path(), "terraform-shim", "1.11.4");
    let path = path_without_terraform(dir.path());
    let flags = ["--tofu-binary", tofu.to_str().unwrap(), "--terraform-binary", terraform.to_str().unwrap()];
    let agent = agent(&broker, &dir.path().join("agent"), "default", &flags, Some(&path));
    // Started: it asked each binary for its version, and reports both.
    let shown = eventually("the agent to connect", Duration::from_secs(30), || {
        let shown = json(&broker.cli(&["agent", "show", &agent.id, "--json"]));
        async move { (shown["connected"] == true).then_some(shown) }
    })
    .await;
    assert_eq!(shown["tools"], serde_json::json!({"terraform": "1.11.4", "tofu": "1.8.0"}), "{shown}");
    assert_eq!(commands(&tofu_calls), ["version"]);
    assert_eq!(commands(&terraform_calls), ["version"]);

    stack(&broker, dir.path(), "opentofu", "default", "tofu");
    let shown = json(&broker.cli(&["stack", "show", "opentofu", "--json"]));
    assert_eq!(shown["tool"], "tofu", "{shown}");
    let id = submit(&broker, "opentofu");
    let run = ended(&broker, &id).await;
    assert_eq!(run["state"], "finished", "{run}\n{}", logs(&broker, &id));
    let called = commands(&tofu_calls);
    for command in ["init", "plan", "show", "apply"] {
        assert!(called.iter().any(|c| c == command), "tofu never ran `{command}`: {called:?}");
    }
    assert_eq!(commands(&terraform_calls), ["version"], "the Terraform binary ran for an OpenTofu stack");
    let log = logs(&broker, &id);
    assert!(log.contains(&format!("keyward: tofu binary {}, tofu 1.8.0", tofu.display())), "{log}");
    assert!(log.contains(", tofu 1.8.0, isolation process"), "{log}");

    // A Terraform stack on the same agent: its own binary, the tofu shim untouched.
    let before = commands(&tofu_calls).len();
    stack(&broker, dir.path(), "classic", "default", "terraform");
    let id = submit(&broker, "classic");
    let run = ended(&broker, &id).await;
    assert_eq!(run["state"], "finished", "{run}\n{}", logs(&broker, &id));
    let called = commands(&terraform_calls);
    for command in ["init", "plan", "show", "apply"] {
        assert!(called.iter().any(|c| c == command), "--terraform-binary never ran `{command}`: {called:?}");
    }
    assert_eq!(commands(&tofu_calls).len(), before, "the tofu binary ran for a Terraform stack");
    let log = logs(&broker, &id);
    assert!(log.contains(&format!("keyward: terraform binary {}, terraform 1.11.4", terraform.display())), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opentofu_job_waits_for_an_agent_that_has_opentofu() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    json(&broker.cli(&["pool", "create", "plain", "--json"]));
    let path = path_without_terraform(dir.path());
    let (terraform, _) = shim(dir.path(), "terraform", "1.11.4");
    let only_terraform = ["--terraform-binary", terraform.to_str().unwrap()];
    let _plain = agent(&broker, &dir.path().join("agent-plain"), "plain", &only_terraform, Some(&path));
    // More OpenTofu runs queued first than one lease round looks at (an agent plus eight): the
    // agent passes over all of them and runs the Terraform one behind.
    let waiting: Vec<String> = (0..9)
        .map(|i| {
            let name = format!("opentofu-{i}");
            stack(&broker, dir.path(), &name, "plain", "tofu");
            submit(&broker, &name)
        })
        .collect();
    stack(&broker, dir.path(), "classic", "plain", "terraform");
    let later = submit(&broker, "classic");
    let run = ended(&broker, &later).await;
    assert_eq!(run["state"], "finished", "{run}");
    let why = "no active agent in pool `plain` has tofu (the stack's tool): start one with --tofu-binary PATH";
    for id in &waiting {
        let run = json(&broker.cli(&["run", "show", id, "--json"]));
        assert_eq!(run["state"], "queued", "an agent without tofu took an OpenTofu job: {run}");
        assert!(run["jobs"].as_array().unwrap().iter().all(|job| job["state"] == "queued"), "{run}");
        // And it says why, where the run is looked at.
        assert!(run["jobs"].as_array().unwrap().iter().all(|job| job["waiting_for"] == why), "{run}");
    }
    let waiting = &waiting[0];
    let shown = broker.cli(&["run", "show", waiting]);
    assert!(shown.stdout.contains(&format!("    waiting     {why}\n")), "{}", shown.stdout);
    let finished = json(&broker.cli(&["run", "show", &later, "--json"]));
    assert!(finished["jobs"].as_array().unwrap().iter().all(|job| job.get("waiting_for").is_none()), "{finished}");

    // An agent with OpenTofu joins the pool and takes it.
    let (tofu, calls) = shim(dir.path(), "tofu", "1.8.0");
    let _tofu = agent(
        &broker,
        &dir.path().join("agent-tofu"),
        "plain",
        &["--tofu-binary", tofu.to_str().unwrap()],
        Some(&path),
    );
    let run = ended(&broker, waiting).await;
    assert_eq!(run["state"], "finished", "{run}\n{}", logs(&broker, waiting));
    // A pool with no active agent at all says that instead.
    json(&broker.cli(&["pool", "create", "empty", "--json"]));
    stack(&broker, dir.path(), "nobody", "empty", "terraform");
    let alone = json(&broker.cli(&["run", "show", &submit(&broker, "nobody"), "--json"]));
    assert_eq!(
        alone["jobs"][0]["waiting_for"],
        "no active agent in pool `empty`: enroll one with a token from `keyward pool join-token empty`",
        "{alone}"
    );
    assert!(commands(&calls).iter().any(|c| c == "apply"), "{:?}", commands(&calls));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_binary_that_is_missing_or_cannot_run_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let plain = dir.path().join("tofu-not-executable");
    std::fs::write(&plain, "#!/bin/sh\n").unwrap();
    let cases = [
        ("missing", dir.path().join("no-such-tofu"), "no such file"),
        ("plain", plain.clone(), "not an executable file; check its permissions"),
    ];
    for (name, binary, why) in cases {
        let mut agent =
            agent(&broker, &dir.path().join(name), "default", &["--tofu-binary", binary.to_str().unwrap()], None);
        let status = agent.wait_exit(Duration::from_secs(30));
        assert!(!status.success());
        let log = agent.log_text();
        assert!(log.contains(&format!("error: --tofu-binary {}: {why}", binary.display())), "{log}");
    }
}
