//! Real Terraform 1.11.4 in the agent's sandbox, end to end: a real broker process, moto's STS for
//! the credentials, a real `keyward-agent` (default isolation: the sandbox, network `none`), and
//! configurations of `terraform_data` + `local-exec` in local git repositories.
//!
//! One agent takes every run in turn: a plan and apply whose `local-exec` prints its AWS secret
//! key (plainly and in base64) and whose log shows only `***`; a plan the plan policy denies,
//! which never applies; configurations that try to read the agent's key and `/etc/shadow`, write
//! outside the work dir, reach a port on the host, flood the process table, allocate past the
//! memory limit and `ptrace` a process — each fails, says why, and the agent goes on to the next
//! job; and an apply canceled mid-way, whose every process dies. A second agent, with a short
//! phase timeout, stops a job that runs past its deadline. (A secret split over two writes and
//! two chunks is `agent_credentials.rs`'s case: Terraform joins a provisioner's writes into lines.)
//!
//! A second broker and agent run drift checks: read-only plans with `-detailed-exitcode` that
//! report in sync, drift, or failure, and never apply even where the approval policy would.
//! A third fetches a private repository from git's own HTTP server behind Basic authentication,
//! with credentials the broker holds and hands only to the job's checkout. A fourth runs jobs on
//! the host's network behind the metadata block, and an agent that cannot block refuses to start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_tests::agent::{Agent, WorkSession, bootstrap, enroll_in_process, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::{binary, eventually, free_addr, workspace_root};
use serde_json::Value;

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/network-apply";

/// The shipped policies plus one plan rule: a resource named `forbidden` is denied.
fn policies(dir: &Path) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("forbidden.rego"),
        "package keyward.plan\n\ndeny contains msg if {\n\tsome rc in input.plan.resource_changes\n\t\
         rc.name == \"forbidden\"\n\tmsg := sprintf(\"%s may not be created here\", [rc.address])\n}\n",
    )
    .unwrap();
    policies
}

async fn start(dir: &Path, sts: &str) -> Broker {
    start_with(dir, sts, "").await
}

/// [`start`], with `extra` appended to the configuration.
async fn start_with(dir: &Path, sts: &str, extra: &str) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\n{extra}",
        policies = policies(dir).display(),
        agents = free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// A real agent, enrolled in pool `default` with a fresh join token, running with `args`.
fn agent(broker: &Broker, agent_dir: &Path, args: &[&str]) -> Agent {
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, agent_dir);
    assert!(ok, "{stderr}");
    Agent::start(agent_dir, &agent_id, args)
}

/// A stack `name` over a new repository whose `main.tf` is `config`.
fn stack(broker: &Broker, dir: &Path, name: &str, config: &str, targets: bool) {
    let repo = GitRepo::init(&dir.join(format!("repo-{name}")));
    repo.commit("main.tf", config);
    stack_on(broker, name, &repo.url(), targets);
}

/// A stack `name` over the repository at `url`.
fn stack_on(broker: &Broker, name: &str, url: &str, targets: bool) {
    let url = url.to_owned();
    let mut args = vec!["stack", "create", name, "--repository", &url, "--label", "env=dev", "--json"];
    if targets {
        args.extend(["--plan-target", "aws:state-read", "--apply-target", "aws:network-apply"]);
    }
    json(&broker.cli(&args));
}

/// A configuration whose one resource runs `command` with `local-exec` (as `/bin/sh -c`).
fn local_exec(name: &str, command: &str) -> String {
    let command = command.replace('\\', "\\\\").replace('"', "\\\"").replace("${", "$${");
    format!(
        "resource \"terraform_data\" \"{name}\" {{\n  provisioner \"local-exec\" {{\n    command = \"{command}\"\n  }}\n}}\n"
    )
}

/// Submits a run of `stack` and waits for it to end.
async fn run_to_end(broker: &Broker, stack: &str) -> (String, Value) {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    let run = eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await;
    (id, run)
}

fn logs(broker: &Broker, id: &str) -> String {
    let out = broker.cli(&["run", "logs", id]);
    assert!(out.success, "{}", out.stderr);
    out.stdout
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_runs_in_the_sandbox_masked_judged_and_contained() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let agent_dir = dir.path().join("agent");
    let _agent =
        agent(&broker, &agent_dir, &["--memory-limit", "256MiB", "--pids-limit", "64", "--phase-timeout", "20s"]);
    // Outside /tmp: the test's agent dir is under /tmp, and so are its jobs' work dirs, whose
    // parent directories the sandbox recreates on its private (writable, throwaway) /tmp.
    let planted = PathBuf::from(format!("/var/tmp/keyward-planted-{}", std::process::id()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    // 1. Plan and apply; the secret key printed two ways never reaches the log.
    let printer = local_exec("printer", "s=\"$AWS_SECRET_ACCESS_KEY\"; echo \"plain $s\"; printf '%s' \"$s\" | base64");
    stack(&broker, dir.path(), "good", &printer, true);
    let (id, run) = run_to_end(&broker, "good").await;
    assert_eq!(run["state"], "finished", "{run}\n{}", logs(&broker, &id));
    assert!(run["jobs"].as_array().unwrap().iter().all(|j| j["isolation"] == "sandbox network=none"), "{run}");
    let text = logs(&broker, &id);
    assert!(text.contains("Plan: 1 to add") && text.contains("keyward: applying saved plan sha256"), "{text}");
    // Provisioners run at apply. `base64` wraps at 76 columns: the 40-character key's encoding
    // is one line.
    assert_eq!(text.matches("(local-exec): plain ***\n").count(), 1, "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with("(local-exec): ***")).count(), 1, "{text}");
    for line in text.lines().filter(|l| l.contains("(local-exec):") && !l.contains("Executing")) {
        let printed = line.split("(local-exec): ").nth(1).unwrap_or_default();
        let longest_run =
            printed.split(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '/').map(str::len).max();
        assert!(longest_run.unwrap_or(0) < 10, "a piece of the secret is visible: {line}");
    }
    let issued: Vec<String> = moto.sts_requests().iter().map(|r| r.field("RoleArn").unwrap().to_owned()).collect();
    assert_eq!(issued, [ROLE_READ, ROLE_WRITE], "the plan read, the apply wrote");
    assert!(broker.cli(&["run", "logs", &id, "--verify"]).success);

    // 2. A plan the plan policy denies never applies.
    stack(&broker, dir.path(), "denied", "resource \"terraform_data\" \"forbidden\" {\n  input = 1\n}\n", false);
    let (id, run) = run_to_end(&broker, "denied").await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["detail"].as_str().unwrap().contains("terraform_data.forbidden may not be created here"), "{run}");
    assert_eq!(run["jobs"].as_array().unwrap().len(), 1, "no apply job: {run}");
    assert!(logs(&broker, &id).contains("plan policy denies"));

    // 3. Hostile configurations: each fails, says why, and the agent takes the next one.
    let key = agent_dir.join("key.pem");
    let escapes = [
        ("read-key", format!("cat {}", key.display()), "No such file"),
        ("shadow", "cat /etc/shadow".to_owned(), "No such file"),
        ("write-usr", "echo x > /usr/keyward-escape".to_owned(), "Read-only file system"),
        ("write-host", format!("echo x > {}", planted.display()), "Directory nonexistent"),
        ("network", format!("bash -c 'echo hi > /dev/tcp/127.0.0.1/{port}'"), "Connection refused"),
        // Forks until the pids limit refuses one, and the shell fails: only the limit stops it,
        // long before the phase timeout. (The children let go of the output pipe, or Terraform
        // would wait for them until the deadline.)
        ("fork-bomb", "while :; do sleep 1000 >/dev/null 2>&1 & done".to_owned(), "process limit"),
        ("memory", "head -c 600000000 /dev/zero | tr '\\0' a | grep -c b".to_owned(), "memory limit"),
        // PTRACE_ATTACH (16) to its own shell, by syscall number (101 on x86_64): seccomp says no.
        (
            "ptrace",
            "perl -e '$r = syscall(101, 16, getppid(), 0, 0); print $r == -1 ? \"ptrace: $!\\n\" : \"attached\\n\"; exit($r == -1 ? 1 : 0)'".to_owned(),
            "ptrace: Operation not permitted",
        ),
    ];
    for (name, command, says) in &escapes {
        stack(&broker, dir.path(), name, &local_exec("hostile", command), false);
        let (id, run) = run_to_end(&broker, name).await;
        let text = logs(&broker, &id);
        assert_eq!(run["state"], "failed", "{name}: {run}\n{text}");
        // Provisioners run at apply: the plan succeeded, the apply failed.
        let error = run["jobs"].as_array().unwrap().last().unwrap()["error"].as_str().unwrap();
        assert!(error.contains(says), "{name}: {says:?} not in {error}\n{text}");
        assert!(!text.contains("PRIVATE KEY") && !text.contains("root:"), "{name}: {text}");
    }
    assert!(!planted.exists(), "nothing was written outside the work dir");
    assert!(!Path::new("/usr/keyward-escape").exists());
    assert!(listener.accept().is_err(), "nothing reached the host's loopback port");

    // A job past its deadline is stopped, on an agent whose phases may last 6 s (its own pool,
    // so it takes only this run): long enough for the plan, not for `sleep 120` at apply.
    json(&broker.cli(&["pool", "create", "brief", "--json"]));
    let token = json(&broker.cli(&["pool", "join-token", "brief", "--json"]))["token"].as_str().unwrap().to_owned();
    let brief_dir = dir.path().join("agent-brief");
    let (ok, brief_id, stderr) = join(&broker.addr, &token, &brief_dir);
    assert!(ok, "{stderr}");
    let _brief = Agent::start(&brief_dir, &brief_id, &["--phase-timeout", "6s"]);
    let repo = GitRepo::init(&dir.path().join("repo-deadline"));
    repo.commit("main.tf", &local_exec("hostile", "sleep 120"));
    let url = repo.url();
    json(&broker.cli(&[
        "stack",
        "create",
        "deadline",
        "--repository",
        &url,
        "--label",
        "env=dev",
        "--pool",
        "brief",
        "--json",
    ]));
    let (id, run) = run_to_end(&broker, "deadline").await;
    let text = logs(&broker, &id);
    assert_eq!(run["state"], "failed", "{run}\n{text}");
    let jobs = run["jobs"].as_array().unwrap();
    assert_eq!((&jobs[0]["state"], &jobs[0]["agent_id"]), (&"succeeded".into(), &brief_id.as_str().into()), "{run}");
    let error = jobs[1]["error"].as_str().unwrap();
    assert!(jobs[1]["phase"] == "apply" && error.contains("deadline"), "the apply ran past it: {run}\n{text}");

    // 4. The agent survived all of it: a good run still goes through.
    let (_, run) = run_to_end(&broker, "good").await;
    assert_eq!(run["state"], "finished", "{run}");

    // 5. Cancel during apply: every process of the job dies.
    let marker = format!("3001.{}", std::process::id());
    stack(&broker, dir.path(), "slow", &local_exec("slow", &format!("sleep {marker} & sleep {marker}; wait")), false);
    let out = broker.cli(&["run", "submit", "--stack", "slow"]);
    let id = out.stdout.trim().to_owned();
    eventually("the apply's processes to start", Duration::from_secs(60), || {
        let running = processes_with(&marker);
        async move { (running >= 2).then_some(()) }
    })
    .await;
    json(&broker.cli(&["run", "cancel", &id, "--json"]));
    eventually("every process of the canceled job to die", Duration::from_secs(20), || {
        let running = processes_with(&marker);
        async move { (running == 0).then_some(()) }
    })
    .await;
}

/// Security review L2, DESIGN.md §8.11: a configuration with a sensitive variable, a resource that
/// takes it and a sensitive output. The broker keeps the saved plan sealed under the KEK, bound to
/// its run, and its JSON with the sensitive values replaced by markers; no file of the broker, no
/// `run show`, API answer or log holds the value, and the apply still applies exactly the planned
/// file (the agent checks its digest).
#[tokio::test(flavor = "multi_thread")]
async fn sensitive_values_never_rest_in_the_broker_and_the_saved_plan_is_sealed() {
    /// In every form the value takes (raw, JSON-escaped, HCL-quoted).
    const MARK: &str = "L2Sensitive4711";
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let _agent = agent(&broker, &dir.path().join("agent"), &[]);
    let config = format!(
        "variable \"db_password\" {{\n  type      = string\n  sensitive = true\n  default   = \"{MARK}\\\"<&>\\\\x\"\n}}\n\
         resource \"terraform_data\" \"db\" {{\n  input = {{\n    password = var.db_password\n    region   = \"eu-west-1\"\n  }}\n}}\n\
         output \"password\" {{\n  value     = var.db_password\n  sensitive = true\n}}\n"
    );
    stack(&broker, dir.path(), "sensitive", &config, false);
    let (id, run) = run_to_end(&broker, "sensitive").await;
    let text = logs(&broker, &id);
    assert_eq!(run["state"], "finished", "the sealed plan opened and applied: {run}\n{text}");

    // The saved plan rests sealed, and opens only as this run's.
    let data_dir = dir.path().join("broker");
    let store = keyward_broker::store::Store::open(&keyward_broker::store::DatabaseLocation::Sqlite(
        data_dir.join("keyward.db"),
    ))
    .await
    .unwrap();
    let sealed = store.sealed_plan(&id).await.unwrap().expect("a saved plan");
    assert!(!sealed.sealed.starts_with(b"PK"), "the plan file (a zip archive) rests in the clear");
    let kek = keyward_broker::kek::Kek::from_base64(TEST_KEK, "test").unwrap();
    let context = keyward_broker::runs::seal_context(&id, &sealed.job_id, &sealed.sha256);
    let opened = kek.open(&context, &sealed.sealed).expect("sealed under the broker's KEK for this run");
    assert!(opened.starts_with(b"PK\x03\x04"), "a Terraform plan file");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &opened);
    assert_eq!(digest.as_ref(), sealed.sha256.as_slice());
    let elsewhere = keyward_broker::runs::seal_context("another-run", &sealed.job_id, &sealed.sha256);
    assert!(kek.open(&elsewhere, &sealed.sealed).is_err(), "a sealed plan moved to another run does not open");

    // Its JSON is kept, and judged, without the value.
    store.close().await;
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}", data_dir.join("keyward.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let json: String =
        sqlx::query_scalar("SELECT plan_json FROM plans WHERE run_id = $1").bind(&id).fetch_one(&pool).await.unwrap();
    pool.close().await;
    let plan: Value = serde_json::from_str(&json).unwrap();
    let after = &plan["resource_changes"][0]["change"]["after"]["input"];
    assert_eq!(after["region"], "eu-west-1", "what is not sensitive stays: {json}");
    assert!(after["password"].as_str().unwrap().starts_with("(sensitive "), "{json}");
    assert!(!json.contains(MARK), "the stored plan JSON holds the sensitive value: {json}");

    // Nowhere at rest (the database, its log, the files beside it), nowhere shown.
    for file in walk(&data_dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in [MARK.as_bytes(), b"tfconfig/".as_slice()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds {}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
    let shown = broker.cli(&["run", "show", &id, "--json"]).stdout;
    let request = keyward_tests::http().get(format!("{}/v1/runs/{id}", broker.addr)).bearer_auth(&broker.admin_token);
    let api = request.send().await.unwrap().text().await.unwrap();
    let shows =
        [("run show", shown.as_str(), id.as_str()), ("the API", &api, &id), ("the log", &text, "(sensitive value)")];
    for (what, output, expected) in shows {
        assert!(output.contains(expected), "{what} shows {expected}: {output}");
        assert!(!output.contains(MARK), "{what} shows the sensitive value: {output}");
    }
}

/// Security review H1: the agent runs outside the sandbox (here as root), so a saved plan the
/// repository turned into a symlink must never make it read or write what the link names. Inside
/// the sandbox `/tmp` is private, so Terraform's plan writes through the link harmlessly and
/// succeeds; the agent must then refuse the file instead of uploading the host file as the plan
/// (and, at apply, writing the plan through the link).
#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_the_repository_links_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let _agent = agent(&broker, &dir.path().join("agent"), &[]);
    let host = std::path::PathBuf::from(format!("/tmp/keyward-h1-{}", std::process::id()));
    std::fs::write(&host, "host file, not a plan").unwrap();
    for (name, target) in [("link-host", host.display().to_string()), ("link-zero", "/dev/zero".to_owned())] {
        let repo = GitRepo::init(&dir.path().join(format!("repo-{name}")));
        repo.commit_symlink("keyward.tfplan", &target);
        stack_on(&broker, name, &repo.url(), false);
        let (id, run) = run_to_end(&broker, name).await;
        assert_eq!(run["state"], "failed", "{name}: {run}\n{}", logs(&broker, &id));
        let detail = run["detail"].as_str().unwrap();
        assert!(detail.contains("is not a plain path inside the job's work directory"), "{name}: {detail}");
        assert_eq!(run["jobs"].as_array().unwrap().len(), 1, "{name}: nothing was applied: {run}");
    }
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host file, not a plan", "the host file is untouched");
    std::fs::remove_file(&host).unwrap();
}

/// Security review H1, the swap: code the repository controls runs in the sandbox after `plan`
/// (a provider during `show`), and replaces the saved plan with another one it made. Played here by
/// a stand-in around the real Terraform that, before every `show`, writes a plan of its own over
/// `keyward.tfplan` in the checkout and over every plan file it is handed. What was judged and
/// what is applied must be the plan `terraform plan` wrote, never the substitute.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_swapped_after_plan_is_never_judged_or_applied() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let real = keyward_agent::terraform::locate("terraform").expect("terraform on PATH");
    let bin = dir.path().join("swapping-terraform");
    std::fs::create_dir(&bin).unwrap();
    let wrapper = bin.join("terraform");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             # Stand-in for hostile provider code: swaps the saved plan before `show` (saying so on stderr;
             # stdout is the plan JSON), then runs Terraform.\n\
             if [ \"$1\" = show ]; then\n\
               {real} plan -input=false -no-color -lock=false -var msg=substitute -out=keyward.tfplan >/dev/null \\\n\
                 && echo swapped keyward.tfplan in the checkout >&2\n\
               for arg in \"$@\"; do case \"$arg\" in *.tfplan) cp keyward.tfplan \"$arg\" 2>/dev/null \\\n\
                 && echo swapped \"$arg\" >&2 || echo could not swap \"$arg\" >&2;; esac; done\n\
             fi\n\
             exec {real} \"$@\"\n",
            real = real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &agent_dir);
    assert!(ok, "{stderr}");
    let path = format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display());
    let _agent = Agent::start_with_path(&agent_dir, &agent_id, &[], Some(&path));

    let config = "variable \"msg\" {\n  default = \"genuine\"\n}\n\
                  resource \"terraform_data\" \"swap\" {\n  input = var.msg\n  \
                  provisioner \"local-exec\" {\n    command = \"echo applied-${var.msg}\"\n  }\n}\n";
    stack(&broker, dir.path(), "swap", config, false);
    let (id, run) = run_to_end(&broker, "swap").await;
    let text = logs(&broker, &id);
    assert!(text.contains(&format!("terraform binary {}", wrapper.display())), "the stand-in ran: {text}");
    assert!(text.contains("swapped keyward.tfplan in the checkout"), "the checkout's plan was replaced: {text}");
    assert!(text.contains("could not swap"), "the plan `show` reads is the agent's, read-only: {text}");
    assert_eq!(run["state"], "finished", "{run}\n{text}");
    assert!(text.contains("applied-genuine"), "the plan `terraform plan` wrote was applied: {text}");
    assert!(!text.contains("applied-substitute"), "the substitute was applied: {text}");
    let request = keyward_tests::http().get(format!("{}/v1/runs/{id}", broker.addr)).bearer_auth(&broker.admin_token);
    let shown = request.send().await.unwrap().text().await.unwrap();
    assert!(!shown.contains("substitute"), "the substitute was judged: {shown}");
}

/// Security review L5: Terraform outside the system directories is bound into the sandbox alone,
/// never with its directory, so files beside it (other tools, an operator's secrets) stay out of
/// the job's view.
#[tokio::test(flavor = "multi_thread")]
async fn terraform_outside_system_dirs_is_bound_without_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let bin = dir.path().join("tfbin");
    std::fs::create_dir(&bin).unwrap();
    let system = keyward_agent::terraform::locate("terraform").expect("terraform on PATH");
    std::fs::copy(&system, bin.join("terraform")).unwrap();
    let neighbour = bin.join("neighbour-secret");
    std::fs::write(&neighbour, "beside terraform").unwrap();
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &agent_dir);
    assert!(ok, "{stderr}");
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let _agent = Agent::start_with_path(&agent_dir, &agent_id, &[], Some(&path));

    stack(&broker, dir.path(), "neighbour", &local_exec("peek", &format!("cat {}", neighbour.display())), false);
    let (id, run) = run_to_end(&broker, "neighbour").await;
    let text = logs(&broker, &id);
    assert!(text.contains(&format!("terraform binary {}", bin.join("terraform").display())), "{text}");
    assert!(text.contains("Plan: 1 to add"), "Terraform ran from its own directory: {text}");
    assert_eq!(run["state"], "failed", "{run}\n{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(!text.contains("beside terraform"), "{text}");
}

/// `keyward run submit --drift --wait --json` of `stack`: its exit code and the run.
fn drift_check(broker: &Broker, stack: &str) -> (Option<i32>, Value) {
    let out = broker.cli(&["run", "submit", "--stack", stack, "--drift", "--wait", "--timeout", "2m", "--json"]);
    let run =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", out.stdout, out.stderr));
    (out.code, run)
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_checks_plan_read_only_report_what_they_find_and_never_apply() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let _agent = agent(&broker, &dir.path().join("agent"), &[]);

    // In sync: a configuration that manages nothing. Exit 0, drift false.
    stack(&broker, dir.path(), "steady", "locals {\n  region = \"eu-west-1\"\n}\n", true);
    let (code, run) = drift_check(&broker, "steady");
    assert_eq!(code, Some(0), "{run}");
    assert_eq!((&run["kind"], &run["state"], &run["drift"]), (&"drift".into(), &"finished".into(), &false.into()));
    assert!(run["detail"].as_str().unwrap().starts_with("no drift"), "{run}");

    // Drift: a resource the (empty) state does not have. Exit 2, with what differs; the
    // stack's `env=dev` label lets the approval policy apply deploys unreviewed, yet a drift
    // run queues no apply and never touches the apply target.
    stack(&broker, dir.path(), "drifted", &local_exec("missing", "echo applied-by-a-drift-check"), true);
    let (code, run) = drift_check(&broker, "drifted");
    assert_eq!(code, Some(2), "{run}");
    assert_eq!((&run["state"], &run["drift"]), (&"finished".into(), &true.into()), "{run}");
    assert!(run["detail"].as_str().unwrap().contains("drift: 1 to add, 0 to change, 0 to destroy"), "{run}");
    let jobs = run["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "only the plan job: {run}");
    assert_eq!((&jobs[0]["phase"], &jobs[0]["state"]), (&"plan".into(), &"succeeded".into()));
    let layers: Vec<&str> = jobs[0]["layers"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(layers.contains(&"no_new_privs") && layers.iter().any(|l| l.starts_with("seccomp")), "{layers:?}");
    let text = logs(&broker, run["id"].as_str().unwrap());
    assert!(text.contains("-detailed-exitcode") && text.contains("keyward: drift: 1 to add"), "{text}");
    assert!(!text.contains("applied-by-a-drift-check"), "the provisioner ran: {text}");
    let roles: Vec<String> = moto.sts_requests().iter().map(|r| r.field("RoleArn").unwrap().to_owned()).collect();
    assert_eq!(roles, [ROLE_READ, ROLE_READ], "drift checks read, and only read");

    // A configuration Terraform cannot plan: the check fails (exit 1), it does not say "no drift".
    stack(&broker, dir.path(), "broken", "resource \"terraform_data\" {\n", false);
    let (code, run) = drift_check(&broker, "broken");
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run.get("drift").is_none(), "{run}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_repository_is_fetched_with_credentials_that_reach_only_git() {
    const PASSWORD: &str = "ghp_PrivateRepoToken0123456789abcdefXYZ";
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    // The configuration prints the token (as a leaking script would; cut in two in the source,
    // so only the output holds it whole) and counts the git variables Terraform's environment has.
    let (head, tail) = PASSWORD.split_at(16);
    let config = local_exec(
        "private",
        &format!("echo token={head}''{tail}; echo git-env=$(env | grep -c '^GIT_CONFIG' || true)"),
    );
    GitRepo::init(&served.join("private/infra")).commit("main.tf", &config);
    GitRepo::init(&served.join("other/infra"));
    let server = keyward_tests::git_http::GitServer::start(&served, "x-access-token", PASSWORD).await;
    let token_file = dir.path().join("git-token");
    std::fs::write(&token_file, format!("{PASSWORD}\n")).unwrap();
    let extra = format!(
        "[[repositories]]\nurl_prefix = \"{}private/\"\nusername = \"x-access-token\"\npassword_file = \"{}\"\n",
        server.base_url,
        token_file.display()
    );
    let moto = Moto::start(dir.path()).await;
    let broker = start_with(dir.path(), &moto.endpoint, &extra).await;
    let agent_dir = dir.path().join("agent");
    let agent = agent(&broker, &agent_dir, &[]);

    // Without credentials for its prefix, a private repository cannot even be submitted, and
    // the error says so.
    stack_on(&broker, "other", &format!("{}other/infra", server.base_url), false);
    let refused = broker.cli(&["run", "submit", "--stack", "other"]);
    assert!(!refused.success && refused.stderr.contains("git ls-remote"), "{}", refused.stderr);
    assert!(server.refused() > 0 && server.authorized() == 0);

    // With them: resolved at submit, checked out by the agent, planned and applied.
    stack_on(&broker, "private", &format!("{}private/infra", server.base_url), false);
    let (id, run) = run_to_end(&broker, "private").await;
    let text = logs(&broker, &id);
    assert_eq!(run["state"], "finished", "{run}\n{text}\n{}", agent.log_text());
    assert!(server.authorized() >= 3, "ls-remote and two checkouts authenticated: {}", server.authorized());
    assert!(text.contains("token=***") && !text.contains(PASSWORD), "the token is masked: {text}");
    assert!(text.contains("git-env=0"), "Terraform never sees git's credentials: {text}");

    // Each checkout's issuance is on record, without the password; nothing stores it.
    let audit = keyward_tests::audit::Audit::open(&dir.path().join("broker")).await;
    let issued: Vec<_> = audit.for_run(&id).await.into_iter().filter(|e| e.kind == "credentials_issued").collect();
    assert_eq!(issued.len(), 2, "one per job: {issued:?}");
    assert!(issued.iter().all(|e| e.details.contains("x-access-token") && !e.body.contains(PASSWORD)));
    for file in walk(dir.path().join("broker").as_path()).into_iter().chain(walk(&agent_dir)) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(PASSWORD.len()).any(|w| w == PASSWORD.as_bytes()), "{} holds the token", file.display());
    }
    assert!(!agent.log_text().contains(PASSWORD));

    // Over the protocol: only the lease holder, with its current fencing token, gets them.
    drop(agent);
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let join_token =
        || json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (_, holder) = enroll_in_process(&endpoint, &ca, &join_token()).await;
    let (_, other) = enroll_in_process(&endpoint, &ca, &join_token()).await;
    let mut session = WorkSession::open(&endpoint, &ca, holder, 1).await.expect("work stream");
    let run = broker.cli(&["run", "submit", "--stack", "private"]);
    assert!(run.success, "{}", run.stderr);
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("the plan job");
    assert!(job.source_credentials, "the assignment says the repository needs credentials");
    let ask =
        |fencing_token| keyward_proto::agent_v1::SourceCredentialsRequest { job_id: job.job_id.clone(), fencing_token };
    let mut intruder = WorkSession::open(&endpoint, &ca, other, 1).await.expect("second agent's stream");
    for (session, fencing_token) in [(&mut intruder, job.fencing_token), (&mut session, job.fencing_token + 1)] {
        let status = session.client.source_credentials(ask(fencing_token)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("stale or foreign lease") && !status.message().contains(PASSWORD));
    }
    let given = session.client.source_credentials(ask(job.fencing_token)).await.expect("the holder's").into_inner();
    assert_eq!(
        (given.url_prefix.as_str(), given.username.as_str(), given.password.as_str()),
        (format!("{}private/", server.base_url).as_str(), "x-access-token", PASSWORD)
    );
    let on_record = audit.count("source.credentials_issued").await;
    assert_eq!(on_record, 3, "the two checkouts and this one, and no refusal");
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `keyward-agent run ARGS` in a mount namespace of its own where /sys/fs/cgroup is an empty
/// tmpfs: a host without cgroup v2 (or cgroups at all), where the egress filter cannot be
/// attached. Stderr goes to `log`.
fn agent_without_cgroups(agent_dir: &Path, args: &[&str], log: &Path) -> std::process::Child {
    std::process::Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/fs/cgroup && exec \"$0\" \"$@\"",
        ])
        .arg(binary("keyward-agent"))
        .arg("run")
        .args(args)
        .arg("--data-dir")
        .arg(agent_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("unshare (util-linux)")
}

/// Security review L4: with `--network host`, every job runs behind the egress filter that
/// refuses the cloud metadata service (the sandbox tests show it refusing real connections);
/// an agent that cannot attach it refuses to start, naming what it needs and the flag that
/// accepts the gap, and starts (warning) with that flag.
#[tokio::test(flavor = "multi_thread")]
async fn host_network_jobs_cannot_reach_the_metadata_service_or_the_agent_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let agent_dir = dir.path().join("agent");
    let agent = agent(&broker, &agent_dir, &["--network", "host", "--exec", "true"]);
    stack(&broker, dir.path(), "host-network", "", false);
    let (_, run) = run_to_end(&broker, "host-network").await;
    assert_eq!(run["state"], "finished", "{run}\n{}", agent.log_text());
    for job in run["jobs"].as_array().unwrap() {
        assert_eq!(job["isolation"], "sandbox network=host, runs --exec (not terraform)", "{job}");
        let layers: Vec<&str> = job["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        assert!(
            layers.iter().any(|l| l.starts_with("egress filter (cgroup bpf): 169.254.169.254, fd00:ec2::254")),
            "{layers:?}"
        );
        assert!(layers.iter().any(|l| l.starts_with("landlock abi")), "{layers:?}");
    }
    drop(agent);

    // Where the filter cannot be attached, the agent refuses to start and says why.
    let log = dir.path().join("refused.log");
    let mut refused = agent_without_cgroups(&agent_dir, &["--network", "host", "--exec", "true"], &log);
    let status = eventually("the agent to refuse to start", Duration::from_secs(30), || {
        let status = refused.try_wait().unwrap();
        async move { status }
    })
    .await;
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains("--network host: cannot block the cloud metadata service (169.254.169.254, fd00:ec2::254")
            && said.contains("--allow-metadata-access"),
        "{said}"
    );

    // With the operator's explicit choice it starts, and says so loudly.
    let log = dir.path().join("allowed.log");
    let args = ["--network", "host", "--allow-metadata-access", "--exec", "true"];
    let mut allowed = agent_without_cgroups(&agent_dir, &args, &log);
    eventually("the agent to start and warn", Duration::from_secs(30), || {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        async move { (said.contains("WARN") && said.contains("jobs can reach the cloud metadata service")).then_some(()) }
    })
    .await;
    assert!(allowed.try_wait().unwrap().is_none(), "still running: {}", std::fs::read_to_string(&log).unwrap());
    allowed.kill().unwrap();
    allowed.wait().unwrap();
}
