//! moto's STS server: answers `AssumeRoleWithWebIdentity` with the wire shape and expiry of real
//! STS, and **validates nothing** in the token (DESIGN.md §9). Tests therefore also read moto's
//! request recording to assert exactly what the broker sent.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;

use crate::{eventually, http, venv};

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
    /// Stops the server until the guard is dropped: connections are accepted, nothing answers.
    pub fn frozen(&self) -> crate::frozen::Frozen {
        crate::frozen::Frozen::stop(self.child.id())
    }

    /// Starts moto on a port the kernel picks (port 0; moto's server prints the one it bound),
    /// with request recording on; `dir` receives its log.
    pub async fn start(dir: &Path) -> Self {
        let recording = dir.join("moto-recording.jsonl");
        let log_path = dir.join("moto.log");
        let mut child = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        // Werkzeug says ` * Running on http://127.0.0.1:PORT` on stderr once it listens; the rest
        // of stderr goes on to the log file.
        let stderr = child.stderr.take().expect("moto's stderr");
        let (found, endpoint) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).expect("moto log");
            let mut found = Some(found);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(url) = line.split("Running on ").nth(1)
                    && let Some(found) = found.take()
                {
                    // The test may have given up waiting: nothing to tell then.
                    let _ = found.send(url.trim().to_owned());
                }
            }
        });
        let endpoint = endpoint.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("moto_server did not say where it listens; see {}", dir.join("moto.log").display())
        });
        let moto = Self { child, endpoint, recording };
        let client = http();
        let url = format!("{}/moto-api/recorder/start-recording", moto.endpoint);
        eventually("moto to start", Duration::from_secs(60), || {
            let request = client.post(&url).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
        })
        .await;
        // Creates the (empty) recording, so a missing file later means a broken recorder, not
        // "no calls".
        let reset = client.post(format!("{}/moto-api/recorder/reset-recording", moto.endpoint)).send().await;
        assert!(reset.is_ok_and(|r| r.status().is_success()), "moto's recorder did not reset");
        assert!(moto.recording.exists(), "moto keeps no recording at {}", moto.recording.display());
        moto
    }

    /// The STS calls moto has received since it started, one per call the broker made. The STS
    /// client retries a transient failure (a loaded machine) with the same request, and every
    /// call carries a web identity token minted for it alone, so repeats of one token are
    /// counted once.
    pub fn sts_requests(&self) -> Vec<StsRequest> {
        let text = std::fs::read_to_string(&self.recording)
            .unwrap_or_else(|e| panic!("moto's recording {}: {e}", self.recording.display()));
        let mut seen = std::collections::HashSet::new();
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
            .filter(|r| seen.insert(r.field("WebIdentityToken").unwrap_or_default().to_owned()))
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
