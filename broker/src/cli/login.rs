//! `keyward login`, `keyward logout`, `keyward whoami`: a person's sign-in from the command line
//! (docs/access.md, "CLI sign-in").
//!
//! `login` listens on a loopback port, sends the browser to the broker's `/auth/login` with that
//! port's `/callback` and the S256 challenge of a verifier only this process knows; after the
//! provider, the broker sends the browser to the loopback URL with a one-time grant, which is
//! worth nothing without the verifier: `login` redeems both at `/auth/cli/token` for a bearer
//! token bound to the person, kept in `~/.config/keyward/session` (0600) and used by every
//! command when no API token is given.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::Zeroizing;

use super::Connection;
use super::client::{Client, print_json, text};
use super::output::outln;
use crate::sso::secrets;

/// How long `login` waits for the browser.
const WAIT: Duration = Duration::from_secs(300);

/// `keyward login`.
#[derive(Debug, Args)]
pub(super) struct LoginArgs {
    /// Print the URL to open instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    #[command(flatten)]
    connection: Connection,
}

/// `keyward logout` and `keyward whoami`.
#[derive(Debug, Args)]
pub(super) struct SessionArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connection: Connection,
}

/// Where the CLI token is kept: `$XDG_CONFIG_HOME/keyward/session`, else `~/.config/keyward/session`.
pub(super) fn session_file(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let config = env("XDG_CONFIG_HOME").filter(|dir| !dir.trim().is_empty()).map(PathBuf::from).or_else(|| {
        env("HOME").filter(|home| !home.trim().is_empty()).map(|home| PathBuf::from(home).join(".config"))
    })?;
    Some(config.join("keyward").join("session"))
}

/// `keyward login [--no-browser]`.
pub(super) async fn login(args: LoginArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let file = session_file(env).ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback")?;
    let redirect = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let verifier = Zeroizing::new(secrets::random_b64());
    let base = args.connection.addr().trim_end_matches('/').to_owned();
    let mut url = reqwest::Url::parse(&format!("{base}/auth/login")).context("KEYWARD_ADDR is not a URL")?;
    url.query_pairs_mut()
        .append_pair("cli_redirect", &redirect)
        .append_pair("cli_challenge", &secrets::challenge(&verifier));
    if args.no_browser || !open_browser(url.as_str()) {
        outln!("Open this URL in a browser to sign in:\n{url}")?;
    }
    std::io::stdout().flush().ok();
    let grant = tokio::time::timeout(WAIT, receive_grant(&listener))
        .await
        .map_err(|_| anyhow!("no sign-in arrived within 5 minutes; run `keyward login` again"))??;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let response = http
        .post(format!("{base}/auth/cli/token"))
        .json(&json!({ "grant": grant.as_str(), "verifier": verifier.as_str() }))
        .send()
        .await
        .with_context(|| format!("cannot reach the broker at {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("the broker refused the sign-in: {} (HTTP {})", text(&body, "error_description"), status.as_u16());
    }
    let token = Zeroizing::new(text(&body, "token").to_owned());
    write_session(&file, &token)?;
    outln!(
        "Signed in; the session is in {} until {}.",
        file.display(),
        body.get("expires_at").unwrap_or(&Value::Null)
    )?;
    Ok(())
}

/// Accepts loopback connections until one is `GET /callback?grant=…`; answers the browser.
async fn receive_grant(listener: &tokio::net::TcpListener) -> anyhow::Result<Zeroizing<String>> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut head = vec![0u8; 8192];
        let mut read = 0;
        while read < head.len() && !head.get(..read).unwrap_or_default().windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(head.get_mut(read..).unwrap_or_default()).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let text = String::from_utf8_lossy(head.get(..read).unwrap_or_default()).into_owned();
        let grant = grant_of(&text);
        let page = if grant.is_some() { "Signed in to Keyward; you can close this window." } else { "Not found." };
        let status = if grant.is_some() { "200 OK" } else { "404 Not Found" };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{page}",
            page.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        if let Some(grant) = grant {
            return Ok(grant);
        }
    }
}

/// The `grant` of a request line `GET /callback?grant=… HTTP/1.1`.
fn grant_of(request: &str) -> Option<Zeroizing<String>> {
    let target = request.lines().next()?.strip_prefix("GET ")?.split(' ').next()?;
    let url = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok()?;
    if url.path() != "/callback" {
        return None;
    }
    url.query_pairs().find(|(k, _)| k == "grant").map(|(_, v)| Zeroizing::new(v.into_owned()))
}

pub(super) fn open_browser(url: &str) -> bool {
    let opener = if cfg!(target_os = "macos") { "open" } else { "xdg-open" };
    std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

fn write_session(file: &std::path::Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if let Some(dir) = file.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let _ = std::fs::remove_file(file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    out.write_all(format!("{token}\n").as_bytes())?;
    Ok(())
}

/// `keyward logout`: revokes the CLI token at the broker and forgets it.
pub(super) async fn logout(args: SessionArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let file = session_file(env).ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    if !file.exists() {
        bail!("not signed in ({} does not exist)", file.display());
    }
    let result = Client::from_session(&args.connection, &file)?.post("/auth/logout", &json!({})).await;
    std::fs::remove_file(&file).with_context(|| format!("cannot remove {}", file.display()))?;
    match result {
        Ok(body) if args.json => print_json(&body),
        Ok(_) => Ok(outln!("Signed out.")?),
        // Already expired or revoked at the broker: forgetting it is all there is to do.
        Err(error) => Ok(outln!("Signed out here; the broker said: {error}")?),
    }
}

/// `keyward whoami`: who the broker takes the caller for.
pub(super) async fn whoami(args: SessionArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let me = Client::new(&args.connection, env)?.get("/v1/me").await?;
    if args.json {
        return print_json(&me);
    }
    if text(&me, "kind") == "person" {
        let groups: Vec<&str> = super::client::items(&me, "groups").filter_map(Value::as_str).collect();
        outln!("{} <{}> ({})", text(&me, "name"), text(&me, "email"), text(&me, "id"))?;
        outln!("groups: {}\nsigned in with: {}", groups.join(", "), text(&me, "via"))?;
    } else {
        outln!("API token `{}` with scope `{}`", text(&me, "name"), text(&me, "scope"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_comes_only_from_the_callback_path() {
        let grant = grant_of("GET /callback?grant=kws_abc HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(grant.as_deref().map(String::as_str), Some("kws_abc"));
        assert!(grant_of("GET /favicon.ico HTTP/1.1\r\n\r\n").is_none());
        assert!(grant_of("POST /callback?grant=x HTTP/1.1\r\n\r\n").is_none());
    }

    #[test]
    fn the_session_file_follows_xdg() {
        let env = |name: &str| (name == "HOME").then(|| "/home/a".to_owned());
        assert_eq!(session_file(&env), Some(PathBuf::from("/home/a/.config/keyward/session")));
        let env = |name: &str| Some(if name == "HOME" { "/home/a" } else { "/xdg" }.to_owned());
        assert_eq!(session_file(&env), Some(PathBuf::from("/xdg/keyward/session")));
    }
}
