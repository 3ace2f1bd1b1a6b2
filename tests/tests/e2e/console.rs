//! The web console's first pages (docs/console.md) over real HTTP against `keyward dev` (its own
//! sandboxed agent runs real Terraform): the runs list and a run with its plan, as the API token
//! sees them; every answer under the console's security headers; a string holding `<script>`
//! shown as text; nothing of another space; and an HTML page for every refusal.

use keyward_tests::broker::Broker;
use keyward_tests::console_session::{CSP, get_as as get};
use serde_json::Value;

fn json(output: &keyward_tests::broker::Output) -> Value {
    assert!(output.success, "{}", output.stderr);
    serde_json::from_str(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runs_pages_show_what_the_caller_may_read_escaped_and_under_a_strict_csp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let hostile = "<script>alert('ticket')</script>";
    let run = json(
        &broker.cli(&["run", "submit", "--stack", "example", "--ticket", hostile, "--pr", "3", "--wait", "--json"]),
    );
    assert_eq!(run["state"], "finished", "{run}");
    let id = run["id"].as_str().unwrap();
    let admin = broker.admin_token.as_str();

    // The list and the run, as the admin token sees them.
    let (status, headers, list) = get(&broker, "/ui/runs", Some(admin)).await;
    assert_eq!(status, 200, "{list}");
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(value), "{name}");
    }
    assert!(list.contains(&format!("href=\"/ui/runs/{id}\"")), "{list}");
    assert!(!list.contains("<script>alert") && list.contains("&lt;script&gt;alert('ticket')&lt;/script&gt;"), "{list}");
    assert!(list.contains("#3") && list.contains(">asserted<"), "a pull request given at submit is asserted: {list}");
    let (status, _, page) = get(&broker, &format!("/ui/runs/{id}"), Some(admin)).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("1 to add, 0 to change, 0 to destroy."), "the plan's changes: {page}");
    assert!(page.contains("terraform_data."), "{page}");
    assert!(!page.contains("<script"), "{page}");
    let (status, headers, css) = get(&broker, "/ui/assets/console.css", None).await;
    assert_eq!(
        (status, headers.get("content-type").and_then(|v| v.to_str().ok())),
        (200, Some("text/css; charset=utf-8"))
    );
    assert!(css.contains("@media"), "phone widths are styled");

    // The stacks, drift at a glance: after a drift check, the example stack is in sync.
    let (_, _, stacks) = get(&broker, "/ui/stacks", Some(admin)).await;
    assert!(stacks.contains(">example<") && stacks.contains("never checked"), "{stacks}");
    let drift = broker.cli(&["run", "submit", "--stack", "example", "--drift", "--wait", "--timeout", "2m"]);
    assert_eq!(drift.code, Some(0), "{}{}", drift.stdout, drift.stderr);
    let (status, _, stacks) = get(&broker, "/ui/stacks", Some(admin)).await;
    assert_eq!(status, 200, "{stacks}");
    assert!(stacks.contains("in sync") && stacks.contains("0 drifted"), "{stacks}");

    // The dev agent, connected, with what it runs.
    let (status, _, agents) = get(&broker, "/ui/agents", Some(admin)).await;
    assert_eq!(status, 200, "{agents}");
    assert!(agents.contains("1 agents; 1 connected.") && agents.contains("sandbox"), "{agents}");

    // The audit trail of the run, as `keyward audit trace` prints it.
    let (status, _, trail) = get(&broker, &format!("/ui/audit?key={id}"), Some(admin)).await;
    assert_eq!(status, 200, "{trail}");
    assert!(trail.contains(&format!("run {id}  stack example")), "{trail}");
    assert!(trail.contains("PR #3  ticket &lt;script&gt;") && trail.contains("(the submitter's word)"), "{trail}");
    let (_, _, nothing) = get(&broker, "/ui/audit?key=ASIANOTHINGHERE", Some(admin)).await;
    assert!(nothing.contains("Nothing in the audit log refers to"), "{nothing}");

    // Anonymous: a page saying how to sign in, under the same headers.
    let (status, headers, page) = get(&broker, "/ui/runs", None).await;
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("Sign in to Keyward"), "{page}");
    assert_eq!(headers.get("content-security-policy").and_then(|v| v.to_str().ok()), Some(CSP));
    let (status, _, page) = get(&broker, "/ui/runs/no-such-run", Some(admin)).await;
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("Not found") && page.starts_with("<!DOCTYPE html>"), "{page}");

    // A viewer of another space sees none of it: not in the list, not found by ID.
    json(&broker.cli(&["space", "create", "elsewhere", "--json"]));
    let viewer =
        json(&broker.cli(&["token", "create", "viewer", "--space", "elsewhere", "--role", "viewer", "--json"]));
    let viewer = viewer["token"].as_str().unwrap();
    let (status, _, list) = get(&broker, "/ui/runs", Some(viewer)).await;
    assert_eq!(status, 200, "{list}");
    assert!(!list.contains(id) && list.contains("No runs yet."), "{list}");
    let (status, _, page) = get(&broker, &format!("/ui/runs/{id}"), Some(viewer)).await;
    assert_eq!(status, 404, "{page}");
    let (status, _, page) = get(&broker, &format!("/ui/audit?key={id}"), Some(viewer)).await;
    assert_eq!(status, 403, "the audit trail needs audit access: {page}");
    assert!(!page.contains(id), "{page}");
    let (_, _, agents) = get(&broker, "/ui/agents", Some(viewer)).await;
    assert!(agents.contains("0 agents"), "{agents}");
    let (_, _, stacks) = get(&broker, "/ui/stacks", Some(viewer)).await;
    assert!(stacks.contains("No stacks yet.") && !stacks.contains(">example<"), "{stacks}");
    assert!(!page.contains("terraform_data"), "{page}");
}
