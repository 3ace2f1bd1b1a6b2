//! moto's STS server: answers `AssumeRoleWithWebIdentity` with the wire shape and expiry of real
//! STS, and **validates nothing** in the token (DESIGN.md §9). Tests therefore also read moto's
//! request recording to assert exactly what the broker sent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::{eventually, free_addr, http, venv};

/// A running `moto_server`, killed on drop.
#[allow(missing_debug_implementations)]
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    recording: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One STS request as moto received it, form fields decoded.
#[derive(Debug)]
pub struct StsRequest {
    /// `Action`, `RoleArn`, `RoleSessionName`, `WebIdentityToken`, `DurationSeconds`, …
    pub fields: Vec<(String, String)>,
}

impl StsRequest {
    /// A form field's value.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Moto {
    /// Starts moto on a free loopback port with request recording on.
    pub async fn start(dir: &Path) -> Self {
        let addr = free_addr();
        let recording = dir.join("moto-recording.jsonl");
        let child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).expect("moto log"))
            .spawn()
            .expect("spawn moto_server");
        let moto = Self { child, endpoint: format!("http://{addr}"), recording };
        let client = http();
        let url = format!("{}/moto-api/recorder/start-recording", moto.endpoint);
        eventually("moto to start", Duration::from_secs(60), || {
            let request = client.post(&url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
        })
        .await;
        moto
    }

    /// Every STS request moto has received since it started.
    pub fn sts_requests(&self) -> Vec<StsRequest> {
        let text = std::fs::read_to_string(&self.recording).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .map(|entry| {
                let body = entry["body"].as_str().unwrap_or_default();
                let body = if entry["body_encoded"].as_bool() == Some(true) {
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default())
                        .unwrap_or_default()
                } else {
                    body.to_owned()
                };
                StsRequest { fields: form_urlencoded(&body) }
            })
            .filter(|r| r.field("Action").is_some())
            .collect()
    }
}

fn form_urlencoded(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
