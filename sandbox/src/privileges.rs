//! Process-level hardening of the sandboxed program: parent-death signal, new session,
//! default signal dispositions, no capabilities, `no_new_privs`, no inherited descriptors.
//!
//! Why it exists: each item closes one way out that namespaces leave open.
//! - Parent-death signal (SIGKILL) on every process the jailer creates: if the agent kills the
//!   jailer, the init dies, and with it the whole PID namespace. No orphaned Terraform.
//! - `setsid`: the job has no controlling terminal, so it cannot push keystrokes into the
//!   agent's terminal (TIOCSTI is also denied by seccomp) or get its signals.
//! - Capabilities: the sandbox's root holds every capability *in its user namespace*; the
//!   program gets none (bounding, ambient, effective, permitted, inheritable all cleared), so
//!   it cannot remount, change its own network setup, or use namespace-root powers.
//! - `no_new_privs`: `execve` of a setuid/setcap binary grants nothing, and the empty bounding
//!   set stays empty; it is also what lets an unprivileged process install seccomp/Landlock.
//! - Descriptors: everything but 0, 1, 2 is marked close-on-exec (`close_range`), so nothing
//!   the agent or the jailer had open (sockets, the agent's key file) reaches the program.

use nix::sys::signal::Signal;

use crate::sys;

/// A hardening step failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub(crate) struct PrivilegeError {
    what: &'static str,
    #[source]
    source: nix::Error,
}

fn err(what: &'static str) -> impl FnOnce(nix::Error) -> PrivilegeError {
    move |source| PrivilegeError { what, source }
}

/// SIGKILL the caller when its parent dies.
pub(crate) fn die_with_parent() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(err("prctl(PR_SET_PDEATHSIG)"))
}

/// New session, default signal dispositions, empty signal mask.
pub(crate) fn new_session_and_signals() -> Result<(), PrivilegeError> {
    nix::unistd::setsid().map_err(err("setsid"))?;
    sys::reset_signal_dispositions();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(err("sigprocmask"))
}

/// Clear every capability set, including the bounding set.
pub(crate) fn drop_capabilities() -> Result<(), PrivilegeError> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    sys::drop_all_capabilities(last_cap).map_err(err("drop capabilities"))
}

/// `PR_SET_NO_NEW_PRIVS`.
pub(crate) fn no_new_privs() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_no_new_privs().map_err(err("prctl(PR_SET_NO_NEW_PRIVS)"))
}

/// Mark every descriptor above 2 close-on-exec.
pub(crate) fn cloexec_all_but_stdio() -> Result<(), PrivilegeError> {
    sys::cloexec_from(3).map_err(err("close_range"))
}
