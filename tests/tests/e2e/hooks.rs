//! Lifecycle hooks per stack (docs/runs.md, "Lifecycle hooks"): a real broker, moto's STS for the
//! plan's credentials, a real `keyward-agent` (sandbox, network `none`) and real Terraform over
//! local git repositories. Hooks run at their points around `terraform init`, `plan` and
//! `apply`, in the configuration's directory, with the job's environment, their output masked;
//! a failing hook fails the phase, named, and nothing after it runs; bad hooks are refused, by
//! the CLI and over HTTP, and nothing is stored.

use std::path::Path;
use std::time::Duration;

use keyward_tests::agent::{Agent, join};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::{Value, json};

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";

/// A broker with one read target (moto's STS at `sts`).
async fn start(dir: &Path, sts: &str) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// A real agent (sandbox, network `none`), enrolled in pool `default`.
fn agent(broker: &Broker, dir: &Path) -> Agent {
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &dir.join("agent"));
    assert!(ok, "{stderr}");
    Agent::start(&dir.join("agent"), &agent_id, &[])
}

/// A repository whose `infra/main.tf` holds one `terraform_data` resource.
fn repository(dir: &Path, name: &str) -> GitRepo {
    let repo = GitRepo::init(&dir.join(format!("repo-{name}")));
    std::fs::create_dir_all(repo.dir.join("infra")).unwrap();
    repo.commit("infra/main.tf", "resource \"terraform_data\" \"hooked\" {\n  input = \"v1\"\n}\n");
    repo
}

/// Creates stack `name` over `repo` (configuration in `infra/`) with `hooks`, `POINT=COMMAND`.
fn create(broker: &Broker, repo: &GitRepo, name: &str, extra: &[&str], hooks: &[String]) -> Output {
    let url = repo.url();
    let mut args = vec!["stack", "create", name, "--repository", &url, "--path", "infra", "--label", "env=dev"];
    args.extend_from_slice(extra);
    for hook in hooks {
        args.extend(["--hook", hook.as_str()]);
    }
    args.push("--json");
    broker.cli(&args)
}

/// Submits a run of `stack` and waits for it to end; the run and its log.
async fn run_to_end(broker: &Broker, stack: &str) -> (Value, String) {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    let run = eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await;
    let logs = broker.cli(&["run", "logs", &id]);
    assert!(logs.success, "{}", logs.stderr);
    (run, logs.stdout)
}

/// The steps the log announces (`terraform init`, `hook before_plan`, …), in order.
fn steps(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| line.split_once("$ ").map(|(_, step)| step))
        .filter(|step| step.starts_with("terraform ") || step.starts_with("hook "))
        .map(|step| step.split([' ', ':']).take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_run_at_their_points_with_the_jobs_environment_masked() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let _agent = agent(&broker, dir.path());
    let repo = repository(dir.path(), "hooked");
    let mut hooks: Vec<String> = ["before_init", "before_plan", "after_plan", "before_apply", "after_apply"]
        .iter()
        // In the configuration's directory, with the job's variables.
        .map(|point| format!("{point}=test -f main.tf && echo \"marker-{point} phase=$KEYWARD_PHASE\""))
        .collect();
    // The plan's credentials are there too, and masked like Terraform's output.
    hooks.push("before_plan=echo \"secret=$AWS_SECRET_ACCESS_KEY\"".to_owned());
    let created = json(&create(&broker, &repo, "hooked", &["--plan-target", "aws:state-read"], &hooks));
    assert_eq!(created["hooks"]["before_plan"].as_array().map(Vec::len), Some(2), "{created}");
    let shown = broker.cli(&["stack", "show", "hooked"]);
    assert!(shown.stdout.contains("hook           after_apply: test -f main.tf"), "{}", shown.stdout);

    let (run, log) = run_to_end(&broker, "hooked").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert_eq!(
        steps(&log),
        [
            "hook before_init",
            "terraform init",
            "hook before_plan",
            "hook before_plan",
            "terraform plan",
            "terraform show",
            "hook after_plan",
            "hook before_init",
            "terraform init",
            "hook before_apply",
            "terraform apply",
            "hook after_apply",
        ],
        "{log}"
    );
    for (point, phase) in [
        ("before_init", "plan"),
        ("before_plan", "plan"),
        ("after_plan", "plan"),
        ("before_init", "apply"),
        ("before_apply", "apply"),
        ("after_apply", "apply"),
    ] {
        assert!(log.contains(&format!("marker-{point} phase={phase}\n")), "{point} in {phase}:\n{log}");
    }
    assert!(log.contains("secret=***\n"), "{log}");
    let secret_line = log.lines().find(|l| l.contains("secret=") && !l.contains("$ hook")).unwrap_or_default();
    let visible = secret_line.split("secret=").nth(1).unwrap_or_default();
    assert_eq!(visible, "***", "a piece of the secret is visible: {secret_line}");
    let issued: Vec<String> = moto.sts_requests().iter().map(|r| r.field("RoleArn").unwrap().to_owned()).collect();
    assert_eq!(issued, [ROLE_READ], "the plan's hook ran with real credentials");

    // A drift check is a plan: it runs the plan phase's hooks.
    let out = broker.cli(&["run", "submit", "--stack", "hooked", "--drift", "--wait", "--timeout", "2m", "--json"]);
    let check: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stderr));
    assert_eq!(check["state"], "finished", "{check}");
    let log = broker.cli(&["run", "logs", check["id"].as_str().unwrap()]).stdout;
    let expected = ["hook before_init", "terraform init", "hook before_plan", "hook before_plan", "terraform plan"];
    assert_eq!(steps(&log), [&expected[..], &["hook after_plan"]].concat(), "{log}");
    assert!(log.contains("marker-after_plan phase=plan\n") && log.contains("secret=***\n"), "{log}");

    let audit = Audit::open(&broker.data_dir).await;
    let created = audit.referencing("stack:hooked").await;
    let entry = created.iter().find(|e| e.kind == "created").expect("stack.created");
    assert!(entry.details.contains("marker-after_apply"), "{}", entry.details);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_hook_fails_its_phase_named_and_nothing_after_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "http://127.0.0.1:9").await;
    let _agent = agent(&broker, dir.path());

    let repo = repository(dir.path(), "before");
    let hooks = ["before_plan=echo about to fail; exit 7".to_owned(), "before_plan=echo never-runs".to_owned()];
    json(&create(&broker, &repo, "before", &[], &hooks));
    let (run, log) = run_to_end(&broker, "before").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let detail = run["detail"].as_str().unwrap();
    assert!(
        detail.contains(r#"before_plan hook 1 ("echo about to fail; exit 7") exited with exit status: 7"#),
        "{run}"
    );
    assert_eq!(steps(&log), ["terraform init", "hook before_plan"], "no plan after the failed hook:\n{log}");
    assert!(log.contains("about to fail") && !log.contains("never-runs"), "{log}");
    assert_eq!(run["jobs"].as_array().unwrap().len(), 1, "no apply job: {run}");

    let repo = repository(dir.path(), "after");
    json(&create(&broker, &repo, "after", &[], &["after_apply=exit 3".to_owned()]));
    let (run, log) = run_to_end(&broker, "after").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let detail = run["detail"].as_str().unwrap();
    assert!(detail.contains(r#"after_apply hook 1 ("exit 3") exited with exit status: 3"#), "{run}");
    assert!(detail.contains("the apply already happened"), "{run}");
    assert!(log.contains("terraform_data.hooked: Creation complete"), "the apply ran:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_hooks_are_refused_by_the_cli_and_over_http_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), "http://127.0.0.1:9").await;
    let repo = repository(dir.path(), "bad");

    // The CLI: an unknown point never leaves it; the broker refuses the rest.
    let unknown = create(&broker, &repo, "bad", &[], &["after_init=true".to_owned()]);
    assert!(!unknown.success && unknown.stderr.contains("unknown hook point `after_init`"), "{}", unknown.stderr);
    let too_many: Vec<String> = (0..17).map(|i| format!("before_plan=echo {i}")).collect();
    let refused = create(&broker, &repo, "bad", &[], &too_many);
    assert!(!refused.success && refused.stderr.contains("too many before_plan hooks: 17"), "{}", refused.stderr);
    let control = create(&broker, &repo, "bad", &[], &["after_plan=echo a\necho b".to_owned()]);
    assert!(
        !control.success && control.stderr.contains("after_plan hook 1 holds a control character"),
        "{}",
        control.stderr
    );
    let listed = json(&broker.cli(&["stack", "list", "--json"]));
    assert_eq!(listed["stacks"].as_array().map(Vec::len), Some(0), "{listed}");

    // Over HTTP, creating and updating.
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Value| {
        let request =
            http.request(method, format!("{}{path}", broker.addr)).bearer_auth(&broker.admin_token).json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let spec =
        |hooks: Value| json!({"name": "bad", "repository": repo.url(), "labels": {"env": "dev"}, "hooks": hooks});
    for (hooks, reason) in [
        (json!({"after_init": ["true"]}), "unknown field `after_init`"),
        (json!({"before_apply": vec!["true"; 17]}), "too many before_apply hooks: 17"),
        (json!({"before_init": ["a\u{1b}[2Jb"]}), "before_init hook 1 holds a control character"),
    ] {
        let (status, body) = send(reqwest::Method::POST, "/v1/stacks", spec(hooks)).await;
        assert!((400..500).contains(&status) && body.contains(reason), "{status} {body}");
    }
    let listed = json(&broker.cli(&["stack", "list", "--json"]));
    assert_eq!(listed["stacks"].as_array().map(Vec::len), Some(0), "{listed}");

    let (status, body) = send(reqwest::Method::POST, "/v1/stacks", spec(json!({"after_plan": ["echo kept"]}))).await;
    assert_eq!(status, 201, "{body}");
    for (patch, reason) in [
        (json!({"append_hooks": {"after_plan": vec!["true"; 16]}}), "too many after_plan hooks: 17"),
        (json!({"hooks": {"after_apply": ["a\u{0}b"]}}), "after_apply hook 1 holds a control character"),
        (json!({"hooks": {"before_destroy": []}}), "unknown field `before_destroy`"),
    ] {
        let (status, body) = send(reqwest::Method::PATCH, "/v1/stacks/bad", patch).await;
        assert!((400..500).contains(&status) && body.contains(reason), "{status} {body}");
    }
    let shown = json(&broker.cli(&["stack", "show", "bad", "--json"]));
    assert_eq!(shown["hooks"]["after_plan"], json!(["echo kept"]), "{shown}");
    assert!(shown["updated_at"].is_null(), "{shown}");

    // A good update replaces, then appends, and is audited with what changed.
    let updated = json(&broker.cli(&[
        "stack",
        "update",
        "bad",
        "--clear-hooks",
        "all",
        "--hook",
        "before_init=echo one",
        "--hook",
        "before_init=echo two",
        "--json",
    ]));
    assert_eq!(updated["hooks"]["before_init"], json!(["echo one", "echo two"]), "{updated}");
    assert_eq!(updated["hooks"]["after_plan"], json!([]), "{updated}");
    let audit = Audit::open(&broker.data_dir).await;
    let entries = audit.referencing("stack:bad").await;
    let entry = entries.iter().find(|e| e.kind == "updated").expect("stack.updated");
    let details: Value = serde_json::from_str(&entry.details).unwrap();
    assert_eq!(details["changes"]["hooks"]["from"]["after_plan"], json!(["echo kept"]), "{details}");
    assert_eq!(details["changes"]["hooks"]["to"]["before_init"], json!(["echo one", "echo two"]), "{details}");
}
