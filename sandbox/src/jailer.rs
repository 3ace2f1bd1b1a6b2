//! The jailer: the process the agent starts as `<agent exe> __keyward-jail`, and the two
//! processes it creates. See the crate docs for the numbered steps; this module runs them.
//!
//! Process tree and who does what:
//! - **jailer** (host namespaces, host credentials, single-threaded): reads the spec, creates
//!   the job cgroup, plans the root, finds the program (`program`) and opens every bind source
//!   (`sources`) while it still has the agent's rights, clones the init into new namespaces,
//!   writes the init's id maps and puts it into the cgroup while it waits on a pipe, then
//!   supervises: deadline, cancellation signals, exit status, limit events, status file,
//!   cgroup removal.
//! - **init** (PID 1 of the job's PID namespace, root of its user namespace): becomes uid 0,
//!   enters a cgroup namespace, sets the hostname, brings `lo` up, builds the root from the
//!   jailer's descriptors and pivots into it, forks the program, drops its own capabilities
//!   and reaps every process in the namespace until the program exits. When it exits, the kernel kills everything left in the
//!   namespace (background processes do not outlive the job).
//! - **program** (child of the init): new session, rlimits, no capabilities, `no_new_privs`,
//!   `cwd`, Landlock, close-on-exec for every fd but 0/1/2, seccomp, `execve` of the program
//!   the jailer found, with exactly `spec.env`.
//!
//! The init and the program report layers and failures to the jailer over a close-on-exec pipe
//! (`report`); only the jailer writes to the job's stderr or the status file.

use std::convert::Infallible;
use std::ffi::CString;
use std::fmt::Display;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroup::{self, Controller, JobCgroup};
use crate::namespaces::{self, HostIds};
use crate::program::{self, Program};
use crate::report::{self, Reporter};
use crate::rootfs::{self, Plan};
use crate::sources::Sources;
use crate::spec::{self, Layer, MAX_SPEC_BYTES, Spec};
use crate::status::{Reason, Status};
use crate::{egress, landlock_rules, limits, privileges, seccomp, sys};

/// Exit code of the jailer when the sandbox could not be set up.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit code when the program was found but could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;
/// Exit code when the program was not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// A setup step failed: `"layer: why"`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct SetupError(String);

fn at<E: Display>(layer: &'static str) -> impl FnOnce(E) -> SetupError {
    move |e| SetupError(format!("{layer}: {e}"))
}

type Failure = (i32, SetupError);

fn setup<E: Display>(layer: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| (EXIT_SETUP_FAILED, at(layer)(e))
}

/// Run the jailer and exit the process with the program's exit code.
pub(crate) fn run() -> ! {
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(e) => {
            // No spec, so no status file to write: stderr and the exit code are all we have.
            eprintln!("keyward-sandbox: setup failed: {e}");
            std::process::exit(EXIT_SETUP_FAILED);
        }
    };
    let mut status = Status::default();
    let mut job_cgroup = None;
    let code = match supervise(&spec, &mut status, &mut job_cgroup) {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("keyward-sandbox: setup failed: {e}");
            status.reason = Some(Reason::SetupFailed(e.to_string()));
            code
        }
    };
    if let Some(mut job_cgroup) = job_cgroup {
        job_cgroup.remove();
    }
    if let Err(e) = status.write_atomic(&spec.status_file) {
        eprintln!("keyward-sandbox: {e}");
    }
    std::process::exit(code)
}

/// Step 1: the spec from stdin (bounded), validated; stdin then becomes /dev/null.
fn read_spec() -> Result<Spec, SetupError> {
    let threads = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_owned())));
    if threads.as_deref() != Some("1") {
        return Err(at("jailer")(format!(
            "must run single-threaded (threads: {}); call enter_jailer_if_requested() first in main",
            threads.unwrap_or_else(|| "unknown".into())
        )));
    }
    let mut bytes = Vec::new();
    std::io::stdin().lock().take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(at("spec"))?;
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(at("spec")(format!("larger than {MAX_SPEC_BYTES} bytes")));
    }
    let spec: Spec = serde_json::from_slice(&bytes).map_err(at("spec"))?;
    spec.validate().map_err(at("spec"))?;
    let null = File::open("/dev/null").map_err(at("stdin"))?;
    nix::unistd::dup2_stdin(&null).map_err(at("stdin"))?;
    Ok(spec)
}

/// Steps 2–9 on the jailer side. Returns the jailer's exit code.
fn supervise(spec: &Spec, status: &mut Status, job_cgroup: &mut Option<JobCgroup>) -> Result<i32, Failure> {
    spec::validate_on_host(spec).map_err(setup("spec"))?;
    sys::cloexec_from(3).map_err(setup("fds"))?;
    let ids = namespaces::host_ids(spec);
    namespaces::chown_work_dir(&spec.work_dir, ids).map_err(setup("user namespace"))?;
    namespaces::drop_supplementary_groups(ids).map_err(setup("user namespace"))?;
    *job_cgroup = cgroup_for(spec, status)?;
    let mut plan = Plan::for_spec(spec).map_err(setup("rootfs"))?;
    // With the agent's rights, before the switch: the sandbox's uid may not be able to reach
    // the program or a bind source by path (a clone under /root, mode 0700).
    let program = program::resolve(spec, |path| plan.shows(path)).map_err(|e| (e.exit_code(), at("exec")(e)))?;
    if let Some(file) = &program.bind {
        plan.bind_program(file);
    }
    let sources = Sources::open(&plan, ids.jailer_is_root).map_err(setup("rootfs"))?;

    let signal_fd = signal_fd()?;
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup("pipes"))?;
    let (report_r, report_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup("pipes"))?;

    let init = match sys::clone_process(namespaces::clone_flags(spec.network)) {
        Ok(sys::Forked::Child) => {
            drop((sync_w, report_r, signal_fd));
            init(spec, &plan, &program, sources, sync_r, report_w)
        }
        Ok(sys::Forked::Parent(pid)) => {
            // The init has its own copies; the detached mounts live until it attaches them.
            drop(sources);
            pid
        }
        Err(e) => {
            return Err(setup("namespaces")(format!(
                "clone(user, mount, pid, ipc, uts{}): {e} (are user namespaces enabled? \
                 see /proc/sys/user/max_user_namespaces)",
                if spec.network == spec::Network::None { ", net" } else { "" }
            )));
        }
    };
    drop((sync_r, report_w));

    // `sync_w` stays open until the jailer exits: the init checks it for a hang-up.
    if let Err(e) = handshake(init, ids, job_cgroup.as_ref(), &sync_w) {
        let _ = kill(init, Signal::SIGKILL);
        let _ = waitpid(init, None);
        return Err((EXIT_SETUP_FAILED, e));
    }
    status.layers.push(describe_ids(ids));
    status.layers.push(namespaces::describe(spec.network).to_owned());

    let (ended, killed_for) = wait_for(init, &signal_fd, spec.deadline_unix_ms).map_err(setup("wait"))?;
    let received = report::receive(report_r);
    let events = job_cgroup.as_ref().map(JobCgroup::events).unwrap_or_default();
    conclude(received, ended, killed_for, events, status)
}

/// Blocks the signals the jailer handles (children ending, stop requests) and returns a
/// descriptor that reads them, so the wait loop sees them as events rather than handlers.
fn signal_fd() -> Result<SignalFd, Failure> {
    let mut signals = SigSet::empty();
    for sig in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(sig);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None).map_err(setup("signals"))?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(setup("signals"))
}

/// Step 9: the job's outcome from what the init reported, how it ended, and the cgroup's
/// events (a memory or pids limit hit explains a failure the program could not report).
fn conclude(
    received: report::Received,
    ended: WaitStatus,
    killed_for: Option<Reason>,
    events: cgroup::Events,
    status: &mut Status,
) -> Result<i32, Failure> {
    status.layers.extend(received.layers);
    status.skipped.extend(received.skipped);
    if let Some((code, why)) = received.failure {
        // Already "layer: why", written by the init or the program.
        return Err((code, SetupError(why)));
    }
    let (exit_code, signal) = match (received.exit_code, received.signal, ended) {
        (Some(code), _, _) => (Some(code), None),
        (None, Some(sig), _) => (None, Some(sig)),
        (None, None, WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        (None, None, WaitStatus::Exited(_, code)) => {
            return Err(setup("init")(format!("exited with {code} without reporting the program's status")));
        }
        (None, None, other) => return Err(setup("init")(format!("unexpected wait status {other:?}"))),
    };
    status.exit_code = exit_code;
    status.signal = signal;
    let finished_by_itself = received.exit_code.is_some() || received.signal.is_some();
    status.reason = if !finished_by_itself && killed_for.is_some() {
        killed_for
    } else if exit_code == Some(0) {
        None
    } else if events.oom_kills > 0 {
        Some(Reason::MemoryLimit)
    } else if events.pids_max_hits > 0 {
        Some(Reason::PidsLimit)
    } else {
        None
    };
    Ok(match (exit_code, signal) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => EXIT_SETUP_FAILED,
    })
}

fn describe_ids(ids: HostIds) -> String {
    if ids.jailer_is_root {
        format!(
            "user namespace: root inside = host uid {} gid {} (unprivileged; work dir chowned; no supplementary groups)",
            ids.uid, ids.gid
        )
    } else {
        format!("user namespace: root inside = caller uid {} gid {}", ids.uid, ids.gid)
    }
}

/// Step 2: the job cgroup for the limits that are set, honouring the level.
fn cgroup_for(spec: &Spec, status: &mut Status) -> Result<Option<JobCgroup>, Failure> {
    let needed = [
        (Controller::Memory, Layer::MemoryLimit, spec.limits.memory_bytes.is_some()),
        (Controller::Pids, Layer::PidsLimit, spec.limits.pids.is_some()),
    ];
    let filter = spec.network == spec::Network::Host && !spec.blocked_destinations.is_empty();
    if !filter && !needed.iter().any(|(_, _, needed)| *needed) {
        return Ok(None);
    }
    let root = spec.cgroup_root.clone().unwrap_or_else(|| cgroup::DEFAULT_ROOT.into());
    let detected = cgroup::detect(&root);
    // The egress filter is never optional: a job with blocked destinations runs behind it or
    // not at all (the agent decided at start whether to ask for it).
    let v2_base = match (&detected.v2, filter) {
        (_, false) => None,
        (Ok(base), true) => Some(base.clone()),
        (Err(reason), true) => return Err(setup("egress filter")(reason)),
    };
    let mut wanted = Vec::new();
    for (controller, layer, needed) in needed {
        if !needed {
            continue;
        }
        match detected.get(controller) {
            Ok(place) => wanted.push((controller, place.clone())),
            Err(reason) if spec.required.allows_missing(layer) => {
                let line = format!("{layer}: {reason}");
                eprintln!("keyward-sandbox: warning: {line}; continuing without it because the level allows it");
                status.skipped.push(line);
            }
            Err(reason) => {
                return Err(setup("cgroup")(format!(
                    "{layer} is required (level {}) but unavailable: {reason}",
                    spec.required.name()
                )));
            }
        }
    }
    if wanted.is_empty() && v2_base.is_none() {
        return Ok(None);
    }
    let mut job = JobCgroup::create(&wanted, &spec.limits, v2_base.as_deref()).map_err(setup("cgroup"))?;
    status.layers.extend(job.layers.iter().cloned());
    if let Some(dir) = &job.v2 {
        match egress::attach(dir, &spec.blocked_destinations) {
            Ok(layer) => status.layers.push(layer),
            Err(e) => {
                job.remove();
                return Err(setup("egress filter")(e));
            }
        }
    }
    Ok(Some(job))
}

/// Step 3 (jailer side): id maps and cgroup membership for the paused init, then release it.
fn handshake(init: Pid, ids: HostIds, job_cgroup: Option<&JobCgroup>, sync_w: &OwnedFd) -> Result<(), SetupError> {
    namespaces::write_id_maps(init, ids).map_err(at("user namespace"))?;
    if let Some(job_cgroup) = job_cgroup {
        job_cgroup.attach(init.as_raw()).map_err(at("cgroup"))?;
    }
    nix::unistd::write(sync_w, b"1").map_err(at("handshake"))?;
    Ok(())
}

/// Step 9: wait for the init; SIGKILL it at the deadline, on SIGTERM/SIGINT/SIGHUP, or when the
/// caller goes away (the reader of the jailer's stdout pipe closed it: the agent died). Killing
/// the init kills its whole PID namespace, so no job outlives its agent: a job slot's uid is
/// free again once the agent is gone.
fn wait_for(init: Pid, signal_fd: &SignalFd, deadline_ms: Option<u64>) -> Result<(WaitStatus, Option<Reason>), Errno> {
    // A pipe's write end reports POLLERR once every reader is gone; a terminal or a file never
    // does. Watched until it fires once (it would fire on every poll after that).
    let stdout = std::io::stdout();
    let mut watch_caller = true;
    let deadline = deadline_ms.map(|ms| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let left = u128::from(ms).saturating_sub(now);
        Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(u64::MAX / 2))
    });
    let mut killed_for = None;
    loop {
        match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
            Ok(ended @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => return Ok((ended, killed_for)),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let timeout = match (deadline, &killed_for) {
            (Some(deadline), None) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = kill(init, Signal::SIGKILL);
                    killed_for = Some(Reason::Deadline);
                    continue;
                }
                PollTimeout::try_from(left.as_millis().saturating_add(1)).unwrap_or(PollTimeout::MAX)
            }
            _ => PollTimeout::NONE,
        };
        let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
        if watch_caller {
            fds.push(PollFd::new(stdout.as_fd(), PollFlags::empty()));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let caller = fds.get(1).and_then(PollFd::revents).unwrap_or(PollFlags::empty());
        if caller.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            watch_caller = false;
            if !caller.contains(PollFlags::POLLNVAL) && killed_for.is_none() {
                let _ = kill(init, Signal::SIGKILL);
                killed_for = Some(Reason::Cancelled);
            }
        }
        drop(fds);
        while let Ok(Some(info)) = signal_fd.read_signal() {
            let cancel = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP].contains(&(info.ssi_signo as i32));
            if cancel && killed_for.is_none() {
                let _ = kill(init, Signal::SIGKILL);
                killed_for = Some(Reason::Cancelled);
            }
        }
    }
}

/// The init (PID 1 of the job's namespaces). Never returns.
fn init(spec: &Spec, plan: &Plan, program: &Program, sources: Sources, sync_r: OwnedFd, report_w: OwnedFd) -> ! {
    let mut reporter = Reporter::new(report_w);
    match init_setup(spec, plan, program, sources, sync_r, &mut reporter) {
        Ok(child) => {
            // Nothing below needs privileges: drop them in case anything could reach this process.
            let _ = privileges::drop_capabilities();
            reap(child, &mut reporter);
            sys::exit_now(0)
        }
        Err((code, e)) => {
            reporter.failed(code, &e.to_string());
            sys::exit_now(code)
        }
    }
}

fn init_setup(
    spec: &Spec,
    plan: &Plan,
    program: &Program,
    sources: Sources,
    sync_r: OwnedFd,
    reporter: &mut Reporter,
) -> Result<Pid, Failure> {
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(setup("init"))?;
    privileges::die_with_parent().map_err(setup("privileges"))?;
    // Wait for the id maps and the cgroup. EOF means the jailer failed or died: it reports.
    let mut byte = [0u8; 1];
    if !matches!(nix::unistd::read(&sync_r, &mut byte), Ok(1)) {
        sys::exit_now(EXIT_SETUP_FAILED);
    }
    namespaces::become_root().map_err(setup("user namespace"))?;
    // Changing uids clears the parent-death signal: set it again, then make sure the jailer did
    // not die in between (it holds the pipe's write end until it exits).
    privileges::die_with_parent().map_err(setup("privileges"))?;
    let mut hangup = [PollFd::new(sync_r.as_fd(), PollFlags::POLLIN)];
    if poll(&mut hangup, PollTimeout::ZERO).is_ok()
        && hangup[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    {
        sys::exit_now(EXIT_SETUP_FAILED);
    }
    drop(sync_r);
    namespaces::configure_inside(spec).map_err(setup("namespaces"))?;
    // Consumes the jailer's detached mounts: none is open any more when the program is forked.
    rootfs::enter(plan, sources).map_err(setup("rootfs"))?;
    reporter.layer(&plan.describe());
    // Not dumpable: the program cannot open /proc/1/mem or /proc/1/fd (nor ptrace it; seccomp
    // and Landlock also forbid that).
    nix::sys::prctl::set_dumpable(false).map_err(setup("privileges"))?;
    match sys::clone_process(0) {
        Ok(sys::Forked::Child) => run_program(spec, plan, program, reporter),
        Ok(sys::Forked::Parent(pid)) => Ok(pid),
        Err(e) => Err(setup("init")(format!("fork: {e}"))),
    }
}

/// Reap every process in the namespace until the program exits, then report how it ended.
fn reap(program: Pid, reporter: &mut Reporter) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == program => return reporter.exited(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == program => return reporter.signaled(sig as i32),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// The program process: final hardening, then `execve`. Never returns.
fn run_program(spec: &Spec, plan: &Plan, program: &Program, reporter: &mut Reporter) -> ! {
    let Err((code, e)) = program_setup(spec, plan, program, reporter);
    reporter.failed(code, &e.to_string());
    sys::exit_now(code)
}

fn program_setup(spec: &Spec, plan: &Plan, program: &Program, reporter: &mut Reporter) -> Result<Infallible, Failure> {
    privileges::die_with_parent().map_err(setup("privileges"))?;
    privileges::new_session_and_signals().map_err(setup("privileges"))?;
    reporter.layer("new session; parent-death signal SIGKILL");
    limits::apply(&spec.limits).map_err(setup("rlimits"))?;
    reporter.layer(&describe_limits(spec));
    privileges::drop_capabilities().map_err(setup("privileges"))?;
    reporter.layer("capabilities: all dropped (bounding, ambient, effective, permitted, inheritable)");
    privileges::no_new_privs().map_err(setup("privileges"))?;
    reporter.layer("no_new_privs");
    nix::unistd::chdir(&spec.cwd).map_err(|e| setup("cwd")(format!("{}: {e}", spec.cwd.display())))?;

    let scoped = match landlock_rules::apply(plan, &spec.work_dir) {
        Ok(applied) => {
            reporter.layer(&applied.description);
            applied.scoped
        }
        Err(e) if spec.required.allows_missing(Layer::Landlock) => {
            skip(reporter, Layer::Landlock, &e);
            false
        }
        Err(e) => return Err(setup("landlock")(required(spec, e))),
    };
    // With the host's network the host's abstract sockets are one `connect` away; only the
    // scope fences them (security review L4). A job on a kernel without scopes runs there only
    // if the operator allowed it.
    if spec.network == spec::Network::Host && !scoped {
        let why = format!(
            "needs Landlock ABI {} (Linux 6.12 or later) to keep a job on the host's network from \
             the host's abstract Unix sockets",
            landlock_rules::SCOPE_ABI
        );
        if spec.required.allows_missing(Layer::LandlockScope) {
            skip(reporter, Layer::LandlockScope, &why);
        } else {
            return Err(setup("landlock")(required(spec, why)));
        }
    }

    let ExecArgs { argv, envp, candidates } = exec_args(spec, program).map_err(setup("exec"))?;
    privileges::cloexec_all_but_stdio().map_err(setup("fds"))?;
    reporter.layer("fds: only 0, 1, 2 survive exec; stdin is /dev/null");

    match seccomp::install() {
        Ok(()) => reporter.layer("seccomp deny list (EPERM; foreign arch killed)"),
        Err(e) if spec.required.allows_missing(Layer::Seccomp) => skip(reporter, Layer::Seccomp, &e),
        Err(e) => return Err(setup("seccomp")(required(spec, e))),
    }

    let mut error = Errno::ENOENT;
    for path in &candidates {
        let Err(e) = nix::unistd::execve(path, &argv, &envp);
        // Like execvp: keep looking after ENOENT/ENOTDIR, remember anything more telling.
        if !matches!(e, Errno::ENOENT | Errno::ENOTDIR) {
            error = e;
        }
    }
    let code = if error == Errno::ENOENT { EXIT_NOT_FOUND } else { EXIT_CANNOT_EXECUTE };
    let program = spec.argv.first().map(String::as_str).unwrap_or_default();
    Err((code, at("exec")(format!("{program}: {}", error.desc()))))
}

fn required(spec: &Spec, e: impl Display) -> String {
    format!("{e} (required by level {})", spec.required.name())
}

fn skip(reporter: &mut Reporter, layer: Layer, e: &dyn Display) {
    let line = format!("{layer}: {e}");
    // Straight to the job's stderr as well, so the job log shows it before the program's output.
    eprintln!("keyward-sandbox: warning: {line}; continuing without it because the level allows it");
    reporter.skipped(&line);
}

fn describe_limits(spec: &Spec) -> String {
    let l = &spec.limits;
    let mut parts = vec!["core 0".to_owned()];
    if let Some(n) = l.open_files {
        parts.push(format!("nofile {n}"));
    }
    if let Some(n) = l.file_size_bytes {
        parts.push(format!("fsize {n}"));
    }
    if let Some(n) = l.cpu_seconds {
        parts.push(format!("cpu {n}s"));
    }
    format!("rlimits: {}", parts.join(", "))
}

/// What `execve` gets: argv, envp, and the paths to try for the program.
struct ExecArgs {
    argv: Vec<CString>,
    envp: Vec<CString>,
    candidates: Vec<CString>,
}

/// Built before seccomp and exec; the candidates are the jailer's lookup (`program`).
fn exec_args(spec: &Spec, program: &Program) -> Result<ExecArgs, Errno> {
    let c = |s: String| CString::new(s).map_err(|_| Errno::EINVAL);
    let argv = spec.argv.iter().cloned().map(c).collect::<Result<Vec<_>, _>>()?;
    let envp = spec.env.iter().map(|(k, v)| c(format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?;
    let candidates = program
        .candidates
        .iter()
        .map(|path| CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL))
        .collect::<Result<_, _>>()?;
    Ok(ExecArgs { argv, envp, candidates })
}
