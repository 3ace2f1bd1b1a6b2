//! A small HTTP client for commands that talk to a running broker.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use super::Connection;

pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: Zeroizing<String>,
}

impl Client {
    /// Builds a client from `--addr`/`KEYWARD_ADDR` and `KEYWARD_TOKEN` or `--token-file`/`KEYWARD_TOKEN_FILE`.
    pub(super) fn new(connection: &Connection, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let token = match (env("KEYWARD_TOKEN"), &connection.token_file) {
            (Some(token), _) if !token.trim().is_empty() => Zeroizing::new(token.trim().to_owned()),
            (_, Some(path)) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read API token file {}", path.display()))?,
                );
                Zeroizing::new(text.trim().to_owned())
            }
            _ => bail!("no API token: set KEYWARD_TOKEN or KEYWARD_TOKEN_FILE (`keyward dev` prints the export lines)"),
        };
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

    pub(super) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.bearer_auth(self.token.as_str()).send().await.map_err(|e| {
            anyhow!("cannot reach the broker at {}: {e} (is it running? is KEYWARD_ADDR right?)", self.base)
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let code = text(&body, "error");
        let description = text(&body, "error_description");
        bail!("{description} ({code}, HTTP {})", status.as_u16())
    }
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
    println!("{}", serde_json::to_string_pretty(value)?);
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
