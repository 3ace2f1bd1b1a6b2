//! What isolation this host can provide, for the agent to report at start-up (and to refuse
//! to start if the operator's level cannot be met).
//!
//! Why it exists: a sandbox that silently lacks a layer is worse than none, because people
//! trust it. The probe is cheap and safe to call from the multi-threaded agent: it clones a
//! child straight into every namespace the jailer uses (clone, unlike unshare, works from a
//! multi-threaded process) and the child exits at once; everything else is read-only queries.
//! It is a forecast; the jailer still checks every layer when it applies it.

use std::fmt;
use std::net::IpAddr;

use nix::sys::wait::{WaitStatus, waitpid};
use serde::Serialize;

use crate::cgroup::{self, JobCgroup, Place};
use crate::spec::Limits;
use crate::{egress, landlock_rules, seccomp, sys};

/// One layer and whether this host has it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LayerProbe {
    /// Short name, e.g. `landlock`.
    pub name: String,
    /// Whether the layer can be applied here.
    pub available: bool,
    /// What was found (`abi 7`, `v1`) or why it is missing.
    pub detail: String,
}

/// The layers this host supports, with a reason for each missing one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Every layer, available or not.
    pub layers: Vec<LayerProbe>,
}

impl Report {
    /// Layers that are missing.
    pub fn missing(&self) -> impl Iterator<Item = &LayerProbe> {
        self.layers.iter().filter(|l| !l.available)
    }
}

/// `namespaces: user, mount, pid, ipc, uts, net, cgroup; seccomp: x86_64; landlock: abi 7; …`,
/// then `missing: name (why)` for each missing layer.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let have: Vec<String> =
            self.layers.iter().filter(|l| l.available).map(|l| format!("{}: {}", l.name, l.detail)).collect();
        f.write_str(&have.join("; "))?;
        let missing: Vec<String> = self.missing().map(|l| format!("{} ({})", l.name, l.detail)).collect();
        if !missing.is_empty() {
            write!(f, "; missing: {}", missing.join(", "))?;
        }
        Ok(())
    }
}

fn layer(name: &str, result: Result<String, String>) -> LayerProbe {
    let (available, detail) = match result {
        Ok(detail) => (true, detail),
        Err(why) => (false, why),
    };
    LayerProbe { name: name.to_owned(), available, detail }
}

/// Probe this host. See [`Report`].
pub fn probe() -> Report {
    let detected = cgroup::detect(std::path::Path::new(cgroup::DEFAULT_ROOT));
    let cgroup_layer = |r: &Result<Place, String>| match r {
        Ok(Place::V1(_)) => Ok("v1".to_owned()),
        Ok(Place::V2(_)) => Ok("v2".to_owned()),
        Err(why) => Err(why.clone()),
    };
    Report {
        layers: vec![
            layer("namespaces", namespaces()),
            layer("seccomp", seccomp_support()),
            layer("landlock", landlock()),
            layer("landlock scope", landlock_scope()),
            layer("egress filter", egress_filter(&egress::METADATA_ADDRESSES)),
            layer("cgroup memory", cgroup_layer(&detected.memory)),
            layer("cgroup pids", cgroup_layer(&detected.pids)),
            layer("no_new_privs", nix::sys::prctl::get_no_new_privs().map(|_| "yes".into()).map_err(|e| e.to_string())),
            layer("rlimits", Ok("core, nofile, fsize, cpu".into())),
        ],
    }
}

fn namespaces() -> Result<String, String> {
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
    match sys::clone_process(flags) {
        Ok(sys::Forked::Child) => sys::exit_now(0),
        Ok(sys::Forked::Parent(pid)) => match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok("user, mount, pid, ipc, uts, net, cgroup".into()),
            other => Err(format!("probe child ended unexpectedly: {other:?}")),
        },
        Err(e) => Err(format!("clone with new namespaces failed: {e} (user namespaces disabled?)")),
    }
}

fn seccomp_support() -> Result<String, String> {
    if !seccomp::arch_supported() {
        return Err(format!("no deny-list table for {}", std::env::consts::ARCH));
    }
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    if !status.lines().any(|l| l.starts_with("Seccomp_filters:") || l.starts_with("Seccomp:")) {
        return Err("kernel built without CONFIG_SECCOMP".into());
    }
    Ok(format!("deny list, {}", std::env::consts::ARCH))
}

fn landlock() -> Result<String, String> {
    match sys::landlock_abi() {
        Ok(abi) => Ok(format!("abi {abi}")),
        Err(nix::Error::ENOSYS) => Err("not built into the kernel".into()),
        Err(nix::Error::EOPNOTSUPP) => Err("built in but not enabled at boot (lsm=)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether a job on the host's network can be fenced off the host's abstract Unix sockets:
/// Landlock's scopes, ABI 6 (Linux 6.12). The jailer refuses a `Network::Host` run without
/// them unless its level allows [`crate::Layer::LandlockScope`] missing.
pub fn landlock_scope() -> Result<String, String> {
    match sys::landlock_abi() {
        Ok(abi) if abi >= landlock_rules::SCOPE_ABI => Ok(format!("abi {abi}")),
        Ok(abi) => Err(format!(
            "landlock abi {abi} has no scopes (abi {} needs Linux 6.12 or later)",
            landlock_rules::SCOPE_ABI
        )),
        Err(e) => Err(format!("no landlock ({})", landlock().err().unwrap_or_else(|| e.to_string()))),
    }
}

/// Whether the egress filter for `blocked` can be attached on this host: the real thing, on a
/// throwaway cgroup v2 directory of the caller's, removed at once. Needs root and cgroup v2.
pub fn egress_filter(blocked: &[IpAddr]) -> Result<String, String> {
    let detected = cgroup::detect(std::path::Path::new(cgroup::DEFAULT_ROOT));
    let base = detected.v2?;
    let mut probe = JobCgroup::create(&[], &Limits::default(), Some(&base)).map_err(|e| e.to_string())?;
    let result = match &probe.v2 {
        Some(dir) => egress::attach(dir, blocked).map_err(|e| e.to_string()),
        None => Err("no cgroup v2 directory".to_owned()),
    };
    probe.remove();
    result.map(|_| "cgroup bpf (connect, sendmsg, egress)".to_owned())
}
