//! Contexts and stack variables with a real broker, a real agent and the real Terraform: a secret
//! set in an auto-attached context reaches a `local-exec` as `TF_VAR_…` and the log shows it
//! masked (plainly and in base64); contexts apply in priority order and a stack's own variables
//! override them; the API and CLI never return the secret, it is not at rest in the clear, and a
//! job of another stack never gets it. Bad input is refused with the reason, nothing stored.

use std::path::Path;
use std::time::Duration;

use keyward_broker::store::{DatabaseLocation, Store};
use keyward_tests::agent::{Agent, join};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::{Value, json};

const SECRET: &str = "hunter2-Sup3r-s3cret";

fn ok(output: &Output) {
    assert!(output.success, "stdout: {}\nstderr: {}", output.stdout, output.stderr);
}

async fn start(dir: &Path, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    // The shipped policies, plus a run rule that reads the variables' names (never values).
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("variables.rego"),
        "package keyward.run\n\ndeny contains msg if {\n\tsome v in object.get(input, \"variables\", [])\n\t\
         v.name == \"TF_VAR_forbidden\"\n\tmsg := sprintf(\"variable %s (secret: %v) from %s is not allowed\", \
         [v.name, v.secret, v.from])\n}\n\ndeny contains msg if {\n\tsome v in object.get(input, \"variables\", [])\n\t\
         v.file != null\n\tstartswith(v.file, \"forbidden/\")\n\tmsg := sprintf(\"file %s of %s (secret: %v) is not allowed\", \
         [v.file, v.from, v.secret])\n}\n",
    )
    .unwrap();
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n",
        policies = policies.display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// A configuration that prints its variables from a `local-exec` (the password plainly and in
/// base64, as a careless script would).
const MAIN_TF: &str = r#"variable "db_password" {
  default = "none"
}
variable "region" {}
variable "owner" {
  default = "-"
}
resource "terraform_data" "show" {
  provisioner "local-exec" {
    command = "echo password=${var.db_password} b64=$(printf %s '${var.db_password}' | base64) region=${var.region} owner=${var.owner}"
  }
}
"#;

async fn run_to_end(broker: &Broker, stack: &str) -> (Value, String) {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    ok(&out);
    let id = out.stdout.trim().to_owned();
    let run = eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await;
    let logs = broker.cli(&["run", "logs", &id]);
    ok(&logs);
    (run, logs.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_reach_exactly_their_stacks_jobs_and_secrets_stay_secret() {
    variables(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_variables_reach_exactly_their_stacks_jobs() {
    let cluster = PgCluster::start();
    variables(Some(&cluster.database("keyward_contexts"))).await;
}

async fn variables(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (joined, agent_id, stderr) = join(&broker.addr, &token, &dir.path().join("agent"));
    assert!(joined, "{stderr}");
    let _agent = Agent::start(&dir.path().join("agent"), &agent_id, &[]);
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", MAIN_TF);
    let url = repo.url();
    // env=dev: applies need no review; `tier` tells the two apart for autoattach.
    for (stack, tier) in [("app", "prod"), ("other", "test")] {
        let label = format!("tier={tier}");
        json(&broker.cli(&[
            "stack",
            "create",
            stack,
            "--repository",
            &url,
            "--label",
            "env=dev",
            "--label",
            &label,
            "--json",
        ]));
    }

    // `base` (priority 0) on both stacks by name; `secrets` (priority 10) on tier=prod by label.
    json(&broker.cli(&["context", "create", "base", "--json"]));
    ok(&broker.cli(&["context", "set", "base", "TF_VAR_region=us-east-1"]));
    for stack in ["app", "other"] {
        ok(&broker.cli(&["context", "attach", "base", "--stack", stack]));
    }
    json(&broker.cli(&["context", "create", "secrets", "--autoattach", "tier=prod", "--priority", "10", "--json"]));
    ok(&broker.cli(&["context", "set", "secrets", &format!("TF_VAR_db_password={SECRET}"), "--secret"]));
    ok(&broker.cli(&["context", "set", "secrets", "TF_VAR_region=eu-west-1"]));
    ok(&broker.cli(&["stack", "set-var", "app", "TF_VAR_owner=team-a"]));

    // Bad input: refused with the reason, nothing stored.
    for (args, words) in [
        (vec!["context", "set", "secrets", "1BAD=x"], "is not an environment variable name"),
        (vec!["context", "set", "secrets", "KEYWARD_JOB_ID=x"], "set by the agent itself"),
        (vec!["stack", "set-var", "app", "PATH=/tmp"], "set by the agent itself"),
        (vec!["context", "set", "nope", "A=b"], "context `nope` does not exist"),
        (vec!["context", "create", "Bad Name"], "invalid context name"),
    ] {
        let out = broker.cli(&args);
        assert!(!out.success && out.stderr.contains(words), "{args:?}: {}", out.stderr);
    }
    let huge = format!("TF_VAR_big={}", "x".repeat(64 * 1024 + 1));
    let out = broker.cli(&["context", "set", "secrets", &huge]);
    assert!(!out.success && out.stderr.contains("at most 65536"), "{}", out.stderr);
    let shown = json(&broker.cli(&["context", "show", "secrets", "--json"]));
    let names: Vec<&str> = shown["variables"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["TF_VAR_db_password", "TF_VAR_region"], "nothing else stored: {shown}");

    // The secret is never returned: not by show (JSON or text), not by list.
    let secret_view = &shown["variables"][0];
    assert_eq!((secret_view["secret"].as_bool(), secret_view.get("value")), (Some(true), None), "{shown}");
    assert_eq!(secret_view["sha256_prefix"].as_str().map(str::len), Some(8));
    for out in [broker.cli(&["context", "show", "secrets"]), broker.cli(&["context", "list", "--json"])] {
        ok(&out);
        assert!(!out.stdout.contains(SECRET), "{}", out.stdout);
    }

    // app: priority order (secrets' region over base's), its own owner, the secret masked.
    let (run, log) = run_to_end(&broker, "app").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert!(log.contains("password=*** b64=*** region=eu-west-1 owner=team-a"), "{log}");
    let b64 = base64_of(SECRET);
    assert!(!log.contains(SECRET) && !log.contains(&b64), "the secret leaked into the log:\n{log}");
    // other: base only; never the secret.
    let (run, log) = run_to_end(&broker, "other").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert!(log.contains("password=none b64=bm9uZQ== region=us-east-1 owner=-"), "{log}");

    // Policies see the variables' names, whether secret and where from; never a value.
    ok(&broker.cli(&["stack", "set-var", "other", "TF_VAR_forbidden=top-secret-value", "--secret"]));
    let refused = broker.cli(&["run", "submit", "--stack", "other"]);
    assert!(!refused.success, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("variable TF_VAR_forbidden (secret: true) from stack:other is not allowed"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("top-secret-value"), "{}", refused.stderr);

    // The trail says which variables each job got (names, versions, where from), never values.
    let audit = match database_url {
        Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.to_owned())).await.unwrap()),
        None => Audit::open(&broker.data_dir).await,
    };
    let issued = audit.count("job.variables_issued").await;
    assert!(issued >= 4, "plan and apply of both stacks: {issued}");
    let app_entries = audit.referencing("stack:app").await;
    assert!(app_entries.iter().all(|e| !e.body.contains(SECRET)), "a value on the audit log");
    let all = audit.referencing("context:secrets").await;
    assert!(!all.is_empty() && all.iter().all(|e| !e.body.contains(SECRET)));
    drop(audit);
    if database_url.is_some() {
        return;
    }
    broker.stop();
    let mut at_rest = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("broker")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            at_rest.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(!at_rest.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret at rest in the clear");
    assert!(at_rest.windows(9).any(|w| w == b"us-east-1"), "the check can fail: plain values are stored as given");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A real agent (sandbox, network `none`), enrolled in pool `default`.
fn enrolled_agent(broker: &Broker, dir: &Path) -> Agent {
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (joined, agent_id, stderr) = join(&broker.addr, &token, &dir.join("agent"));
    assert!(joined, "{stderr}");
    Agent::start(&dir.join("agent"), &agent_id, &[])
}

/// `keyward stack create NAME --repository URL --path infra --label env=dev` plus `extra`.
fn create_stack(broker: &Broker, name: &str, repo: &GitRepo, extra: &[&str]) {
    let url = repo.url();
    let mut args = vec!["stack", "create", name, "--repository", &url, "--path", "infra", "--label", "env=dev"];
    args.extend_from_slice(extra);
    args.push("--json");
    json(&broker.cli(&args));
}

/// Commits `contents` as `file`, creating its directories.
fn commit(repo: &GitRepo, file: &str, contents: &str) {
    std::fs::create_dir_all(repo.dir.join(file).parent().unwrap()).unwrap();
    repo.commit(file, contents);
}

/// `method path` with the admin token and a JSON body: the status and the body's text.
async fn send(broker: &Broker, method: reqwest::Method, path: &str, body: Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", broker.addr))
        .bearer_auth(&broker.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The audit log of a broker on SQLite (its data dir) or PostgreSQL.
async fn audit_of(broker: &Broker, database_url: Option<&str>) -> Audit {
    match database_url {
        Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.to_owned())).await.unwrap()),
        None => Audit::open(&broker.data_dir).await,
    }
}

/// Every file's bytes under `dir`, recursively.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return bytes };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            bytes.extend(bytes_under(&path));
        } else if path.is_file() {
            bytes.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    bytes
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// A secret file: three lines, two of them long enough to be masked on their own.
const DB_CONF: &str = "[db]\npassword = Fj3kLq9Zp2Xw-files\nuser = svc_app_rw_files\n";
const DB_PASSWORD_LINE: &str = "password = Fj3kLq9Zp2Xw-files";
const DB_USER_LINE: &str = "user = svc_app_rw_files";

/// A configuration that reads its mounted files from a `local-exec`: the secret one whole (as a
/// careless script would), its digest (so the test knows the exact bytes arrived), the plain one,
/// and both files' modes.
const FILES_TF: &str = r#"resource "terraform_data" "files" {
  provisioner "local-exec" {
    command = "cat secrets/db.conf; echo sum=$(sha256sum secrets/db.conf | cut -c1-64) region=$(cat settings/region.txt) modes=$(stat -c %a secrets/db.conf) $(stat -c %a settings/region.txt)"
  }
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn files_are_mounted_before_hooks_masked_and_never_returned() {
    files(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_files_are_mounted_and_bad_paths_refused() {
    let cluster = PgCluster::start();
    files(Some(&cluster.database("keyward_context_files"))).await;
}

async fn files(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let _agent = enrolled_agent(&broker, dir.path());
    let repo = GitRepo::init(&dir.path().join("repo"));
    commit(&repo, "infra/main.tf", FILES_TF);
    // A repository that already has a file where the context mounts one.
    let clash = GitRepo::init(&dir.path().join("clash"));
    commit(&clash, "infra/main.tf", "resource \"terraform_data\" \"x\" {}\n");
    commit(&clash, "infra/secrets/db.conf", "committed by mistake\n");
    let hook = "before_init=test -f secrets/db.conf && test -f settings/region.txt && echo mounted-before-init";
    create_stack(&broker, "files-app", &repo, &["--label", "team=files", "--hook", hook]);
    create_stack(&broker, "clash", &clash, &["--label", "team=files"]);

    // A secret file and a plain one in an auto-attached context; the stack's own file at the
    // plain one's path replaces it.
    json(&broker.cli(&["context", "create", "files", "--autoattach", "team=files", "--json"]));
    let conf = format!("DB_CONF={DB_CONF}");
    let set = json(&broker.cli(&["context", "set", "files", &conf, "--secret", "--file", "secrets/db.conf", "--json"]));
    assert_eq!(
        (set["file"].as_str(), set.get("value"), set["secret"].as_bool()),
        (Some("secrets/db.conf"), None, Some(true))
    );
    ok(&broker.cli(&["context", "set", "files", "REGION_FILE=us-east-1", "--file", "settings/region.txt"]));
    let own = json(&broker.cli(&[
        "stack",
        "set-var",
        "files-app",
        "REGION=eu-west-1",
        "--file",
        "settings/region.txt",
        "--json",
    ]));
    assert_eq!(
        (own["file"].as_str(), own["value"].as_str()),
        (Some("settings/region.txt"), Some("eu-west-1")),
        "{own}"
    );

    refused_paths(&broker).await;

    // Shown with its path, never its content: CLI (text and JSON) and API.
    let shown = json(&broker.cli(&["context", "show", "files", "--json"]));
    let variables = shown["variables"].as_array().unwrap();
    let listed: Vec<(&str, Option<&str>)> =
        variables.iter().map(|v| (v["name"].as_str().unwrap(), v["file"].as_str())).collect();
    assert_eq!(listed, [("DB_CONF", Some("secrets/db.conf")), ("REGION_FILE", Some("settings/region.txt"))], "{shown}");
    let text = broker.cli(&["context", "show", "files"]);
    assert!(text.stdout.contains("file secrets/db.conf"), "{}", text.stdout);
    let api = broker.get_json("/v1/contexts/files").await;
    for out in [text.stdout, shown.to_string(), api.to_string(), broker.cli(&["context", "list", "--json"]).stdout] {
        assert!(!out.contains("Fj3kLq9Zp2Xw") && !out.contains("svc_app_rw"), "a secret file's content shown: {out}");
    }

    let (run, log) = run_to_end(&broker, "files-app").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let digest = keyward_proto::encoding::hex(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, DB_CONF.as_bytes()).as_ref(),
    );
    assert!(log.contains(&format!("sum={digest} region=eu-west-1 modes=600 644")), "{log}");
    assert!(log.contains("mounted-before-init"), "mounted before the first hook:\n{log}");
    assert!(log.contains("keyward: mounted secrets/db.conf (variable DB_CONF, secret)"), "{log}");
    // Each long enough line masked on its own, the lines kept apart; `[db]` is too short to mask.
    let exec = "terraform_data.files (local-exec):";
    assert!(log.contains(&format!("{exec} [db]\n{exec} ***\n{exec} ***\n{exec} sum=")), "{log}");
    for secret in [DB_PASSWORD_LINE, DB_USER_LINE, "Fj3kLq9Zp2Xw", "svc_app_rw"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
    }

    // A file of the repository at the same path fails the job, saying so; it is not replaced.
    let (run, log) = run_to_end(&broker, "clash").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let detail = run["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(
            "cannot mount variable `DB_CONF` as the file `secrets/db.conf`: the repository already has a file"
        ),
        "{run}"
    );
    assert!(!log.contains("terraform init"), "nothing ran after the refusal:\n{log}");

    // Gone with the job: nothing of the secret file is left in the agent's directory.
    let agent_bytes = bytes_under(&dir.path().join("agent"));
    assert!(!holds(&agent_bytes, DB_PASSWORD_LINE), "a secret file outlived its job");

    // Policies see each file's path (never its content).
    ok(&broker.cli(&["stack", "set-var", "clash", "K=v4lue-of-key", "--secret", "--file", "forbidden/key.pem"]));
    let refused = broker.cli(&["run", "submit", "--stack", "clash"]);
    assert!(
        !refused.success
            && refused.stderr.contains("file forbidden/key.pem of stack:clash (secret: true) is not allowed"),
        "{}",
        refused.stderr
    );

    // The trail says which files each job got (names, versions, paths), never their content.
    let audit = audit_of(&broker, database_url).await;
    let entries = audit.for_run(&run_id).await;
    let issued = entries.iter().find(|e| e.kind == "variables_issued").expect("job.variables_issued");
    let details: Value = serde_json::from_str(&issued.details).unwrap();
    let files: Vec<(&str, &str)> = details["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v["file"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(files, [("DB_CONF", "secrets/db.conf"), ("REGION", "settings/region.txt")], "{details}");
    for entry in audit.referencing("context:files").await.iter().chain(&entries) {
        assert!(!entry.body.contains("Fj3kLq9Zp2Xw"), "a file's content on the audit log: {}", entry.body);
    }
    drop(audit);
    if database_url.is_none() {
        broker.stop();
        let at_rest = bytes_under(&dir.path().join("broker"));
        assert!(
            !holds(&at_rest, DB_PASSWORD_LINE) && !holds(&at_rest, "Fj3kLq9Zp2Xw"),
            "the secret file at rest in the clear"
        );
        assert!(holds(&at_rest, "settings/region.txt"), "the check can fail: paths are stored as given");
    }
}

/// Paths that could leave the configuration directory are refused by the CLI and over HTTP,
/// with the reason, and nothing is stored.
async fn refused_paths(broker: &Broker) {
    for (args, words) in [
        (vec!["context", "set", "files", "ESCAPE=x", "--file", "../x"], "holds `.` or `..`"),
        (vec!["context", "set", "files", "ESCAPE=x", "--file", "/etc/x"], "is absolute"),
        (vec!["context", "set", "files", "ESCAPE=x", "--file", "a/../../x"], "could leave the configuration directory"),
        (vec!["stack", "set-var", "files-app", "ESCAPE=x", "--file", "../../etc/passwd"], "holds `.` or `..`"),
        (
            vec!["context", "set", "files", "OTHER=x", "--file", "secrets/db.conf"],
            "already mounts `secrets/db.conf` as `DB_CONF`",
        ),
    ] {
        let out = broker.cli(&args);
        assert!(!out.success && out.stderr.contains(words), "{args:?}: {}", out.stderr);
    }
    for (path, file, words) in [
        ("/v1/contexts/files/variables/ESCAPE", json!("../x"), "holds `.` or `..`"),
        ("/v1/contexts/files/variables/ESCAPE", json!("/etc/x"), "is absolute"),
        ("/v1/contexts/files/variables/ESCAPE", json!("a\u{0}b"), "control character"),
        ("/v1/contexts/files/variables/ESCAPE", json!("a//b"), "empty component"),
        ("/v1/stacks/files-app/variables/ESCAPE", json!("/etc/x"), "is absolute"),
    ] {
        let (status, body) =
            send(broker, reqwest::Method::PUT, path, json!({"value": "x", "secret": true, "file": file})).await;
        assert!(status == 400 && body.contains(words), "{path} {file}: {status} {body}");
    }
    let shown = json(&broker.cli(&["context", "show", "files", "--json"]));
    assert!(!shown.to_string().contains("ESCAPE") && !shown.to_string().contains("OTHER"), "stored: {shown}");
    let unset = broker.cli(&["stack", "unset-var", "files-app", "ESCAPE"]);
    assert!(!unset.success && unset.stderr.contains("has no variable `ESCAPE`"), "stored: {}", unset.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn context_hooks_run_before_the_stacks_and_a_failing_one_is_named() {
    context_hooks(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_context_hooks_run_in_order_and_change() {
    let cluster = PgCluster::start();
    context_hooks(Some(&cluster.database("keyward_context_hooks"))).await;
}

/// The `order-…` markers the hooks printed (not the lines announcing them), in order.
fn markers(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| !line.contains("$ hook"))
        .filter_map(|line| line.split_whitespace().find(|word| word.starts_with("order-")))
        .collect()
}

async fn context_hooks(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let _agent = enrolled_agent(&broker, dir.path());
    let repo = GitRepo::init(&dir.path().join("repo"));
    commit(&repo, "infra/main.tf", "resource \"terraform_data\" \"hooked\" {\n  input = \"v1\"\n}\n");
    let stack_hooks = ["--hook", "before_init=echo order-stack-bi", "--hook", "before_plan=echo order-stack-bp"];
    create_stack(&broker, "ordered", &repo, &[&["--label", "team=hooks"][..], &stack_hooks].concat());

    // `base` (priority 0) by name, `lint` (priority 10) by label: base's hooks, then lint's,
    // then the stack's, at each point; a context of other stacks adds nothing.
    let base = json(&broker.cli(&["context", "create", "base", "--hook", "before_plan=echo order-base-bp", "--json"]));
    assert_eq!(base["hooks"]["before_plan"], json!(["echo order-base-bp"]), "{base}");
    ok(&broker.cli(&["context", "attach", "base", "--stack", "ordered"]));
    json(&broker.cli(&[
        "context",
        "create",
        "lint",
        "--priority",
        "10",
        "--autoattach",
        "team=hooks",
        "--hook",
        "before_plan=echo order-lint-bp-1",
        "--hook",
        "before_init=echo order-lint-bi",
        "--hook",
        "before_plan=echo order-lint-bp-2",
        "--json",
    ]));
    json(&broker.cli(&[
        "context",
        "create",
        "unrelated",
        "--autoattach",
        "team=other",
        "--hook",
        "before_plan=echo order-x",
        "--json",
    ]));
    let shown = broker.cli(&["context", "show", "lint"]);
    assert!(shown.stdout.contains("hook         before_init: echo order-lint-bi"), "{}", shown.stdout);

    let (run, log) = run_to_end(&broker, "ordered").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert_eq!(
        markers(&log),
        [
            // The plan job.
            "order-lint-bi",
            "order-stack-bi",
            "order-base-bp",
            "order-lint-bp-1",
            "order-lint-bp-2",
            "order-stack-bp",
            // The apply job: only before_init hooks are set.
            "order-lint-bi",
            "order-stack-bi",
        ],
        "{log}"
    );
    assert!(log.contains("$ hook before_plan of context \"base\": echo order-base-bp"), "{log}");

    // Changed like a stack's: the failing hook of a context fails the plan, named with its
    // context; nothing after it runs.
    let updated = json(&broker.cli(&[
        "context",
        "update",
        "lint",
        "--clear-hooks",
        "before_plan",
        "--hook",
        "before_plan=echo lint-fails; exit 4",
        "--json",
    ]));
    assert_eq!(updated["hooks"]["before_plan"], json!(["echo lint-fails; exit 4"]), "{updated}");
    assert_eq!(updated["hooks"]["before_init"], json!(["echo order-lint-bi"]), "{updated}");
    let (run, log) = run_to_end(&broker, "ordered").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let detail = run["detail"].as_str().unwrap_or_default();
    assert!(
        detail
            .contains(r#"before_plan hook 1 of context "lint" ("echo lint-fails; exit 4") exited with exit status: 4"#),
        "{run}"
    );
    assert_eq!(
        markers(&log),
        ["order-lint-bi", "order-stack-bi", "order-base-bp"],
        "nothing after the failure:\n{log}"
    );
    assert!(!log.contains("order-stack-bp") && !log.contains("$ terraform plan"), "{log}");

    refused_context_hooks(&broker).await;

    let audit = audit_of(&broker, database_url).await;
    let entries = audit.referencing("context:lint").await;
    let change = entries.iter().find(|e| e.details.contains("\"updated\"")).expect("context.changed updated");
    let details: Value = serde_json::from_str(&change.details).unwrap();
    assert_eq!(details["hooks"]["from"]["before_plan"], json!(["echo order-lint-bp-1", "echo order-lint-bp-2"]));
    assert_eq!(details["hooks"]["to"]["before_plan"], json!(["echo lint-fails; exit 4"]), "{details}");
    let created = entries.iter().find(|e| e.details.contains("\"created\"")).expect("context.changed created");
    assert!(created.details.contains("order-lint-bi"), "{}", created.details);
}

/// Bad hooks on a context are refused by the CLI and over HTTP, and nothing changes.
async fn refused_context_hooks(broker: &Broker) {
    let unknown = broker.cli(&["context", "create", "bad", "--hook", "after_init=true"]);
    assert!(!unknown.success && unknown.stderr.contains("unknown hook point `after_init`"), "{}", unknown.stderr);
    let mut args = vec!["context", "update", "lint"];
    args.extend(std::iter::repeat_n(["--hook", "before_plan=true"], 16).flatten());
    let too_many = broker.cli(&args);
    assert!(!too_many.success && too_many.stderr.contains("too many before_plan hooks: 17"), "{}", too_many.stderr);
    let nothing = broker.cli(&["context", "update", "lint"]);
    assert!(!nothing.success && nothing.stderr.contains("nothing to update"), "{}", nothing.stderr);
    for (method, path, body, reason) in [
        (
            reqwest::Method::POST,
            "/v1/contexts",
            json!({"name": "bad", "hooks": {"before_init": ["a\u{1b}[2Jb"]}}),
            "before_init hook 1 holds a control character",
        ),
        (
            reqwest::Method::PATCH,
            "/v1/contexts/lint",
            json!({"hooks": {"after_init": []}}),
            "unknown field `after_init`",
        ),
        (
            reqwest::Method::PATCH,
            "/v1/contexts/lint",
            json!({"append_hooks": {"after_plan": [""]}}),
            "after_plan hook 1 is empty",
        ),
        (reqwest::Method::PATCH, "/v1/contexts/lint", json!({}), "nothing to update"),
        (reqwest::Method::PATCH, "/v1/contexts/nope", json!({"hooks": {}}), "context `nope` does not exist"),
    ] {
        let (status, text) = send(broker, method.clone(), path, body).await;
        assert!((400..500).contains(&status) && text.contains(reason), "{method} {path}: {status} {text}");
    }
    let listed = json(&broker.cli(&["context", "list", "--json"]));
    let names: Vec<&str> = listed["contexts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"bad"), "{listed}");
    let lint = json(&broker.cli(&["context", "show", "lint", "--json"]));
    assert_eq!(lint["hooks"]["before_plan"], json!(["echo lint-fails; exit 4"]), "unchanged: {lint}");
    assert_eq!(lint["hooks"]["after_plan"], json!([]), "unchanged: {lint}");
}
