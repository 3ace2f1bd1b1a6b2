//! Job slots: where a running job's files live, and which host uid and gid it runs as
//! (security review M6).
//!
//! ```text
//! <data dir>/jobs/          0700, the agent's; never under /tmp
//!   slot-0/                 0700, one job at a time
//!     keyward-job-…/        its credential files (handed to the slot's uid, read-only)
//!     run-…/{work,scratch,plans}
//!   slot-1/ …
//! ```
//!
//! There are as many slots as the agent runs jobs at once (`--capacity`). When the agent is
//! root, slot `i` has the `i`-th uid and gid of the agent's [`IdRange`]: jobs running at the
//! same time never share an id, with each other or with any other service. A slot is taken
//! again only once its job has ended (the jailers have exited, and the kernel killed whatever
//! was left in their PID namespaces) and its directory is gone; a directory that could not be
//! removed keeps its slot out of use until it can be. When the agent is not root, jobs run as
//! its own uid, as before ([`Slot::ids`] is `None`).
//!
//! At start the agent removes what an earlier run left in `jobs/`, and refuses to start while a
//! process runs as one of its slot ids (a job of an agent that died, or another agent given the
//! same range).

use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::idrange::{IdRange, JobIds};

/// Why the slots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    /// The jobs directory could not be made private, or a leftover removed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The jobs directory is not a directory of the agent's own.
    #[error("{0} is not a directory owned by the agent's user (a symlink?): remove it")]
    NotOurs(PathBuf),
    /// A process runs as a slot's uid.
    #[error(
        "process {pid} runs as uid {uid}, which this agent gives to job slot {slot}: a job of an agent that \
         stopped uncleanly, or another agent with the same id range; stop it, or give this agent another --id-range"
    )]
    IdInUse {
        /// The process.
        pid: u32,
        /// Its uid.
        uid: u32,
        /// The slot.
        slot: u32,
    },
    /// A user or group of the host already has a slot's id.
    #[error("{kind} {id} of {origin} belongs to `{name}`: give the agent a range nobody uses (--id-range)")]
    IdTaken {
        /// `uid` or `gid`.
        kind: &'static str,
        /// The id.
        id: u32,
        /// Its owner's name.
        name: String,
        /// Where the range came from.
        origin: String,
    },
    /// Every slot is busy (the broker sent more jobs than the capacity) or not yet clean.
    #[error("no free job slot: {0}")]
    NoneFree(String),
}

/// The agent's job slots.
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    ids: Option<IdRange>,
    busy: Mutex<Vec<bool>>,
}

/// A slot held by a running job. Dropping it removes the slot's directory and frees it.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    index: usize,
    dir: PathBuf,
    ids: Option<JobIds>,
}

impl Slots {
    /// `capacity` slots in `jobs_dir` (created 0700, emptied of what an earlier run left), with
    /// ids from `ids` when the agent is root.
    pub fn open(jobs_dir: PathBuf, capacity: u32, ids: Option<IdRange>) -> Result<Arc<Self>, SlotsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlotsError::Io { path, source }
        };
        match std::fs::DirBuilder::new().mode(0o700).create(&jobs_dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => other.map_err(io(&jobs_dir))?,
        }
        let meta = std::fs::symlink_metadata(&jobs_dir).map_err(io(&jobs_dir))?;
        if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(SlotsError::NotOurs(jobs_dir));
        }
        std::fs::set_permissions(&jobs_dir, std::fs::Permissions::from_mode(0o700)).map_err(io(&jobs_dir))?;
        for entry in std::fs::read_dir(&jobs_dir).map_err(io(&jobs_dir))? {
            let path = entry.map_err(io(&jobs_dir))?.path();
            remove(&path).map_err(io(&path))?;
        }
        if let Some(range) = &ids {
            check_ids_unused(range, capacity)?;
        }
        let slots = usize::try_from(capacity).unwrap_or(1);
        Ok(Arc::new(Self { dir: jobs_dir, ids, busy: Mutex::new(vec![false; slots]) }))
    }

    /// The jobs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A free slot whose directory is gone, with its directory created afresh (0700).
    pub fn acquire(self: &Arc<Self>) -> Result<Slot, SlotsError> {
        let mut busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut unclean = Vec::new();
        for (index, taken) in busy.iter_mut().enumerate() {
            if *taken {
                continue;
            }
            let dir = self.dir.join(format!("slot-{index}"));
            // What an earlier job of this slot left (its removal failed then): gone first, or
            // the slot stays out of use.
            if let Err(error) = remove(&dir) {
                unclean.push(format!("{}: {error}", dir.display()));
                continue;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|source| SlotsError::Io { path: dir.clone(), source })?;
            *taken = true;
            let ids = self.ids.as_ref().map(|range| range.slot(u32::try_from(index).unwrap_or(u32::MAX)));
            return Ok(Slot { slots: Arc::clone(self), index, dir, ids });
        }
        Err(SlotsError::NoneFree(if unclean.is_empty() {
            format!("all {} are running jobs", busy.len())
        } else {
            format!("the files of earlier jobs could not be removed ({})", unclean.join("; "))
        }))
    }
}

impl Slot {
    /// The slot's private directory: the job's credential files and work directories go here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host uid and gid the job runs as; `None` when the agent is not root (its own).
    pub fn ids(&self) -> Option<JobIds> {
        self.ids
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Err(error) = remove(&self.dir) {
            // The slot is freed, but `acquire` removes the directory before anyone reuses it,
            // and skips the slot while it cannot.
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove a finished job's files");
        }
        if let Some(taken) = self.slots.busy.lock().unwrap_or_else(PoisonError::into_inner).get_mut(self.index) {
            *taken = false;
        }
    }
}

/// Removes `path` (a directory tree or a file, never following a symlink); absent is fine.
fn remove(path: &Path) -> std::io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// No user or group of the host has a slot's id, and no process runs as one.
fn check_ids_unused(range: &IdRange, capacity: u32) -> Result<(), SlotsError> {
    for index in 0..capacity {
        let ids = range.slot(index);
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(ids.uid)) {
            return Err(SlotsError::IdTaken {
                kind: "uid",
                id: ids.uid,
                name: user.name,
                origin: range.source.to_string(),
            });
        }
        if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(ids.gid)) {
            return Err(SlotsError::IdTaken {
                kind: "gid",
                id: ids.gid,
                name: group.name,
                origin: range.source.to_string(),
            });
        }
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return Ok(()) };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process that ended meanwhile has no status: nothing to say about it.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        for uid in process_uids(&status) {
            if let Some(slot) = (0..capacity).find(|&index| range.slot(index).uid == uid) {
                return Err(SlotsError::IdInUse { pid, uid, slot });
            }
        }
    }
    Ok(())
}

/// The real, effective, saved and filesystem uids of a `/proc/<pid>/status`.
fn process_uids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .map(|ids| ids.split_whitespace().filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idrange::Source;

    fn range() -> IdRange {
        IdRange { uid_start: 2_080_374_784, gid_start: 2_080_374_784, count: 65_536, source: Source::Default }
    }

    #[test]
    fn slots_have_distinct_ids_and_are_reused_only_once_their_files_are_gone() {
        let data = tempfile::tempdir().expect("tempdir");
        let jobs = data.path().join("jobs");
        std::fs::create_dir(&jobs).expect("jobs");
        std::fs::write(jobs.join("left-over"), b"x").expect("leftover");
        std::fs::set_permissions(&jobs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let slots = Slots::open(jobs.clone(), 2, Some(range())).expect("open");
        assert_eq!(std::fs::metadata(&jobs).expect("meta").permissions().mode() & 0o777, 0o700);
        assert!(!jobs.join("left-over").exists(), "an earlier run's files are removed");

        let first = slots.acquire().expect("first");
        let second = slots.acquire().expect("second");
        assert_ne!(first.ids(), second.ids());
        assert_eq!(first.ids().map(|ids| ids.uid), Some(2_080_374_784));
        assert_eq!(std::fs::metadata(first.dir()).expect("meta").permissions().mode() & 0o777, 0o700);
        assert!(matches!(slots.acquire(), Err(SlotsError::NoneFree(_))), "no third slot");

        let dir = first.dir().to_path_buf();
        std::fs::write(dir.join("credential"), b"secret").expect("file");
        drop(first);
        assert!(!dir.exists(), "a finished job's files are removed");
        let again = slots.acquire().expect("the freed slot");
        assert_eq!(again.ids().map(|ids| ids.uid), Some(2_080_374_784));
    }

    /// Makes `file` impossible to remove (immutable for root, a read-only parent otherwise),
    /// or possible again.
    fn stick(file: &Path, stuck: bool) {
        if nix::unistd::geteuid().is_root() {
            let flag = if stuck { "+i" } else { "-i" };
            let status = std::process::Command::new("chattr").arg(flag).arg(file).status().expect("chattr");
            assert!(status.success(), "chattr {flag} {}", file.display());
        } else {
            let mode = if stuck { 0o500 } else { 0o700 };
            let parent = file.parent().expect("parent");
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }

    #[test]
    fn a_slot_whose_files_remain_is_not_reused() {
        let data = tempfile::tempdir().expect("tempdir");
        let slots = Slots::open(data.path().join("jobs"), 1, None).expect("open");
        let slot = slots.acquire().expect("slot");
        assert_eq!(slot.ids(), None, "no range: the agent's own uid");
        let dir = slot.dir().to_path_buf();
        std::fs::create_dir(dir.join("stuck")).expect("dir");
        let file = dir.join("stuck/file");
        std::fs::write(&file, b"x").expect("file");
        stick(&file, true);
        drop(slot);
        let refused = slots.acquire();
        stick(&file, false);
        let refused = refused.expect_err("the files are still there");
        assert!(refused.to_string().contains("could not be removed"), "{refused}");
        assert!(slots.acquire().is_ok(), "clean again: reused");
    }

    #[test]
    fn uids_are_read_from_proc_status() {
        assert_eq!(process_uids("Name:\tsh\nUid:\t0\t1\t2\t3\nGid:\t4\t4\t4\t4\n"), vec![0, 1, 2, 3]);
        assert_eq!(process_uids("Name:\tsh\n"), Vec::<u32>::new());
    }

    #[test]
    fn a_range_whose_id_belongs_to_a_user_or_process_is_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let ours = nix::unistd::getuid().as_raw();
        let taken = IdRange { uid_start: ours, gid_start: 2_080_374_784, count: 1, source: Source::Flag };
        let error = Slots::open(data.path().join("jobs"), 1, Some(taken)).expect_err("our own uid");
        // Our uid has a passwd entry (root here), or at least a process: this test's.
        assert!(matches!(error, SlotsError::IdTaken { kind: "uid", .. } | SlotsError::IdInUse { .. }), "{error}");
    }
}
