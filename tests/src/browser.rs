//! A real browser for the console's tests (docs/console.md): Debian's headless Chromium, driven by
//! Playwright through `tests/npm/browser.mjs`, a JSON-lines bridge run as a child `node` process.
//! A test sees what a person's browser does with the pages — links followed, the CSP enforced,
//! axe-core's accessibility audit — not just the HTML the broker sends.
//!
//! Chromium, `playwright-core` and `axe-core` are installed by `scripts/install-test-peers` (the npm
//! packages beside the Python venv, pinned by tests/npm/package-lock.json). One [`Browser`] is one
//! Chromium process; each [`Page`] is its own browser context, so its own cookie jar (a reviewer
//! and an author are two pages). The bridge bounds every command (10 s unless told otherwise) and
//! this side bounds every answer, so a broken page fails the test instead of hanging it.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};

/// How long the bridge may take to start Chromium.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(60);
/// What this side adds to a command's own timeout before giving up on the bridge.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);
/// The bridge's own default per command (browser.mjs `DEFAULT_TIMEOUT_MS`).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of node's stderr is kept for an error message.
const STDERR_CAP: usize = 64 * 1024;

/// What went wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A peer is missing or stale: the message says how to install it.
    #[error("{0}")]
    NotInstalled(String),
    /// `node` could not be started.
    #[error("cannot start `node {script}`: {source}")]
    Spawn {
        /// The bridge script.
        script: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bridge exited, broke the protocol or did not answer in time; its stderr says why.
    #[error("the browser bridge failed ({what}); its stderr:\n{stderr}")]
    Bridge {
        /// What was being done.
        what: String,
        /// node's stderr so far.
        stderr: String,
    },
    /// The browser refused a command: Playwright's message (a selector not found, a timeout).
    #[error("{command}: {message}")]
    Command {
        /// The command, e.g. `click a[href="/ui/stacks"]`.
        command: String,
        /// The bridge's message.
        message: String,
    },
}

/// A browser window's size in CSS pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewport {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Viewport {
    /// A laptop's window.
    pub const DESKTOP: Self = Self { width: 1280, height: 800 };
    /// A phone held upright (an iPhone 12–15's CSS size).
    pub const PHONE: Self = Self { width: 390, height: 844 };

    fn json(self) -> Value {
        json!({ "width": self.width, "height": self.height })
    }
}

/// One accessibility rule a page breaks, as axe-core reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AxeViolation {
    /// axe's rule ID (`color-contrast`, `label`, …).
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: Option<String>,
    /// What the rule asks for.
    pub help: String,
    /// CSS selectors of the offending elements.
    pub nodes: Vec<String>,
}

impl AxeViolation {
    /// Whether it is `serious` or `critical`: what a page must never have.
    pub fn is_serious(&self) -> bool {
        matches!(self.impact.as_deref(), Some("serious" | "critical"))
    }
}

/// The bridge's end of the pipes.
struct Bridge {
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
}

/// A headless Chromium (one process), killed on drop.
#[allow(missing_debug_implementations)]
pub struct Browser {
    child: Child,
    bridge: Mutex<Bridge>,
    stderr: Arc<Mutex<String>>,
    /// Chromium's version, e.g. `156.0.8078.129`.
    pub version: String,
}

impl Browser {
    /// Starts the bridge and Chromium, waiting until it is ready.
    pub fn launch() -> Result<Self, BrowserError> {
        let script = bridge_script()?;
        let mut command = Command::new("node");
        command.arg(&script).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child =
            command.spawn().map_err(|source| BrowserError::Spawn { script: script.display().to_string(), source })?;
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, answers) = channel();
        // Ends (dropping `tx`) when node closes stdout: that is how an exit is noticed.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0_u8; 4096];
            while let Ok(n @ 1..) = stderr_pipe.read(&mut buffer) {
                let mut kept = sink.lock().unwrap_or_else(PoisonError::into_inner);
                if kept.len() < STDERR_CAP {
                    kept.push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        let stdin = child.stdin.take();
        let mut browser = Self { child, bridge: Mutex::new(Bridge { stdin, answers }), stderr, version: String::new() };
        let bridge = browser.bridge.lock().unwrap_or_else(PoisonError::into_inner);
        let ready = browser.receive(&bridge, "launch", LAUNCH_TIMEOUT)?;
        drop(bridge);
        browser.version = ready["version"].as_str().unwrap_or_default().to_owned();
        Ok(browser)
    }

    /// A new page in its own browser context (own cookies), `viewport` sized.
    pub fn page(&self, name: &str, viewport: Viewport) -> Result<Page<'_>, BrowserError> {
        self.page_with_headers(name, viewport, &[])
    }

    /// Like [`Browser::page`], sending `headers` with every request the page makes (an
    /// `Authorization` header, say).
    pub fn page_with_headers(
        &self,
        name: &str,
        viewport: Viewport,
        headers: &[(&str, &str)],
    ) -> Result<Page<'_>, BrowserError> {
        let headers: serde_json::Map<String, Value> =
            headers.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect();
        self.call(json!({ "cmd": "newContext", "id": name, "viewport": viewport.json(), "headers": headers }))?;
        Ok(Page { browser: self, name: name.to_owned() })
    }

    /// Sends one command and returns its answer (`ok: true`), or the bridge's refusal.
    fn call(&self, command: Value) -> Result<Value, BrowserError> {
        let timeout = command["timeoutMs"].as_u64().map_or(COMMAND_TIMEOUT, Duration::from_millis) + ANSWER_MARGIN;
        let what = describe(&command);
        // Held until the answer is read: answers come back in the order commands went out.
        let mut bridge = self.bridge.lock().unwrap_or_else(PoisonError::into_inner);
        let stdin = bridge.stdin.as_mut().ok_or_else(|| self.broken(&what))?;
        writeln!(stdin, "{command}").and_then(|()| stdin.flush()).map_err(|_| self.broken(&what))?;
        let answer = self.receive(&bridge, &what, timeout)?;
        if answer["ok"] == true {
            Ok(answer)
        } else {
            let message = answer["error"].as_str().unwrap_or("no message").to_owned();
            Err(BrowserError::Command { command: what, message })
        }
    }

    /// The next answer line, parsed.
    fn receive(&self, bridge: &Bridge, what: &str, timeout: Duration) -> Result<Value, BrowserError> {
        let line = match bridge.answers.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                return Err(self.broken(&format!("{what}: no answer within {} s", timeout.as_secs())));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.broken(&format!("{what}: node exited"))),
        };
        serde_json::from_str(&line).map_err(|_| self.broken(&format!("{what}: not a JSON answer: {line}")))
    }

    fn broken(&self, what: &str) -> BrowserError {
        let stderr = self.stderr.lock().unwrap_or_else(PoisonError::into_inner).clone();
        BrowserError::Bridge { what: what.to_owned(), stderr }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask the bridge to close Chromium, then wait for node to close its stdout (the reader
        // thread's sender drops); kill it if it does not within a few seconds.
        let bridge = self.bridge.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut stdin) = bridge.stdin.take() {
            let _ = writeln!(stdin, "{}", json!({ "cmd": "close" }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            if bridge.answers.recv_timeout(left).is_err() {
                break;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser context and its page.
#[allow(missing_debug_implementations)]
pub struct Page<'b> {
    browser: &'b Browser,
    name: String,
}

impl Page<'_> {
    fn call(&self, mut command: Value) -> Result<Value, BrowserError> {
        command["context"] = Value::from(self.name.as_str());
        self.browser.call(command)
    }

    /// Loads `url`; its HTTP status.
    pub fn goto(&self, url: &str) -> Result<u16, BrowserError> {
        let answer = self.call(json!({ "cmd": "goto", "url": url }))?;
        Ok(answer["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0))
    }

    /// Clicks the first element matching `selector` (a Playwright selector), waiting for the page
    /// it opens to load; the URL then shown.
    pub fn click(&self, selector: &str) -> Result<String, BrowserError> {
        let answer = self.call(json!({ "cmd": "click", "selector": selector }))?;
        Ok(answer["url"].as_str().unwrap_or_default().to_owned())
    }

    /// Types `value` into the field matching `selector`.
    pub fn fill(&self, selector: &str, value: &str) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "fill", "selector": selector, "value": value })).map(drop)
    }

    /// The rendered text of the first element matching `selector`.
    pub fn text(&self, selector: &str) -> Result<String, BrowserError> {
        let answer = self.call(json!({ "cmd": "text", "selector": selector }))?;
        Ok(answer["text"].as_str().unwrap_or_default().to_owned())
    }

    /// The rendered text of every element matching `selector` (none: empty).
    pub fn texts(&self, selector: &str) -> Result<Vec<String>, BrowserError> {
        let answer = self.call(json!({ "cmd": "texts", "selector": selector }))?;
        Ok(strings(&answer["texts"]))
    }

    /// Waits until an element matching `selector` holds `text`, for at most `timeout`.
    pub fn wait_for_text(&self, selector: &str, text: &str, timeout: Duration) -> Result<(), BrowserError> {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.call(json!({ "cmd": "waitForText", "selector": selector, "text": text, "timeoutMs": ms })).map(drop)
    }

    /// Saves a PNG of the page (`full_page`: all of it, not just the viewport) to `path`.
    pub fn screenshot(&self, path: &Path, full_page: bool) -> Result<(), BrowserError> {
        let path = path.to_str().ok_or_else(|| BrowserError::NotInstalled(format!("{path:?} is not UTF-8")))?;
        self.call(json!({ "cmd": "screenshot", "path": path, "fullPage": full_page })).map(drop)
    }

    /// Resizes the page's viewport.
    pub fn set_viewport(&self, viewport: Viewport) -> Result<(), BrowserError> {
        self.call(json!({ "cmd": "setViewport", "width": viewport.width, "height": viewport.height })).map(drop)
    }

    /// axe-core's audit of the page as it is now.
    pub fn axe(&self) -> Result<Vec<AxeViolation>, BrowserError> {
        let answer = self.call(json!({ "cmd": "axe" }))?;
        let violations = answer["violations"].as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(violations
            .iter()
            .map(|v| AxeViolation {
                id: v["id"].as_str().unwrap_or_default().to_owned(),
                impact: v["impact"].as_str().map(str::to_owned),
                help: v["help"].as_str().unwrap_or_default().to_owned(),
                nodes: strings(&v["nodes"]),
            })
            .collect())
    }

    /// Every console error and uncaught exception since the page was opened.
    pub fn console_errors(&self) -> Result<Vec<String>, BrowserError> {
        Ok(strings(&self.call(json!({ "cmd": "consoleErrors" }))?["messages"]))
    }

    /// Every Content-Security-Policy violation (`securitypolicyviolation`) since the page was
    /// opened.
    pub fn csp_violations(&self) -> Result<Vec<String>, BrowserError> {
        Ok(strings(&self.call(json!({ "cmd": "cspViolations" }))?["messages"]))
    }
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// `click a[href="/ui/stacks"]`: a command as an error message names it.
fn describe(command: &Value) -> String {
    let mut words = vec![command["cmd"].as_str().unwrap_or("?").to_owned()];
    for key in ["context", "selector", "url", "path"] {
        if let Some(value) = command[key].as_str() {
            words.push(value.to_owned());
        }
    }
    words.join(" ")
}

/// The installed copy of `tests/npm/browser.mjs`, checked against the source: a stale copy would
/// test old code.
fn bridge_script() -> Result<PathBuf, BrowserError> {
    let install = "run scripts/install-test-peers (scripts/test does)";
    let chromium =
        std::env::var_os("KEYWARD_CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.exists() {
        return Err(BrowserError::NotInstalled(format!(
            "Chromium is not installed at {}: {install}",
            chromium.display()
        )));
    }
    let npm = crate::venv().parent().map(|p| p.join("npm")).unwrap_or_default();
    let script = npm.join("browser.mjs");
    if !npm.join("node_modules/playwright-core").exists() || !npm.join("node_modules/axe-core").exists() {
        return Err(BrowserError::NotInstalled(format!(
            "playwright-core and axe-core are not installed in {}: {install}",
            npm.display()
        )));
    }
    let source = std::fs::read(crate::workspace_root().join("tests/npm/browser.mjs")).unwrap_or_default();
    if std::fs::read(&script).ok() != Some(source) {
        return Err(BrowserError::NotInstalled(format!("{} is missing or stale: {install}", script.display())));
    }
    Ok(script)
}
