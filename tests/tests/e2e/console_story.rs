//! Issue 23's acceptance story: the web console (docs/console.md) in a real browser — Debian's
//! headless Chromium driven by Playwright (tests/src/browser.rs) — against `keyward dev`, its own
//! sandboxed agent and real Terraform, with moto's STS behind the example stack's targets so the
//! apply job gets real AWS credentials.
//!
//! An author and a reviewer sign in by their one-time links, each in their own browser context.
//! The author sees the run's plan and no approve button; the reviewer approves and the page
//! follows the apply live (server-sent events and `live.js`, no reload); the apply job's access
//! key ID, read from the page, is traced on the audit page, whose proofs `verify.js` checks in the
//! browser; the state is changed behind Terraform's back and the stacks page shows the drift.
//! Every page: no serious accessibility problem (axe-core), nothing blocked by the CSP, no console
//! error — and control checks prove those checks can fail.
//!
//! The screenshots in docs/images/ come from here: `KEYWARD_UPDATE_SCREENSHOTS=1` writes them
//! there; otherwise they go to a temporary directory, so running the suite leaves the tree clean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_tests::broker::{Broker, Output};
use keyward_tests::browser::{Browser, BrowserError, Page, Viewport};
use keyward_tests::moto::Moto;
use serde_json::Value;

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/network-apply";
/// The longest a Terraform phase in the sandbox may take before the story fails.
const TERRAFORM: Duration = Duration::from_secs(60);

fn json(output: &Output) -> Value {
    assert!(output.success, "{}{}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

/// Where screenshots go — docs/images/ when asked to update them, else a scratch directory — and
/// the scratch directory for the width checks' own.
struct Shots {
    dir: PathBuf,
    scratch: PathBuf,
}

impl Shots {
    fn new(scratch: &Path) -> Self {
        let update = std::env::var_os("KEYWARD_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1");
        let dir = if update { keyward_tests::workspace_root().join("docs/images") } else { scratch.to_owned() };
        Self { dir, scratch: scratch.to_owned() }
    }

    /// Saves `page` as `name` (`full_page`: all of it, not just the viewport).
    fn save(&self, page: &Page<'_>, name: &str, full_page: bool) {
        page.screenshot(&self.dir.join(name), full_page).unwrap();
    }
}

/// What must hold of every page: its heading, no serious accessibility violation, nothing the
/// CSP blocked, no console error. `what` names the page in failures.
fn check_page(page: &Page<'_>, what: &str, heading: &str) {
    check_page_but_console(page, what, heading);
    assert_eq!(page.console_errors().unwrap(), Vec::<String>::new(), "{what}: console errors");
}

/// [`check_page`] but for console errors: a page answered with an error status logs that.
fn check_page_but_console(page: &Page<'_>, what: &str, heading: &str) {
    let shown = page.text("main h1").unwrap();
    assert!(shown.starts_with(heading), "{what}: the heading is {shown:?}");
    let (serious, lesser): (Vec<_>, Vec<_>) = page.axe().unwrap().into_iter().partition(|v| v.is_serious());
    for v in lesser {
        eprintln!("{what}: axe-core, {}: {} ({}) at {:?}", v.impact.as_deref().unwrap_or("?"), v.help, v.id, v.nodes);
    }
    assert!(serious.is_empty(), "{what}: axe-core finds serious accessibility problems: {serious:#?}");
    assert_eq!(page.csp_violations().unwrap(), Vec::<String>::new(), "{what}: CSP violations");
}

/// At a phone's width the page does not scroll sideways: what is wider scrolls in its own box.
/// A full-page screenshot is as wide as the page's content (its PNG header says how wide).
fn fits_a_phone(page: &Page<'_>, what: &str, shots: &Shots) {
    let path = shots.scratch.join("width-check.png");
    page.screenshot(&path, true).unwrap();
    let png = std::fs::read(&path).unwrap();
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    assert!(width <= Viewport::PHONE.width, "{what} is {width} px wide on a phone");
}

/// `keyward dev` with an overlay: a read target for plans and a write target for applies, both on
/// moto's STS; the write target is `env=staging`, so it needs one independent approval.
async fn start(dir: &Path, sts: &str) -> Broker {
    let overlay = dir.join("targets.toml");
    let target = |name: &str, access: &str, role: &str, labels: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\ntype = \"aws\"\naccess = \"{access}\"\nrole_arn = \"{role}\"\n\
             region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n{labels}"
        )
    };
    let targets = [
        target("state-read", "read", ROLE_READ, ""),
        target("network-apply", "write", ROLE_WRITE, "labels = { env = \"staging\" }\n"),
    ];
    std::fs::write(&overlay, targets.concat()).unwrap();
    let broker = Broker::dev_with(&dir.join("data"), &["--config", overlay.to_str().unwrap()]).await;
    // The example stack waits for a review (env=staging) and uses the targets.
    let updated = broker.cli(&[
        "stack",
        "update",
        "example",
        "--label",
        "env=staging",
        "--plan-target",
        "aws:state-read",
        "--apply-target",
        "aws:network-apply",
        "--json",
    ]);
    json(&updated);
    broker
}

/// A new browser context named `name` that opens the one-time `link` (nothing clicked) and lands
/// on the runs, signed in as `who`.
fn sign_in<'b>(browser: &'b Browser, name: &str, link: &str, who: &str) -> Page<'b> {
    let page = browser.page(name, Viewport::DESKTOP).unwrap();
    assert_eq!(page.goto(link).unwrap(), 200, "{name}: the link signs in and redirects to the runs");
    check_page(&page, &format!("{name}: /ui/runs"), "Runs");
    assert_eq!(page.text("header .who").unwrap(), format!("Signed in as token {who} · Sign out"));
    page
}

/// The checks above can fail: under the console's own `default-src 'none'`, axe-core still runs
/// and finds a page with no language and no title, and a blocked inline style is reported; a page
/// that never shows what is waited for fails in bounded time, with Playwright's word.
fn controls(browser: &Browser) {
    let canary = browser.page("canary", Viewport::DESKTOP).unwrap();
    canary
        .goto("data:text/html,<!DOCTYPE html><meta http-equiv=Content-Security-Policy content=\"default-src 'none'\"><style>b{}</style><p>x")
        .unwrap();
    let found: Vec<_> = canary.axe().unwrap().into_iter().filter(|v| v.is_serious()).map(|v| v.id).collect();
    assert!(found.contains(&"html-has-lang".to_owned()) && found.contains(&"document-title".to_owned()), "{found:?}");
    assert!(!canary.csp_violations().unwrap().is_empty(), "a blocked inline style is reported");
    match canary.wait_for_text("h1", "never", Duration::from_millis(300)) {
        Err(BrowserError::Command { message, .. }) => assert!(message.contains("Timeout 300ms"), "{message}"),
        other => panic!("waiting for text that never comes: {:?}", other.map(drop)),
    }
}

/// Without a session: the sign-in page, itself accessible.
fn anonymous(browser: &Browser, broker: &Broker) {
    let anonymous = browser.page("anonymous", Viewport::DESKTOP).unwrap();
    assert_eq!(anonymous.goto(&format!("{}/ui/runs", broker.addr)).unwrap(), 401);
    check_page_but_console(&anonymous, "the sign-in page", "Sign in to Keyward");
    let errors = anonymous.console_errors().unwrap();
    assert!(errors.len() == 1 && errors[0].contains("status of 401"), "only the page's own 401: {errors:?}");
}

/// The author finds the run waiting in the list, opens it by its link, and sees the plan's
/// changes and no approve button.
fn author_sees_the_plan(author: &Page<'_>, broker: &Broker, id: &str) {
    assert_eq!(author.goto(&format!("{}/ui/runs", broker.addr)).unwrap(), 200);
    check_page(author, "the author's runs", "Runs");
    let row = author.text(&format!("main table tbody tr:has(a[href=\"/ui/runs/{id}\"])")).unwrap();
    assert!(row.contains("example") && row.contains("OPS-12") && row.contains("planned"), "{row}");
    let url = author.click(&format!("main table tbody a[href=\"/ui/runs/{id}\"]")).unwrap();
    assert_eq!(url, format!("{}/ui/runs/{id}", broker.addr));
    check_page(author, "the run, as its author", "Run");
    assert_eq!(author.text("#run-state").unwrap().split_whitespace().next(), Some("planned"));
    assert_eq!(author.text("main p:has-text(\" to add, \")").unwrap(), "1 to add, 0 to change, 0 to destroy.");
    assert_eq!(author.texts("ul.changes li").unwrap(), ["+ terraform_data.hello (create)"]);
    let note = author.text("form.review .note").unwrap();
    assert!(note.contains("your approval would not count"), "{note}");
    assert!(author.texts("form.review button.approve").unwrap().is_empty(), "no approve button for the author");
}

/// The reviewer approves with a comment, lands back on the run page, and watches the apply end
/// there without reloading: only `live.js` following the events can change the page.
fn reviewer_approves_and_watches(reviewer: &Page<'_>, broker: &Broker, id: &str) {
    let path = format!("/ui/runs/{id}");
    assert_eq!(reviewer.goto(&format!("{}{path}", broker.addr)).unwrap(), 200);
    check_page(reviewer, "the run, as a reviewer", "Run");
    reviewer.fill("#comment", "Looks right: one greeting.").unwrap();
    let url = reviewer.click("form.review button.approve").unwrap();
    assert_eq!(url, format!("{}{path}", broker.addr), "back on the run page");
    let note = reviewer.text("#live-note").unwrap();
    assert!(note.starts_with("In progress"), "the page was rendered with the run in progress: {note}");
    reviewer.wait_for_text("#run-state .state", "finished", TERRAFORM).unwrap();
    reviewer.wait_for_text("#live-note", "The run is finished", Duration::from_secs(5)).unwrap();
    let jobs = reviewer.texts("tr[data-job] .job-state").unwrap();
    assert_eq!(jobs, ["succeeded", "succeeded"], "the jobs' states followed too");
    let log = reviewer.text("#run-log").unwrap();
    assert!(log.contains("applied: hello from keyward"), "the apply's output arrived live: {log}");
    assert_eq!(reviewer.console_errors().unwrap(), Vec::<String>::new(), "the live page: console errors");
    assert_eq!(reviewer.csp_violations().unwrap(), Vec::<String>::new(), "the live page: CSP violations");
}

/// Reloaded, the settled run page: the review counted, both logs sealed, and the apply job's
/// credentials by their identifiers. The access key ID the apply job was issued.
fn settled_run_page(reviewer: &Page<'_>, broker: &Broker, id: &str, shots: &Shots) -> String {
    assert_eq!(reviewer.goto(&format!("{}/ui/runs/{id}", broker.addr)).unwrap(), 200);
    check_page(reviewer, "the settled run", "Run");
    let reviews = reviewer.texts("main li:has(q)").unwrap();
    assert!(reviews.iter().any(|r| r.starts_with("alice-reviewer approved") && r.contains("(counted)")), "{reviews:?}");
    let seals = reviewer.texts("ul.seals li").unwrap();
    assert!(seals.len() == 2 && seals.iter().all(|s| s.contains(": sealed, ")), "{seals:?}");
    let apply = "table.credentials tr:has(.decision-issued):has-text(\"aws:network-apply\")";
    let row = reviewer.text(apply).unwrap();
    assert!(row.contains(ROLE_WRITE), "{row}");
    let key = reviewer.text(&format!("{apply} .identifier:has-text(\"access key ID\") .mono")).unwrap();
    assert!(key.starts_with("ASIA") && key.len() == 20, "an STS access key ID: {key:?}");
    shots.save(reviewer, "console-run.png", true);

    // At a phone's width, the same page.
    reviewer.set_viewport(Viewport::PHONE).unwrap();
    check_page(reviewer, "the run on a phone", "Run");
    fits_a_phone(reviewer, "the run", shots);
    shots.save(reviewer, "console-run-phone.png", false);
    reviewer.set_viewport(Viewport::DESKTOP).unwrap();
    key
}

/// The reviewer searches the audit trail by the access key ID, as a person would: the trace names
/// the run and its approver, and `verify.js` checks every entry's proof against the checkpoint.
fn audit_trace(reviewer: &Page<'_>, broker: &Broker, id: &str, key: &str, shots: &Shots) {
    let signed = json(&broker.cli(&["audit", "checkpoint", "--json"]));
    let size = signed["size"].as_u64().unwrap();
    let url = reviewer.click("header nav a:text-is(\"Audit\")").unwrap();
    assert_eq!(url, format!("{}/ui/audit", broker.addr));
    check_page(reviewer, "/ui/audit", "Audit trail");
    reviewer.fill("#key", key).unwrap();
    let url = reviewer.click("form.filters button[type=submit]").unwrap();
    assert_eq!(url, format!("{}/ui/audit?key={key}", broker.addr));
    reviewer
        .wait_for_text("#proof-summary", "inclusion proofs checked in your browser", Duration::from_secs(10))
        .unwrap();
    let summary = reviewer.text("#proof-summary").unwrap();
    assert!(summary.starts_with("All ") && !summary.contains("FAILED"), "{summary}");
    let checked = reviewer.texts("tr[data-entry] [data-status]").unwrap();
    // Against the checkpoint just signed (an entry the run wrote after it, if any, against the
    // log's head: both are proofs verify.js checked).
    let included = format!("\u{2713} included in checkpoint {size} (checked in your browser)");
    assert!(checked.first() == Some(&included), "{checked:?}");
    assert!(checked.iter().all(|c| c.starts_with("\u{2713} included in ")), "{checked:?}");
    let trace = reviewer.text("main pre").unwrap();
    assert!(trace.contains(&format!("run {id}")), "the trace names the run: {trace}");
    assert!(trace.contains("approved   by alice-reviewer"), "and who approved it: {trace}");
    assert!(trace.contains(key), "{trace}");
    check_page(reviewer, "the trace", "Audit trail");
    shots.save(reviewer, "console-audit.png", true);
    reviewer.set_viewport(Viewport::PHONE).unwrap();
    check_page(reviewer, "the trace on a phone", "Audit trail");
    fits_a_phone(reviewer, "the trace", shots);
    reviewer.set_viewport(Viewport::DESKTOP).unwrap();
}

/// The example stack's state is changed behind Terraform's back (a fix pushed with the next
/// serial); a drift check finds it, and the stacks page shows it drifted, first.
fn drift(author: &Page<'_>, broker: &Broker, dir: &Path, shots: &Shots) {
    let pulled = broker.cli(&["state", "pull", "example"]);
    assert!(pulled.success, "{}", pulled.stderr);
    let mut state: Value = serde_json::from_str(&pulled.stdout).unwrap();
    state["serial"] = Value::from(state["serial"].as_u64().unwrap() + 1);
    let edited = serde_json::to_string(&state).unwrap().replace("hello from keyward", "changed by hand");
    let file = dir.join("edited.tfstate");
    std::fs::write(&file, edited).unwrap();
    json(&broker.cli(&["state", "push", "example", file.to_str().unwrap(), "--json"]));
    let check = broker.cli(&["run", "submit", "--stack", "example", "--drift", "--wait", "--timeout", "2m"]);
    assert_eq!(check.code, Some(2), "drift found: {}{}", check.stdout, check.stderr);

    let url = author.click("header nav a:text-is(\"Stacks\")").unwrap();
    assert_eq!(url, format!("{}/ui/stacks", broker.addr));
    check_page(author, "/ui/stacks", "Stacks");
    assert!(author.text("main p").unwrap().contains("1 drifted"));
    let first = author.text("main table tbody tr").unwrap();
    assert!(first.starts_with("example") && first.contains("drifted since"), "{first}");
    assert!(first.contains("0 to add, 1 to change, 0 to destroy"), "{first}");
    shots.save(author, "console-stacks.png", true);
}

/// The other pages by the navigation a person would click.
fn the_rest(author: &Page<'_>, broker: &Broker, shots: &Shots) {
    let url = author.click("header nav a:text-is(\"Agents\")").unwrap();
    assert_eq!(url, format!("{}/ui/agents", broker.addr));
    check_page(author, "/ui/agents", "Agents");
    let agents = author.text("main table tbody").unwrap();
    assert!(agents.contains("dev") && agents.contains("sandbox"), "keyward dev's agent: {agents}");
    shots.save(author, "console-agents.png", true);
    let url = author.click("header nav a:text-is(\"Runs\")").unwrap();
    assert_eq!(url, format!("{}/ui/runs", broker.addr));
    check_page(author, "/ui/runs at the end", "Runs");
    let kinds = author.texts("main table tbody tr").unwrap();
    assert!(kinds.len() == 2 && kinds[0].contains("drift") && kinds[1].contains("finished"), "{kinds:?}");
    shots.save(author, "console-runs.png", true);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_approves_in_chromium_watches_the_apply_traces_its_key_and_sees_drift() {
    let dir = tempfile::tempdir().unwrap();
    // Chromium starts while moto and the broker do.
    let launching = tokio::task::spawn_blocking(Browser::launch);
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let browser = launching.await.unwrap().unwrap();
    let shots = Shots::new(dir.path());
    controls(&browser);
    anonymous(&browser, &broker);

    // Two people, two browser contexts, each signed in by opening their own one-time link.
    let author = sign_in(&browser, "author", &keyward_tests::console_session::printed_link(&broker), "bootstrap-admin");
    let reviewer = json(&broker.cli(&["token", "create", "alice-reviewer", "--role", "reviewer", "--json"]));
    let link = keyward_tests::console_session::link(&broker, reviewer["token"].as_str().unwrap());
    let reviewer = sign_in(&browser, "reviewer", &link, "alice-reviewer");

    // The author deploys from the command line; the run plans and waits for a review.
    let submitted = broker.cli(&["run", "submit", "--stack", "example", "--ticket", "OPS-12", "--wait", "--json"]);
    assert_eq!(submitted.code, Some(3), "waits for approval: {}{}", submitted.stdout, submitted.stderr);
    let run: Value = serde_json::from_str(&submitted.stdout).unwrap();
    let id = run["id"].as_str().unwrap();

    author_sees_the_plan(&author, &broker, id);
    reviewer_approves_and_watches(&reviewer, &broker, id);
    let key = settled_run_page(&reviewer, &broker, id, &shots);
    audit_trace(&reviewer, &broker, id, &key, &shots);
    drift(&author, &broker, dir.path(), &shots);
    the_rest(&author, &broker, &shots);
}
