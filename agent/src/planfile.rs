//! The saved plan, handled by the agent outside the sandbox without following a path the job
//! controls (DESIGN.md §8.9, security review H1).
//!
//! Everything under a job's work directory is written by the job's code, which runs in the
//! sandbox as another user; the agent runs outside it, often as root. So the agent never opens a
//! path there the ordinary way:
//! - [`read_saved`] opens the plan Terraform wrote with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` from the work directory (a symlink anywhere on the way, or `..`, is
//!   refused), non-blocking (a FIFO cannot stall it), checks with `fstat` that it is a regular
//!   file no larger than the cap, and reads at most that much, off the async runtime and under a
//!   deadline;
//! - [`is_plain_dir`] checks the same way that the stack's configuration directory is a real
//!   directory beneath the work dir;
//! - [`write_private`] writes a plan into a directory only the agent writes, with `O_CREAT |
//!   O_EXCL | O_NOFOLLOW`, so the copy the sandbox reads (bound read-only) is exactly the bytes
//!   the agent holds;
//! - [`write_beneath`] adds a new file to the checkout (the state backend's override, a mounted
//!   file of a context) the same way, creating the directories on its way beneath the work dir
//!   (`mkdirat` on a directory opened beneath it without following links).

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstat, mkdirat};

/// How long reading or writing a plan may take before the job fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Why the saved plan could not be read or written. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum PlanFileError {
    /// The path leaves the work directory (`..`, absolute) or goes through a symlink.
    #[error("the saved plan `{0}` is not a plain path inside the job's work directory")]
    OutsideWorkDir(String),
    /// Opening it failed (a symlink on the way gives `ELOOP`/`EXDEV`).
    #[error("cannot open the saved plan `{path}` without following links: {source}")]
    Open {
        /// The path, relative to the work directory.
        path: String,
        /// Why.
        source: nix::Error,
    },
    /// Not a regular file (a FIFO, a device, a directory).
    #[error("the saved plan `{0}` is not a regular file")]
    NotRegular(String),
    /// Over the cap.
    #[error("the saved plan `{path}` is larger than {cap} bytes")]
    TooLarge {
        /// The path, relative to the work directory.
        path: String,
        /// The cap.
        cap: usize,
    },
    /// Reading or writing failed.
    #[error("cannot {what} the saved plan `{path}`: {source}")]
    Io {
        /// `read` or `write`.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It took longer than the deadline.
    #[error("handling the saved plan took longer than {} s", DEADLINE.as_secs())]
    TimedOut,
}

/// Reads `relative` (a path inside `work_dir`) as the saved plan; see the module documentation.
pub async fn read_saved(work_dir: &Path, relative: &Path, cap: usize) -> Result<Vec<u8>, PlanFileError> {
    let (work_dir, relative) = (work_dir.to_path_buf(), relative.to_path_buf());
    blocking(move || read_beneath(&work_dir, &relative, cap)).await
}

/// Writes `bytes` as a new file `name` in `dir`, a directory the agent created and only it
/// writes; returns the file's path. The file is readable by the sandbox's user (0644).
pub async fn write_private(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<PathBuf, PlanFileError> {
    let (dir, name) = (dir.to_path_buf(), name.to_owned());
    blocking(move || write_new(&dir, &name, &bytes)).await
}

/// Writes `bytes` as a new file `relative` beneath `work_dir` (the job's), refusing `..`, any
/// symlink on the way and an existing file: how the agent adds a file to the job's checkout (the
/// state backend's override) without following a path the job planted. Readable by the
/// sandbox's user (0644).
pub async fn write_beneath(work_dir: &Path, relative: &Path, bytes: Vec<u8>) -> Result<(), PlanFileError> {
    let (work_dir, relative) = (work_dir.to_path_buf(), relative.to_path_buf());
    blocking(move || write_new_beneath(&work_dir, &relative, &bytes, 0o644)).await
}

/// As [`write_beneath`], with the file's `mode`, after creating the directories on the way to it
/// that do not exist yet (0755), each beneath `work_dir` through no symlink: how the agent mounts
/// a context's file. The bytes are wiped from memory once written.
pub async fn write_beneath_creating(
    work_dir: &Path,
    relative: &Path,
    bytes: zeroize::Zeroizing<Vec<u8>>,
    mode: u32,
) -> Result<(), PlanFileError> {
    let (work_dir, relative) = (work_dir.to_path_buf(), relative.to_path_buf());
    blocking(move || {
        if let Some(parent) = relative.parent() {
            make_dirs_beneath(&work_dir, parent)?;
        }
        write_new_beneath(&work_dir, &relative, &bytes, mode)
    })
    .await
}

fn write_new_beneath(work_dir: &Path, relative: &Path, bytes: &[u8], mode: u32) -> Result<(), PlanFileError> {
    let shown = relative.display().to_string();
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = open_beneath_how(work_dir, relative, OpenHow::new().flags(flags).mode(Mode::from_bits_truncate(mode)))?;
    std::fs::File::from(fd).write_all(bytes).map_err(|source| PlanFileError::Io { what: "write", path: shown, source })
}

/// Creates each directory of `relative` (beneath `work_dir`) that does not exist yet: `mkdirat`
/// in its parent, opened beneath the work dir through no symlink. A component that exists and
/// is not a directory fails the next open (`ENOTDIR`); one that is a symlink fails it (`ELOOP`).
fn make_dirs_beneath(work_dir: &Path, relative: &Path) -> Result<(), PlanFileError> {
    let directory = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut done = PathBuf::new();
    for component in relative.components() {
        let Component::Normal(name) = component else {
            return Err(PlanFileError::OutsideWorkDir(relative.display().to_string()));
        };
        let parent = if done.as_os_str().is_empty() {
            open(work_dir, directory, Mode::empty())
                .map_err(|source| PlanFileError::Open { path: work_dir.display().to_string(), source })?
        } else {
            open_beneath(work_dir, &done, directory)?
        };
        done.push(name);
        match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => return Err(PlanFileError::Open { path: done.display().to_string(), source }),
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PlanFileError> + Send + 'static,
) -> Result<T, PlanFileError> {
    match tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(PlanFileError::Io {
            what: "handle",
            path: String::new(),
            source: std::io::Error::other(join.to_string()),
        }),
        Err(_) => Err(PlanFileError::TimedOut),
    }
}

/// Whether `relative` is a directory beneath `work_dir` reached through no symlink: where the
/// agent may look for what the job left there (the stack's configuration directory).
pub fn is_plain_dir(work_dir: &Path, relative: &Path) -> bool {
    open_beneath(work_dir, relative, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).is_ok()
}

/// Opens `relative` beneath `work_dir` with `flags`, refusing `..`, absolute paths and any symlink
/// on the way (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`).
fn open_beneath(work_dir: &Path, relative: &Path, flags: OFlag) -> Result<OwnedFd, PlanFileError> {
    open_beneath_how(work_dir, relative, OpenHow::new().flags(flags))
}

/// [`open_beneath`] with `how` (flags and mode); the resolve flags are always the same.
fn open_beneath_how(work_dir: &Path, relative: &Path, how: OpenHow) -> Result<OwnedFd, PlanFileError> {
    let shown = relative.display().to_string();
    if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(PlanFileError::OutsideWorkDir(shown));
    }
    let root = open(work_dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|source| PlanFileError::Open { path: work_dir.display().to_string(), source })?;
    let how = how
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), relative, how).map_err(|source| match source {
        nix::Error::ELOOP | nix::Error::EXDEV => PlanFileError::OutsideWorkDir(shown),
        source => PlanFileError::Open { path: shown, source },
    })
}

fn read_beneath(work_dir: &Path, relative: &Path, cap: usize) -> Result<Vec<u8>, PlanFileError> {
    let shown = relative.display().to_string();
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = open_beneath(work_dir, relative, flags)?;
    let stat = fstat(&fd).map_err(|source| PlanFileError::Open { path: shown.clone(), source })?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return Err(PlanFileError::NotRegular(shown));
    }
    if usize::try_from(stat.st_size).map_or(true, |size| size > cap) {
        return Err(PlanFileError::TooLarge { path: shown, cap });
    }
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    std::fs::File::from(fd).take(limit).read_to_end(&mut bytes).map_err(|source| PlanFileError::Io {
        what: "read",
        path: shown.clone(),
        source,
    })?;
    // A file that grew after fstat is refused as well.
    if bytes.len() > cap {
        return Err(PlanFileError::TooLarge { path: shown, cap });
    }
    Ok(bytes)
}

fn write_new(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, PlanFileError> {
    let shown = dir.join(name).display().to_string();
    if name.contains('/') || name == ".." || name == "." || name.is_empty() {
        return Err(PlanFileError::OutsideWorkDir(shown));
    }
    let io = |what, source| PlanFileError::Io { what, path: shown.clone(), source };
    let dir_fd: OwnedFd =
        open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|source| PlanFileError::Open { path: dir.display().to_string(), source })?;
    let fd = openat(
        dir_fd.as_fd(),
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|source| PlanFileError::Open { path: shown.clone(), source })?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("write", e))?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::symlink;

    use super::*;

    fn work() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/infra")).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_regular_plan_is_read_whole() {
        let dir = work();
        std::fs::write(dir.path().join("src/infra/keyward.tfplan"), b"PK plan").unwrap();
        let plan = read_saved(dir.path(), Path::new("src/infra/keyward.tfplan"), 1024).await.unwrap();
        assert_eq!(plan, b"PK plan");
    }

    #[tokio::test]
    async fn a_symlinked_plan_or_directory_is_refused_and_its_target_untouched() {
        let dir = work();
        let target = dir.path().join("host-secret");
        std::fs::write(&target, b"secret").unwrap();
        symlink(&target, dir.path().join("src/infra/keyward.tfplan")).unwrap();
        let error = read_saved(dir.path(), Path::new("src/infra/keyward.tfplan"), 1024).await.unwrap_err();
        assert!(matches!(error, PlanFileError::OutsideWorkDir(_)), "{error}");
        // A directory on the way that is a symlink: refused too, even to a place inside.
        symlink(dir.path().join("src/infra"), dir.path().join("src/linked")).unwrap();
        std::fs::remove_file(dir.path().join("src/infra/keyward.tfplan")).unwrap();
        std::fs::write(dir.path().join("src/infra/keyward.tfplan"), b"plan").unwrap();
        let error = read_saved(dir.path(), Path::new("src/linked/keyward.tfplan"), 1024).await.unwrap_err();
        assert!(matches!(error, PlanFileError::OutsideWorkDir(_)), "{error}");
        let error = read_saved(dir.path(), Path::new("src/../../etc/passwd"), 1024).await.unwrap_err();
        assert!(matches!(error, PlanFileError::OutsideWorkDir(_)), "{error}");
        assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    }

    #[tokio::test]
    async fn a_fifo_fails_at_once_instead_of_blocking() {
        let dir = work();
        let fifo = dir.path().join("src/infra/keyward.tfplan");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let error = read_saved(dir.path(), Path::new("src/infra/keyward.tfplan"), 1024).await.unwrap_err();
        assert!(matches!(error, PlanFileError::NotRegular(_)), "{error}");
    }

    #[tokio::test]
    async fn a_plan_over_the_cap_is_refused() {
        let dir = work();
        std::fs::write(dir.path().join("src/infra/keyward.tfplan"), vec![0_u8; 2048]).unwrap();
        let error = read_saved(dir.path(), Path::new("src/infra/keyward.tfplan"), 1024).await.unwrap_err();
        assert!(matches!(error, PlanFileError::TooLarge { cap: 1024, .. }), "{error}");
    }

    #[tokio::test]
    async fn a_file_beneath_gets_its_directories_and_never_goes_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = work();
        let secret = || zeroize::Zeroizing::new(b"key".to_vec());
        write_beneath_creating(dir.path(), Path::new("src/infra/tls/deep/key.pem"), secret(), 0o600).await.unwrap();
        let written = dir.path().join("src/infra/tls/deep/key.pem");
        assert_eq!(std::fs::read(&written).unwrap(), b"key");
        assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o600);
        // An existing file is never replaced.
        let again = write_beneath_creating(dir.path(), Path::new("src/infra/tls/deep/key.pem"), secret(), 0o600);
        assert!(matches!(again.await.unwrap_err(), PlanFileError::Open { source: nix::Error::EEXIST, .. }));
        // A directory on the way that is a symlink (even to a place outside): refused, nothing written.
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("src/infra/linked")).unwrap();
        let error = write_beneath_creating(dir.path(), Path::new("src/infra/linked/sub/x"), secret(), 0o600).await;
        assert!(matches!(error.unwrap_err(), PlanFileError::OutsideWorkDir(_)));
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing created through the link");
        // A file where a directory should be.
        std::fs::write(dir.path().join("src/infra/plain"), b"").unwrap();
        let error = write_beneath_creating(dir.path(), Path::new("src/infra/plain/x"), secret(), 0o600).await;
        assert!(matches!(error.unwrap_err(), PlanFileError::Open { source: nix::Error::ENOTDIR, .. }));
        let error = write_beneath_creating(dir.path(), Path::new("src/../../x"), secret(), 0o600).await;
        assert!(matches!(error.unwrap_err(), PlanFileError::OutsideWorkDir(_)));
    }

    #[tokio::test]
    async fn a_private_copy_is_new_and_never_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_private(dir.path(), "judged.tfplan", b"plan".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"plan");
        let again = write_private(dir.path(), "judged.tfplan", b"other".to_vec()).await.unwrap_err();
        assert!(matches!(again, PlanFileError::Open { source: nix::Error::EEXIST, .. }), "{again}");
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        symlink(&target, dir.path().join("apply.tfplan")).unwrap();
        assert!(write_private(dir.path(), "apply.tfplan", b"evil".to_vec()).await.is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(write_private(dir.path(), "../x", Vec::new()).await.is_err());
    }
}
