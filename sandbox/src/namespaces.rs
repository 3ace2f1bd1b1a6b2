//! The job's namespaces and identity: which namespaces the init is cloned into, the user
//! namespace's id maps, hostname, loopback, and ownership of the work dir.
//!
//! Why it exists: namespaces are what make the host invisible. Defends against:
//! - reading host files (mount namespace: the job only sees the minimal root, see `rootfs`);
//! - seeing, signalling or ptracing host processes (PID namespace: the job's init is PID 1 and
//!   the whole namespace dies with it);
//! - acting as host root (user namespace: the sandbox's root is an unprivileged host uid,
//!   `host_id`/`host_gid`, one per concurrent job from the agent's range, 65534 by default,
//!   when the jailer is root; the caller's own uid otherwise);
//! - reaching the host network or its abstract Unix sockets (network namespace with only `lo`,
//!   when `Network::None`); host SysV IPC (IPC namespace); host hostname (UTS namespace);
//!   host cgroup paths in `/proc/self/cgroup` (cgroup namespace, rooted at the job cgroup).
//!
//! The id maps must be written by a process in the *parent* user namespace (an unprivileged
//! outside uid cannot be mapped from inside), so the jailer clones the init directly into the
//! new namespaces and writes `/proc/<init>/{setgroups,uid_map,gid_map}` while the init waits
//! on a pipe, as bubblewrap does.

use std::ffi::CString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstat, fstatat};
use nix::unistd::{Gid, Pid, Uid, fchown, fchownat};

use crate::spec::{DEFAULT_HOST_ID, Network, Spec};

/// Deepest work-dir nesting the ownership walk follows (one descriptor per level).
const MAX_DEPTH: usize = 256;

/// A namespace or identity step failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NamespaceError {
    #[error("{what} {path:?}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("work dir {path:?}: nested deeper than {MAX_DEPTH} levels")]
    TooDeep { path: PathBuf },
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> NamespaceError {
    move |source| NamespaceError::Sys { what, source }
}

/// The namespaces the init is cloned into (the cgroup namespace is entered later, by the init
/// itself, once it sits in the job cgroup).
pub(crate) fn clone_flags(network: Network) -> libc::c_int {
    let base = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    match network {
        Network::None => base | libc::CLONE_NEWNET,
        Network::Host => base,
    }
}

/// Names of the namespaces in `clone_flags`, for `Status::layers`.
pub(crate) fn describe(network: Network) -> &'static str {
    match network {
        Network::None => "namespaces: user, mount, pid, ipc, uts, net (loopback only), cgroup",
        Network::Host => "namespaces: user, mount, pid, ipc, uts, cgroup (host network)",
    }
}

/// The host uid/gid the sandbox's root (uid 0 inside) maps to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostIds {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Whether the jailer is host root (and so must chown the work dir and drop its groups).
    pub(crate) jailer_is_root: bool,
}

pub(crate) fn host_ids(spec: &Spec) -> HostIds {
    if Uid::effective().is_root() {
        let uid = spec.host_id.unwrap_or(DEFAULT_HOST_ID);
        let gid = spec.host_gid.or(spec.host_id).unwrap_or(DEFAULT_HOST_ID);
        HostIds { uid, gid, jailer_is_root: true }
    } else {
        HostIds { uid: Uid::effective().as_raw(), gid: Gid::effective().as_raw(), jailer_is_root: false }
    }
}

/// Jailer side: clear the supplementary groups the init would otherwise inherit. They cannot be
/// dropped inside (setgroups is denied there) and host root's groups (gid 0) would still grant
/// group access to host files.
pub(crate) fn drop_supplementary_groups(ids: HostIds) -> Result<(), NamespaceError> {
    if ids.jailer_is_root {
        nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    }
    Ok(())
}

/// Jailer side: map uid/gid 0 inside `child`'s user namespace to `ids`, one id each, and deny
/// setgroups inside.
pub(crate) fn write_id_maps(child: Pid, ids: HostIds) -> Result<(), NamespaceError> {
    let proc = PathBuf::from(format!("/proc/{child}"));
    for (file, content) in [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {} 1\n", ids.uid)),
        ("gid_map", format!("0 {} 1\n", ids.gid)),
    ] {
        let path = proc.join(file);
        std::fs::write(&path, content).map_err(|source| NamespaceError::Write { what: "id map", path, source })?;
    }
    Ok(())
}

/// Init side, after the maps are written: become uid/gid 0 of the new namespace (the init's
/// outside uid is not mapped, so until now it runs as the overflow uid).
pub(crate) fn become_root() -> Result<(), NamespaceError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid).map_err(sys("setresgid"))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid).map_err(sys("setresuid"))?;
    Ok(())
}

/// Init side: new cgroup namespace rooted at the job cgroup, hostname, and loopback.
pub(crate) fn configure_inside(spec: &Spec) -> Result<(), NamespaceError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(sys("unshare(CLONE_NEWCGROUP)"))?;
    nix::unistd::sethostname(&spec.hostname).map_err(sys("sethostname"))?;
    if spec.network == Network::None {
        crate::sys::set_loopback_up().map_err(sys("loopback up"))?;
    }
    Ok(())
}

/// Jailer side, when root: give the work dir tree to the sandbox's host uid, so the sandbox's
/// root owns it (capabilities in a user namespace do not apply to unmapped owners). Walks with
/// `openat(O_NOFOLLOW)` and `fchownat(AT_SYMLINK_NOFOLLOW)`, never follows a symlink a previous
/// job may have planted, and does not cross into other filesystems.
pub(crate) fn chown_work_dir(work_dir: &Path, ids: HostIds) -> Result<(), NamespaceError> {
    if !ids.jailer_is_root {
        return Ok(());
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let dir = Dir::open(work_dir, flags, Mode::empty()).map_err(sys("open work dir"))?;
    let (uid, gid) = (Some(Uid::from_raw(ids.uid)), Some(Gid::from_raw(ids.gid)));
    fchown(dir.as_fd(), uid, gid).map_err(sys("chown work dir"))?;
    let dev = fstat(dir.as_fd()).map_err(sys("stat work dir"))?.st_dev;
    chown_tree(dir, dev, uid, gid, work_dir, 0)
}

fn chown_tree(
    mut dir: Dir,
    dev: libc::dev_t,
    uid: Option<Uid>,
    gid: Option<Gid>,
    top: &Path,
    depth: usize,
) -> Result<(), NamespaceError> {
    if depth > MAX_DEPTH {
        return Err(NamespaceError::TooDeep { path: top.to_owned() });
    }
    // A second descriptor for the same directory: `iter()` borrows `dir` mutably.
    let at = nix::unistd::dup(dir.as_fd()).map_err(sys("dup work dir fd"))?;
    let mut subdirs: Vec<CString> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(sys("read work dir"))?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        fchownat(&at, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(sys("chown in work dir"))?;
        let is_dir = match entry.file_type() {
            Some(t) => t == nix::dir::Type::Directory,
            None => fstatat(&at, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .map_err(sys("stat in work dir"))?,
        };
        if is_dir {
            subdirs.push(name.to_owned());
        }
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for name in subdirs {
        let sub = match Dir::openat(&at, name.as_c_str(), flags, Mode::empty()) {
            Ok(sub) => sub,
            // Replaced by a symlink or removed since we listed it: nothing to do.
            Err(nix::Error::ELOOP | nix::Error::ENOTDIR | nix::Error::ENOENT) => continue,
            Err(e) => return Err(sys("open in work dir")(e)),
        };
        if fstat(sub.as_fd()).map_err(sys("stat in work dir"))?.st_dev != dev {
            continue;
        }
        chown_tree(sub, dev, uid, gid, top, depth + 1)?;
    }
    Ok(())
}
