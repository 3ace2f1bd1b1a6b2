//! Finding the program: `execvp`'s lookup, done by the jailer on the host with the agent's
//! rights, before anything switches to the sandbox's uid.
//!
//! Why it exists: the sandbox's root is an unprivileged host uid (65534 when the agent is
//! root), which cannot traverse a directory such as `/root` (mode 0700). Looked up inside the
//! sandbox, a program under one (Terraform in `/root/bin`, a test binary in a clone under
//! `/root`) is simply not there. So the jailer resolves the program as the agent would and,
//! when that file is not already visible inside the sandbox, the root gets that one file bound
//! read-only at its own path (`rootfs`, from a descriptor the jailer opened: `sources`). The
//! kernel still checks the file's own mode: the sandbox's uid must be allowed to execute it
//! (and to read it, for a script).
//!
//! Why a bind and not `fexecve`/`execveat(AT_EMPTY_PATH)`: a `#!` script executed by descriptor
//! reaches its interpreter as `/dev/fd/N`, so that descriptor would have to survive `execve`
//! and stay open in the job (which otherwise holds only 0, 1, 2); Landlock would need its own
//! rule for a file outside the job's view; and `/proc/self/exe` would name a path the job
//! cannot see. A read-only bind of the resolved file gets the same Landlock rule (read,
//! execute) as every other read-only bind, keeps scripts working, and leaves no descriptor.
//!
//! The lookup is `execvp`'s: a program with a `/` names the file; a bare name is searched in
//! the job's `PATH` (default `/usr/local/bin:/usr/bin:/bin`; empty entries skipped). A missing
//! candidate is skipped; a directory or a candidate that cannot be resolved is remembered and
//! skipped; the first file found is the program, executed by its canonical path.
//!
//! Candidates the job controls are never resolved with the jailer's rights: a relative one, one
//! with `.`/`..` or repeated `/`, or one beneath the work dir. Those are left to the program
//! process, which tries them in order inside the sandbox, as the sandbox's uid, in the job's
//! view; so a symlink planted in the work dir cannot make the jailer bind a host file.

use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::jailer::{EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND};
use crate::spec::{self, Spec};

/// `PATH` when the job's environment has none.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What the program process executes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Program {
    /// Paths to `execve` inside the sandbox, in order, until one does not fail with `ENOENT`
    /// or `ENOTDIR`.
    pub(crate) candidates: Vec<PathBuf>,
    /// The host file found by the jailer, when the root must bind it (the last candidate).
    pub(crate) bind: Option<PathBuf>,
}

/// No candidate is left: the program does not exist or cannot be executed.
#[derive(Debug, thiserror::Error)]
#[error("{program}: {}", errno.desc())]
pub(crate) struct ProgramError {
    program: String,
    errno: Errno,
}

impl ProgramError {
    /// 127 when not found, 126 when found but not executable (as a shell says).
    pub(crate) fn exit_code(&self) -> i32 {
        if self.errno == Errno::ENOENT { EXIT_NOT_FOUND } else { EXIT_CANNOT_EXECUTE }
    }
}

/// Resolve `spec.argv[0]`; `visible` says whether a host path is visible inside at the same
/// path (so needs no bind).
pub(crate) fn resolve(spec: &Spec, visible: impl Fn(&Path) -> bool) -> Result<Program, ProgramError> {
    let name = spec.argv.first().map(String::as_str).unwrap_or_default();
    let mut candidates = Vec::new();
    let mut error = Errno::ENOENT;
    for candidate in search(spec, name) {
        if !spec::is_normal_absolute(&candidate) || candidate.starts_with(&spec.work_dir) {
            candidates.push(candidate);
            continue;
        }
        let found = std::fs::canonicalize(&candidate)
            .and_then(|real| std::fs::metadata(&real).map(|meta| (real, meta.is_dir())));
        let real = match found {
            Ok((_, true)) => {
                error = Errno::EACCES;
                continue;
            }
            Ok((real, false)) => real,
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
                if !matches!(errno, Errno::ENOENT | Errno::ENOTDIR) {
                    error = errno;
                }
                continue;
            }
        };
        let bind = if real.starts_with(&spec.work_dir) {
            // Led into the work dir by a host symlink: what it names there is the job's, so it
            // resolves inside.
            candidates.push(candidate);
            None
        } else {
            let bind = (!visible(&real)).then(|| real.clone());
            candidates.push(real);
            bind
        };
        return Ok(Program { candidates, bind });
    }
    if candidates.is_empty() {
        return Err(ProgramError { program: name.to_owned(), errno: error });
    }
    Ok(Program { candidates, bind: None })
}

/// The paths `execvp` would try, in order.
fn search(spec: &Spec, name: &str) -> Vec<PathBuf> {
    if name.contains('/') {
        return vec![PathBuf::from(name)];
    }
    let path = spec.env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or(DEFAULT_PATH);
    path.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(name)).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn spec(argv0: &str, path: &str, work_dir: &Path) -> Spec {
        let mut spec = Spec::new(vec![argv0.into()], work_dir.to_owned(), "/state/status.json".into());
        spec.env = vec![("PATH".into(), path.into())];
        spec
    }

    fn executable(path: &Path) {
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_program_outside_the_view_is_found_on_the_host_and_bound() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (bin, work) = (root.join("bin"), root.join("work"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        executable(&bin.join("tool"));
        let path = format!("/nonexistent:{}:/usr/bin", bin.display());
        let found = resolve(&spec("tool", &path, &work), |_| false).unwrap();
        assert_eq!(found, Program { candidates: vec![bin.join("tool")], bind: Some(bin.join("tool")) });
        let shown = resolve(&spec("tool", &path, &work), |_| true).unwrap();
        assert_eq!(shown.bind, None);
        // A symlink resolves to the file it names, which is what gets bound and executed.
        std::os::unix::fs::symlink(bin.join("tool"), root.join("alias")).unwrap();
        let alias = root.join("alias");
        let found = resolve(&spec(alias.to_str().unwrap(), "", &work), |_| false).unwrap();
        assert_eq!(found.candidates, vec![bin.join("tool")]);
    }

    #[test]
    fn job_controlled_candidates_are_left_to_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let (outside, work) = (root.join("outside"), root.join("work"));
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(work.join("bin")).unwrap();
        executable(&outside.join("tool"));
        // The job planted a symlink to a host file: the jailer must not follow it.
        std::os::unix::fs::symlink(outside.join("tool"), work.join("bin/tool")).unwrap();
        let path = format!("{}:relative/bin:{}/../outside", work.join("bin").display(), work.display());
        let found = resolve(&spec("tool", &path, &work), |_| false).unwrap();
        let expected = vec![
            work.join("bin/tool"),
            PathBuf::from("relative/bin/tool"),
            PathBuf::from(format!("{}/../outside/tool", work.display())),
        ];
        assert_eq!(found, Program { candidates: expected, bind: None });
        let relative = resolve(&spec("./tool", "", &work), |_| false).unwrap();
        assert_eq!(relative.candidates, vec![PathBuf::from("./tool")]);
    }

    #[test]
    fn nothing_found_is_127_and_a_directory_is_126() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let missing = resolve(&spec("no-such-program", "/nonexistent:/also/not", &root), |_| false).unwrap_err();
        assert_eq!(missing.exit_code(), EXIT_NOT_FOUND);
        assert_eq!(missing.to_string(), "no-such-program: No such file or directory");
        std::fs::create_dir(root.join("sub")).unwrap();
        let work = root.join("work");
        let is_dir = resolve(&spec("sub", root.to_str().unwrap(), &work), |_| false).unwrap_err();
        assert_eq!(is_dir.exit_code(), EXIT_CANNOT_EXECUTE);
    }
}
