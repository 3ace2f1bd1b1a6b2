//! A run's page with its evidence (docs/console.md) over real HTTP: a real broker, moto's STS and
//! a real `keyward-agent` whose job prints a `<script>` line and its own secret, then waits on a
//! FIFO the test holds, so the run is caught in progress. The page shows each job's credentials
//! with their decisions and never a secret; the log is escaped and sealed; the server-sent
//! events carry the log and the state live and end when the run settles; a denial shows its
//! reason; and a caller who may not read the run gets neither the page nor its events.

use std::path::Path;
use std::time::Duration;

use keyward_tests::agent::Agent;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::console_session::{CSP, get_as as get};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::{free_addr, workspace_root};
use serde_json::Value;

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const REASON: &str = "restricted targets are closed to jobs";
/// The line the job prints, and how the page must show it.
const HOSTILE: &str = "<script>alert(\"log\")</script>";
const ESCAPED: &str = "&lt;script&gt;alert(&quot;log&quot;)&lt;/script&gt;";

/// A broker on moto with a read target and a restricted one the policy refuses to jobs.
async fn start(dir: &Path, sts: &str) -> Broker {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("restricted.rego"),
        format!(
            "package keyward.credentials\n\ndeny contains \"{REASON}\" if {{\n\
             \tobject.get(object.get(object.get(input, \"target\", {{}}), \"labels\", {{}}), \"tier\", \"\") == \"restricted\"\n}}\n"
        ),
    )
    .unwrap();
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"restricted\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         labels = {{ tier = \"restricted\" }}\n",
        policies = policies.display(),
        agents = free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

async fn request(broker: &Broker, path: &str, token: Option<&str>, last_event: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("{}{path}", broker.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = last_event {
        request = request.header("last-event-id", id);
    }
    request.send().await.unwrap()
}

/// One server-sent event.
#[derive(Debug)]
struct Event {
    name: String,
    id: Option<String>,
    data: Value,
}

/// A text/event-stream response, read event by event as it streams.
struct Events {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Events {
    async fn open(broker: &Broker, path: &str, token: &str, last_event: Option<&str>) -> Self {
        let response = request(broker, path, Some(token), last_event).await;
        assert_eq!(response.status().as_u16(), 200);
        let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert_eq!(kind, "text/event-stream", "{:?}", response.headers());
        Self { response, buffer: Vec::new() }
    }

    /// The next event (keep-alive comments skipped); `None` once the broker ended the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let (mut name, mut id, mut data) = (String::new(), None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if name.is_empty() {
                    continue;
                }
                return Some(Event { name, id, data: serde_json::from_str(&data).unwrap() });
            }
            let chunk = tokio::time::timeout(Duration::from_secs(90), self.response.chunk())
                .await
                .expect("the event stream went quiet")
                .unwrap()?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Every event up to the stream's end.
    async fn rest(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

/// The text of the `log` events among `events`.
fn log_text(events: &[Event]) -> String {
    events.iter().filter(|e| e.name == "log").map(|e| e.data["text"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_runs_page_shows_its_credentials_and_live_log_escaped_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let admin = broker.admin_token.clone();
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    for (stack, target) in [("live", "aws:state-read"), ("refused", "aws:restricted")] {
        json(&broker.cli(&[
            "stack",
            "create",
            stack,
            "--repository",
            &url,
            "--label",
            "env=dev",
            "--plan-target",
            target,
            "--json",
        ]));
    }
    // The plan prints a hostile line (built by printf: the agent logs the command line too) and
    // its own secret (masked before it is signed), then waits until the test writes to the FIFO:
    // the run is in progress until the test says.
    let fifo = dir.path().join("release");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let creds = dir.path().join("creds.env");
    let exec = format!(
        "if [ \"$KEYWARD_PHASE\" = plan ]; then env | grep '^AWS_' > '{creds}'; printf '<%s>alert(\"log\")</%s>\\n' script script; \
         echo \"secret $AWS_SECRET_ACCESS_KEY\"; read go < '{fifo}'; echo released; fi",
        creds = creds.display(),
        fifo = fifo.display(),
    );
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let agent = Agent::enroll_and_run(&broker.addr, &token, &dir.path().join("agent"), &exec);

    let submitted = broker.cli(&["run", "submit", "--stack", "live"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let id = submitted.stdout.trim().to_owned();
    let events_path = format!("/ui/runs/{id}/events");

    // Live: the state and the hostile line, while the job waits.
    let mut events = Events::open(&broker, &events_path, &admin, None).await;
    let mut seen = Vec::new();
    while !(log_text(&seen).contains(&format!("{HOSTILE}\n")) && log_text(&seen).contains("secret ***\n")) {
        let event = events.next().await.unwrap_or_else(|| panic!("ended early: {seen:?}\n{}", agent.log_text()));
        seen.push(event);
    }
    let first = seen.iter().find(|e| e.name == "state").unwrap();
    assert_eq!(first.data["settled"], false, "{seen:?}");
    assert!(seen.iter().filter(|e| e.name == "log").all(|e| e.id.is_some()), "log events carry their cursor");

    // The page meanwhile: the credentials issued to the plan job, the log escaped, the script.
    let env = std::fs::read_to_string(&creds).unwrap();
    let var = |name: &str| {
        env.lines().find_map(|l| l.strip_prefix(&format!("{name}="))).unwrap_or_else(|| panic!("{name}: {env}"))
    };
    let (access_key, secrets) = (var("AWS_ACCESS_KEY_ID"), [var("AWS_SECRET_ACCESS_KEY"), var("AWS_SESSION_TOKEN")]);
    let (status, headers, page) = get(&broker, &format!("/ui/runs/{id}"), Some(&admin)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(headers.get("content-security-policy").and_then(|v| v.to_str().ok()), Some(CSP));
    assert!(page.contains(ESCAPED) && !page.contains(HOSTILE), "{page}");
    assert!(page.contains("<script src=\"/ui/assets/live.js\" defer></script>"), "{page}");
    assert_eq!(page.matches("<script").count(), 1, "no inline script: {page}");
    assert!(page.contains(&format!("data-events=\"/ui/runs/{id}/events?after=")), "{page}");
    assert!(page.contains(access_key) && page.contains(">issued<") && page.contains(">allowed<"), "{page}");
    assert!(page.contains("aws:state-read") && page.contains(ROLE_READ), "{page}");
    assert!(page.contains("secret ***"), "the job's own secret, masked: {page}");
    assert!(page.contains("not sealed yet"), "{page}");
    for secret in secrets {
        assert!(!page.contains(secret), "a secret is on the page");
    }

    // Released: the rest of the log, the state to the end, then the stream ends.
    std::thread::spawn(move || std::fs::write(&fifo, "go\n").unwrap());
    seen.extend(events.rest().await);
    assert!(log_text(&seen).contains("released"), "{seen:?}");
    let states: Vec<&str> =
        seen.iter().filter(|e| e.name == "state").map(|e| e.data["state"].as_str().unwrap()).collect();
    assert_eq!(states.last(), Some(&"finished"), "{seen:?}\n{}", agent.log_text());
    // A state event says where the run is when the stream looks (changes in between coalesce).
    assert!(matches!(states.first(), Some(&("queued" | "planning"))), "{states:?}");
    let last = seen.iter().rev().find(|e| e.name == "state").unwrap();
    assert_eq!(last.data["settled"], true);
    let jobs = last.data["jobs"].as_array().unwrap();
    assert!(jobs.len() == 2 && jobs.iter().all(|j| j["state"] == "succeeded"), "plan and apply: {last:?}");
    for secret in secrets {
        assert!(seen.iter().all(|e| !e.data.to_string().contains(secret)), "a secret was streamed");
    }
    // Reconnecting from the last chunk: nothing twice, the final state, the end.
    let cursor = seen.iter().rev().find_map(|e| e.id.clone()).unwrap();
    let again = Events::open(&broker, &events_path, &admin, Some(&cursor)).await.rest().await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].name.as_str(), &again[0].data["state"]), ("state", &Value::from("finished")));

    // Settled: sealed, no script, how to verify; still no secret.
    let (_, _, page) = get(&broker, &format!("/ui/runs/{id}"), Some(&admin)).await;
    assert!(!page.contains("<script") && page.contains(ESCAPED), "{page}");
    assert_eq!(page.matches("sealed</span>, ").count(), 2, "both jobs' logs sealed: {page}");
    assert!(page.contains(&format!("keyward run logs {id} --verify")), "{page}");
    assert!(page.contains("No credentials asked for."), "the apply asked for none: {page}");
    for secret in secrets {
        assert!(!page.contains(secret), "a secret is on the page");
    }
    let (status, headers, script) = get(&broker, "/ui/assets/live.js", None).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").and_then(|v| v.to_str().ok()), Some("text/javascript; charset=utf-8"));
    assert!(script.contains("textContent") && !script.contains("innerHTML"), "{script}");

    // A denial, with the policy's reason; its events end with the run.
    let refused = broker.cli(&["run", "submit", "--stack", "refused"]);
    assert!(refused.success, "{}", refused.stderr);
    let refused = refused.stdout.trim().to_owned();
    let ended = Events::open(&broker, &format!("/ui/runs/{refused}/events"), &admin, None).await.rest().await;
    assert_eq!(ended.last().map(|e| e.data["state"].clone()), Some(Value::from("failed")), "{ended:?}");
    let (_, _, page) = get(&broker, &format!("/ui/runs/{refused}"), Some(&admin)).await;
    assert!(page.contains(">denied<") && page.contains(REASON) && page.contains("aws:restricted"), "{page}");

    // Who may not read the run gets neither page nor events; nobody anonymous does.
    json(&broker.cli(&["space", "create", "elsewhere", "--json"]));
    let viewer =
        json(&broker.cli(&["token", "create", "viewer", "--space", "elsewhere", "--role", "viewer", "--json"]));
    let viewer = viewer["token"].as_str().unwrap();
    let (status, _, body) = get(&broker, &events_path, Some(viewer)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("<!DOCTYPE html>") && !body.contains("released"), "{body}");
    let (status, _, body) = get(&broker, &format!("/ui/runs/{id}"), Some(viewer)).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = get(&broker, &events_path, None).await;
    assert_eq!(status, 401, "{body}");
}
