//! A small HTTP client for commands that talk to a running broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::Connection;
use super::output::outln;

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

/// Where the API token comes from, strongest first: what was typed on this command line beats
/// what the shell exported (docs/api.md, "CLI connection").
#[derive(Debug, PartialEq, Eq)]
enum TokenSource {
    /// `--token-file`.
    FlagFile(PathBuf),
    /// `KEYWARD_TOKEN` (never printed).
    Env,
    /// `KEYWARD_TOKEN_FILE`.
    EnvFile(PathBuf),
}

fn api_token_source(flag: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Option<TokenSource> {
    if let Some(path) = flag {
        return Some(TokenSource::FlagFile(path.to_owned()));
    }
    if env("KEYWARD_TOKEN").map(Zeroizing::new).is_some_and(|token| !token.trim().is_empty()) {
        return Some(TokenSource::Env);
    }
    env("KEYWARD_TOKEN_FILE").filter(|path| !path.trim().is_empty()).map(|path| TokenSource::EnvFile(path.into()))
}

fn read_token_file(path: &Path, named_by: &str) -> anyhow::Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read API token file {} ({named_by})", path.display()))?,
    );
    Ok(Zeroizing::new(text.trim().to_owned()))
}

impl Client {
    /// Builds a client from `--addr`/`KEYWARD_ADDR` and, in this order, `--token-file`,
    /// `KEYWARD_TOKEN` or `KEYWARD_TOKEN_FILE`.
    pub(super) fn new(connection: &Connection, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let token = match api_token_source(connection.token_file.as_deref(), env) {
            Some(TokenSource::FlagFile(path)) => read_token_file(&path, "--token-file")?,
            Some(TokenSource::Env) => {
                let token = Zeroizing::new(env("KEYWARD_TOKEN").unwrap_or_default());
                Zeroizing::new(token.trim().to_owned())
            }
            Some(TokenSource::EnvFile(path)) => read_token_file(&path, "KEYWARD_TOKEN_FILE")?,
            None => match super::login::session_file(env).filter(|file| file.exists()) {
                Some(file) => read_token_file(&file, "the session `keyward login` keeps")?,
                None => bail!(
                    "no API token: pass --token-file, set KEYWARD_TOKEN or KEYWARD_TOKEN_FILE (`keyward dev` prints \
                     the export lines), or sign in with `keyward login`"
                ),
            },
        };
        Self::with_token(connection, token)
    }

    /// A client presenting the CLI token kept in `file` (`keyward logout`).
    pub(super) fn from_session(connection: &Connection, file: &Path) -> anyhow::Result<Self> {
        Self::with_token(connection, read_token_file(file, "the session `keyward login` keeps")?)
    }

    fn with_token(connection: &Connection, token: Zeroizing<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base: connection.addr.trim_end_matches('/').to_owned(), token })
    }

    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    pub(super) async fn post(&self, path: &str, body: &impl Serialize) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub(super) async fn patch(&self, path: &str, body: &impl Serialize) -> anyhow::Result<Value> {
        self.send(self.http.patch(self.url(path)).json(body)).await
    }

    pub(super) async fn put(&self, path: &str, body: &impl Serialize) -> anyhow::Result<Value> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    pub(super) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `GET` of a body that is not the API's JSON (a Terraform state), returned as it came.
    pub(super) async fn get_bytes(&self, path: &str) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let response = self.reach(self.http.get(self.url(path))).await?;
        if !response.status().is_success() {
            return Err(failure(response).await);
        }
        let body = response.bytes().await.map_err(|e| anyhow!("reading the broker's answer: {e}"))?;
        Ok(Zeroizing::new(body.to_vec()))
    }

    /// `POST` of a body that is not JSON (a Terraform state); the answer is the API's JSON.
    pub(super) async fn post_bytes(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let request =
            self.http.post(self.url(path)).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn reach(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        request.bearer_auth(self.token.as_str()).send().await.map_err(|e| {
            anyhow!("cannot reach the broker at {}: {e} (is it running? is KEYWARD_ADDR right?)", self.base)
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = self.reach(request).await?;
        if !response.status().is_success() {
            return Err(failure(response).await);
        }
        Ok(response.json().await.unwrap_or(Value::Null))
    }
}

/// The API's error answer as an error: its description, code and status.
async fn failure(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = text(&body, "error");
    let description = text(&body, "error_description");
    anyhow!("{description} ({code}, HTTP {})", status.as_u16())
}

/// The string at `key` of a JSON object, or `""`.
pub(super) fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The array at `key` of a JSON object, or nothing.
pub(super) fn items<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// Prints `value` as one JSON document.
pub(super) fn print_json(value: &Value) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// A path segment with everything but unreserved characters percent-encoded.
pub(super) fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_flag_wins_over_both_variables() {
        let env = env_of(&[("KEYWARD_TOKEN", "kw_env"), ("KEYWARD_TOKEN_FILE", "/env/file")]);
        let source = api_token_source(Some(Path::new("/flag/file")), &env);
        assert_eq!(source, Some(TokenSource::FlagFile(PathBuf::from("/flag/file"))));
    }

    #[test]
    fn the_token_variable_wins_over_the_file_variable() {
        let env = env_of(&[("KEYWARD_TOKEN", "kw_env"), ("KEYWARD_TOKEN_FILE", "/env/file")]);
        assert_eq!(api_token_source(None, &env), Some(TokenSource::Env));
        let env = env_of(&[("KEYWARD_TOKEN", "  "), ("KEYWARD_TOKEN_FILE", "/env/file")]);
        assert_eq!(api_token_source(None, &env), Some(TokenSource::EnvFile(PathBuf::from("/env/file"))));
        assert_eq!(api_token_source(None, &env_of(&[])), None);
    }
}
