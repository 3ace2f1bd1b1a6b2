//! Signing in to the console with `keyward console`'s one-time link, and its forms (docs/console.md)
//! over real HTTP against `keyward dev`: a link works once; the session it opens acts as its API
//! token, ends when the token is revoked or on sign-out; a form without the session's CSRF token
//! changes nothing; a run's author gets no approve button and is refused one; a reviewer approves
//! from the run page and the run applies.

use keyward_tests::broker::Broker;
use keyward_tests::console_session::{client as browser, get, link as console_link, open as sign_in, post};
use reqwest::header::{LOCATION, SET_COOKIE};
use serde_json::Value;

fn json(output: &keyward_tests::broker::Output) -> Value {
    assert!(output.success, "{}{}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap()
}

/// The name of the first event a server-sent event stream sends.
async fn first_event(mut stream: reqwest::Response) -> String {
    let mut text = String::new();
    while let Some(bytes) = stream.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&bytes));
        if let Some(name) = text.lines().find_map(|line| line.strip_prefix("event: ")) {
            return name.to_owned();
        }
    }
    panic!("the stream ended without an event: {text:?}");
}

/// The audit log's entries of `kind` (`keyward audit tail --json` prints JSON lines).
fn kinds(broker: &Broker, kind: &str) -> Vec<Value> {
    let tail = broker.cli(&["audit", "tail", "--kind", kind, "--json"]);
    assert!(tail.success, "{}", tail.stderr);
    tail.stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_time_link_signs_a_token_in_and_forms_need_the_sessions_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;

    // `keyward dev` printed a link at start; it signs the admin token in, once.
    let printed = keyward_tests::console_session::printed_link(&broker);
    let admin = sign_in(&printed).await;
    let (status, page) = get(&broker, &admin, "/ui/runs").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Signed in as token bootstrap-admin"), "{page}");
    let again = browser().get(&printed).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 401, "a link works once");
    let page = again.text().await.unwrap();
    assert!(page.contains("already used, has expired, or never existed"), "{page}");
    for bad in ["kwl_nope", "kws_not-a-link", ""] {
        let response = browser().get(format!("{}/ui/sign-in?link={bad}", broker.addr)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{bad}");
        assert!(response.headers().get(SET_COOKIE).is_none(), "no cookie for a bad link");
    }

    // The runs list follows changes: its event stream says `changed` when a run is submitted.
    let stream = browser()
        .get(format!("{}/ui/runs/events?stack=example", broker.addr))
        .header("cookie", &admin.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("text/event-stream"));
    let changed = tokio::spawn(first_event(stream));

    // A run that waits for one review (env=staging), submitted by the admin token.
    let labelled = broker.cli(&["stack", "update", "example", "--label", "env=staging"]);
    assert!(labelled.success, "{}", labelled.stderr);
    let submitted = broker.cli(&["run", "submit", "--stack", "example", "--wait", "--json"]);
    assert_eq!(submitted.code, Some(3), "waits for approval: {}{}", submitted.stdout, submitted.stderr);
    let run: Value = serde_json::from_str(&submitted.stdout).unwrap();
    let id = run["id"].as_str().unwrap();
    let path = format!("/ui/runs/{id}");
    let review = format!("{path}/review");
    let event = tokio::time::timeout(std::time::Duration::from_secs(30), changed).await.unwrap().unwrap();
    assert_eq!(event, "changed", "the list's stream saw the new run");

    // Its author sees no approve button, and is refused one even when the form is forged.
    let (_, page) = get(&broker, &admin, &path).await;
    assert!(page.contains("your approval would not count") && !page.contains(r#"value="approve""#), "{page}");
    let (status, _, page) = post(&broker, &admin, &review, &[("csrf", &admin.csrf), ("decision", "approve")]).await;
    assert_eq!(status, 403, "{page}");

    // A reviewer's session, from their own token's link.
    let reviewer = json(&broker.cli(&["token", "create", "alice-reviewer", "--role", "reviewer", "--json"]));
    let reviewer_token = reviewer["token"].as_str().unwrap().to_owned();
    let alice = sign_in(&console_link(&broker, &reviewer_token)).await;
    let (_, page) = get(&broker, &alice, &path).await;
    let field = format!(r#"name="csrf" value="{}""#, alice.csrf);
    assert!(page.contains(&field) && page.contains(r#"value="approve""#), "{page}");

    // Without the session's CSRF token (missing, another session's), nothing is reviewed.
    for csrf in ["", admin.csrf.as_str(), "forged"] {
        let (status, _, page) = post(&broker, &alice, &review, &[("csrf", csrf), ("decision", "approve")]).await;
        assert_eq!(status, 403, "{csrf:?}: {page}");
        assert!(page.contains("X-Keyward-CSRF"), "{page}");
    }
    let shown = json(&broker.cli(&["run", "show", id, "--json"]));
    assert!(shown["reviews"].as_array().unwrap().is_empty(), "{shown}");

    // With it: approved, back to the run page (post/redirect/get), and the run applies.
    let form = [("csrf", alice.csrf.as_str()), ("decision", "approve"), ("comment", "<b>ship it</b>")];
    let (status, headers, body) = post(&broker, &alice, &review, &form).await;
    assert_eq!(status, 303, "{body}");
    assert_eq!(headers.get(LOCATION).and_then(|v| v.to_str().ok()), Some(path.as_str()));
    let followed = broker.cli(&["run", "logs", id, "--follow"]);
    assert!(followed.success, "{}", followed.stderr);
    let waited = json(&broker.cli(&["run", "show", id, "--json"]));
    assert_eq!(waited["state"], "finished", "{waited}");
    assert_eq!(waited["reviews"][0]["by"], "alice-reviewer", "{waited}");
    assert_eq!(waited["detail"], "approved by alice-reviewer", "no longer waiting for approval: {waited}");
    let (_, page) = get(&broker, &alice, &path).await;
    assert!(page.contains("&lt;b&gt;ship it&lt;/b&gt;") && page.contains("(counted)"), "{page}");
    for moment in [
        "created (deploy)",
        "planning → planned",
        "approve by alice-reviewer",
        "planned → applying",
        "apply job succeeded",
    ] {
        assert!(page.contains(moment), "the timeline has {moment:?}: {page}");
    }
    let (status, _, _) = post(&broker, &alice, &review, &[("csrf", &alice.csrf), ("decision", "approve")]).await;
    assert_eq!(status, 409, "a finished run takes no review");

    // The list filters by state, kind, pull request and submitter, in the database.
    let (_, page) = get(&broker, &alice, "/ui/runs?state=finished&kind=deploy&submitter=bootstrap-admin").await;
    assert!(page.contains(&format!("/ui/runs/{id}")), "{page}");
    for miss in ["state=planned", "kind=proposed", "submitter=alice-reviewer", "pull_request=99"] {
        let (status, page) = get(&broker, &alice, &format!("/ui/runs?{miss}")).await;
        assert_eq!(status, 200, "{page}");
        assert!(!page.contains(&format!("/ui/runs/{id}")) && page.contains("No runs match."), "{miss}: {page}");
    }
    let (status, page) = get(&broker, &alice, "/ui/runs?state=bogus").await;
    assert_eq!(status, 400, "an unknown state is an error, not an empty list: {page}");
    let has = |args: &[&str]| {
        let listed = json(&broker.cli(&[&["run", "list", "--json"], args].concat()));
        listed["runs"].as_array().unwrap().iter().any(|r| r["id"] == id)
    };
    assert!(has(&["--state", "finished", "--kind", "deploy", "--submitter", "bootstrap-admin"]), "the CLI filters too");
    assert!(!has(&["--state", "planned"]) && !has(&["--pr", "99"]));

    // A whole token is traced by its jti: posted in the body (with the CSRF token), never shown.
    let minted = json(&broker.cli(&[
        "token",
        "mint",
        "--stack",
        "example",
        "--run",
        "run-t",
        "--phase",
        "plan",
        "--audience",
        "sts.amazonaws.com",
        "--json",
    ]));
    let (token, jti) = (minted["token"].as_str().unwrap(), minted["claims"]["jti"].as_str().unwrap());
    let (status, _, page) = post(&broker, &admin, "/ui/audit", &[("csrf", "forged"), ("token", token)]).await;
    assert_eq!(status, 403, "{page}");
    let (status, _, page) = post(&broker, &admin, "/ui/audit", &[("csrf", &admin.csrf), ("token", token)]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!(r#"name="key" value="{jti}""#)) && page.contains("token.minted"), "{page}");
    assert!(!page.contains(token), "the token itself is never shown");
    let (status, page) = get(&broker, &admin, &format!("/ui/audit?key={token}")).await;
    assert!(status == 200 && page.contains(jti) && !page.contains(token), "a token pasted in the address: {page}");
    let (status, _, _) = post(&broker, &admin, "/ui/audit", &[("csrf", &admin.csrf), ("token", "not.a-token")]).await;
    assert_eq!(status, 400);

    // The audit log names the token and the session, never a secret.
    let signed_in = kinds(&broker, "console.signed_in");
    assert_eq!(signed_in.len(), 2, "{signed_in:?}");
    let text = serde_json::to_string(&signed_in).unwrap();
    assert!(!text.contains("kwc_") && !text.contains("kwl_") && text.contains("alice-reviewer"), "{text}");

    // Sign-out needs the token too; then the session is over.
    let (status, _, _) = post(&broker, &alice, "/ui/sign-out", &[("csrf", "forged")]).await;
    assert_eq!(status, 403);
    let (status, headers, _) = post(&broker, &alice, "/ui/sign-out", &[("csrf", &alice.csrf)]).await;
    assert_eq!(status, 200);
    assert!(headers.get_all(SET_COOKIE).iter().any(|c| c.to_str().unwrap().starts_with("keyward_session=;")));
    let (status, _) = get(&broker, &alice, "/ui/runs").await;
    assert_eq!(status, 401, "signed out");

    // Revoking the token ends its console sessions at once.
    let (status, _) = get(&broker, &admin, "/ui/runs").await;
    assert_eq!(status, 200);
    let bob = json(&broker.cli(&["token", "create", "bob", "--role", "reviewer", "--json"]));
    let bob_session = sign_in(&console_link(&broker, bob["token"].as_str().unwrap())).await;
    assert_eq!(get(&broker, &bob_session, "/ui/runs").await.0, 200);
    assert!(broker.cli(&["token", "revoke-api", "--name", "bob"]).success);
    assert_eq!(get(&broker, &bob_session, "/ui/runs").await.0, 401, "the token's revocation ends its session");
}
