//! Landlock: a second, independent fence on file access, enforced by the kernel's LSM rather
//! than by what the mount namespace happens to show.
//!
//! Why it exists: if a mount were wrongly writable (a bind flag lost, a kernel bug in remount,
//! a future change to `rootfs`), Landlock still refuses the write. Rules (inside paths):
//! - full access beneath the work dir, `/tmp` and `/dev/shm`;
//! - read, write, truncate and device ioctls beneath `/dev` (the device nodes);
//! - read and execute beneath every read-only bind (`/usr`, `/lib*`, `/etc` files, extras);
//! - read beneath `/proc` (no writes: `/proc/sys`, `/proc/<pid>/*` stay read-only);
//! - list `/` itself; nothing else.
//!
//! Scopes (ABI 6): the program cannot connect to abstract Unix sockets created outside its
//! domain (matters with `Network::Host`, where those are the host's) and cannot signal
//! processes outside its domain (the init and the jailer).
//!
//! Uses the rights of ABI 7 (the newest this crate was tested on) in best-effort mode: older
//! kernels get the subset they support ("partial"), which still restricts writes (ABI 1).
//! A kernel without Landlock fails the run unless the level allows [`Layer::Landlock`] missing.
//! Best effort would drop the scopes silently on a kernel older than ABI 6, so [`apply`] says
//! whether they hold, and the jailer refuses a `Network::Host` run without them unless the
//! level allows [`Layer::LandlockScope`] missing (security review L4).
//!
//! [`Layer::Landlock`]: crate::Layer::Landlock
//! [`Layer::LandlockScope`]: crate::Layer::LandlockScope

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, BitFlags, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::rootfs::{Entry, Plan};

/// The newest ABI whose rights we request (and have tested).
const TARGET: ABI = ABI::V7;
/// The first ABI with scopes (abstract Unix sockets, signals): Linux 6.12.
pub(crate) const SCOPE_ABI: i32 = 6;

/// What [`apply`] enforced.
#[derive(Debug)]
pub(crate) struct Applied {
    /// For `Status::layers`.
    pub(crate) description: String,
    /// Whether the scopes (ABI 6) hold: abstract sockets and signals outside the sandbox.
    pub(crate) scoped: bool,
}

/// Applying Landlock failed, or the kernel does not enforce it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LandlockError {
    #[error("not supported by this kernel ({0})")]
    Unsupported(&'static str),
    #[error("{0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("rule for {path:?}: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
}

#[derive(Debug, Clone, Copy)]
enum Class {
    Full,
    Devices,
    ReadExec,
    Read,
    ListOnly,
}

fn rights(class: Class) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    match class {
        Class::Full => AccessFs::from_all(TARGET),
        Class::Devices => read | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev,
        Class::ReadExec => read | AccessFs::Execute,
        Class::Read => read,
        Class::ListOnly => AccessFs::ReadDir.into(),
    }
}

/// The rules for a plan (inside paths), derived from the same list that built the mounts.
fn rules(plan: &Plan, work_dir: &Path) -> Vec<(PathBuf, Class)> {
    let mut rules = vec![(PathBuf::from("/"), Class::ListOnly), (PathBuf::from("/etc"), Class::Read)];
    for entry in &plan.entries {
        match entry {
            Entry::Bind { path, writable: true, .. } => rules.push((path.clone(), Class::Full)),
            Entry::Bind { path, writable: false, .. } => rules.push((path.clone(), Class::ReadExec)),
            Entry::Tmpfs { path, .. } if path == Path::new("/dev") => rules.push((path.clone(), Class::Devices)),
            Entry::Tmpfs { path, .. } => rules.push((path.clone(), Class::Full)),
            Entry::Proc => rules.push((PathBuf::from("/proc"), Class::Read)),
            Entry::Device { .. } | Entry::Symlink { .. } | Entry::Dir { .. } => {}
        }
    }
    debug_assert!(rules.iter().any(|(p, _)| p == work_dir));
    rules
}

/// Restrict the calling process (and its future children). Must run after `no_new_privs` and
/// inside the final root.
pub(crate) fn apply(plan: &Plan, work_dir: &Path) -> Result<Applied, LandlockError> {
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET))?
        .scope(Scope::from_all(TARGET))?
        .create()?;
    for (path, class) in rules(plan, work_dir) {
        let fd = match PathFd::new(&path) {
            Ok(fd) => fd,
            Err(_) if !path.exists() => continue,
            Err(source) => return Err(LandlockError::Path { path, source }),
        };
        let mut access = rights(class);
        if !path.is_dir() {
            // Directory-only rights on a file are an error (EINVAL) for the kernel.
            access &= AccessFs::from_file(TARGET);
        }
        ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
    }
    let status = ruleset.restrict_self()?;
    let (abi, effective) = match status.landlock {
        LandlockStatus::Available { effective_abi, kernel_abi } => {
            (kernel_abi.unwrap_or(effective_abi as i32), effective_abi as i32)
        }
        LandlockStatus::NotEnabled => return Err(LandlockError::Unsupported("built in but not enabled at boot")),
        LandlockStatus::NotImplemented => return Err(LandlockError::Unsupported("not built into the kernel")),
    };
    let scoped = effective >= SCOPE_ABI;
    let description = match status.ruleset {
        RulesetStatus::FullyEnforced => format!("landlock abi {abi}"),
        RulesetStatus::PartiallyEnforced if scoped => {
            format!("landlock abi {abi} (partial: older than abi {})", TARGET as i32)
        }
        RulesetStatus::PartiallyEnforced => format!(
            "landlock abi {abi} (partial: older than abi {}; no scopes, so abstract sockets and signals \
             outside the sandbox are not fenced by landlock)",
            TARGET as i32
        ),
        RulesetStatus::NotEnforced => return Err(LandlockError::Unsupported("ruleset not enforced")),
    };
    Ok(Applied { description, scoped })
}
