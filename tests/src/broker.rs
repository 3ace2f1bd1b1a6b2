//! Starts the real `keyward` binary (`dev` or `serve`) and talks to it.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{binary, eventually, http};

/// A running broker process, killed on drop.
#[allow(missing_debug_implementations)]
pub struct Broker {
    child: Child,
    /// The issuer URL / API address.
    pub addr: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The admin API token.
    pub admin_token: String,
    log: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- broker log ({}) ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Output of a finished `keyward` command.
#[derive(Debug)]
pub struct Output {
    /// Exit status success.
    pub success: bool,
    /// Exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

/// What a command run with `--json` printed; fails the test, saying why, when it failed or
/// printed something else.
pub fn json(output: &Output) -> Value {
    assert!(output.success, "stderr: {}", output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

/// A `keyward serve` broker over `dir` with the shipped policies (a stack labelled `env=dev`
/// applies without review) and an agent endpoint: leases of 20 s, the queue polled every 200 ms.
pub async fn serve_with_agents(dir: &Path) -> Broker {
    let addr = crate::free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n",
        policies = crate::workspace_root().join("policies").display(),
        agents = crate::free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// How long one `keyward` command may run in a test before it is killed and the test fails (a
/// command that should have refused to start, say, must not hang the suite).
const KEYWARD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// `command`'s output, or a test failure naming `what` if it runs past `deadline` (it is killed).
fn output_within(mut command: Command, deadline: std::time::Duration, what: &str) -> std::process::Output {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().expect("run keyward");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(deadline) {
        Ok(output) => output.expect("wait for keyward"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("`{what}` ran past {} s and was killed", deadline.as_secs());
        }
    }
}

/// Runs `keyward ARGS` to completion with `envs` and no inherited KEYWARD_* variables; a command
/// that runs past `KEYWARD_DEADLINE` fails the test instead of hanging it.
pub fn keyward(args: &[&str], envs: &[(&str, &str)]) -> Output {
    // `keyward creds` caches under XDG_CACHE_HOME: a fresh one per call (never the user's), unless
    // the caller passes its own to share a cache between calls.
    let cache = tempfile::tempdir().expect("cache dir");
    let mut command = Command::new(binary("keyward"));
    command.args(args).env_remove("KEYWARD_ADDR").env_remove("KEYWARD_TOKEN").env_remove("KEYWARD_TOKEN_FILE");
    command.env("XDG_CACHE_HOME", cache.path());
    for (key, value) in envs {
        command.env(key, value);
    }
    let output = output_within(command, KEYWARD_DEADLINE, &format!("keyward {}", args.join(" ")));
    Output {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the auditor's offline verifier, `keyward-verify ARGS` (crate `keyward-audit`), to
/// completion; like [`keyward`], one that runs past `KEYWARD_DEADLINE` fails the test.
pub fn keyward_verify(args: &[&str]) -> Output {
    let mut command = Command::new(binary("keyward-verify"));
    command.args(args);
    let output = output_within(command, KEYWARD_DEADLINE, &format!("keyward-verify {}", args.join(" ")));
    Output {
        success: output.status.success(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Broker {
    /// The broker's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `keyward dev --data-dir DIR --listen 127.0.0.1:0`, waiting until it is ready.
    pub async fn dev(data_dir: &Path) -> Self {
        Self::dev_with(data_dir, &[]).await
    }

    /// `keyward dev --data-dir DIR --listen 127.0.0.1:0 ARGS…` (e.g. `--config FILE`).
    pub async fn dev_with(data_dir: &Path, args: &[&str]) -> Self {
        let mut command = Command::new(binary("keyward"));
        command.args(["dev", "--data-dir"]).arg(data_dir).args(["--listen", "127.0.0.1:0"]).args(args);
        Self::spawn(command, data_dir, None).await
    }

    /// `keyward serve --config FILE` with extra environment, waiting until it is ready.
    pub async fn serve(config: &Path, data_dir: &Path, addr: &str, envs: &[(&str, &str)]) -> Self {
        Self::serve_as(config, data_dir, addr, envs, None).await
    }

    /// `keyward serve --config FILE` over a database that already has an admin token (a restart,
    /// a second replica): `admin_token` is that token.
    pub async fn serve_as(
        config: &Path,
        data_dir: &Path,
        addr: &str,
        envs: &[(&str, &str)],
        admin_token: Option<&str>,
    ) -> Self {
        let mut command = Command::new(binary("keyward"));
        command.args(["serve", "--init", "--config"]).arg(config);
        for (key, value) in envs {
            command.env(key, value);
        }
        Self::spawn(command, data_dir, Some((addr.to_owned(), admin_token.map(str::to_owned)))).await
    }

    async fn spawn(mut command: Command, data_dir: &Path, addr: Option<(String, Option<String>)>) -> Self {
        std::fs::create_dir_all(data_dir).unwrap();
        let log = data_dir.with_extension("log");
        let log_file = std::fs::File::create(&log).unwrap();
        // A directory without a `policies/` folder, so `keyward dev` seeds its own copy.
        command.current_dir(data_dir.parent().unwrap_or(data_dir));
        command.stdout(Stdio::piped()).stderr(log_file).env_remove("RUST_LOG");
        let mut child = command.spawn().expect("spawn keyward");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let (addr, admin_token) = match addr {
            Some((addr, Some(token))) => (addr, token),
            // `serve --init` prints a header line then the token.
            Some((addr, None)) => {
                let token = loop {
                    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
                        panic!(
                            "keyward serve printed no bootstrap token; log:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        )
                    });
                    if line.starts_with("kw_") {
                        break line;
                    }
                };
                (addr, token)
            }
            // `dev` prints the two export lines.
            None => {
                while lines.len() < 2 {
                    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
                        panic!(
                            "keyward dev printed no export lines; log:\n{}",
                            std::fs::read_to_string(&log).unwrap_or_default()
                        )
                    });
                    lines.push(line);
                }
                let addr =
                    lines[0].strip_prefix("export KEYWARD_ADDR=").expect("first line exports KEYWARD_ADDR").to_owned();
                let file = lines[1]
                    .strip_prefix("export KEYWARD_TOKEN_FILE=")
                    .expect("second line exports KEYWARD_TOKEN_FILE");
                let token = std::fs::read_to_string(file.trim_matches('\'')).expect("admin token file");
                (addr, token.trim().to_owned())
            }
        };
        let broker = Self { child, addr, data_dir: data_dir.to_owned(), admin_token, log };
        let client = http();
        let ready = format!("{}/readyz", broker.addr);
        eventually("broker readiness", Duration::from_secs(30), || {
            let request = client.get(&ready).send();
            async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
        })
        .await;
        broker
    }

    /// Everything the broker has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Environment for CLI commands against this broker.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![("KEYWARD_ADDR", self.addr.clone()), ("KEYWARD_TOKEN", self.admin_token.clone())]
    }

    /// Runs a CLI command against this broker.
    pub fn cli(&self, args: &[&str]) -> Output {
        let env = self.cli_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        keyward(args, &env)
    }

    /// `POST /v1/run-tokens` with the admin token; returns status and body.
    pub async fn mint_raw(&self, body: &Value, token: Option<&str>) -> (u16, Value) {
        let mut request = http().post(format!("{}/v1/run-tokens", self.addr)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("mint request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Mints a token for `run_id`/`stack`/`audience` and returns the JWT.
    pub async fn mint(&self, run_id: &str, stack: &str, audience: &str) -> String {
        let (status, body) = self
            .mint_raw(
                &json!({ "stack": stack, "run_id": run_id, "phase": "plan", "audience": audience }),
                Some(&self.admin_token),
            )
            .await;
        assert_eq!(status, 201, "mint failed: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// `POST /v1/token` (RFC 8693) with `fields` as the form; returns status and body.
    pub async fn exchange_form(&self, fields: &[(&str, &str)]) -> (u16, Value) {
        let response =
            http().post(format!("{}/v1/token", self.addr)).form(fields).send().await.expect("exchange request");
        if response.status().is_success() {
            // Credentials must never be cached by intermediaries (RFC 6749 §5.1).
            assert_eq!(response.headers().get("cache-control").map(|v| v.as_bytes()), Some(&b"no-store"[..]));
        }
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Exchanges `token` for credentials of `target` (`aws:name`).
    pub async fn exchange(&self, token: &str, target: &str) -> (u16, Value) {
        self.exchange_form(&exchange_form(token, target)).await
    }

    /// PyJWT's verdict on `token` for `audience`, with this broker's JWKS and issuer.
    pub fn pyjwt_verify(&self, token: &str, audience: &str) -> Value {
        crate::pyjwt::verify(&format!("{}/.well-known/jwks.json", self.addr), token, audience, &self.addr)
    }

    /// Fetches a JSON document.
    pub async fn get_json(&self, path: &str) -> Value {
        http().get(format!("{}{path}", self.addr)).send().await.unwrap().json().await.unwrap()
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the broker process.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits for the process to exit on its own; returns its exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "broker did not exit within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGKILL) and waits.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The KEK the configured-broker tests pass through the environment.
pub const TEST_KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// Writes a `keyward serve` config listening on `addr` with its data in `data_dir` and the KEK in
/// `$TEST_KEK`; `server`, `storage`, `keys` and `rest` are extra lines for those tables and the end.
pub fn write_config(path: &Path, addr: std::net::SocketAddr, data_dir: &Path, extra: &ConfigExtra<'_>) {
    let text = format!(
        "[server]\nlisten = \"{addr}\"\nexternal_url = \"http://{addr}\"\n{}\n\
         [storage]\ndata_dir = \"{}\"\n{}\n\
         [keys]\nkek_env = \"TEST_KEK\"\n{}\n{}\n",
        extra.server,
        data_dir.display(),
        extra.storage,
        extra.keys,
        extra.rest
    );
    std::fs::write(path, text).expect("write config");
}

/// Extra lines for [`write_config`].
#[derive(Debug, Default)]
pub struct ConfigExtra<'a> {
    /// Lines in `[server]`.
    pub server: &'a str,
    /// Lines in `[storage]`.
    pub storage: &'a str,
    /// Lines in `[keys]`.
    pub keys: &'a str,
    /// Further tables.
    pub rest: &'a str,
}

/// The RFC 8693 form fields that exchange `token` for `target`.
pub fn exchange_form<'a>(token: &'a str, target: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
        ("subject_token", token),
        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ("resource", target),
    ]
}
