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
//! Several agents may share a host and a range (the built-in default, say): each takes the first
//! block of `--capacity` consecutive ids of the range that no other agent holds (an exclusive
//! `flock` per uid in `/run/keyward-agent/`, held for the agent's life), no process runs as
//! and no user or group of the host owns. Only when no block is free does it refuse to start.
//! At start it also removes what an earlier run left in `jobs/`.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{Flock, FlockArg};

use crate::idrange::{IdRange, JobIds};

/// Where agents on a host lock the uids they use (root's, on a tmpfs cleared at boot).
pub const LOCK_DIR: &str = "/run/keyward-agent";

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
    /// No block of the range is free for this agent.
    #[error("no {capacity} consecutive ids of {origin} are free for this agent's job slots: {why}")]
    NoFreeIds {
        /// How many it needs.
        capacity: u32,
        /// Where the range came from.
        origin: String,
        /// Why the first block is not free (each later one was not either).
        why: String,
    },
    /// Every slot is busy (the broker sent more jobs than the capacity) or not yet clean.
    #[error("no free job slot: {0}")]
    NoneFree(String),
}

/// The agent's job slots.
#[derive(Debug)]
pub struct Slots {
    dir: PathBuf,
    /// Slot `i` runs as `ids.slot(first + i)`.
    ids: Option<(IdRange, u32)>,
    busy: Mutex<Vec<bool>>,
    /// The uid locks, held as long as the slots exist.
    _locks: Vec<Flock<std::fs::File>>,
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
    /// ids from `ids` when the agent is root, claimed with locks in `lock_dir` ([`LOCK_DIR`]).
    pub fn open(
        jobs_dir: PathBuf,
        capacity: u32,
        ids: Option<IdRange>,
        lock_dir: &Path,
    ) -> Result<Arc<Self>, SlotsError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SlotsError::Io { path, source }
        };
        private_dir(&jobs_dir)?;
        for entry in std::fs::read_dir(&jobs_dir).map_err(io(&jobs_dir))? {
            let path = entry.map_err(io(&jobs_dir))?.path();
            remove(&path).map_err(io(&path))?;
        }
        let (ids, locks) = match ids {
            Some(range) => {
                private_dir(lock_dir)?;
                let (first, locks) = claim(&range, capacity, lock_dir)?;
                (Some((range, first)), locks)
            }
            None => (None, Vec::new()),
        };
        let slots = usize::try_from(capacity).unwrap_or(1);
        Ok(Arc::new(Self { dir: jobs_dir, ids, busy: Mutex::new(vec![false; slots]), _locks: locks }))
    }

    /// The uid and gid of the first slot, if the slots have their own.
    pub fn first_ids(&self) -> Option<JobIds> {
        self.ids.as_ref().map(|(range, first)| range.slot(*first))
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
            let index_id = u32::try_from(index).unwrap_or(u32::MAX);
            let ids = self.ids.as_ref().map(|(range, first)| range.slot(first.saturating_add(index_id)));
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

/// Creates `dir` 0700 if needed and checks it is a directory of the agent's own.
fn private_dir(dir: &Path) -> Result<(), SlotsError> {
    let io = |source| SlotsError::Io { path: dir.to_path_buf(), source };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.map_err(io)?,
    }
    let meta = std::fs::symlink_metadata(dir).map_err(io)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SlotsError::NotOurs(dir.to_path_buf()));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// The first block of `capacity` consecutive ids of `range` that this agent can have: no other
/// agent holds their locks, no process runs as them, no user or group owns them. Returns the
/// block's offset in the range and its locks.
fn claim(range: &IdRange, capacity: u32, lock_dir: &Path) -> Result<(u32, Vec<Flock<std::fs::File>>), SlotsError> {
    let running = running_uids();
    let mut first_reason = None;
    let mut offset = 0u32;
    while offset.checked_add(capacity).is_some_and(|end| end <= range.count) {
        match claim_block(range, offset, capacity, lock_dir, &running) {
            Ok(locks) => return Ok((offset, locks)),
            Err(why) => {
                first_reason.get_or_insert(why);
            }
        }
        offset += capacity;
    }
    Err(SlotsError::NoFreeIds {
        capacity,
        origin: range.source.to_string(),
        why: first_reason.unwrap_or_else(|| "the range is empty".to_owned()),
    })
}

fn claim_block(
    range: &IdRange,
    offset: u32,
    capacity: u32,
    lock_dir: &Path,
    running: &HashMap<u32, u32>,
) -> Result<Vec<Flock<std::fs::File>>, String> {
    let mut locks = Vec::new();
    for index in offset..offset + capacity {
        let JobIds { uid, gid } = range.slot(index);
        let path = lock_dir.join(format!("uid-{uid}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| format!("another keyward-agent uses uid {uid} (it holds {})", path.display()))?;
        locks.push(lock);
        if let Some(pid) = running.get(&uid) {
            return Err(format!(
                "process {pid} runs as uid {uid} (a job of an agent that stopped uncleanly, or another program)"
            ));
        }
        if let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
            return Err(format!("uid {uid} belongs to user `{}`", user.name));
        }
        if let Ok(Some(group)) = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
            return Err(format!("gid {gid} belongs to group `{}`", group.name));
        }
    }
    Ok(locks)
}

/// Every uid a process runs as (real, effective, saved or filesystem), with one such process.
fn running_uids() -> HashMap<u32, u32> {
    let mut running = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return running };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // A process that ended meanwhile has no status: nothing to say about it.
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else { continue };
        for uid in process_uids(&status) {
            running.entry(uid).or_insert(pid);
        }
    }
    running
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
        let locks = tempfile::tempdir().expect("locks");
        let slots = Slots::open(jobs.clone(), 2, Some(range()), locks.path()).expect("open");
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
        let slots = Slots::open(data.path().join("jobs"), 1, None, Path::new("/nonexistent")).expect("open");
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
    fn agents_sharing_a_range_take_different_blocks_and_a_full_range_is_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let locks = tempfile::tempdir().expect("locks");
        let first = Slots::open(data.path().join("a"), 4, Some(range()), locks.path()).expect("first agent");
        let second = Slots::open(data.path().join("b"), 4, Some(range()), locks.path()).expect("second agent");
        assert_eq!(first.first_ids().map(|ids| ids.uid), Some(2_080_374_784));
        assert_eq!(second.first_ids().map(|ids| ids.uid), Some(2_080_374_788), "the next block of 4");
        let small = IdRange { count: 4, source: Source::Flag, ..range() };
        let refused = Slots::open(data.path().join("c"), 4, Some(small.clone()), locks.path()).expect_err("full");
        assert!(
            refused.to_string().starts_with(
                "no 4 consecutive ids of --id-range are free for this agent's job slots: another keyward-agent uses \
                 uid 2080374784"
            ),
            "{refused}"
        );
        drop(first);
        assert!(Slots::open(data.path().join("c"), 4, Some(small), locks.path()).is_ok(), "free once it stopped");
    }

    #[test]
    fn ids_a_user_or_a_process_has_are_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let locks = tempfile::tempdir().expect("locks");
        let ours = nix::unistd::getuid().as_raw();
        let taken = IdRange { uid_start: ours, gid_start: 2_080_374_784, count: 1, source: Source::Flag };
        let error = Slots::open(data.path().join("jobs"), 1, Some(taken), locks.path()).expect_err("our own uid");
        // This test's process runs as our uid (and root, here, has a passwd entry).
        assert!(error.to_string().contains(&format!("runs as uid {ours}")), "{error}");
    }
}
