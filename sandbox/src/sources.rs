//! The bind sources of the job's root, opened by the jailer with its own rights before the
//! switch to the sandbox's uid.
//!
//! Why it exists: the init builds the root as the sandbox's root, an unprivileged host uid
//! (the job slot's own when the agent is root). A bind source under a directory that uid
//! cannot traverse — a work dir under the agent's data dir in `/root/.local/share` or
//! `/var/lib/keyward-agent/jobs` (0700), Terraform in `/root/bin`, a
//! test binary in a clone under `/root` (all mode 0700) — cannot be bound by path from inside
//! (`EACCES`). Neither can an `O_PATH` descriptor opened by the jailer: `/proc/self/fd/N` as a
//! bind source names a mount of the host's mount namespace, which the kernel refuses to bind
//! into another (`EINVAL`).
//!
//! So, when the jailer is root, it resolves each source while it still has the agent's
//! credentials and turns it into a *detached mount*: `open(O_PATH | O_NOFOLLOW)`, a check that
//! the descriptor names exactly the canonical path the spec validated (no symlink was followed
//! on the way, even if one appeared since the check), then `open_tree(OPEN_TREE_CLONE)`. The
//! init inherits these descriptors with its copy of the jailer's descriptor table, attaches
//! each one with `move_mount` and closes it; none survives into the program (the init forks it
//! after the root is built, and every descriptor above 2 is close-on-exec anyway).
//!
//! Cloning a mount needs CAP_SYS_ADMIN over the host's mount namespace, so a jailer that is
//! not root binds by path as before: then the sandbox's root *is* the caller's uid, with the
//! caller's groups, and reaches exactly what the caller reaches.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::rootfs::{Entry, Plan};
use crate::sys;

/// Opening a bind source failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// The source could not be opened or cloned.
    #[error("{what} {path:?}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// The opened file is not at the path the spec named (a symlink appeared on the way).
    #[error("bind source {path:?} resolved to {opened:?}: a path component changed since it was checked")]
    Moved { path: PathBuf, opened: PathBuf },
}

/// One detached mount per plan entry that binds something from the host (`None` for the
/// others); empty when the init binds by path.
#[derive(Debug, Default)]
pub(crate) struct Sources(Vec<Option<OwnedFd>>);

impl Sources {
    /// Jailer side, before cloning the init: open and clone every source of `plan`, or nothing
    /// when `jailer_is_root` is false (see the module docs).
    pub(crate) fn open(plan: &Plan, jailer_is_root: bool) -> Result<Sources, SourceError> {
        if !jailer_is_root {
            return Ok(Sources::default());
        }
        let trees = plan
            .entries
            .iter()
            .map(|entry| match entry {
                Entry::Bind { source, .. } => detach(source, plan.recursive).map(Some),
                Entry::Device { name } => detach(&Path::new("/dev").join(name), false).map(Some),
                Entry::Symlink { .. } | Entry::Tmpfs { .. } | Entry::Dir { .. } | Entry::Proc => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        Ok(Sources(trees))
    }

    /// Init side: the detached mount for the plan entry at `index`, if the jailer made one.
    pub(crate) fn take(&mut self, index: usize) -> Option<OwnedFd> {
        self.0.get_mut(index).and_then(Option::take)
    }
}

/// A detached copy of the mount at `path` (canonical), opened without following symlinks.
fn detach(path: &Path, recursive: bool) -> Result<OwnedFd, SourceError> {
    let sys = |what: &'static str| move |source| SourceError::Sys { what, path: path.to_owned(), source };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::open(path, flags, Mode::empty()).map_err(sys("open bind source"))?;
    // O_NOFOLLOW only covers the last component: the kernel's own name for what was opened
    // proves that no earlier component was a symlink either.
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| sys("read back bind source")(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    if opened != path {
        return Err(SourceError::Moved { path: path.to_owned(), opened });
    }
    sys::open_tree_clone(fd.as_fd(), recursive).map_err(sys("open_tree"))
}
