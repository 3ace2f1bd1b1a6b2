//! Keyward's job sandbox (DESIGN.md §6): runs untrusted Terraform (providers, `local-exec`) so
//! that it cannot read the agent's key or data dir, other jobs' files, `/etc/shadow` or the
//! rest of the host; cannot write outside its work dir; cannot reach the host network when
//! networking is off; cannot ptrace; cannot fork-bomb or eat the host's memory; and cannot run
//! past its deadline.
//!
//! # How the agent uses it
//!
//! Namespace setup needs a single-threaded process (`unshare(CLONE_NEWUSER)` fails with EINVAL
//! once threads exist, and forking a multi-threaded process is fragile), and the agent runs
//! tokio. So the agent re-executes *itself* as a jailer:
//!
//! ```no_run
//! fn main() {
//!     keyward_sandbox::enter_jailer_if_requested(); // first thing, before tokio
//!     // ... the agent ...
//! }
//! # fn spawn(spec: &keyward_sandbox::Spec) -> Result<(), Box<dyn std::error::Error>> {
//! let mut cmd = keyward_sandbox::command(std::path::Path::new("/proc/self/exe"), spec)?;
//! cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
//! let child = cmd.spawn()?; // or tokio::process::Command::from(cmd).spawn()
//! // ... stream stdout/stderr, wait, then:
//! let status = keyward_sandbox::Status::read(&spec.status_file)?;
//! # Ok(()) }
//! ```
//!
//! The spec travels on the jailer's stdin as JSON (an in-memory file, so it never blocks and is
//! never on disk: its `env` holds the job's credentials). The jailer's stdout and stderr are the
//! program's. To cancel, SIGKILL the jailer (the tree dies with it) or send it SIGTERM (it kills
//! the tree, writes the status with reason `cancelled` and removes the cgroup).
//!
//! # The jailer, step by step
//!
//! 1. **Spec** (`spec`): refuse to run unless single-threaded; read stdin to EOF, at most
//!    [`MAX_SPEC_BYTES`]; parse (unknown fields are errors) and validate (absolute canonical
//!    paths, no bind of `/` or of a parent of a system path, status file outside every bind,
//!    env names, limits ≠ 0); reopen stdin on `/dev/null`; mark inherited fds close-on-exec.
//!    When root, clear the jailer's supplementary groups and chown the work dir tree (without
//!    following symlinks) to the sandbox's host uid. Then, still with the agent's rights
//!    (the sandbox's uid may not traverse a 0700 `/root`): find the program like `execvp`
//!    with the job's `PATH` (`program`; candidates beneath the work dir or relative are left
//!    to the sandbox), and, when root, open every bind source, the program's file included
//!    when it is outside the sandbox's view, as a detached mount (`sources`: `O_PATH |
//!    O_NOFOLLOW`, checked against the canonical path, `open_tree(OPEN_TREE_CLONE)`).
//! 2. **Cgroup** (`cgroup`): for each limit that is set, a job cgroup nested under the jailer's
//!    own (v2 where the controller is on v2, else v1): `memory.limit_in_bytes` +
//!    `memory.memsw.limit_in_bytes` (v1) or `memory.max` + `memory.swap.max=0` +
//!    `memory.oom.group` (v2), and `pids.max` (= limit + 1 for the init). *Defends against*
//!    fork bombs and memory exhaustion by the whole tree. With [`Network::Host`] and
//!    `blocked_destinations` (`egress`): a cgroup v2 directory for the job (also on a hybrid
//!    host) with cgroup BPF programs that refuse `connect`/`sendmsg` to those addresses and drop
//!    any other packet to them. *Defends against* a job asking the cloud metadata service for
//!    the host's credentials.
//! 3. **Namespaces** (`namespaces`): the jailer clones the init directly into new user, mount,
//!    PID, IPC, UTS and (for [`Network::None`]) network namespaces; while the init waits on a
//!    pipe, the jailer writes `setgroups=deny` and maps uid/gid 0 inside to an unprivileged
//!    host uid and gid (`host_id`/`host_gid`: the agent gives each concurrent job its own from
//!    a subordinate range; 65534 if unset; the caller's own ids when the jailer is not root)
//!    and moves the init into the job cgroup, then releases it. The init becomes
//!    uid 0 inside, enters a new cgroup namespace, sets the hostname and brings `lo` up.
//!    *Defends against* acting as host root, seeing or signalling host processes, host IPC,
//!    the host network and its abstract sockets.
//! 4. **Minimal root** (`rootfs`): tmpfs root; read-only binds of `/usr`, `/lib*`, a short
//!    list of `/etc` entries (never `shadow`, `gshadow`, `ssl/private`); `/bin`-style symlinks
//!    recreated; minimal `/dev`; new `/proc`; private `/tmp`; the work dir read-write and the
//!    `read_only` extras read-only at their own paths, and the program's file read-only when
//!    the jailer found it elsewhere; binds attached from the jailer's detached mounts
//!    (`move_mount`, then made private) or, for a jailer that is not root, by path;
//!    everything `nosuid,nodev`, read-only binds made read-only recursively; `pivot_root` and
//!    detach the host root. *Defends
//!    against* reading or writing anything on the host that was not bound.
//! 5. **Process hardening** (`privileges`, `limits`): the init forks the program (the init
//!    stays PID 1 and reaps). The program: parent-death signal SIGKILL (also set on the init),
//!    `setsid`, default signal dispositions, rlimits (`CORE=0`, `NOFILE`, `FSIZE`, `CPU`; never
//!    `AS`), all capabilities dropped including the bounding set, `no_new_privs`, `chdir(cwd)`.
//! 6. **Landlock** (`landlock_rules`): writes only beneath the work dir, `/tmp`, `/dev/shm`
//!    and the device nodes; read/execute beneath the read-only binds; read-only `/proc`; no
//!    signals or abstract-socket connections out of the sandbox. Best ABI the kernel has
//!    (ABI 7 rights requested); with [`Network::Host`] the scopes (ABI 6) are required unless
//!    the level allows [`Layer::LandlockScope`] missing.
//! 7. **Seccomp** (`seccomp`): a classic-BPF deny list (EPERM), architecture-checked (foreign
//!    arch and x32 killed), installed last before `execve`.
//! 8. **Exec**: every fd but 0, 1, 2 close-on-exec (the detached mounts are already closed);
//!    environment exactly `spec.env`; `execve` of the jailer's candidates in order.
//! 9. **Supervision** (`jailer`): the jailer waits for the init, SIGKILLs it at the deadline,
//!    on SIGTERM/SIGINT/SIGHUP, or when its stdout pipe has no reader left (the agent died)
//!    (killing PID 1 kills the namespace); reads the OOM and pids
//!    events; writes [`Status`] to `status_file` (temp + rename); removes the cgroup; exits
//!    with the program's code, or 128 + signal.
//!
//! A setup failure exits [`EXIT_SETUP_FAILED`] (126 or 127 when the program cannot be
//! executed or found) with one line `keyward-sandbox: setup failed: <layer>: <why>` on stderr
//! and `Status.reason = SetupFailed("<layer>: <why>")`. A layer the host lacks fails the run,
//! naming the layer, unless [`Level::Relaxed`] lists it; then it is named in
//! [`Status::skipped`] and in a warning on stderr. Never silently.

mod cgroup;
mod egress;
mod jailer;
mod landlock_rules;
mod limits;
mod namespaces;
mod privileges;
mod probe;
mod program;
mod report;
mod rootfs;
mod seccomp;
mod sources;
mod spec;
mod status;
mod sys;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

pub use egress::METADATA_ADDRESSES;
pub use jailer::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, EXIT_SETUP_FAILED};
pub use probe::{LayerProbe, Report, egress_filter, landlock_scope, probe};
pub use spec::{DEFAULT_HOST_ID, Layer, Level, Limits, MAX_SPEC_BYTES, Network, Spec, SpecError};
pub use status::{Reason, Status, StatusError};

/// `argv[1]` that turns the agent binary into the jailer.
pub const JAILER_ARG: &str = "__keyward-jail";

/// Call first in `main()`, before any thread exists: if `argv[1]` is [`JAILER_ARG`], run the
/// jailer and exit the process (never returns); otherwise return.
pub fn enter_jailer_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == JAILER_ARG) {
        jailer::run();
    }
}

/// Building the jailer command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec is invalid.
    #[error("sandbox spec: {0}")]
    Spec(#[from] SpecError),
    /// The spec could not be serialized (e.g. a path that is not UTF-8).
    #[error("sandbox spec: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The spec is larger than [`MAX_SPEC_BYTES`].
    #[error("sandbox spec: {0} bytes, more than the {MAX_SPEC_BYTES} the jailer accepts")]
    TooLarge(usize),
    /// The in-memory file carrying the spec could not be created.
    #[error("sandbox spec: memfd: {0}")]
    Memfd(#[source] std::io::Error),
}

/// `jailer_exe __keyward-jail` with `spec` on stdin and an empty environment. Set stdout and
/// stderr as you like (they are the program's), spawn **once** (stdin is consumed), wait, then
/// read [`Status`] from `spec.status_file`. Convert with `tokio::process::Command::from`.
pub fn command(jailer_exe: &Path, spec: &Spec) -> Result<Command, Error> {
    spec.validate()?;
    let json = serde_json::to_vec(spec)?;
    if json.len() > MAX_SPEC_BYTES {
        return Err(Error::TooLarge(json.len()));
    }
    let fd = nix::sys::memfd::memfd_create(c"keyward-spec", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| Error::Memfd(e.into()))?;
    let mut file = File::from(fd);
    file.write_all(&json).and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ())).map_err(Error::Memfd)?;
    let mut cmd = Command::new(jailer_exe);
    cmd.arg(JAILER_ARG).env_clear().stdin(Stdio::from(file));
    Ok(cmd)
}
