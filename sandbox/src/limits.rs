//! Per-process resource limits (rlimits) of the sandboxed program.
//!
//! Why it exists: cgroups bound the whole job; rlimits bound each process where a cgroup
//! cannot: descriptors (`RLIMIT_NOFILE`), the size of any one file written (`RLIMIT_FSIZE`,
//! against filling the disk through the work dir), CPU time (`RLIMIT_CPU`, soft limit →
//! SIGXCPU, one second later SIGKILL), and no core dumps (`RLIMIT_CORE=0`: a core of a
//! process holding credentials would land in the work dir).
//!
//! Deliberately not set: `RLIMIT_AS` (Go reserves large virtual address ranges up front and
//! would fail to start) and `RLIMIT_NPROC` (counted per host uid, so it would be shared by
//! every job mapped to the same uid; the pids cgroup does this job correctly).
//!
//! Limits can only be lowered from inside the user namespace; a limit above the inherited hard
//! limit fails with an error naming it.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::spec::Limits;

/// Setting an rlimit failed.
#[derive(Debug, thiserror::Error)]
#[error("{name} = {value}: {source} (hard limit inherited from the agent: {hard})")]
pub(crate) struct LimitError {
    name: &'static str,
    value: u64,
    hard: u64,
    #[source]
    source: nix::Error,
}

/// Apply `limits` to the calling process (inherited by its children).
pub(crate) fn apply(limits: &Limits) -> Result<(), LimitError> {
    let cpu = limits.cpu_seconds.map(|s| (s, s.saturating_add(1)));
    let wanted = [
        ("RLIMIT_CORE", Resource::RLIMIT_CORE, Some((0, 0))),
        ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE, limits.open_files.map(|n| (n, n))),
        ("RLIMIT_FSIZE", Resource::RLIMIT_FSIZE, limits.file_size_bytes.map(|n| (n, n))),
        ("RLIMIT_CPU", Resource::RLIMIT_CPU, cpu),
    ];
    for (name, resource, value) in wanted {
        let Some((soft, hard)) = value else { continue };
        setrlimit(resource, soft, hard).map_err(|source| LimitError {
            name,
            value: hard,
            hard: getrlimit(resource).map(|(_, h)| h).unwrap_or(0),
            source,
        })?;
    }
    Ok(())
}
