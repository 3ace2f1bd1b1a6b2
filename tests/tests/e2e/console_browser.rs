//! The web console (docs/console.md) in a real browser: Debian's headless Chromium, driven by
//! Playwright (tests/src/browser.rs), against `keyward dev` with a finished run. A person's
//! browser follows the navigation, the page runs nothing the CSP blocks and logs no error, and
//! axe-core finds no serious or critical accessibility problem, at a laptop's width and a phone's.
//!
//! The screenshots in docs/images/ come from here: `KEYWARD_UPDATE_SCREENSHOTS=1` writes them
//! there; otherwise they go to a temporary directory, so running the suite leaves the tree clean.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_tests::broker::Broker;
use keyward_tests::browser::{Browser, BrowserError, Page, Viewport};

/// Where screenshots go: docs/images/ when asked to update them, else `scratch`.
fn screenshot_dir(scratch: &Path) -> PathBuf {
    if std::env::var_os("KEYWARD_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        keyward_tests::workspace_root().join("docs/images")
    } else {
        scratch.to_owned()
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
    assert_eq!(page.text("main h1").unwrap(), heading, "{what}");
    let (serious, lesser): (Vec<_>, Vec<_>) = page.axe().unwrap().into_iter().partition(|v| v.is_serious());
    for v in lesser {
        eprintln!("{what}: axe-core, {}: {} ({}) at {:?}", v.impact.as_deref().unwrap_or("?"), v.help, v.id, v.nodes);
    }
    assert!(serious.is_empty(), "{what}: axe-core finds serious accessibility problems: {serious:#?}");
    assert_eq!(page.csp_violations().unwrap(), Vec::<String>::new(), "{what}: CSP violations");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_chromium_navigates_within_its_csp_and_passes_axe() {
    let browser = Browser::launch().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let run = broker.cli(&["run", "submit", "--stack", "example", "--pr", "7", "--ticket", "OPS-12", "--wait"]);
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let shots = screenshot_dir(dir.path());
    let bearer = format!("Bearer {}", broker.admin_token);
    let auth = [("Authorization", bearer.as_str())];

    // The runs page, then the others by the navigation a person would click.
    let page = browser.page_with_headers("admin", Viewport::DESKTOP, &auth).unwrap();
    assert_eq!(page.goto(&format!("{}/ui/runs", broker.addr)).unwrap(), 200);
    check_page(&page, "/ui/runs", "Runs");
    assert!(page.texts("main table tbody tr").unwrap().iter().any(|row| row.contains("OPS-12")), "the run is listed");
    page.screenshot(&shots.join("console-runs.png"), true).unwrap();
    for (link, path, heading) in [("Stacks", "/ui/stacks", "Stacks"), ("Agents", "/ui/agents", "Agents")] {
        let url = page.click(&format!("header nav a:text-is(\"{link}\")")).unwrap();
        assert_eq!(url, format!("{}{path}", broker.addr), "the {link} link");
        check_page(&page, path, heading);
        page.screenshot(&shots.join(format!("console-{}.png", link.to_lowercase())), true).unwrap();
    }

    // A stack's page, from the stacks list (the agents page above had the admin's forms).
    assert_eq!(page.goto(&format!("{}/ui/stacks", broker.addr)).unwrap(), 200);
    let url = page.click("main table a:text-is(\"example\")").unwrap();
    assert_eq!(url, format!("{}/ui/stacks/example", broker.addr), "the stack's link");
    check_page(&page, "/ui/stacks/example", "Stack example");

    // At a phone's width.
    let phone = browser.page_with_headers("phone", Viewport::PHONE, &auth).unwrap();
    assert_eq!(phone.goto(&format!("{}/ui/runs", broker.addr)).unwrap(), 200);
    check_page(&phone, "/ui/runs on a phone", "Runs");
    phone.screenshot(&shots.join("console-runs-phone.png"), false).unwrap();

    // Without the token: the sign-in page, itself accessible (a separate cookie jar, no header).
    let anonymous = browser.page("anonymous", Viewport::DESKTOP).unwrap();
    assert_eq!(anonymous.goto(&format!("{}/ui/runs", broker.addr)).unwrap(), 401);
    check_page_but_console(&anonymous, "the sign-in page", "Sign in to Keyward");
    let errors = anonymous.console_errors().unwrap();
    assert!(errors.len() == 1 && errors[0].contains("status of 401"), "only the page's own 401: {errors:?}");

    // The checks above can fail: under the console's own `default-src 'none'`, axe-core still runs
    // and finds a page with no language and no title, and a blocked inline style is reported.
    let canary = browser.page("canary", Viewport::DESKTOP).unwrap();
    canary
        .goto("data:text/html,<!DOCTYPE html><meta http-equiv=Content-Security-Policy content=\"default-src 'none'\"><style>b{}</style><p>x")
        .unwrap();
    let found: Vec<_> = canary.axe().unwrap().into_iter().filter(|v| v.is_serious()).map(|v| v.id).collect();
    assert!(found.contains(&"html-has-lang".to_owned()) && found.contains(&"document-title".to_owned()), "{found:?}");
    assert!(!canary.csp_violations().unwrap().is_empty(), "a blocked inline style is reported");
    // And a page that never shows what is waited for fails in bounded time, with Playwright's word.
    match canary.wait_for_text("h1", "never", Duration::from_millis(300)) {
        Err(BrowserError::Command { message, .. }) => assert!(message.contains("Timeout 300ms"), "{message}"),
        other => panic!("waiting for text that never comes: {:?}", other.map(drop)),
    }
}
