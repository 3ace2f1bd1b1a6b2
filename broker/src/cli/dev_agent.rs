//! What `keyward dev` sets up so a run works right away: a `dev` pool, an `example` stack over a
//! small Terraform configuration in a local git repository, and one local agent.
//!
//! The agent is the real `keyward-agent` binary (found next to `keyward`), enrolled with a join
//! token like any other, as a child process that logs to `<data dir>/agent.log`. The example stack
//! carries `env = dev`, for which the shipped approval policy asks for no review, so a submitted
//! run plans, is approved by policy and applies: real Terraform, in the agent's sandbox.
//!
//! The broker's agent (gRPC) port is remembered in `<data dir>/agent-port` and reused on the next
//! start, so agents enrolled against it (the local one, and any started by hand) reconnect as soon
//! as the broker is back instead of failing until they ask the broker where its endpoint moved.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;

use crate::agents::{AgentError, Agents};
use crate::audit::{ChangeError, Context};
use crate::runs::{RunError, Runs, StackSpec};

/// The pool, stack and repository `keyward dev` creates.
pub(super) const POOL: &str = "dev";
pub(super) const STACK: &str = "example";

const MAIN_TF: &str = r#"# The `example` stack of `keyward dev`: built-in resources only, so no provider is downloaded.
resource "terraform_data" "hello" {
  input = "hello from keyward"

  provisioner "local-exec" {
    command = "echo applied: ${self.input}"
  }
}

output "greeting" {
  value = terraform_data.hello.output
}
"#;

/// Creates the example repository (once), the `dev` pool and the `example` stack.
pub(super) async fn ensure_example(data_dir: &Path, agents: &Agents, runs: &Runs, who: &str) -> anyhow::Result<()> {
    let repository = data_dir.join("example");
    if !repository.join(".git").exists() {
        create_repository(&repository).await?;
    }
    match agents.create_pool(POOL, crate::roles::ROOT, who, Context::default()).await {
        Ok(_) | Err(AgentError::Change(ChangeError::Duplicate { .. } | ChangeError::Moved { .. })) => {}
        Err(error) => return Err(error).context("cannot create the dev pool"),
    }
    let spec = StackSpec {
        name: STACK.to_owned(),
        repository: format!("file://{}", repository.display()),
        path: String::new(),
        branch: "main".to_owned(),
        pool: POOL.to_owned(),
        plan_targets: Vec::new(),
        apply_targets: Vec::new(),
        labels: [("env".to_owned(), "dev".to_owned())].into_iter().collect(),
        policies: Vec::new(),
        managed_state: true,
        hooks: Default::default(),
        scanners: Vec::new(),
        tool: Default::default(),
        triggers: Vec::new(),
        space: "root".into(),
    };
    match runs.create_stack(spec, who, Context::default()).await {
        Ok(_) | Err(RunError::Change(ChangeError::Duplicate { .. } | ChangeError::Moved { .. })) => Ok(()),
        Err(error) => Err(error).context("cannot create the example stack"),
    }
}

async fn create_repository(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("main.tf"), MAIN_TF).with_context(|| format!("cannot write {}/main.tf", dir.display()))?;
    for args in [
        &["init", "--quiet", "--initial-branch", "main"][..],
        &["add", "main.tf"],
        &["-c", "user.name=keyward dev", "-c", "user.email=dev@keyward.invalid", "commit", "--quiet", "-m", "example"],
    ] {
        let status = tokio::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .status()
            .await
            .context("cannot run git (is it installed?)")?;
        anyhow::ensure!(status.success(), "`git {}` failed in {}", args.join(" "), dir.display());
    }
    Ok(())
}

/// Where the agent port of the last start is kept.
const PORT_FILE: &str = "agent-port";

/// The agent port to listen on: the one of the last start when it is still free, else 0 (any).
pub(super) fn remembered_port(data_dir: &Path, ip: IpAddr) -> u16 {
    let Some(port) = std::fs::read_to_string(data_dir.join(PORT_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<u16>().ok())
        .filter(|port| *port != 0)
    else {
        return 0;
    };
    // Probed, not held: the broker binds it again a moment later. Losing that race fails the start
    // with "address in use", which a restart resolves.
    if std::net::TcpListener::bind((ip, port)).is_ok() { port } else { 0 }
}

/// Records the agent port for the next start.
pub(super) fn remember_port(data_dir: &Path, port: u16) -> anyhow::Result<()> {
    let path = data_dir.join(PORT_FILE);
    std::fs::write(&path, format!("{port}\n")).with_context(|| format!("cannot write {}", path.display()))
}

/// The local agent `keyward dev` started, or why there is none.
pub(super) enum LocalAgent {
    /// Running; its output goes to `log`.
    Started {
        /// `<data dir>/agent.log`.
        log: PathBuf,
    },
    /// No `keyward-agent` binary where it was looked for.
    Missing {
        /// The path looked at.
        expected: PathBuf,
    },
}

/// Enrolls (first time only) and runs the local agent until the broker stops, with `--isolation
/// isolation`.
pub(super) async fn start_agent(
    data_dir: &Path,
    broker: &str,
    agents: &Agents,
    isolation: &str,
    who: &str,
) -> anyhow::Result<LocalAgent> {
    let expected = std::env::current_exe().context("cannot find the keyward binary")?.with_file_name("keyward-agent");
    if !expected.is_file() {
        return Ok(LocalAgent::Missing { expected });
    }
    let binary = expected;
    let agent_dir = data_dir.join("agent");
    let log = data_dir.join("agent.log");
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))
    };
    let enrolled = agent_dir.join("agent.json").exists();
    let token = if enrolled {
        None
    } else {
        Some(
            agents
                .join_token(POOL, Duration::from_secs(600), who, Context::default())
                .await
                .context("cannot issue a join token")?,
        )
    };
    let broker = broker.to_owned();
    let isolation = isolation.to_owned();
    let binary_for_task = binary.clone();
    let (join_log, run_log) = (log_file()?, log_file()?);
    tokio::spawn(async move {
        if let Some(token) = token {
            let joined = tokio::process::Command::new(&binary_for_task)
                .args(["join", "--broker", &broker, "--data-dir"])
                .arg(&agent_dir)
                .env("KEYWARD_JOIN_TOKEN", &token.token)
                .env_remove("KEYWARD_ADDR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(join_log)
                .status()
                .await;
            if !joined.is_ok_and(|s| s.success()) {
                tracing::error!("the local agent could not enroll; see agent.log in the data dir");
                return;
            }
        }
        let child = tokio::process::Command::new(&binary_for_task)
            .args(["run", "--isolation", &isolation, "--data-dir"])
            .arg(&agent_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(run_log)
            .kill_on_drop(true)
            .spawn();
        match child {
            Ok(mut child) => {
                // Held until the broker's runtime shuts down, which kills it.
                let _ = child.wait().await;
                tracing::warn!("the local agent exited; see agent.log in the data dir");
            }
            Err(error) => tracing::error!(%error, "cannot start the local agent"),
        }
    });
    Ok(LocalAgent::Started { log })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remembered_agent_port_is_reused_only_while_it_is_free() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ip = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(remembered_port(dir.path(), ip), 0, "nothing remembered: any port");

        let held = std::net::TcpListener::bind((ip, 0))?;
        let port = held.local_addr()?.port();
        remember_port(dir.path(), port)?;
        assert_eq!(remembered_port(dir.path(), ip), 0, "taken by someone else: any port");
        drop(held);
        assert_eq!(remembered_port(dir.path(), ip), port);

        std::fs::write(dir.path().join(PORT_FILE), "not a port")?;
        assert_eq!(remembered_port(dir.path(), ip), 0);
        Ok(())
    }
}
