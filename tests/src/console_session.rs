//! The web console as a browser meets it over plain HTTP (docs/console.md): a one-time sign-in
//! link from `keyward console`, the session and CSRF cookies it sets, and pages and forms asked
//! for with them. No cookie jar and no redirects followed, so each answer is seen as a browser
//! gets it. (Chromium itself is `crate::browser`.)

use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};

use crate::broker::{Broker, keyward};

/// The Content-Security-Policy every console answer must carry (written out here, not taken from
/// the broker, so a change to the broker's is a test failure until this agrees).
pub const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; \
                       form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `GET path` with a bearer `token` (none: anonymous), as a script would: status, headers, body.
pub async fn get_as(broker: &Broker, path: &str, token: Option<&str>) -> (u16, HeaderMap, String) {
    let mut request = client().get(format!("{}{path}", broker.addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.text().await.expect("body"))
}

/// A client that keeps no cookies and follows no redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("HTTP client")
}

/// A signed-in browser: its `Cookie` header and the CSRF token its pages' forms carry.
#[derive(Debug, Clone)]
pub struct Session {
    /// `keyward_session=…; keyward_csrf=…`.
    pub cookie: String,
    /// The `keyward_csrf` cookie's value, which forms repeat in their `csrf` field.
    pub csrf: String,
}

/// `keyward console --json` with `token`: the one-time link, checked to point at the broker.
pub fn link(broker: &Broker, token: &str) -> String {
    let out = keyward(&["console", "--json"], &[("KEYWARD_ADDR", &broker.addr), ("KEYWARD_TOKEN", token)]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let link: serde_json::Value = serde_json::from_str(&out.stdout).expect("keyward console --json");
    let url = link["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with(&format!("{}/ui/sign-in?link=kwl_", broker.addr)), "{link}");
    url
}

/// The link `keyward dev` printed at start: it signs the admin token in.
pub fn printed_link(broker: &Broker) -> String {
    let log = broker.log_text();
    let link = log.split_whitespace().find(|word| word.contains("/ui/sign-in?link=kwl_"));
    link.unwrap_or_else(|| panic!("keyward dev printed no console link:\n{log}")).to_owned()
}

/// Opens `link`: a 303 to the runs with the session (`HttpOnly`, `SameSite=Lax`, `kwc_…`) and
/// CSRF cookies.
pub async fn open(link: &str) -> Session {
    let response = client().get(link).send().await.expect("sign-in");
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(response.headers().get(LOCATION).and_then(|v| v.to_str().ok()), Some("/ui/runs"));
    let cookies: Vec<&str> = response.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).collect();
    let cookie = |name: &str| {
        *cookies.iter().find(|c| c.starts_with(&format!("{name}="))).unwrap_or_else(|| panic!("{cookies:?}"))
    };
    let value = |name: &str| cookie(name).split(';').next().and_then(|p| p.split_once('=')).map(|(_, v)| v.to_owned());
    let session = cookie("keyward_session");
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Lax"),
        "no script reads it, no other site posts with it: {session}"
    );
    let (secret, csrf) = (value("keyward_session").unwrap_or_default(), value("keyward_csrf").unwrap_or_default());
    assert!(secret.starts_with("kwc_"), "{secret}");
    Session { cookie: format!("keyward_session={secret}; keyward_csrf={csrf}"), csrf }
}

/// Signs `token` in as a browser does: [`link`], then [`open`].
pub async fn sign_in(broker: &Broker, token: &str) -> Session {
    open(&link(broker, token)).await
}

/// `GET path` with the session: status and body.
pub async fn get(broker: &Broker, session: &Session, path: &str) -> (u16, String) {
    let response =
        client().get(format!("{}{path}", broker.addr)).header("cookie", &session.cookie).send().await.expect("GET");
    (response.status().as_u16(), response.text().await.expect("body"))
}

/// Posts `form` with the session: status, headers and body.
pub async fn post(broker: &Broker, session: &Session, path: &str, form: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    let response = client()
        .post(format!("{}{path}", broker.addr))
        .header("cookie", &session.cookie)
        .form(form)
        .send()
        .await
        .expect("POST");
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    (status, headers, response.text().await.expect("body"))
}
