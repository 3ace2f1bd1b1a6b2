//! Per-job cgroup: the memory and pids limits of the whole job, and how we learn that a limit
//! was hit.
//!
//! Why it exists: rlimits are per process, so a fork bomb or a job that spreads its memory over
//! many processes escapes them; a cgroup bounds the whole tree, and every descendant inherits
//! it. Defends against: fork bombs (`pids.max`), memory exhaustion of the host (memory limit,
//! swap included where the kernel accounts it).
//!
//! Placement: the job cgroup is `<hierarchy>/<jailer's own cgroup>/keyward/<jailer pid>-<ns>`,
//! i.e. nested under whatever cgroup the agent was started in, so the agent's own limits and
//! accounting still cover its jobs. cgroup v2 is used per controller when the jailer's v2
//! cgroup lists it in `cgroup.controllers`; otherwise the v1 hierarchy mounted at
//! `<root>/<controller>` is used. On v2 the agent's cgroup must be able to delegate (the root,
//! or a cgroup whose processes live in a leaf): v2 forbids enabling controllers for children of
//! a cgroup that has processes itself, and we report that clearly rather than work around it.
//!
//! The jailer puts the namespace init into the job cgroup while that process is still paused
//! at the id-map handshake, before it can run anything, and stays outside itself so that it
//! can remove the cgroup once the tree is dead. Cgroups left behind by a jailer that was
//! SIGKILLed are removed by the next jailer that finds their creator's pid gone.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, FsType, statfs};

use crate::spec::Limits;

/// The default mount point of the cgroup filesystems.
pub(crate) const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Processes in the job cgroup that are not the program's: the namespace init. `pids.max` is
/// the program's limit plus these, so `limits.pids` means what it says.
const INIT_PROCESSES: u64 = 1;

/// A controller this crate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

/// Where the jailer's own cgroup for a controller lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    V1(PathBuf),
    V2(PathBuf),
}

impl Place {
    fn version(&self) -> &'static str {
        match self {
            Place::V1(_) => "v1",
            Place::V2(_) => "v2",
        }
    }
}

/// Result of looking for the controllers on this host.
#[derive(Debug)]
pub(crate) struct Detected {
    pub(crate) memory: Result<Place, String>,
    pub(crate) pids: Result<Place, String>,
    /// The calling process's own cgroup v2 directory, with or without controllers (the egress
    /// filter's programs attach to a child of it).
    pub(crate) v2: Result<PathBuf, String>,
}

impl Detected {
    pub(crate) fn get(&self, controller: Controller) -> &Result<Place, String> {
        match controller {
            Controller::Memory => &self.memory,
            Controller::Pids => &self.pids,
        }
    }
}

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CgroupError {
    /// Reading or writing a cgroup file failed.
    #[error("cgroup: {path:?}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// cgroup v2's no-internal-processes rule.
    #[error(
        "cgroup v2: cannot enable {controllers} in {path:?} because that cgroup has processes; \
         start the agent in a leaf cgroup of a delegated subtree (e.g. systemd Delegate=yes)"
    )]
    V2Busy { path: PathBuf, controllers: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_owned(), source }
}

fn is_fs(path: &Path, magic: FsType) -> bool {
    statfs(path).map(|s| s.filesystem_type() == magic).unwrap_or(false)
}

fn join_cgroup_path(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

/// Find the memory and pids controllers for the calling process under `root`.
pub(crate) fn detect(root: &Path) -> Detected {
    let own = match std::fs::read_to_string("/proc/self/cgroup") {
        Ok(own) => own,
        Err(e) => {
            let reason = format!("cannot read /proc/self/cgroup: {e}");
            return Detected { memory: Err(reason.clone()), pids: Err(reason.clone()), v2: Err(reason) };
        }
    };
    let mut v2_base = None;
    let mut v1: Vec<(&str, PathBuf)> = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if controllers.is_empty() {
            v2_base = [root.to_owned(), root.join("unified")]
                .into_iter()
                .find(|mount| is_fs(mount, CGROUP2_SUPER_MAGIC))
                .map(|mount| join_cgroup_path(&mount, path));
            continue;
        }
        for controller in controllers.split(',').filter(|c| *c == "memory" || *c == "pids") {
            let mount = [root.join(controllers), root.join(controller)]
                .into_iter()
                .find(|mount| is_fs(mount, CGROUP_SUPER_MAGIC));
            if let Some(mount) = mount {
                v1.push((controller, join_cgroup_path(&mount, path)));
            }
        }
    }
    let v2_controllers: HashSet<String> = v2_base
        .as_ref()
        .and_then(|base| std::fs::read_to_string(base.join("cgroup.controllers")).ok())
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let find = |controller: Controller| {
        let name = controller.name();
        match &v2_base {
            Some(base) if v2_controllers.contains(name) => return Ok(Place::V2(base.clone())),
            _ => {}
        }
        v1.iter().find(|(c, _)| *c == name).map(|(_, base)| Place::V1(base.clone())).ok_or_else(|| {
            format!(
                "no {name} controller under {}: cgroup2 does not list it and no v1 {name} hierarchy is mounted",
                root.display()
            )
        })
    };
    let v2 = v2_base.clone().ok_or_else(|| {
        format!(
            "no cgroup v2 hierarchy under {} (neither it nor {}/unified is cgroup2)",
            root.display(),
            root.display()
        )
    });
    Detected { memory: find(Controller::Memory), pids: find(Controller::Pids), v2 }
}

/// The job's cgroup directories (one per v1 hierarchy, or one shared v2 directory).
#[derive(Debug, Default)]
pub(crate) struct JobCgroup {
    memory: Option<(PathBuf, bool)>,
    pids: Option<PathBuf>,
    /// The job's v2 directory, when one was asked for (the egress filter's attach point).
    pub(crate) v2: Option<PathBuf>,
    created: Vec<PathBuf>,
    /// Human-readable description of what was applied, for `Status::layers`.
    pub(crate) layers: Vec<String>,
}

/// What the job's cgroup saw.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Events {
    pub(crate) oom_kills: u64,
    pub(crate) pids_max_hits: u64,
}

impl JobCgroup {
    /// Create the job cgroup for the given controllers (each with its place and limit), and a
    /// v2 directory under `v2_base` when given (controllers or not). On error, whatever was
    /// created is removed again.
    pub(crate) fn create(
        wanted: &[(Controller, Place)],
        limits: &Limits,
        v2_base: Option<&Path>,
    ) -> Result<JobCgroup, CgroupError> {
        let mut job = JobCgroup::default();
        match job.create_inner(wanted, limits, v2_base) {
            Ok(()) => Ok(job),
            Err(e) => {
                job.remove();
                Err(e)
            }
        }
    }

    fn create_inner(
        &mut self,
        wanted: &[(Controller, Place)],
        limits: &Limits,
        v2_base: Option<&Path>,
    ) -> Result<(), CgroupError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{}-{nanos}", std::process::id());
        if let Some(base) = v2_base {
            let parent = base.join("keyward");
            let dir = parent.join(&name);
            std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
            collect_garbage(&parent);
            std::fs::create_dir(&dir).map_err(io_err(&dir))?;
            self.created.push(dir.clone());
            self.v2 = Some(dir);
        }
        for (controller, place) in wanted {
            let (base, v2) = match place {
                Place::V1(base) => (base, false),
                Place::V2(base) => (base, true),
            };
            let parent = base.join("keyward");
            let dir = parent.join(&name);
            if !self.created.contains(&dir) {
                std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
                collect_garbage(&parent);
                std::fs::create_dir(&dir).map_err(io_err(&dir))?;
                self.created.push(dir.clone());
            }
            if v2 {
                enable_v2(base, controller.name())?;
                enable_v2(&parent, controller.name())?;
            }
            match controller {
                Controller::Memory => {
                    let Some(bytes) = limits.memory_bytes else { continue };
                    let swap = if v2 {
                        write(&dir.join("memory.max"), bytes)?;
                        let _ = write(&dir.join("memory.oom.group"), 1);
                        write_if_exists(&dir.join("memory.swap.max"), 0)?
                    } else {
                        write(&dir.join("memory.limit_in_bytes"), bytes)?;
                        write_if_exists(&dir.join("memory.memsw.limit_in_bytes"), bytes)?
                    };
                    let with_swap = if swap { ", swap included" } else { ", swap not accounted by this kernel" };
                    self.layers.push(format!("cgroup {} memory ({bytes} bytes{with_swap})", place.version()));
                    self.memory = Some((dir, v2));
                }
                Controller::Pids => {
                    let Some(max) = limits.pids else { continue };
                    write(&dir.join("pids.max"), max.saturating_add(INIT_PROCESSES))?;
                    self.layers.push(format!("cgroup {} pids (max {max})", place.version()));
                    self.pids = Some(dir);
                }
            }
        }
        Ok(())
    }

    /// Move `pid` (and so all its future descendants) into every job cgroup directory.
    pub(crate) fn attach(&self, pid: i32) -> Result<(), CgroupError> {
        for dir in &self.created {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io_err(&procs))?;
        }
        Ok(())
    }

    /// Limit hits recorded by the kernel (zero where unknown).
    pub(crate) fn events(&self) -> Events {
        let mut events = Events::default();
        if let Some((dir, v2)) = &self.memory {
            let file = if *v2 { "memory.events" } else { "memory.oom_control" };
            events.oom_kills = read_key(&dir.join(file), "oom_kill");
        }
        if let Some(dir) = &self.pids {
            events.pids_max_hits = read_key(&dir.join("pids.events"), "max");
        }
        events
    }

    /// Remove the job cgroup directories (the tree must be dead). Best effort: a cgroup that
    /// cannot be removed now is collected by a later jailer.
    pub(crate) fn remove(&mut self) {
        for dir in self.created.drain(..) {
            for _ in 0..100 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(10)),
                    _ => break,
                }
            }
        }
    }
}

fn write(path: &Path, value: u64) -> Result<(), CgroupError> {
    std::fs::write(path, value.to_string()).map_err(io_err(path))
}

/// Write if the file exists (optional kernel features such as swap accounting).
fn write_if_exists(path: &Path, value: u64) -> Result<bool, CgroupError> {
    match std::fs::write(path, value.to_string()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn enable_v2(dir: &Path, controller: &str) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = std::fs::read_to_string(&file).map_err(io_err(&file))?;
    if current.split_whitespace().any(|c| c == controller) {
        return Ok(());
    }
    std::fs::write(&file, format!("+{controller}")).map_err(|source| {
        if source.raw_os_error() == Some(libc::EBUSY) {
            CgroupError::V2Busy { path: dir.to_owned(), controllers: controller.to_owned() }
        } else {
            CgroupError::Io { path: file.clone(), source }
        }
    })
}

/// `key N` lines as in `memory.events`, `memory.oom_control`, `pids.events`.
fn read_key(path: &Path, key: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(path) else { return 0 };
    parse_key(&text, key)
}

fn parse_key(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Remove job cgroups whose jailer (the pid in the name) is gone. `rmdir` fails on a cgroup that
/// still has processes, so this can never pull a cgroup from under a live job.
fn collect_garbage(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split_once('-')).and_then(|(p, _)| p.parse::<i32>().ok()) else {
            continue;
        };
        if pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH) {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_event_counters() {
        assert_eq!(parse_key("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n", "oom_kill"), 3);
        assert_eq!(parse_key("low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n", "max"), 7);
        assert_eq!(parse_key("max 2\n", "oom_kill"), 0);
    }

    #[test]
    fn a_missing_root_has_no_controllers() {
        let detected = detect(Path::new("/nonexistent-cgroup-root"));
        assert!(detected.memory.is_err());
        assert!(detected.pids.is_err());
    }
}
