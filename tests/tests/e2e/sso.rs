//! Sign-in for people against a real identity provider, OpenBao's OIDC provider: a userpass user
//! signs in through the browser flow (the test plays the browser), `/v1/me` shows who they are,
//! sign-out revokes the session; `keyward login --no-browser` driven headless; and bad input, each
//! refused with nothing changed.

use std::path::Path;

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::free_addr;
use keyward_tests::openbao::OpenBao;
use keyward_tests::openbao_oidc::OidcProvider;
use reqwest::StatusCode;
use serde_json::Value;

/// A browser: follows nothing by itself, keeps the broker's cookies.
struct Browser {
    client: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new() -> Self {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { client, cookies: Vec::new() }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// GET `url` with the cookies; keeps the cookies set; returns status, Location, Set-Cookie lines.
    async fn get(&mut self, url: &str) -> (StatusCode, String, Vec<String>, Value) {
        let response = self.client.get(url).header("cookie", self.cookie_header()).send().await.unwrap();
        self.take(response).await
    }

    async fn post(&mut self, url: &str, csrf: Option<&str>) -> (StatusCode, String, Vec<String>, Value) {
        let mut request = self.client.post(url).header("cookie", self.cookie_header());
        if let Some(csrf) = csrf {
            request = request.header("x-keyward-csrf", csrf);
        }
        let response = request.send().await.unwrap();
        self.take(response).await
    }

    /// POST `body` as JSON with the cookies and the CSRF header.
    async fn post_json(&mut self, url: &str, csrf: &str, body: Value) -> (StatusCode, String, Vec<String>, Value) {
        let request =
            self.client.post(url).header("cookie", self.cookie_header()).header("x-keyward-csrf", csrf).json(&body);
        let response = request.send().await.unwrap();
        self.take(response).await
    }

    async fn take(&mut self, response: reqwest::Response) -> (StatusCode, String, Vec<String>, Value) {
        let status = response.status();
        let location = response.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let set: Vec<String> =
            response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for line in &set {
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
        let body = response.json().await.unwrap_or(Value::Null);
        (status, location, set, body)
    }
}

/// A broker serving `[sso]` against `provider`, listening at a reserved loopback address.
async fn broker_with_sso(dir: &Path, bao: &OpenBao, client: &str, extra: &str) -> (Broker, OidcProvider) {
    let addr = free_addr();
    let redirect = format!("http://{addr}/auth/callback");
    let provider = bao.oidc_provider("people", client, &redirect).await;
    let secret = dir.join(format!("{client}.secret"));
    std::fs::write(&secret, &provider.client_secret).unwrap();
    let rest = format!(
        "[sso]\nissuer = \"{}\"\nclient_id = \"{}\"\nclient_secret_file = \"{}\"\n{extra}\n",
        provider.issuer,
        provider.client_id,
        secret.display()
    );
    let data_dir = dir.join(client);
    let config = dir.join(format!("{client}.toml"));
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    (broker, provider)
}

/// Rows in the broker's SQLite database.
async fn count(broker: &Broker, table: &str) -> i64 {
    let url = format!("sqlite://{}?mode=rw", broker.data_dir.join("keyward.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let sql = format!("SELECT COUNT(*) AS n FROM {table}");
    let n: i64 = sqlx::Row::get(&sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_one(&pool).await.unwrap(), "n");
    pool.close().await;
    n
}

/// Runs SQL against the broker's SQLite database (to tamper with a pending login, as an
/// attacker who could would).
async fn execute(broker: &Broker, sql: &str) {
    let url = format!("sqlite://{}?mode=rw", broker.data_dir.join("keyward.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&pool).await.unwrap();
    pool.close().await;
}

fn audit_kinds(broker: &Broker, kind: &str) -> Vec<Value> {
    let out = broker.cli(&["audit", "tail", "--kind", kind, "--json"]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Starts a sign-in, lets the provider authorize `user_token`; returns the callback URL.
async fn authorized_callback(browser: &mut Browser, broker: &Broker, bao: &OpenBao, user_token: &str) -> String {
    let (status, location, _, body) = browser.get(&format!("{}/auth/login?return_to=/v1/me", broker.addr)).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    assert!(location.contains("code_challenge_method=S256") && location.contains("nonce="), "{location}");
    let (code, state) = bao.authorize(&location, user_token).await;
    format!("{}/auth/callback?code={code}&state={state}", broker.addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_sees_themself_and_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let (broker, provider) = broker_with_sso(dir.path(), &bao, "keyward", "").await;
    let alice = bao.oidc_user("alice", &["platform"]).await;

    let mut browser = Browser::new();
    let callback = authorized_callback(&mut browser, &broker, &bao, &alice).await;
    let (status, location, set, body) = browser.get(&callback).await;
    assert_eq!((status, location.as_str()), (StatusCode::FOUND, "/v1/me"), "{body}");
    let session_line = set.iter().find(|l| l.starts_with("keyward_session=")).unwrap();
    assert!(
        session_line.contains("HttpOnly") && session_line.contains("SameSite=Lax") && session_line.contains("Path=/")
    );
    assert!(!session_line.contains("Secure"), "a loopback broker serves plain http: {session_line}");
    assert!(!set.iter().find(|l| l.starts_with("keyward_csrf=")).unwrap().contains("HttpOnly"));

    let (status, _, _, me) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["kind"].as_str(), me["via"].as_str()), (Some("person"), Some("session")));
    assert_eq!(me["issuer"], provider.issuer.as_str());
    assert!(me["subject"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!((me["name"].as_str(), me["email"].as_str()), (Some("alice"), Some("alice@example.com")));
    assert_eq!(me["groups"], serde_json::json!(["platform"]));

    // Bound to nothing, a person may do nothing else.
    let stacks = format!("{}/v1/stacks", broker.addr);
    let (status, _, _, refusal) = browser.get(&stacks).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let refused = refusal["error_description"].as_str().unwrap();
    assert!(refused.contains("signed in as alice <alice@example.com>, it holds no role"), "{refused}");
    assert_eq!(me["roles"], serde_json::json!({}));
    // Their group bound to a role: it holds at once (bindings are read per request), and no longer
    // once unbound.
    let bind = broker.cli(&["space", "bind", "root", "--role", "viewer", "--group", "platform"]);
    assert!(bind.success, "{}", bind.stderr);
    let (status, _, _, listed) = browser.get(&stacks).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let (_, _, _, me) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    assert_eq!(me["roles"], serde_json::json!({"root": "viewer"}), "{me}");
    // The web console takes the same session (docs/console.md).
    let cookie = format!("keyward_session={}", browser.cookie("keyward_session").unwrap());
    let console = reqwest::Client::new().get(format!("{}/ui/runs", broker.addr)).header("cookie", cookie);
    let console = console.send().await.unwrap();
    assert_eq!(console.status(), StatusCode::OK);
    let page = console.text().await.unwrap();
    assert!(page.contains("Signed in as alice") && page.contains("<h1>Runs</h1>"), "{page}");
    let unbind = broker.cli(&["space", "unbind", "root", "--role", "viewer", "--group", "platform"]);
    assert!(unbind.success, "{}", unbind.stderr);
    let (status, ..) = browser.get(&stacks).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let signed_in = audit_kinds(&broker, "person.signed_in");
    assert_eq!(signed_in.len(), 1);
    assert_eq!(signed_in[0]["entry"]["details"]["groups"], serde_json::json!(["platform"]), "{}", signed_in[0]);
    assert!(!signed_in[0].to_string().contains(browser.cookie("keyward_session").unwrap()), "never the secret");

    // The same callback again: the code and the state are spent.
    let sessions = count(&broker, "person_sessions").await;
    let mut replayer = Browser::new();
    let (status, _, set, body) = replayer.get(&callback).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(set.is_empty() && body["error_description"].as_str().unwrap().contains("unknown or already used"));
    assert_eq!(count(&broker, "person_sessions").await, sessions);

    // Sign-out needs the CSRF header, equal to the cookie.
    let url = format!("{}/auth/logout", broker.addr);
    let (status, ..) = browser.post(&url, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF header");
    let (status, ..) = browser.post(&url, Some("not-the-cookie")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a wrong CSRF header");
    let (status, ..) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    assert_eq!(status, StatusCode::OK, "the refused sign-outs changed nothing");
    let session = browser.cookie("keyward_session").unwrap().to_owned();
    let csrf = browser.cookie("keyward_csrf").unwrap().to_owned();
    let (status, _, set, _) = browser.post(&url, Some(&csrf)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(set.iter().any(|l| l.starts_with("keyward_session=;") && l.contains("Max-Age=0")));
    assert_eq!(audit_kinds(&broker, "person.signed_out").len(), 1);
    // The revoked session is refused even if the browser kept the cookie.
    browser.cookies = vec![("keyward_session".into(), session), ("keyward_csrf".into(), csrf)];
    let (status, ..) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_sign_ins_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let (broker, _) = broker_with_sso(dir.path(), &bao, "keyward", "").await;
    let bob = bao.oidc_user("bob", &[]).await;
    let mut browser = Browser::new();

    for off_site in ["//evil.example", "https://evil.example", "/\\evil.example"] {
        let url = format!("{}/auth/login?return_to={}", broker.addr, urlencode(off_site));
        let (status, location, _, body) = browser.get(&url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{off_site}: {body}");
        assert!(location.is_empty() && body["error_description"].as_str().unwrap().contains("return_to"));
    }
    assert_eq!(count(&broker, "sso_logins").await, 0, "a refused login records nothing");

    // A state the broker never issued.
    let callback = authorized_callback(&mut browser, &broker, &bao, &bob).await;
    let forged = callback.replace("state=", "state=x");
    let (status, _, set, _) = browser.get(&forged).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(set.is_empty());
    assert_eq!(count(&broker, "person_sessions").await, 0);
    // Nobody was proven: no audit entry (DESIGN.md §8.10), only the service log.
    assert!(audit_kinds(&broker, "person.sign_in_failed").is_empty());

    // A pending login whose nonce is not the one the provider was sent.
    execute(&broker, "UPDATE sso_logins SET nonce = 'tampered'").await;
    let (status, _, set, body) = browser.get(&callback).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(set.is_empty() && body["error_description"].as_str().unwrap().contains("nonce"), "{body}");
    assert_eq!(count(&broker, "person_sessions").await, 0);
    let failed = audit_kinds(&broker, "person.sign_in_failed");
    assert_eq!(failed.len(), 1, "the provider vouched for someone: on record");
    assert!(failed[0]["entry"]["details"]["reason"].as_str().unwrap().contains("nonce"));
    assert!(!failed[0].to_string().contains("code="), "never the code");

    // A user in no group signs in, with no groups.
    let callback = authorized_callback(&mut browser, &broker, &bao, &bob).await;
    let (status, ..) = browser.get(&callback).await;
    assert_eq!(status, StatusCode::FOUND);
    let (_, _, _, me) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    assert_eq!((me["name"].as_str(), me["groups"].clone()), (Some("bob"), serde_json::json!([])));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_ends_at_its_absolute_timeout_and_require_groups_refuses_a_groupless_person() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let extra = "absolute_timeout = \"3s\"\nidle_timeout = \"3s\"\nrequire_groups = true";
    let (broker, _) = broker_with_sso(dir.path(), &bao, "short", extra).await;
    let carol = bao.oidc_user("carol", &["ops"]).await;
    let dave = bao.oidc_user("dave", &[]).await;

    let mut browser = Browser::new();
    let callback = authorized_callback(&mut browser, &broker, &bao, &dave).await;
    let (status, _, _, body) = browser.get(&callback).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(count(&broker, "person_sessions").await, 0);

    let callback = authorized_callback(&mut browser, &broker, &bao, &carol).await;
    let (status, ..) = browser.get(&callback).await;
    assert_eq!(status, StatusCode::FOUND);
    let url = format!("{}/v1/me", broker.addr);
    let client = browser.client.clone();
    let cookie = browser.cookie_header();
    // The timeout is 3 s: wait for it to pass by polling, nothing else.
    keyward_tests::eventually("the session to expire", std::time::Duration::from_secs(30), || {
        let request = client.get(&url).header("cookie", cookie.clone()).send();
        async move { (request.await.unwrap().status() == StatusCode::UNAUTHORIZED).then_some(()) }
    })
    .await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn keyward_login_no_browser_driven_headless_then_whoami_and_logout() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let (broker, provider) = broker_with_sso(dir.path(), &bao, "keyward", "").await;
    let erin = bao.oidc_user("erin", &["deployers"]).await;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let home_str = home.to_str().unwrap();

    let mut child = std::process::Command::new(keyward_tests::binary("keyward"))
        .args(["login", "--no-browser"])
        .env_remove("KEYWARD_TOKEN")
        .env_remove("KEYWARD_TOKEN_FILE")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home_str)
        .env("KEYWARD_ADDR", &broker.addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let login_url = lines.by_ref().map(Result::unwrap).find(|l| l.starts_with("http")).expect("the URL to open");
    assert!(login_url.contains("cli_redirect=") && login_url.contains("cli_challenge="), "{login_url}");

    // The test is the browser: broker → provider (as the signed-in user) → broker → loopback.
    let mut browser = Browser::new();
    let (status, authorize, _, _) = browser.get(&login_url).await;
    assert_eq!(status, StatusCode::FOUND);
    let (code, state) = bao.authorize(&authorize, &erin).await;
    let (status, loopback, set, body) =
        browser.get(&format!("{}/auth/callback?code={code}&state={state}", broker.addr)).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    assert!(set.is_empty(), "a CLI sign-in sets no browser cookie");
    assert!(loopback.starts_with("http://127.0.0.1:") && loopback.contains("/callback?grant=kws_"), "{loopback}");
    // The grant alone is worth nothing: it needs the verifier only `keyward login` holds.
    let grant = loopback.split("grant=").nth(1).unwrap().to_owned();
    let stolen = http_post_json(
        &format!("{}/auth/cli/token", broker.addr),
        serde_json::json!({ "grant": grant, "verifier": "A".repeat(43) }),
    )
    .await;
    assert_eq!(stolen, StatusCode::BAD_REQUEST);
    let (status, ..) = browser.get(&loopback).await;
    assert_eq!(status, StatusCode::OK);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let file = home.join(".config/keyward/session");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let env = [("HOME", home_str), ("KEYWARD_ADDR", broker.addr.as_str())];
    let whoami = keyward_tests::broker::keyward(&["whoami", "--json"], &env);
    assert!(whoami.success, "{}", whoami.stderr);
    let me: Value = serde_json::from_str(&whoami.stdout).unwrap();
    assert_eq!((me["via"].as_str(), me["name"].as_str()), (Some("cli_token"), Some("erin")));
    assert_eq!(
        (me["issuer"].as_str(), me["groups"].clone()),
        (Some(provider.issuer.as_str()), serde_json::json!(["deployers"]))
    );
    assert_eq!(audit_kinds(&broker, "person.cli_token_issued").len(), 1);
    // A second redemption of the same grant (the loopback URL replayed) is refused.
    let again = http_post_json(
        &format!("{}/auth/cli/token", broker.addr),
        serde_json::json!({ "grant": grant, "verifier": "x" }),
    )
    .await;
    assert_eq!(again, StatusCode::BAD_REQUEST);

    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let logout = keyward_tests::broker::keyward(&["logout"], &env);
    assert!(logout.success, "{}", logout.stderr);
    assert!(!file.exists());
    let me = reqwest::Client::new().get(format!("{}/v1/me", broker.addr)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "the token was revoked at the broker");
    let whoami = keyward_tests::broker::keyward(&["whoami"], &env);
    assert!(!whoami.success && whoami.stderr.contains("keyward login"), "{}", whoami.stderr);
}

async fn http_post_json(url: &str, body: Value) -> StatusCode {
    reqwest::Client::new().post(url).json(&body).send().await.unwrap().status()
}

/// The trail's human end with a real identity provider: a person signs in (browser flow against
/// OpenBao's OIDC provider), their group is bound to `reviewer` on the stack's space, they approve
/// a run someone else submitted (session cookie + CSRF), the apply gets write credentials from
/// moto's STS, and the run token, the session tags, the run's review record and `keyward audit
/// trace <access key ID>` all name them by `issuer#subject`, as the provider vouched.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_in_person_approves_a_run_and_the_trace_names_them() {
    use keyward_tests::agent::Agent;
    use keyward_tests::git::GitRepo;
    use keyward_tests::moto::Moto;
    const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
    const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/staging-apply";

    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let moto = Moto::start(dir.path()).await;
    let sts = &moto.endpoint;
    let extra = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"staging-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"staging\" }}\n",
        policies = keyward_tests::workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    let (broker, provider) = broker_with_sso(dir.path(), &bao, "keyward", &extra).await;
    let dana = bao.oidc_user("dana", &["release-managers"]).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    let created = broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--label",
        "env=staging",
        "--plan-target",
        "aws:state-read",
        "--apply-target",
        "aws:staging-apply",
    ]);
    assert!(created.success, "{}", created.stderr);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let exec = format!("env | grep '^AWS_' | sort > '{}'/\"$KEYWARD_PHASE\".env", out.display());
    let token = broker.cli(&["pool", "join-token", "default", "--json"]);
    let token: Value = serde_json::from_str(&token.stdout).unwrap();
    let agent = Agent::enroll_and_run(&broker.addr, token["token"].as_str().unwrap(), &dir.path().join("agent"), &exec);
    let bound = broker.cli(&["space", "bind", "root", "--role", "reviewer", "--group", "release-managers"]);
    assert!(bound.success, "{}", bound.stderr);

    // Dana signs in in a browser.
    let mut browser = Browser::new();
    let callback = authorized_callback(&mut browser, &broker, &bao, &dana).await;
    let (status, _, _, body) = browser.get(&callback).await;
    assert_eq!(status, StatusCode::FOUND, "{body}");
    let (_, _, _, me) = browser.get(&format!("{}/v1/me", broker.addr)).await;
    let dana_id = me["id"].as_str().unwrap().to_owned();
    assert_eq!(dana_id, format!("{}#{}", provider.issuer, me["subject"].as_str().unwrap()));

    // The admin token submits; the run waits for one approval (env=staging).
    let submitted = broker.cli(&["run", "submit", "--stack", "network"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run_id = submitted.stdout.trim().to_owned();
    let settled = |states: &'static [&'static str]| {
        let (broker, run_id) = (&broker, run_id.clone());
        keyward_tests::eventually("the run to settle", std::time::Duration::from_secs(60), move || {
            let shown = broker.cli(&["run", "show", &run_id, "--json"]);
            let run: Value = serde_json::from_str(&shown.stdout).unwrap_or(Value::Null);
            let done = run["state"].as_str().is_some_and(|s| states.contains(&s) || s == "failed");
            async move { done.then_some(run) }
        })
    };
    let planned = settled(&["planned"]).await;
    assert_eq!(planned["state"], "planned", "{planned}\n{}", agent.log_text());

    // Dana approves in the browser: the cookie and the CSRF header.
    let csrf = browser.cookie("keyward_csrf").unwrap().to_owned();
    let approve = format!("{}/v1/runs/{run_id}/approve", broker.addr);
    let (status, _, _, body) = browser.post_json(&approve, &csrf, serde_json::json!({"comment": "LGTM"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let finished = settled(&["finished"]).await;
    assert_eq!(finished["state"], "finished", "{finished}\n{}", agent.log_text());
    let review = &finished["reviews"][0];
    assert_eq!((review["by"].as_str(), review["counted"].as_bool()), (Some(dana_id.as_str()), Some(true)));
    assert_eq!(review["reviewer"]["kind"], "person", "{review}");
    assert_eq!(review["reviewer"]["role"], "reviewer", "{review}");
    assert_eq!(review["reviewer"]["groups"], serde_json::json!(["release-managers"]), "{review}");

    // What STS was shown for the apply, and the trace of the apply's key: Dana, as vouched for.
    let apply = std::fs::read_to_string(out.join("apply.env")).unwrap();
    let apply_key = apply.lines().find_map(|l| l.strip_prefix("AWS_ACCESS_KEY_ID=")).unwrap().to_owned();
    let requests = moto.sts_requests();
    let apply_request = requests.iter().find(|r| r.field("RoleArn") == Some(ROLE_WRITE)).expect("an apply STS call");
    let verdict = broker.pyjwt_verify(apply_request.field("WebIdentityToken").unwrap(), "sts.amazonaws.com");
    assert_eq!(verdict["claims"]["approved_by"], serde_json::json!([dana_id]), "{verdict}");
    let trace = broker.cli(&["audit", "trace", &apply_key]);
    assert!(trace.success, "{}", trace.stderr);
    assert!(trace.stdout.contains(&dana_id), "{}", trace.stdout);
    let reviewed = audit_kinds(&broker, "run.reviewed");
    let entry = &reviewed.last().unwrap()["entry"];
    assert_eq!(entry["context"]["actor"], dana_id.as_str(), "{entry}");
    assert_eq!(entry["details"]["reviewer"]["kind"], "person", "{entry}");
}

/// An ID token the provider issued to another client (a broken or hostile provider's answer; a
/// stand-in provider, `FakeIssuer`, gives it, since OpenBao never would) is refused: no session,
/// no cookie, and the refusal is on the audit log (its signature verified, so the provider said it).
/// The same token for this client, with the pending login's nonce, signs in: the refusal was the
/// audience, nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn an_id_token_for_another_client_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let provider = keyward_tests::fake_issuer::FakeIssuer::start().await;
    let secret = dir.path().join("client.secret");
    std::fs::write(&secret, "stand-in-secret").unwrap();
    let addr = free_addr();
    let rest = format!(
        "[sso]\nissuer = \"{}\"\nclient_id = \"keyward\"\nclient_secret_file = \"{}\"\nalgorithms = [\"ES256\"]\n",
        provider.url(),
        secret.display()
    );
    let data_dir = dir.path().join("broker");
    let config = dir.path().join("keyward.toml");
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;

    let sign_in = |audience: &'static str| {
        let (broker, provider) = (&broker, &provider);
        async move {
            let mut browser = Browser::new();
            let (status, location, _, body) = browser.get(&format!("{}/auth/login", broker.addr)).await;
            assert_eq!(status, StatusCode::FOUND, "{body}");
            let url = reqwest::Url::parse(&location).unwrap();
            let param = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
            provider.answer_codes_with(provider.token(serde_json::json!({
                "sub": "mallory", "aud": audience, "nonce": param("nonce"), "iat": now, "exp": now + 300,
                "name": "mallory", "email": "m@example.com",
            })));
            let callback = format!("{}/auth/callback?code=stand-in-code&state={}", broker.addr, param("state"));
            let (status, _, set, body) = browser.get(&callback).await;
            (status, set, body)
        }
    };
    let (status, set, body) = sign_in("another-client").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(set.iter().all(|l| !l.starts_with("keyward_session=")), "no session cookie: {set:?}");
    assert_eq!(count(&broker, "person_sessions").await, 0);
    let failed = audit_kinds(&broker, "person.sign_in_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].to_string().contains("aud"), "{}", failed[0]);

    let (status, set, body) = sign_in("keyward").await;
    assert_eq!(status, StatusCode::FOUND, "the same token for this client signs in: {body}");
    assert!(set.iter().any(|l| l.starts_with("keyward_session=")), "{set:?}");
    assert_eq!(count(&broker, "person_sessions").await, 1);
}
