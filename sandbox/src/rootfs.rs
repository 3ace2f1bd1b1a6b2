//! The minimal root filesystem the job sees, built in the job's mount namespace.
//!
//! Why it exists: a new mount namespace alone still shows the whole host. The init builds a
//! fresh tmpfs root with only what a Terraform run needs and `pivot_root`s into it, detaching
//! the host root, so host paths that are not bound simply do not exist inside. Defends against:
//! reading the agent's key and data dir, other jobs' work dirs, `/etc/shadow`, host home dirs
//! (not present); writing system files (`/usr`, `/etc`, `/` are read-only); setuid binaries and
//! device nodes smuggled into writable places (`nosuid`, `nodev` everywhere; device binds are
//! `nosuid,noexec`); submounts of a bind staying writable (`mount_setattr(AT_RECURSIVE)`).
//!
//! Layout (host paths bound at the same path inside):
//! - `/usr`, `/bin`, `/sbin`, `/lib`, `/lib32`, `/lib64`, `/libx32`: read-only binds of those
//!   that exist; symlinks (`/bin -> usr/bin`) are recreated as symlinks.
//! - `/etc`: an empty read-only tmpfs directory with read-only binds of [`ETC_ENTRIES`] only
//!   (resolver, users and groups, TLS trust anchors, dynamic-loader cache) — never `shadow`,
//!   `gshadow`, `/etc/ssl/private`.
//! - `/dev`: read-only tmpfs with binds of `null zero full random urandom tty`, the
//!   `fd stdin stdout stderr` symlinks into `/proc/self/fd`, and a writable `/dev/shm` tmpfs.
//! - `/proc`: a new procfs of the job's PID namespace (only the job's processes).
//! - `/tmp`: a private tmpfs, not the host's `/tmp`.
//! - `work_dir`: read-write; `read_only` extras: read-only; parents before children.
//! - the program, when the jailer found it outside everything above (`program`): that one
//!   file, read-only, at its own path.
//! - `/` itself: read-only tmpfs.
//!
//! Sequence: make every mount private (nothing propagates back to the host); mount a scratch
//! tmpfs on `/tmp` holding `newroot` (another tmpfs) and `oldroot`; `pivot_root` into the
//! scratch so the host root is reachable as `/oldroot` (this avoids surprises when a bind
//! source lives under host `/tmp`); populate `/newroot` from `/oldroot`; mount proc; detach
//! `/oldroot`; `pivot_root` into `/newroot` and detach the scratch stacked under it.
//!
//! Where a bind comes from: when the jailer is root it has already opened every source as a
//! detached mount (`sources`), because the init, as the sandbox's unprivileged uid, may not be
//! able to traverse the directories above it. The init attaches those with `move_mount` and
//! makes them private (they are still peers of the host mount they were cloned from, and a
//! mount made on top of one in here must not propagate back to the host). Otherwise, the init
//! binds the source by path from `/oldroot`.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::statvfs::{FsFlags, statvfs};

use crate::sources::Sources;
use crate::spec::Spec;
use crate::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};

/// Host system directories bound read-only (or recreated as symlinks).
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// What of the host's `/etc` the job sees (those that exist). Directories are bound whole.
pub(crate) const ETC_ENTRIES: &[&str] = &[
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "passwd",
    "group",
    "localtime",
    "protocols",
    "services",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl/certs",
    "ssl/openssl.cnf",
    "ssl/cert.pem",
    "ca-certificates",
    "ca-certificates.conf",
    "pki/tls/certs",
    "pki/tls/cert.pem",
    "pki/ca-trust/extracted",
    "crypto-policies",
];

/// Device nodes bound from the host's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Where the scratch tmpfs goes on the host side of the new mount namespace.
const SCRATCH: &str = "/tmp";
const NEW: &str = "/newroot";
const OLD: &str = "/oldroot";

/// One thing to put into the new root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Bind the host path `source` (canonical: symlinks resolved on the host, since absolute
    /// symlinks would not resolve from the scratch root) at `path` inside.
    Bind { source: PathBuf, path: PathBuf, writable: bool, is_dir: bool },
    /// Bind `/dev/<name>` from the host.
    Device { name: &'static str },
    /// Create a symlink at `path` pointing to `target`.
    Symlink { path: PathBuf, target: PathBuf },
    /// Mount a tmpfs at `path`.
    Tmpfs { path: PathBuf, mode: u32, noexec: bool },
    /// An empty directory (mount point parent that must exist even if nothing is bound in it).
    Dir { path: PathBuf },
    /// Mount the job's procfs at `/proc`.
    Proc,
}

/// The ordered list of entries, computed on the host by the jailer before cloning.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) entries: Vec<Entry>,
    /// Whether the kernel has `mount_setattr` (5.12), which makes binds read-only all the way
    /// down: then binds are recursive. Without it, binds are not recursive, so that no submount
    /// escapes the read-only remount. The jailer's detached mounts and the init's binds agree.
    pub(crate) recursive: bool,
}

/// Building the root failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RootfsError {
    #[error("{what} {path:?}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path:?}: {source}")]
    Sys {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io { what, path: path.to_owned(), source }
}

fn sys<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> RootfsError + 'a {
    move |source| RootfsError::Sys { what, path: path.to_owned(), source }
}

impl Plan {
    /// Inspect the host and list what to mount, in order (parents before children).
    pub(crate) fn for_spec(spec: &Spec) -> Result<Plan, RootfsError> {
        let mut entries = Vec::new();
        for dir in SYSTEM_DIRS.iter().map(Path::new) {
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(dir).map_err(io("readlink", dir))?;
                    entries.push(Entry::Symlink { path: dir.to_owned(), target });
                }
                Ok(meta) if meta.is_dir() => {
                    entries.push(Entry::Bind {
                        source: dir.to_owned(),
                        path: dir.to_owned(),
                        writable: false,
                        is_dir: true,
                    });
                }
                _ => {}
            }
        }
        entries.push(Entry::Dir { path: "/etc".into() });
        for name in ETC_ENTRIES {
            let path = Path::new("/etc").join(name);
            // Follow symlinks (/etc/resolv.conf -> /run/..., /etc/localtime -> /usr/share/...).
            if let Ok(source) = std::fs::canonicalize(&path) {
                let is_dir = source.is_dir();
                entries.push(Entry::Bind { source, path, writable: false, is_dir });
            }
        }
        entries.push(Entry::Tmpfs { path: "/dev".into(), mode: 0o755, noexec: true });
        for name in DEVICES {
            if Path::new("/dev").join(name).exists() {
                entries.push(Entry::Device { name });
            }
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            entries.push(Entry::Symlink { path: Path::new("/dev").join(name), target: target.into() });
        }
        entries.push(Entry::Tmpfs { path: "/dev/shm".into(), mode: 0o1777, noexec: false });
        entries.push(Entry::Proc);
        entries.push(Entry::Tmpfs { path: "/tmp".into(), mode: 0o1777, noexec: false });
        let mut binds: Vec<(PathBuf, bool)> = vec![(spec.work_dir.clone(), true)];
        binds.extend(spec.read_only.iter().map(|p| (p.clone(), false)));
        // Stable sort: parents before children, and a read-only extra inside the work dir
        // lands on top of it.
        binds.sort_by_key(|(p, _)| p.components().count());
        for (path, writable) in binds {
            let meta = std::fs::metadata(&path).map_err(io("stat bind source", &path))?;
            entries.push(Entry::Bind { source: path.clone(), path, writable, is_dir: meta.is_dir() });
        }
        Ok(Plan { entries, recursive: crate::sys::mount_setattr_supported() })
    }

    /// Whether the host path `path` is visible inside at the same path: beneath a bind of the
    /// same host path (a system directory, the work dir, an extra).
    pub(crate) fn shows(&self, path: &Path) -> bool {
        self.entries.iter().any(|entry| match entry {
            Entry::Bind { source, path: inside, .. } => source == inside && path.starts_with(inside),
            _ => false,
        })
    }

    /// Bind the program's file (canonical, not [`Plan::shows`]n) read-only at its own path. Last,
    /// since it is beneath none of the other binds but may be beneath a tmpfs (`/tmp`).
    pub(crate) fn bind_program(&mut self, file: &Path) {
        self.entries.push(Entry::Bind {
            source: file.to_owned(),
            path: file.to_owned(),
            writable: false,
            is_dir: false,
        });
    }

    /// One line for `Status::layers`.
    pub(crate) fn describe(&self) -> String {
        let ro = self.entries.iter().filter(|e| matches!(e, Entry::Bind { writable: false, .. })).count();
        format!(
            "rootfs: read-only tmpfs root, {ro} read-only binds (system dirs, /etc subset, extras), \
             minimal /dev, new /proc, private /tmp, work dir read-write; host root detached"
        )
    }
}

fn inside(root: &str, path: &Path) -> PathBuf {
    Path::new(root).join(path.strip_prefix("/").unwrap_or(path))
}

fn cstring(path: &Path) -> Result<CString, RootfsError> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| RootfsError::Sys {
        what: "path",
        path: path.to_owned(),
        source: Errno::EINVAL,
    })
}

/// Init side: build the root described by `plan` and pivot into it. Needs CAP_SYS_ADMIN in the
/// user namespace that owns the current mount namespace, and the job's PID namespace (for proc).
/// Takes the jailer's detached mounts and closes each once attached.
pub(crate) fn enter(plan: &Plan, mut sources: Sources) -> Result<(), RootfsError> {
    let root = Path::new("/");
    mount(None::<&str>, root, None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(sys("make mounts private", root))?;
    let scratch = Path::new(SCRATCH);
    tmpfs(scratch, 0o700, false)?;
    let (new_at_scratch, old_at_scratch) = (scratch.join("newroot"), scratch.join("oldroot"));
    for dir in [&new_at_scratch, &old_at_scratch] {
        std::fs::create_dir(dir).map_err(io("mkdir", dir))?;
    }
    tmpfs(&new_at_scratch, 0o755, false)?;
    nix::unistd::chdir(scratch).map_err(sys("chdir", scratch))?;
    nix::unistd::pivot_root(".", "oldroot").map_err(sys("pivot_root to scratch", scratch))?;
    nix::unistd::chdir(root).map_err(sys("chdir", root))?;

    let setattr = plan.recursive;
    for (index, entry) in plan.entries.iter().enumerate() {
        apply(entry, setattr, sources.take(index))?;
    }
    for path in [Path::new(NEW).join("dev"), PathBuf::from(NEW)] {
        restrict(&path, MOUNT_ATTR_RDONLY, false, setattr)?;
    }

    let old = Path::new(OLD);
    umount2(old, MntFlags::MNT_DETACH).map_err(sys("detach host root", old))?;
    let new = Path::new(NEW);
    nix::unistd::chdir(new).map_err(sys("chdir", new))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root", new))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach scratch", scratch))?;
    nix::unistd::chdir(root).map_err(sys("chdir", root))?;
    Ok(())
}

fn tmpfs(path: &Path, mode: u32, noexec: bool) -> Result<(), RootfsError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if noexec {
        flags |= MsFlags::MS_NOEXEC;
    }
    let data = format!("mode={mode:o}");
    mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(data.as_str())).map_err(sys("mount tmpfs", path))
}

fn apply(entry: &Entry, setattr: bool, tree: Option<OwnedFd>) -> Result<(), RootfsError> {
    match entry {
        Entry::Bind { source, path, writable, is_dir } => {
            let dst = inside(NEW, path);
            mount_point(&dst, *is_dir)?;
            attach(tree, source, &dst, setattr)?;
            let ro = if *writable { 0 } else { MOUNT_ATTR_RDONLY };
            restrict(&dst, ro | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, true, setattr)
        }
        Entry::Device { name } => {
            let host = Path::new("/dev").join(name);
            let dst = inside(NEW, &host);
            mount_point(&dst, false)?;
            attach(tree, &host, &dst, false)?;
            restrict(&dst, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, false, setattr)
        }
        Entry::Symlink { path, target } => {
            let dst = inside(NEW, path);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
            }
            std::os::unix::fs::symlink(target, &dst).map_err(io("symlink", path))
        }
        Entry::Tmpfs { path, mode, noexec } => {
            let dst = inside(NEW, path);
            std::fs::create_dir_all(&dst).map_err(io("mkdir", &dst))?;
            tmpfs(&dst, *mode, *noexec)
        }
        Entry::Dir { path } => {
            let dst = inside(NEW, path);
            std::fs::create_dir_all(&dst).map_err(io("mkdir", &dst))
        }
        Entry::Proc => {
            let dst = inside(NEW, Path::new("/proc"));
            std::fs::create_dir_all(&dst).map_err(io("mkdir", &dst))?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("proc"), &dst, Some("proc"), flags, None::<&str>).map_err(sys("mount proc", &dst))
        }
    }
}

/// Put the host's `source` at `dst`: the jailer's detached mount `tree` if there is one (see the
/// module docs), else a bind from `/oldroot`.
fn attach(tree: Option<OwnedFd>, source: &Path, dst: &Path, recursive: bool) -> Result<(), RootfsError> {
    let rec = if recursive { MsFlags::MS_REC } else { MsFlags::empty() };
    let Some(tree) = tree else {
        let src = inside(OLD, source);
        return mount(Some(&src), dst, None::<&str>, MsFlags::MS_BIND | rec, None::<&str>).map_err(sys("bind", source));
    };
    crate::sys::move_mount(tree.as_fd(), &cstring(dst)?).map_err(sys("move_mount", source))?;
    // Still a peer of the host mount it was cloned from: private, so nothing mounted on it in
    // here (an extra inside the work dir) propagates back to the host.
    mount(None::<&str>, dst, None::<&str>, MsFlags::MS_PRIVATE | rec, None::<&str>).map_err(sys("make private", source))
}

/// Create a directory or an empty file to mount on (inside the new root's tmpfs).
fn mount_point(dst: &Path, is_dir: bool) -> Result<(), RootfsError> {
    if is_dir {
        return std::fs::create_dir_all(dst).map_err(io("mkdir", dst));
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
    }
    match OpenOptions::new().write(true).create_new(true).mode(0o644).open(dst) {
        Ok(File { .. }) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create mount point", dst)(e)),
    }
}

/// Add mount attributes. With `mount_setattr`, recursively if asked; otherwise by remounting the
/// top mount, carrying over the flags the kernel locks for mounts from a more privileged
/// namespace (a user namespace may add restrictions but not drop them).
fn restrict(dst: &Path, attrs: u64, recursive: bool, setattr: bool) -> Result<(), RootfsError> {
    if setattr {
        return crate::sys::mount_setattr(&cstring(dst)?, attrs, recursive).map_err(sys("mount_setattr", dst));
    }
    let current = statvfs(dst).map_err(sys("statvfs", dst))?.flags();
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (have, flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(have) {
            flags |= flag;
        }
    }
    for (attr, flag) in [
        (MOUNT_ATTR_RDONLY, MsFlags::MS_RDONLY),
        (MOUNT_ATTR_NOSUID, MsFlags::MS_NOSUID),
        (MOUNT_ATTR_NODEV, MsFlags::MS_NODEV),
        (MOUNT_ATTR_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if attrs & attr != 0 {
            flags |= flag;
        }
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>).map_err(sys("remount", dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_orders_parents_first_and_never_binds_shadow() {
        let mut spec = Spec::new(vec!["true".into()], "/tmp".into(), "/status.json".into());
        spec.work_dir = std::env::temp_dir();
        spec.read_only = vec!["/usr/share".into()];
        let plan = Plan::for_spec(&spec).unwrap();
        let binds: Vec<&Path> = plan
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Bind { path, .. } => Some(path.as_path()),
                _ => None,
            })
            .collect();
        assert!(!binds.iter().any(|p| p.ends_with("shadow") || p.ends_with("gshadow") || p.ends_with("private")));
        assert!(!binds.contains(&Path::new("/etc")));
        let last = plan.entries.last().unwrap();
        assert!(matches!(last, Entry::Bind { path, writable: false, .. } if path == Path::new("/usr/share")));
        let proc_at = plan.entries.iter().position(|e| *e == Entry::Proc).unwrap();
        let dev_at =
            plan.entries.iter().position(|e| matches!(e, Entry::Tmpfs { path, .. } if path == Path::new("/dev")));
        assert!(dev_at.unwrap() < proc_at);
    }

    #[test]
    fn shows_only_what_is_bound_at_its_own_path() {
        let mut spec = Spec::new(vec!["true".into()], "/tmp".into(), "/status.json".into());
        spec.work_dir = std::env::temp_dir();
        let mut plan = Plan::for_spec(&spec).unwrap();
        assert!(plan.shows(Path::new("/usr/bin/env")));
        assert!(plan.shows(&spec.work_dir.join("src/main.tf")));
        assert!(!plan.shows(Path::new("/root/bin/terraform")));
        // /etc entries are binds of other paths (resolv.conf -> /run/...): not "at their path".
        assert!(!plan.shows(Path::new("/etc/shadow")));
        plan.bind_program(Path::new("/root/bin/terraform"));
        assert!(plan.shows(Path::new("/root/bin/terraform")));
        assert!(!plan.shows(Path::new("/root/bin/other")));
    }
}
