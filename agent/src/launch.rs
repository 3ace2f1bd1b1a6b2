//! How a job's processes start: inside the sandbox ([`keyward_sandbox`], the default), or — when
//! the operator explicitly chose the weaker level with `--isolation process` — as a plain process
//! group with a scrubbed environment.
//!
//! With the sandbox the agent re-executes itself (`/proc/self/exe __keyward-jail`) as the
//! single-threaded jailer; the job's output comes back on the jailer's pipes, and the jailer's
//! status file says why a job was killed (deadline, memory, pids) so the job's error can too.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use keyward_sandbox::{Layer, Level, Limits, Network, Reason, Spec, Status};
use tokio::process::Command;

use crate::idrange::JobIds;
use crate::metrics::SandboxFailure;

/// The sandbox's limits and network, from the agent's flags.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// `none` (own network namespace, loopback only) or `host`.
    pub network: Network,
    /// Memory of the whole job.
    pub memory_bytes: u64,
    /// Processes and threads of the whole job.
    pub pids: u64,
    /// With `host`: the addresses the job may not reach (the cloud metadata service, unless
    /// the operator allowed it; [`crate::hostnet`]).
    pub blocked: Vec<std::net::IpAddr>,
    /// Layers the operator allowed to be missing (`--allow-host-abstract-sockets`).
    pub allow_missing: Vec<Layer>,
}

/// How jobs are isolated.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// The jailer: namespaces, minimal root, cgroups, Landlock, seccomp (docs/sandbox.md).
    Sandbox(SandboxSettings),
    /// A process group with a scrubbed environment, nothing more (`--isolation process`).
    Process,
}

/// One process of a job.
#[derive(Debug)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(String, String)>,
    /// The job's writable directory.
    pub work_dir: PathBuf,
    /// Where it runs (inside `work_dir`).
    pub cwd: PathBuf,
    /// Host paths it may read (the credential files).
    pub read_only: Vec<PathBuf>,
    /// When it is killed.
    pub deadline: SystemTime,
    /// A private directory of the agent's for the jailer's status file.
    pub scratch: PathBuf,
    /// The host uid and gid of the job's slot (root agent), or `None` for the agent's own.
    pub host_ids: Option<JobIds>,
}

/// A started-to-be process: the command, and where its sandbox status will be.
#[derive(Debug)]
pub struct Prepared {
    /// The command to spawn once.
    pub command: Command,
    /// The jailer's status file, when sandboxed.
    pub status_file: Option<PathBuf>,
}

impl Isolation {
    /// [`sandbox_verdict`] for a process this isolation ran: why the sandbox ended it, if it did.
    pub fn verdict(&self, status_file: Option<&Path>, layers: &Layers) -> Option<String> {
        let settings = match self {
            Self::Sandbox(settings) => Some(settings),
            Self::Process => None,
        };
        sandbox_verdict(status_file, settings, layers)
    }

    /// The protocol's name for this isolation, as `Hello` reports it.
    pub fn wire(&self) -> keyward_proto::agent_v1::Isolation {
        use keyward_proto::agent_v1::Isolation as Wire;
        match self {
            Self::Process => Wire::Process,
            Self::Sandbox(settings) => match settings.network {
                Network::None => Wire::SandboxNetworkNone,
                Network::Host => Wire::SandboxNetworkHost,
            },
        }
    }

    /// What `Hello` reports and runs record: `sandbox` with its layers and network, or `process`.
    pub fn describe(&self) -> String {
        match self {
            Self::Process => "process".to_owned(),
            Self::Sandbox(settings) => {
                let network = match settings.network {
                    Network::None => "none",
                    Network::Host => "host",
                };
                format!("sandbox network={network}")
            }
        }
    }

    /// The command for `launch`.
    pub fn prepare(&self, launch: Launch) -> Result<Prepared, String> {
        match self {
            Self::Process => {
                let (program, args) = launch.argv.split_first().ok_or("nothing to run")?;
                let mut command = Command::new(program);
                command.args(args).env_clear().envs(launch.env).current_dir(&launch.cwd);
                Ok(Prepared { command, status_file: None })
            }
            Self::Sandbox(settings) => {
                let status_file = launch.scratch.join(format!("sandbox-status-{}.json", unique()));
                let mut spec = Spec::new(launch.argv, launch.work_dir, status_file.clone());
                spec.env = launch.env;
                spec.cwd = launch.cwd;
                spec.read_only = launch.read_only;
                spec.network = settings.network;
                spec.host_id = launch.host_ids.map(|ids| ids.uid);
                spec.host_gid = launch.host_ids.map(|ids| ids.gid);
                if settings.network == Network::Host {
                    spec.blocked_destinations = settings.blocked.clone();
                }
                if !settings.allow_missing.is_empty() {
                    spec.required = Level::Relaxed { allow_missing: settings.allow_missing.clone() };
                }
                spec.limits = Limits {
                    memory_bytes: Some(settings.memory_bytes),
                    pids: Some(settings.pids),
                    open_files: Some(4096),
                    file_size_bytes: None,
                    cpu_seconds: None,
                };
                spec.deadline_unix_ms = launch
                    .deadline
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let jailer = std::env::current_exe().map_err(|e| format!("cannot find the agent's own binary: {e}"))?;
                let command = keyward_sandbox::command(&jailer, &spec).map_err(|e| e.to_string())?;
                Ok(Prepared { command: Command::from(command), status_file: Some(status_file) })
            }
        }
    }
}

/// The sandbox layers a job's processes ran under, gathered from each process's status: what the
/// job's result reports and its run records. A layer is listed once, where it first appeared.
#[derive(Debug, Default)]
pub struct Layers(std::sync::Mutex<Vec<String>>);

impl Layers {
    fn record(&self, layers: Vec<String>) {
        let mut known = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for layer in layers {
            if !known.contains(&layer) {
                known.push(layer);
            }
        }
    }

    /// Every layer so far, in order.
    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Why the sandbox ended a process, in words for the job's error; `None` for an ordinary exit
/// (or without a sandbox). Records the layers the process ran under in `layers` and removes the
/// status file.
pub fn sandbox_verdict(
    status_file: Option<&Path>,
    settings: Option<&SandboxSettings>,
    layers: &Layers,
) -> Option<String> {
    let path = status_file?;
    let status = Status::read(path);
    let _ = std::fs::remove_file(path);
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            crate::metrics::global().sandbox_failed(SandboxFailure::NoStatus);
            return Some(format!("the sandbox left no status ({error})"));
        }
    };
    layers.record(status.layers);
    let reason = status.reason?;
    let failure = match &reason {
        Reason::Deadline => Some(SandboxFailure::Deadline),
        Reason::MemoryLimit => Some(SandboxFailure::Memory),
        Reason::PidsLimit => Some(SandboxFailure::Pids),
        Reason::SetupFailed(_) => Some(SandboxFailure::Setup),
        Reason::Cancelled => None,
    };
    if let Some(failure) = failure {
        crate::metrics::global().sandbox_failed(failure);
    }
    Some(match reason {
        Reason::Deadline => "killed: it ran past the job's deadline".to_owned(),
        Reason::MemoryLimit => format!(
            "killed: the job used more than its memory limit ({} MiB)",
            settings.map_or(0, |s| s.memory_bytes >> 20)
        ),
        Reason::PidsLimit => {
            format!("the job reached its process limit ({} processes and threads)", settings.map_or(0, |s| s.pids))
        }
        Reason::Cancelled => "canceled".to_owned(),
        Reason::SetupFailed(why) => format!("the sandbox could not start the job: {why}"),
    })
}

fn unique() -> String {
    let mut bytes = [0_u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    keyward_proto::encoding::hex(&bytes)
}
