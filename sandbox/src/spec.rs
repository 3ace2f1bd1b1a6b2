//! What the agent asks the jailer to run: [`Spec`] and its parts, and their validation.
//!
//! Why it exists: the spec crosses a process boundary (agent → jailer, JSON on stdin), and every
//! path in it decides what the untrusted job can see. Validation here rejects specs that would
//! silently weaken the sandbox (a work dir of `/` or `/etc`, a status file the job could plant
//! a symlink at, a relative path) with an error naming the field, before anything is created.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest spec the jailer reads from stdin.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// Host uid/gid the sandbox's root maps to when the jailer runs as root and `host_id` is unset.
pub const DEFAULT_HOST_ID: u32 = 65534;

/// System paths the sandbox provides itself; user binds may not replace them or their parents.
const RESERVED: &[&str] =
    &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/proc", "/dev", "/tmp"];

/// One sandboxed program run. See the crate docs for what each field turns into.
#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Program and arguments. A program without `/` is looked up in `PATH` from `env`
    /// (default `/usr/local/bin:/usr/bin:/bin`) like `execvp` does, by the jailer on the host
    /// with the agent's rights; a program found outside the sandbox's view is bound read-only
    /// at its own path. Relative candidates and those beneath `work_dir` are looked up inside
    /// the sandbox only (the job controls them).
    pub argv: Vec<String>,
    /// The complete environment of the program (the caller scrubbed it). Values may hold
    /// credentials: `Debug` prints names only.
    pub env: Vec<(String, String)>,
    /// Host directory bind-mounted read-write at the same path; the only writable place besides
    /// a private `/tmp`. Must be canonical (no symlinks, `.` or `..`).
    pub work_dir: PathBuf,
    /// Working directory inside the sandbox (absolute; usually `work_dir` or below).
    pub cwd: PathBuf,
    /// Extra host paths bound read-only at the same path (canonical; files or directories).
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Network access.
    pub network: Network,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Wall-clock deadline (Unix ms); the jailer SIGKILLs the whole tree at this time.
    #[serde(default)]
    pub deadline_unix_ms: Option<u64>,
    /// Host path (outside the work dir and the read-only binds) where the jailer writes the
    /// final [`crate::Status`] as JSON, atomically.
    pub status_file: PathBuf,
    /// Which layers must be present; see [`Level`].
    pub required: Level,
    /// Hostname inside the sandbox (own UTS namespace).
    pub hostname: String,
    /// Host uid the sandbox's root maps to when the jailer runs as root (default
    /// [`DEFAULT_HOST_ID`], "nobody"); the work dir is chowned to it. The agent gives every
    /// concurrent job an id of its own from a subordinate range, so jobs are apart from each
    /// other and from every other service. Ignored when the jailer is not root: then the
    /// caller's own uid/gid are mapped.
    #[serde(default)]
    pub host_id: Option<u32>,
    /// Host gid the sandbox's root group maps to when the jailer runs as root (default:
    /// `host_id`, else [`DEFAULT_HOST_ID`]).
    #[serde(default)]
    pub host_gid: Option<u32>,
    /// With [`Network::Host`]: destinations the job may not reach (cloud metadata services).
    /// The jailer attaches cgroup BPF programs to the job's cgroup v2 that refuse `connect` and
    /// `sendmsg` to them (`EPERM`) and drop any other packet to them; if it cannot, the run fails.
    /// Ignored with [`Network::None`], which has no route anywhere.
    #[serde(default)]
    pub blocked_destinations: Vec<IpAddr>,
    /// Where the cgroup filesystems are mounted (default `/sys/fs/cgroup`). Tests point it at a
    /// missing directory to simulate a host without cgroups.
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
}

/// Network access of the sandboxed program.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    /// A new network namespace with only loopback (up): no route to the host or anywhere else.
    None,
    /// The host's network namespace (needed for providers that call cloud APIs).
    Host,
}

/// Resource limits; `None` means "no limit from us" (the host's limits still apply).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (and swap) of the whole job, via the cgroup memory controller.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Processes and threads of the whole job, via the cgroup pids controller.
    #[serde(default)]
    pub pids: Option<u64>,
    /// `RLIMIT_NOFILE`, per process.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// `RLIMIT_FSIZE`, per file written.
    #[serde(default)]
    pub file_size_bytes: Option<u64>,
    /// `RLIMIT_CPU`, per process (SIGXCPU at the limit, SIGKILL one second later).
    #[serde(default)]
    pub cpu_seconds: Option<u64>,
}

/// How much isolation a run requires. Missing layers are never skipped silently: a skipped
/// layer is named in [`crate::Status::skipped`] and in a warning on the job's stderr.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Every layer is required; a missing one fails the run with an error naming it.
    Strict,
    /// Every layer except the listed ones is required; listed ones are still applied when the
    /// host supports them. Only an operator's explicit choice should produce this.
    Relaxed {
        /// Layers that may be missing.
        allow_missing: Vec<Layer>,
    },
}

/// The layers a host can lack for reasons outside our control. Namespaces, the minimal root,
/// `no_new_privs`, capability dropping and rlimits are not listed: without them there is no
/// sandbox, so they are always required.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Landlock (Linux ≥ 5.13, enabled in the LSM list).
    Landlock,
    /// The seccomp deny list (x86_64 and aarch64 only).
    Seccomp,
    /// The cgroup memory controller (only needed when `limits.memory_bytes` is set).
    MemoryLimit,
    /// The cgroup pids controller (only needed when `limits.pids` is set).
    PidsLimit,
    /// Landlock's scopes (ABI 6, Linux ≥ 6.12): no connecting to abstract Unix sockets or
    /// signalling processes outside the sandbox. Only needed with [`Network::Host`]: there the
    /// host's abstract sockets (D-Bus, containerd, X11, …) are otherwise reachable.
    LandlockScope,
}

impl Level {
    /// Whether `layer` may be missing at this level.
    pub fn allows_missing(&self, layer: Layer) -> bool {
        match self {
            Level::Strict => false,
            Level::Relaxed { allow_missing } => allow_missing.contains(&layer),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Level::Strict => "strict",
            Level::Relaxed { .. } => "relaxed",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
            Layer::MemoryLimit => "cgroup memory",
            Layer::PidsLimit => "cgroup pids",
            Layer::LandlockScope => "landlock scope",
        })
    }
}

/// A spec that cannot be run safely. Messages name the field and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `argv` is empty or its program name is empty.
    #[error("argv: empty program")]
    EmptyArgv,
    /// A string that must become a C string contains a NUL byte.
    #[error("{field}: contains a NUL byte")]
    Nul {
        /// The field.
        field: &'static str,
    },
    /// An environment variable name is empty or contains `=`.
    #[error("env: invalid variable name {0:?}")]
    EnvName(String),
    /// The same environment variable is given twice.
    #[error("env: duplicate variable {0:?}")]
    EnvDuplicate(String),
    /// A path is relative or contains `.`/`..`.
    #[error("{field}: {path:?} must be absolute and normalized (no `.`, `..`)")]
    NotAbsolute {
        /// The field.
        field: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A bind would replace or hide a path the sandbox provides (or expose all of the host).
    #[error("{field}: {path:?} would replace or expose a system path the sandbox controls ({reserved})")]
    Reserved {
        /// The field.
        field: &'static str,
        /// The path.
        path: PathBuf,
        /// The system path it collides with.
        reserved: &'static str,
    },
    /// The status file is inside a path the sandboxed program can see.
    #[error("status_file: {0:?} must be outside work_dir and read_only (the job could plant a symlink there)")]
    StatusInside(PathBuf),
    /// The hostname is not a valid hostname.
    #[error("hostname: {0:?} must be 1-64 characters of [A-Za-z0-9.-]")]
    Hostname(String),
    /// A limit of 0 (use `None` for no limit).
    #[error("limits.{0}: 0 is not a usable limit (use null for no limit)")]
    ZeroLimit(&'static str),
    /// A path is not canonical on this host (jailer-side check).
    #[error("{field}: {path:?} is not canonical on this host (resolves to {resolved:?})")]
    NotCanonical {
        /// The field.
        field: &'static str,
        /// The given path.
        path: PathBuf,
        /// What it resolves to.
        resolved: PathBuf,
    },
    /// A path does not exist or cannot be inspected (jailer-side check).
    #[error("{field}: {path:?}: {source}")]
    Missing {
        /// The field.
        field: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `work_dir` is not a directory (jailer-side check).
    #[error("work_dir: {0:?} is not a directory")]
    WorkDirNotDir(PathBuf),
}

impl Spec {
    /// A spec with the usual defaults: empty environment, `cwd` = `work_dir`, no network, no
    /// limits, no deadline, [`Level::Strict`], hostname `keyward`.
    pub fn new(argv: Vec<String>, work_dir: PathBuf, status_file: PathBuf) -> Spec {
        Spec {
            argv,
            env: Vec::new(),
            cwd: work_dir.clone(),
            work_dir,
            read_only: Vec::new(),
            network: Network::None,
            limits: Limits::default(),
            deadline_unix_ms: None,
            status_file,
            required: Level::Strict,
            hostname: "keyward".to_owned(),
            host_id: None,
            host_gid: None,
            blocked_destinations: Vec::new(),
            cgroup_root: None,
        }
    }

    /// Checks that need no filesystem access. [`crate::command`] calls this so a bad spec fails
    /// in the agent with a clear error; the jailer checks again, plus the filesystem.
    pub fn validate(&self) -> Result<(), SpecError> {
        let program = self.argv.first().ok_or(SpecError::EmptyArgv)?;
        if program.is_empty() {
            return Err(SpecError::EmptyArgv);
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err(SpecError::Nul { field: "argv" });
        }
        let mut seen = HashSet::new();
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(SpecError::EnvName(name.clone()));
            }
            if value.contains('\0') {
                return Err(SpecError::Nul { field: "env" });
            }
            if !seen.insert(name.as_str()) {
                return Err(SpecError::EnvDuplicate(name.clone()));
            }
        }
        absolute("work_dir", &self.work_dir)?;
        bind_target("work_dir", &self.work_dir)?;
        absolute("cwd", &self.cwd)?;
        for path in &self.read_only {
            absolute("read_only", path)?;
            bind_target("read_only", path)?;
        }
        absolute("status_file", &self.status_file)?;
        if self.status_file.parent().is_none() || self.status_file == Path::new("/") {
            return Err(SpecError::NotAbsolute { field: "status_file", path: self.status_file.clone() });
        }
        if std::iter::once(&self.work_dir).chain(&self.read_only).any(|p| self.status_file.starts_with(p)) {
            return Err(SpecError::StatusInside(self.status_file.clone()));
        }
        let h = &self.hostname;
        if h.is_empty() || h.len() > 64 || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(SpecError::Hostname(h.clone()));
        }
        let l = &self.limits;
        for (name, value) in [
            ("memory_bytes", l.memory_bytes),
            ("pids", l.pids),
            ("open_files", l.open_files),
            ("file_size_bytes", l.file_size_bytes),
            ("cpu_seconds", l.cpu_seconds),
        ] {
            if value == Some(0) {
                return Err(SpecError::ZeroLimit(name));
            }
        }
        Ok(())
    }
}

/// Absolute, and made only of normal components (so lexical prefix checks mean something).
fn absolute(field: &'static str, path: &Path) -> Result<(), SpecError> {
    if !is_normal_absolute(path) {
        return Err(SpecError::NotAbsolute { field, path: path.to_owned() });
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(SpecError::Nul { field });
    }
    Ok(())
}

/// Absolute and in normal form: no `.`, `..`, repeated or trailing `/`.
pub(crate) fn is_normal_absolute(path: &Path) -> bool {
    let mut components = path.components();
    let rooted = components.next() == Some(Component::RootDir);
    // `components()` silently drops `.` and repeated `/`: also require the written form to be
    // the normal form, so the path the operator reads is the path that gets bound.
    let normal: PathBuf = path.components().collect();
    rooted && components.all(|c| matches!(c, Component::Normal(_))) && normal.as_os_str() == path.as_os_str()
}

/// A user bind may sit below `/usr` or `/tmp`, but may not be `/`, a system path, a parent of
/// one (that would expose `/etc/shadow` or hide the read-only `/usr`), or inside `/proc`/`/dev`.
fn bind_target(field: &'static str, path: &Path) -> Result<(), SpecError> {
    for reserved in RESERVED {
        let r = Path::new(reserved);
        let inside_virtual = (*reserved == "/proc" || *reserved == "/dev") && path.starts_with(r);
        if r.starts_with(path) || inside_virtual {
            return Err(SpecError::Reserved { field, path: path.to_owned(), reserved });
        }
    }
    Ok(())
}

/// Filesystem checks, run by the jailer on the host before anything is created: paths exist
/// and are canonical (so the inside path equals the host path and no symlink redirects a bind),
/// and the status file's directory is not inside a bind.
pub(crate) fn validate_on_host(spec: &Spec) -> Result<(), SpecError> {
    canonical("work_dir", &spec.work_dir)?;
    let meta = std::fs::metadata(&spec.work_dir).map_err(|source| SpecError::Missing {
        field: "work_dir",
        path: spec.work_dir.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(SpecError::WorkDirNotDir(spec.work_dir.clone()));
    }
    for path in &spec.read_only {
        canonical("read_only", path)?;
    }
    let parent = spec.status_file.parent().unwrap_or(Path::new("/"));
    let resolved = std::fs::canonicalize(parent).map_err(|source| SpecError::Missing {
        field: "status_file",
        path: parent.to_owned(),
        source,
    })?;
    if std::iter::once(&spec.work_dir).chain(&spec.read_only).any(|p| resolved.starts_with(p)) {
        return Err(SpecError::StatusInside(spec.status_file.clone()));
    }
    Ok(())
}

fn canonical(field: &'static str, path: &Path) -> Result<(), SpecError> {
    let resolved =
        std::fs::canonicalize(path).map_err(|source| SpecError::Missing { field, path: path.to_owned(), source })?;
    if resolved != path {
        return Err(SpecError::NotCanonical { field, path: path.to_owned(), resolved });
    }
    Ok(())
}

/// Prints environment variable names only: values hold the job's credentials.
impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Names<'a>(&'a [(String, String)]);
        impl fmt::Debug for Names<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
            }
        }
        f.debug_struct("Spec")
            .field("argv", &self.argv)
            .field("env", &Names(&self.env))
            .field("work_dir", &self.work_dir)
            .field("cwd", &self.cwd)
            .field("read_only", &self.read_only)
            .field("network", &self.network)
            .field("limits", &self.limits)
            .field("deadline_unix_ms", &self.deadline_unix_ms)
            .field("status_file", &self.status_file)
            .field("required", &self.required)
            .field("hostname", &self.hostname)
            .field("host_id", &self.host_id)
            .field("host_gid", &self.host_gid)
            .field("blocked_destinations", &self.blocked_destinations)
            .field("cgroup_root", &self.cgroup_root)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec::new(vec!["sh".into()], "/var/lib/keyward/jobs/1".into(), "/var/lib/keyward/status/1.json".into())
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn binds_may_not_expose_or_replace_system_paths() {
        for bad in ["/", "/etc", "/usr", "/proc/1", "/dev/shm"] {
            let mut s = spec();
            s.work_dir = bad.into();
            assert!(matches!(s.validate(), Err(SpecError::Reserved { .. })), "{bad}");
            let mut s = spec();
            s.read_only = vec![bad.into()];
            assert!(matches!(s.validate(), Err(SpecError::Reserved { .. })), "{bad}");
        }
        let mut s = spec();
        s.work_dir = "/tmp/job".into();
        s.read_only = vec!["/usr/share/terraform/plugins".into()];
        assert!(s.validate().is_ok());
    }

    #[test]
    fn paths_must_be_absolute_and_normalized() {
        for bad in ["relative", "/a/../etc", "/a/./b", "/a//b", "/a/b/"] {
            let mut s = spec();
            s.work_dir = bad.into();
            assert!(matches!(s.validate(), Err(SpecError::NotAbsolute { .. })), "{bad}");
        }
    }

    #[test]
    fn status_file_must_not_be_reachable_from_inside() {
        let mut s = spec();
        s.status_file = s.work_dir.join("status.json");
        assert!(matches!(s.validate(), Err(SpecError::StatusInside(_))));
    }

    #[test]
    fn env_names_and_limits_are_checked() {
        let mut s = spec();
        s.env = vec![("A=B".into(), "x".into())];
        assert!(matches!(s.validate(), Err(SpecError::EnvName(_))));
        let mut s = spec();
        s.env = vec![("A".into(), "1".into()), ("A".into(), "2".into())];
        assert!(matches!(s.validate(), Err(SpecError::EnvDuplicate(_))));
        let mut s = spec();
        s.limits.pids = Some(0);
        assert!(matches!(s.validate(), Err(SpecError::ZeroLimit("pids"))));
        let mut s = spec();
        s.hostname = "a b".into();
        assert!(matches!(s.validate(), Err(SpecError::Hostname(_))));
    }

    #[test]
    fn debug_prints_env_names_not_values() {
        let mut s = spec();
        s.env = vec![("AWS_SECRET_ACCESS_KEY".into(), "hunter2-secret".into())];
        let printed = format!("{s:?}");
        assert!(printed.contains("AWS_SECRET_ACCESS_KEY"));
        assert!(!printed.contains("hunter2"));
    }

    #[test]
    fn json_round_trips_and_rejects_unknown_fields() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(format!("{back:?}"), format!("{s:?}"));
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["netwrok"] = serde_json::Value::Bool(true);
        assert!(serde_json::from_value::<Spec>(value).is_err());
    }
}
