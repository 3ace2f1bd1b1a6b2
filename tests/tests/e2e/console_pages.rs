//! The console's stack and agents pages (docs/console.md) over real HTTP against `keyward dev`,
//! signed in as a browser is (`keyward console`'s one-time link: a cookie, and forms carrying the
//! CSRF token). A stack's page shows its runs and the state versions its apply wrote — never the
//! state's content — and is not found for a viewer of another space. The agents page shows the
//! job an agent holds (an agent played by the test holds a plan's lease, so it is held for as
//! long as the test needs), gives a viewer no buttons, and refuses a drain or revoke without the
//! session's CSRF token or the admin role (an agent of another space is not found); with both, the
//! agent is drained, then revoked.

use std::time::Duration;

use keyward_tests::agent::{WorkSession, bootstrap, enroll_in_process};
use keyward_tests::broker::{Broker, Output};
use keyward_tests::console_session::{self, Session, get, sign_in};
use reqwest::header::LOCATION;
use serde_json::Value;

fn json(output: &Output) -> Value {
    assert!(output.success, "{}{}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap()
}

/// Posts a form carrying only `csrf`: the status, where it redirects, and the body.
async fn post(broker: &Broker, session: &Session, path: &str, csrf: &str) -> (u16, Option<String>, String) {
    let (status, headers, body) = console_session::post(broker, session, path, &[("csrf", csrf)]).await;
    (status, headers.get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned), body)
}

/// `token create NAME --space SPACE --role ROLE`'s token.
fn token(broker: &Broker, name: &str, space: &str, role: &str) -> String {
    let created = json(&broker.cli(&["token", "create", name, "--space", space, "--role", role, "--json"]));
    created["token"].as_str().unwrap().to_owned()
}

/// Agent `id`'s state as `keyward agent list --json` says.
fn agent_state(broker: &Broker, id: &str) -> String {
    let agents = json(&broker.cli(&["agent", "list", "--json"]));
    let agent =
        agents["agents"].as_array().unwrap().iter().find(|a| a["id"] == id).unwrap_or_else(|| panic!("{agents}"));
    agent["state"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stacks_page_shows_its_runs_and_state_versions_but_never_the_states_content() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let admin = sign_in(&broker, &broker.admin_token).await;
    let run = json(&broker.cli(&["run", "submit", "--stack", "example", "--wait", "--json"]));
    assert_eq!(run["state"], "finished", "{run}");
    let id = run["id"].as_str().unwrap();

    // The list links each stack to its page.
    let (_, stacks) = get(&broker, &admin, "/ui/stacks").await;
    assert!(stacks.contains(r#"href="/ui/stacks/example""#), "{stacks}");

    // The page: facts, the run, the version its apply wrote (as `keyward state list` has it).
    let listed = json(&broker.cli(&["state", "list", "example", "--json"]));
    let version = &listed["versions"][0];
    assert_eq!((version["source"].as_str(), version["run_id"].as_str()), (Some("apply"), Some(id)), "{listed}");
    let (status, page) = get(&broker, &admin, "/ui/stacks/example").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<h1>Stack example</h1>") && page.contains("env = dev"), "{page}");
    assert!(page.contains(&format!(r#"href="/ui/runs/{id}""#)), "the run is listed: {page}");
    assert!(page.contains(version["lineage"].as_str().unwrap()), "the version's lineage: {page}");
    let serial = format!("<td>{}</td>", version["serial"]);
    assert!(page.contains(&serial) && page.contains(&format!("{} bytes", version["size"])), "{page}");
    assert!(page.contains(">apply<") && page.contains("not locked"), "{page}");

    // The state holds the example's value; the page never does.
    let pulled = broker.cli(&["state", "pull", "example"]);
    assert!(pulled.success && pulled.stdout.contains("hello from keyward"), "{}", pulled.stderr);
    assert!(!page.contains("hello from keyward"), "the state's content is on the page: {page}");

    // Not found: a stack that does not exist, and one of a space the viewer may not read.
    let (status, page) = get(&broker, &admin, "/ui/stacks/no-such-stack").await;
    assert_eq!(status, 404, "{page}");
    json(&broker.cli(&["space", "create", "elsewhere", "--json"]));
    let viewer = sign_in(&broker, &token(&broker, "viewer", "elsewhere", "viewer")).await;
    let (status, page) = get(&broker, &viewer, "/ui/stacks/example").await;
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("Not found") && !page.contains(id), "{page}");
    let (status, _) = get(&broker, &viewer, "/ui/stacks/no-such-stack").await;
    assert_eq!(status, 404, "the same answer as for a stack that does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_page_shows_current_jobs_and_only_an_admin_with_the_csrf_token_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let admin = sign_in(&broker, &broker.admin_token).await;
    // `keyward dev`'s own agent enrolls in the background once the broker is up.
    let dev_agent = keyward_tests::eventually("the dev agent to enroll", Duration::from_secs(30), || async {
        let agents = json(&broker.cli(&["agent", "list", "--json"]));
        agents["agents"].as_array().and_then(|a| a.first()).and_then(|a| a["id"].as_str()).map(str::to_owned)
    })
    .await;

    // An agent played by the test, in its own pool, holding the plan of a run of its stack.
    let example = json(&broker.cli(&["stack", "show", "example", "--json"]));
    let repository = example["repository"].as_str().unwrap();
    json(&broker.cli(&["pool", "create", "held", "--json"]));
    let args =
        ["stack", "create", "held", "--repository", repository, "--pool", "held", "--label", "env=dev", "--json"];
    json(&broker.cli(&args));
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let join = json(&broker.cli(&["pool", "join-token", "held", "--json"]));
    let (agent_id, identity) = enroll_in_process(&endpoint, &ca, join["token"].as_str().unwrap()).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    let submitted = broker.cli(&["run", "submit", "--stack", "held"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run_id = submitted.stdout.trim().to_owned();
    let job = session.next_assignment(Duration::from_secs(30)).await.expect("the plan job");
    session.heartbeat(&[&job.job_id]).await.expect("the lease holder's heartbeat");

    // The admin sees the job it holds, linked to its run, and the forms.
    let (status, page) = get(&broker, &admin, "/ui/agents").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("2 agents;") && page.contains(" connected. 1 running a job."), "{page}");
    let row = row_of(&page, &agent_id);
    assert!(row.contains(&format!(r#"href="/ui/runs/{run_id}" title="{}""#, job.job_id)), "{row}");
    assert!(row.contains("plan <a"), "{row}");
    let revoke = format!("/ui/agents/{agent_id}/revoke");
    let drain = format!("/ui/agents/{agent_id}/drain");
    assert!(row.contains(&format!(r#"action="{revoke}""#)) && row.contains(&format!(r#"action="{drain}""#)), "{row}");
    assert!(row.contains(&format!(r#"name="csrf" value="{}""#, admin.csrf)) && row.contains("<details"), "{row}");

    // A viewer sees the agents and the job, but no button, and is refused the forms.
    let viewer = sign_in(&broker, &token(&broker, "viewer", "root", "viewer")).await;
    let (_, page) = get(&broker, &viewer, "/ui/agents").await;
    assert!(page.contains(&job.job_id) && !page.contains("<form") && !page.contains("Revoke"), "{page}");
    let (status, _, page) = post(&broker, &viewer, &revoke, &viewer.csrf).await;
    assert_eq!(status, 403, "{page}");

    // An administrator of another space neither sees the agent nor finds it to revoke.
    json(&broker.cli(&["space", "create", "elsewhere", "--json"]));
    let stranger = sign_in(&broker, &token(&broker, "stranger", "elsewhere", "admin")).await;
    let (_, page) = get(&broker, &stranger, "/ui/agents").await;
    assert!(page.contains("0 agents;") && !page.contains(&agent_id), "{page}");
    let (status, _, page) = post(&broker, &stranger, &revoke, &stranger.csrf).await;
    assert_eq!(status, 404, "{page}");

    // Without the admin session's own CSRF token, nothing changes.
    for csrf in ["", "forged", viewer.csrf.as_str()] {
        for path in [&drain, &revoke] {
            let (status, _, page) = post(&broker, &admin, path, csrf).await;
            assert_eq!(status, 403, "{path} {csrf:?}: {page}");
            assert!(page.contains("X-Keyward-CSRF"), "{page}");
        }
    }
    assert_eq!(agent_state(&broker, &agent_id), "active");

    // With it: drained, then revoked, each back to the page (post/redirect/get).
    let (status, location, page) = post(&broker, &admin, &drain, &admin.csrf).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ui/agents")), "{page}");
    assert_eq!(agent_state(&broker, &agent_id), "draining");
    let (status, location, page) = post(&broker, &admin, &revoke, &admin.csrf).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ui/agents")), "{page}");
    assert_eq!(agent_state(&broker, &agent_id), "revoked");
    let (_, page) = get(&broker, &admin, "/ui/agents").await;
    let row = row_of(&page, &agent_id);
    assert!(row.contains(">revoked<") && row.contains("by bootstrap-admin"), "{row}");
    assert!(!row.contains(&job.job_id) && !row.contains("<form"), "its lease ended with it: {row}");
    let again = post(&broker, &admin, &revoke, &admin.csrf).await;
    assert_eq!(again.0, 409, "revoked once: {}", again.2);
    let revoked = broker.cli(&["audit", "tail", "--kind", "agent.revoked", "--json"]);
    assert!(revoked.success && revoked.stdout.contains(&agent_id), "{}", revoked.stderr);
    assert!(row_of(&page, &dev_agent).contains(">active<"), "the dev agent is untouched: {page}");
    assert_eq!(agent_state(&broker, &dev_agent), "active");
}

/// The table row of agent `id` on the agents page.
fn row_of<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!(r#"<tr data-agent="{id}">"#)).unwrap_or_else(|| panic!("no row for {id}: {page}"));
    let rest = &page[start..];
    &rest[..rest.find("</tr>").unwrap()]
}
