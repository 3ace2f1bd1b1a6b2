//! End-to-end tests of the sandbox on the real kernel: no mocks. Each case would fail if the
//! defence it names broke.
//!
//! This binary is its own jailer (`main` calls `enter_jailer_if_requested()` first, as the
//! agent does) and its own probe program: run inside the sandbox (bound read-only) with a
//! hidden first argument, it reports what the kernel let it do. The harness speaks the subset
//! of libtest's CLI that `cargo test` and `cargo nextest run` use (`--list --format terse
//! [--ignored]`, `NAME --exact`), so each case is a separate nextest test.
//!
//! Needs root (cgroups, uid mapping), like the agent in production.

// A panic in a test is a failed test, as clippy.toml allows for #[test] functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyward_sandbox::{Layer, Level, Limits, Network, Reason, Spec, Status, command};

/// A cgroup mount root that does not exist: simulates a host without cgroups.
const FAKE_HOST_WITHOUT_CGROUPS: &str = "/nonexistent-keyward-test-cgroup-root";

type Case = (&'static str, fn());

const CASES: &[Case] = &[
    ("plain_command_runs_and_exit_code_propagates", plain_command_runs_and_exit_code_propagates),
    ("host_secrets_and_shadow_are_not_visible", host_secrets_and_shadow_are_not_visible),
    ("writes_outside_work_dir_and_tmp_fail", writes_outside_work_dir_and_tmp_fail),
    ("mounts_are_read_only_nosuid_nodev", mounts_are_read_only_nosuid_nodev),
    ("pid_namespace_hides_host_processes", pid_namespace_hides_host_processes),
    ("network_none_cannot_reach_host_but_host_can", network_none_cannot_reach_host_but_host_can),
    ("seccomp_denies_ptrace_and_friends", seccomp_denies_ptrace_and_friends),
    ("fork_bomb_is_stopped_by_pids_limit", fork_bomb_is_stopped_by_pids_limit),
    ("memory_limit_kills_the_job", memory_limit_kills_the_job),
    ("deadline_kills_the_job", deadline_kills_the_job),
    ("killing_the_jailer_kills_the_tree", killing_the_jailer_kills_the_tree),
    ("cancelling_the_jailer_kills_the_tree_and_reports", cancelling_the_jailer_kills_the_tree_and_reports),
    ("the_job_ends_when_its_caller_goes_away", the_job_ends_when_its_caller_goes_away),
    ("environment_and_fds_are_scrubbed", environment_and_fds_are_scrubbed),
    ("missing_required_layer_fails_clearly", missing_required_layer_fails_clearly),
    ("relaxed_level_names_the_skipped_layer", relaxed_level_names_the_skipped_layer),
    ("exec_failure_is_a_setup_failure", exec_failure_is_a_setup_failure),
    ("work_dir_chown_does_not_follow_symlinks", work_dir_chown_does_not_follow_symlinks),
    ("program_and_binds_under_a_root_only_dir_run", program_and_binds_under_a_root_only_dir_run),
    ("job_symlinks_do_not_lead_the_jailer_out", job_symlinks_do_not_lead_the_jailer_out),
    ("spec_debug_hides_env_values", spec_debug_hides_env_values),
    ("probe_reports_every_layer_here", probe_reports_every_layer_here),
    ("host_ids_map_to_the_given_uid_and_gid", host_ids_map_to_the_given_uid_and_gid),
    ("metadata_is_refused_on_the_host_network", metadata_is_refused_on_the_host_network),
];

fn main() {
    keyward_sandbox::enter_jailer_if_requested();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("inside-syscalls") => return inside_syscalls(),
        Some("inside-alloc") => return inside_alloc(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1024)),
        Some("inside-env-fds") => return inside_env_fds(),
        _ => {}
    }
    std::process::exit(harness(&args));
}

// ---------------------------------------------------------------------------------------------
// Harness: `--list --format terse [--ignored]` and `[FILTER] [--exact]`.

fn harness(args: &[String]) -> i32 {
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        if !has("--ignored") {
            for (name, _) in CASES {
                println!("{name}: test");
            }
        }
        return 0;
    }
    let mut filters = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
        } else if ["--format", "--test-threads", "--skip", "--color", "--logfile", "-Z"].contains(&arg.as_str()) {
            skip_value = true;
        } else if !arg.starts_with('-') {
            filters.push(arg.as_str());
        }
    }
    let exact = has("--exact");
    let selected: Vec<&Case> = CASES
        .iter()
        .filter(|(name, _)| {
            filters.is_empty() || filters.iter().any(|f| if exact { name == f } else { name.contains(f) })
        })
        .collect();
    println!("running {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, case) in selected {
        let started = Instant::now();
        let result = std::panic::catch_unwind(case);
        let took = started.elapsed().as_secs_f32();
        match result {
            Ok(()) => println!("test {name} ... ok ({took:.2}s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({took:.2}s)");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("\ntest result: ok");
        0
    } else {
        println!("\nfailures: {failed:?}\ntest result: FAILED");
        1
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the host's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("kw-sandbox-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        TempDir(std::fs::canonicalize(path).unwrap())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A job: its work dir and a state dir (outside the work dir) for the status file.
struct Job {
    work: TempDir,
    /// Holds the status file; removed with the job.
    _state: TempDir,
    spec: Spec,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn job(argv: &[&str]) -> Job {
    let work = TempDir::new("work");
    let state = TempDir::new("state");
    let mut spec = Spec::new(argv.iter().map(|s| s.to_string()).collect(), work.0.clone(), state.0.join("status.json"));
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.limits = Limits { memory_bytes: Some(512 << 20), pids: Some(256), ..Limits::default() };
    // Every case ends, whatever breaks.
    spec.deadline_unix_ms = Some(now_ms() + 30_000);
    Job { work, _state: state, spec }
}

fn sh(script: &str) -> Job {
    job(&["sh", "-c", script])
}

/// A job running this test binary inside the sandbox (bound read-only) with `args`.
fn inside(args: &[&str]) -> Job {
    let exe = std::env::current_exe().unwrap();
    let mut argv = vec![exe.to_str().unwrap()];
    argv.extend(args);
    let mut job = job(&argv);
    job.spec.read_only.push(exe.clone());
    job
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    status: Status,
}

fn jailer() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn run(job: &Job) -> Ran {
    run_spec(&job.spec)
}

fn run_spec(spec: &Spec) -> Ran {
    let out = command(&jailer(), spec).unwrap().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let status = Status::read(&spec.status_file)
        .unwrap_or_else(|e| panic!("no status ({e}); code {:?}, stderr: {stderr}", out.status.code()));
    Ran { code: out.status.code().unwrap_or(-1), stdout, stderr, status }
}

fn expect_ok(ran: &Ran) {
    assert_eq!(ran.code, 0, "stdout: {}\nstderr: {}\nstatus: {:?}", ran.stdout, ran.stderr, ran.status);
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(marker)
        {
            found.push(pid);
        }
    }
    found
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// A `sleep` argument unique to this test run, findable in the host's /proc.
fn marker_seconds() -> String {
    format!("{}.{}{}", 60 + COUNTER.fetch_add(1, Ordering::Relaxed) % 30, std::process::id(), now_ms() % 100_000)
}

// ---------------------------------------------------------------------------------------------
// Cases.

fn plain_command_runs_and_exit_code_propagates() {
    let j = sh("echo hi > out; cat out; exit 3");
    let ran = run(&j);
    assert_eq!(ran.code, 3, "stderr: {}", ran.stderr);
    assert_eq!(ran.stdout, "hi\n");
    assert_eq!(std::fs::read_to_string(j.work.0.join("out")).unwrap(), "hi\n");
    assert_eq!(ran.status.exit_code, Some(3));
    assert_eq!(ran.status.signal, None);
    assert_eq!(ran.status.reason, None);
    let layers = ran.status.layers.join("\n");
    for expected in
        ["user namespace", "namespaces:", "rootfs", "cgroup", "rlimits", "no_new_privs", "landlock abi", "seccomp"]
    {
        assert!(layers.contains(expected), "missing layer {expected} in {layers}");
    }
    assert!(ran.status.skipped.is_empty());
    let ok = run(&sh("true"));
    expect_ok(&ok);
    assert_eq!(ok.status.exit_code, Some(0));
}

fn host_secrets_and_shadow_are_not_visible() {
    // Stands in for the agent's data dir: a host dir that is not bound.
    let data = TempDir::new("agent-data");
    let secret = data.0.join("agent.key");
    std::fs::write(&secret, "PRIVATE-KEY-MATERIAL").unwrap();
    let script = format!(
        "cat {s} 2>/dev/null; test -e {s} && echo SECRET_VISIBLE; test -e {d} && echo DATA_DIR_VISIBLE; \
         cat /etc/shadow 2>/dev/null; test -e /etc/shadow && echo SHADOW_VISIBLE; \
         test -e /etc/gshadow && echo GSHADOW_VISIBLE; test -e /root && echo ROOT_VISIBLE; \
         test -e /etc/ssl/private && echo SSL_PRIVATE_VISIBLE; test -e /etc/hosts && echo HOSTS_OK; \
         test -e /sys/kernel && echo SYS_VISIBLE; echo done",
        s = secret.display(),
        d = data.0.display()
    );
    let ran = run(&sh(&script));
    expect_ok(&ran);
    assert!(!ran.stdout.contains("PRIVATE-KEY-MATERIAL"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("_VISIBLE"), "{}", ran.stdout);
    assert!(ran.stdout.contains("HOSTS_OK\ndone"), "{}", ran.stdout);
}

fn writes_outside_work_dir_and_tmp_fail() {
    let host_marker = std::env::temp_dir().join(format!("kw-host-tmp-marker-{}", std::process::id()));
    std::fs::write(&host_marker, "host").unwrap();
    let script = format!(
        "for p in /usr/x /usr/bin/x /etc/x /etc/hosts /x /dev/x /proc/x /proc/self/comm {s}; do \
           (echo x > $p) 2>/dev/null && echo WROTE $p; done; \
         mkdir /newdir 2>/dev/null && echo MKDIR_ROOT; \
         echo t > /tmp/t && echo TMP_OK; echo w > ./w && echo WORK_OK; echo s > /dev/shm/s && echo SHM_OK; \
         echo n > /dev/null && echo NULL_OK; \
         test -e {m} && echo HOST_TMP_VISIBLE; echo done",
        s = Path::new("/").join("bin").join("sh").display(),
        m = host_marker.display()
    );
    let j = sh(&script);
    let ran = run(&j);
    std::fs::remove_file(&host_marker).unwrap();
    expect_ok(&ran);
    assert!(!ran.stdout.contains("WROTE"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("MKDIR_ROOT"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("HOST_TMP_VISIBLE"), "{}", ran.stdout);
    for ok in ["TMP_OK", "WORK_OK", "SHM_OK", "NULL_OK", "done"] {
        assert!(ran.stdout.contains(ok), "{ok} missing in {}", ran.stdout);
    }
    assert_eq!(std::fs::read_to_string(j.work.0.join("w")).unwrap(), "w\n");
    assert!(!Path::new("/tmp/t").exists() || std::fs::read_to_string("/tmp/t").unwrap() != "t\n");
}

fn mounts_are_read_only_nosuid_nodev() {
    // Checks the mount layer on its own (Landlock would also stop writes).
    let j = sh("cat /proc/self/mountinfo");
    let ran = run(&j);
    expect_ok(&ran);
    let work = j.work.0.display().to_string();
    let mut seen = BTreeSet::new();
    for line in ran.stdout.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (mount_point, options) = (fields[4], fields[5]);
        seen.insert(mount_point.to_owned());
        let opts: BTreeSet<&str> = options.split(',').collect();
        assert!(opts.contains("nosuid"), "{mount_point} lacks nosuid: {line}");
        let is_device =
            ["null", "zero", "full", "random", "urandom", "tty"].iter().any(|d| mount_point == format!("/dev/{d}"));
        if !is_device {
            assert!(opts.contains("nodev") || line.contains(" - tmpfs "), "{mount_point} lacks nodev: {line}");
        }
        let writable = mount_point == work || ["/tmp", "/dev/shm", "/proc"].contains(&mount_point) || is_device;
        if !writable {
            assert!(opts.contains("ro"), "{mount_point} is not read-only: {line}");
        } else if mount_point == work {
            assert!(opts.contains("rw"), "work dir is not writable: {line}");
        }
    }
    for expected in ["/", "/usr", "/dev", "/proc", "/tmp", work.as_str()] {
        assert!(seen.contains(expected), "{expected} not mounted: {seen:?}");
    }
    assert!(!seen.iter().any(|m| m.starts_with("/oldroot") || m.starts_with("/newroot")), "{seen:?}");
}

fn pid_namespace_hides_host_processes() {
    let ran = run(&sh("echo pid=$$; ls /proc | grep -c '^[0-9]'; hostname"));
    expect_ok(&ran);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[0], "pid=2", "the program is the init's first child");
    let visible: u32 = lines[1].parse().unwrap();
    assert!(visible <= 4, "sees {visible} processes");
    assert_eq!(lines[2], "keyward");
}

fn network_none_cannot_reach_host_but_host_can() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    let script =
        format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED; cat /proc/net/dev | tail -n +3 | cut -d: -f1");
    let mut j = job(&["bash", "-c", &script]);
    let none = run(&j);
    assert!(!none.stdout.contains("CONNECTED"), "{}", none.stdout);
    let interfaces: Vec<&str> = none.stdout.lines().map(str::trim).collect();
    assert_eq!(interfaces, vec!["lo"], "{}", none.stdout);

    j.spec.network = Network::Host;
    let host = run(&j);
    assert!(host.stdout.contains("CONNECTED"), "stdout: {} stderr: {}", host.stdout, host.stderr);
}

fn seccomp_denies_ptrace_and_friends() {
    let ran = run(&inside(&["inside-syscalls"]));
    expect_ok(&ran);
    let results: std::collections::BTreeMap<&str, &str> =
        ran.stdout.lines().filter_map(|l| l.split_once('=')).collect();
    for denied in
        ["ptrace", "unshare_user", "clone_newuser", "keyctl", "tiocsti", "userfaultfd", "io_uring", "process_vm_readv"]
    {
        assert_eq!(results.get(denied), Some(&"EPERM"), "{denied}: {}", ran.stdout);
    }
    assert_eq!(results.get("loopback"), Some(&"ok"), "lo must be up: {}", ran.stdout);
    for (field, value) in [
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(results.get(field), Some(&value), "{field}: {}", ran.stdout);
    }
}

fn fork_bomb_is_stopped_by_pids_limit() {
    let marker = marker_seconds();
    let script = format!("i=0; while [ $i -lt 500 ]; do sleep {marker} & i=$((i+1)); done; wait");
    let mut j = sh(&script);
    j.spec.limits.pids = Some(32);
    let ran = run(&j);
    assert_ne!(ran.code, 0);
    assert_eq!(ran.status.reason, Some(Reason::PidsLimit), "{:?} {}", ran.status, ran.stderr);
    assert!(processes_with(&marker).is_empty(), "leftover processes");
}

fn memory_limit_kills_the_job() {
    let mut j = inside(&["inside-alloc", "1024"]);
    j.spec.limits.memory_bytes = Some(64 << 20);
    let ran = run(&j);
    assert_eq!(ran.status.signal, Some(9), "{:?} stdout {} stderr {}", ran.status, ran.stdout, ran.stderr);
    assert_eq!(ran.status.reason, Some(Reason::MemoryLimit));
    assert_eq!(ran.code, 137);
    assert!(!ran.stdout.contains("allocated"));
}

fn deadline_kills_the_job() {
    let marker = marker_seconds();
    let mut j = sh(&format!("sleep {marker} & sleep 60"));
    j.spec.deadline_unix_ms = Some(now_ms() + 1000);
    let ran = run(&j);
    assert_eq!(ran.status.reason, Some(Reason::Deadline));
    assert_eq!(ran.status.signal, Some(9));
    assert_eq!(ran.code, 137);
    assert!(processes_with(&marker).is_empty(), "leftover processes");
}

/// Start a job whose processes carry `marker`, wait until they run.
fn start_marked(marker: &str) -> (Job, Child) {
    let j = sh(&format!("sleep {marker} & sleep {marker} & echo started; wait"));
    let mut child = command(&jailer(), &j.spec).unwrap().stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert!(wait_until(Duration::from_secs(5), || processes_with(marker).len() >= 2), "markers never ran");
    (j, child)
}

fn killing_the_jailer_kills_the_tree() {
    let marker = marker_seconds();
    let (_job, mut child) = start_marked(&marker);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || processes_with(&marker).is_empty()), "job survived its jailer");
}

fn cancelling_the_jailer_kills_the_tree_and_reports() {
    let marker = marker_seconds();
    let (j, mut child) = start_marked(&marker);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(137));
    assert!(processes_with(&marker).is_empty(), "job survived cancellation");
    let status = Status::read(&j.spec.status_file).unwrap();
    assert_eq!(status.reason, Some(Reason::Cancelled));
    let mut rest = String::new();
    child.stdout.take().unwrap().read_to_string(&mut rest).unwrap();
}

/// The agent died, so the reader of the jailer's stdout is gone: the jailer kills the job at
/// once instead of letting it run to its deadline, so no job outlives its agent and keeps its
/// slot's host uid busy (security review M6).
fn the_job_ends_when_its_caller_goes_away() {
    let marker = marker_seconds();
    let (j, mut child) = start_marked(&marker);
    drop(child.stdout.take());
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(137));
    assert!(processes_with(&marker).is_empty(), "job survived its caller");
    let status = Status::read(&j.spec.status_file).unwrap();
    assert_eq!(status.reason, Some(Reason::Cancelled), "not the 30 s deadline");
}

fn environment_and_fds_are_scrubbed() {
    // A descriptor without O_CLOEXEC, as a careless agent might leak to the jailer.
    let leaked = nix::fcntl::open("/etc/hostname", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()).unwrap();
    let mut j = inside(&["inside-env-fds"]);
    j.spec.env.push(("JOB_TOKEN".into(), "tok-value-123".into()));
    j.spec.env.push(("EMPTY".into(), String::new()));
    let ran = run(&j);
    drop(leaked);
    expect_ok(&ran);
    let mut env: Vec<&str> = ran.stdout.lines().filter(|l| !l.starts_with("fds=")).collect();
    env.sort();
    assert_eq!(env, vec!["EMPTY=", "JOB_TOKEN=tok-value-123", "PATH=/usr/bin:/bin"]);
    assert!(ran.stdout.contains("fds=0,1,2\n"), "{}", ran.stdout);
    let status_json = std::fs::read_to_string(&j.spec.status_file).unwrap();
    assert!(!status_json.contains("tok-value-123"));
}

fn missing_required_layer_fails_clearly() {
    let mut j = sh("echo SHOULD_NOT_RUN");
    j.spec.cgroup_root = Some(FAKE_HOST_WITHOUT_CGROUPS.into());
    let ran = run(&j);
    assert_eq!(ran.code, keyward_sandbox::EXIT_SETUP_FAILED);
    assert!(!ran.stdout.contains("SHOULD_NOT_RUN"));
    let line = ran.stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("keyward-sandbox: setup failed: cgroup: cgroup memory is required (level strict)"),
        "{line}"
    );
    match &ran.status.reason {
        Some(Reason::SetupFailed(why)) => assert!(why.starts_with("cgroup: cgroup memory is required"), "{why}"),
        other => panic!("reason {other:?}"),
    }
    assert_eq!(ran.status.exit_code, None);
}

fn relaxed_level_names_the_skipped_layer() {
    let mut j = sh("echo ran");
    j.spec.cgroup_root = Some(FAKE_HOST_WITHOUT_CGROUPS.into());
    j.spec.required = Level::Relaxed { allow_missing: vec![Layer::MemoryLimit, Layer::PidsLimit] };
    let ran = run(&j);
    expect_ok(&ran);
    assert_eq!(ran.stdout, "ran\n");
    assert!(ran.stderr.contains("warning: cgroup memory: no memory controller"), "{}", ran.stderr);
    assert_eq!(ran.status.skipped.len(), 2, "{:?}", ran.status.skipped);
    assert!(!ran.status.layers.iter().any(|l| l.starts_with("cgroup")));
}

fn exec_failure_is_a_setup_failure() {
    let ran = run(&job(&["/nonexistent/terraform", "plan"]));
    assert_eq!(ran.code, keyward_sandbox::EXIT_NOT_FOUND);
    assert!(
        ran.stderr.contains("setup failed: exec: /nonexistent/terraform: No such file or directory"),
        "{}",
        ran.stderr
    );
    assert!(matches!(ran.status.reason, Some(Reason::SetupFailed(ref why)) if why.starts_with("exec:")));
    let ran = run(&job(&["no-such-program-anywhere"]));
    assert_eq!(ran.code, keyward_sandbox::EXIT_NOT_FOUND);
}

fn work_dir_chown_does_not_follow_symlinks() {
    use std::os::unix::fs::MetadataExt;
    // A previous job could have left a symlink to a host file in a reused work dir.
    let host = TempDir::new("host-file");
    let target = host.0.join("agent.key");
    std::fs::write(&target, "key").unwrap();
    let j = sh("echo changed > sub/file && echo ok");
    std::fs::create_dir(j.work.0.join("sub")).unwrap();
    std::fs::write(j.work.0.join("sub/file"), "old").unwrap();
    std::os::unix::fs::symlink(&target, j.work.0.join("link")).unwrap();
    std::os::unix::fs::symlink(&host.0, j.work.0.join("dirlink")).unwrap();
    let ran = run(&j);
    expect_ok(&ran);
    assert_eq!(std::fs::read_to_string(j.work.0.join("sub/file")).unwrap(), "changed\n");
    let id = keyward_sandbox::DEFAULT_HOST_ID;
    assert_eq!(std::fs::metadata(j.work.0.join("sub/file")).unwrap().uid(), id);
    assert_eq!(std::fs::symlink_metadata(j.work.0.join("link")).unwrap().uid(), id);
    assert_eq!(std::fs::metadata(&target).unwrap().uid(), 0, "chown followed a symlink");
    assert_eq!(std::fs::metadata(&host.0).unwrap().uid(), 0, "chown followed a directory symlink");
}

/// A directory only root can traverse (mode 0700, owned by root), where a root user keeps a
/// clone, Terraform (`/root/bin`) or the agent's data dir. It is also a shared mount of its
/// own, as `/` is under systemd, so a mount that leaked out of the job's namespace would show
/// in the host's mount table.
struct RootOnlyDir(TempDir);

impl RootOnlyDir {
    fn new() -> RootOnlyDir {
        use nix::mount::{MsFlags, mount};
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("root-only");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        mount(Some(&dir.0), &dir.0, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        let shared = RootOnlyDir(dir);
        mount(None::<&str>, &shared.0.0, None::<&str>, MsFlags::MS_SHARED, None::<&str>).unwrap();
        shared
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.0.join(rel)
    }

    /// Host mounts at or below this directory (its own bind is one).
    fn mounts(&self) -> Vec<String> {
        let me = self.0.0.display().to_string();
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        table.lines().filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&me))).map(str::to_owned).collect()
    }
}

impl Drop for RootOnlyDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn write_file(path: &Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The sandbox's uid (65534) cannot traverse the directory, yet the program in it, a script in
/// it found through `PATH`, the work dir in it and read-only extras in it all work: the jailer
/// found and opened them with its own rights. Only those are visible, and nothing mounted for
/// the job shows up on the host.
fn program_and_binds_under_a_root_only_dir_run() {
    use std::os::unix::fs::MetadataExt;
    let private = RootOnlyDir::new();
    let (bin, work, state) = (private.path("bin"), private.path("work"), TempDir::new("state"));
    std::fs::create_dir_all(work.join("ro")).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), bin.join("probe")).unwrap();
    write_file(&private.path("creds/token"), "token-value\n", 0o644);
    write_file(&private.path("secret"), "not for the job\n", 0o644);
    write_file(
        &bin.join("hello.sh"),
        &format!(
            "#!/bin/sh\necho \"script ran: $*\"\ncat {token}\npwd\necho out > result\n\
             (echo x >> \"$0\") 2>/dev/null && echo PROGRAM_WRITABLE\n\
             test -e {secret} && echo SECRET_VISIBLE\nls {bin}\n",
            token = private.path("creds/token").display(),
            secret = private.path("secret").display(),
            bin = bin.display(),
        ),
        0o755,
    );
    let extras = vec![private.path("creds/token"), work.join("ro")];

    let mut spec = Spec::new(
        vec![bin.join("probe").display().to_string(), "inside-env-fds".into()],
        work.clone(),
        state.0.join("status.json"),
    );
    spec.read_only = extras.clone();
    spec.deadline_unix_ms = Some(now_ms() + 30_000);
    let ran = run_spec(&spec);
    expect_ok(&ran);
    assert_eq!(ran.stdout, "fds=0,1,2\n", "the jailer's descriptors reached the program");

    let mut spec =
        Spec::new(vec!["hello.sh".into(), "a".into(), "b".into()], work.clone(), state.0.join("status.json"));
    spec.env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", bin.display()))];
    spec.read_only = extras;
    spec.deadline_unix_ms = Some(now_ms() + 30_000);
    let ran = run_spec(&spec);
    expect_ok(&ran);
    assert_eq!(ran.stdout, format!("script ran: a b\ntoken-value\n{}\nhello.sh\n", work.display()));
    assert_eq!(std::fs::read_to_string(work.join("result")).unwrap(), "out\n");

    let meta = std::fs::metadata(&private.0.0).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o700, 0), "the directory was opened up");
    let mounts = private.mounts();
    assert_eq!(mounts.len(), 1, "a job mount propagated to the host: {mounts:#?}");
}

/// A symlink the job plants in its work dir, pointing at a program in a directory only root
/// can traverse: the jailer never follows it with its rights, so the job cannot get that file.
fn job_symlinks_do_not_lead_the_jailer_out() {
    let private = RootOnlyDir::new();
    write_file(&private.path("bin/tool"), "#!/bin/sh\necho LEAKED\n", 0o755);
    let j = sh("true");
    std::fs::create_dir(j.work.0.join("bin")).unwrap();
    std::os::unix::fs::symlink(private.path("bin/tool"), j.work.0.join("bin/tool")).unwrap();
    for program in ["tool".to_owned(), j.work.0.join("bin/tool").display().to_string()] {
        let mut spec = j.spec.clone();
        spec.argv = vec![program.clone()];
        spec.env = vec![("PATH".into(), format!("{}:/usr/bin:/bin", j.work.0.join("bin").display()))];
        let ran = run_spec(&spec);
        assert!(!ran.stdout.contains("LEAKED"), "{program}: {}", ran.stdout);
        assert_eq!(ran.code, keyward_sandbox::EXIT_NOT_FOUND, "{program}: {}", ran.stderr);
        assert!(ran.stderr.contains(&format!("exec: {program}: No such file or directory")), "{}", ran.stderr);
    }
}

fn spec_debug_hides_env_values() {
    let mut j = sh("true");
    j.spec.env.push(("AWS_SECRET_ACCESS_KEY".into(), "wJalrXUtnFEMI-secret".into()));
    let printed = format!("{:?}", j.spec);
    assert!(printed.contains("AWS_SECRET_ACCESS_KEY"));
    assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
}

fn probe_reports_every_layer_here() {
    let report = keyward_sandbox::probe();
    let text = report.to_string();
    assert_eq!(report.missing().count(), 0, "{text}");
    assert!(text.contains("namespaces: user, mount, pid, ipc, uts, net, cgroup"), "{text}");
    assert!(text.contains("landlock: abi "), "{text}");
    assert!(text.contains("cgroup memory: v"), "{text}");
    assert!(text.contains("landlock scope: abi "), "{text}");
    assert!(text.contains("egress filter: cgroup bpf"), "{text}");
}

/// Security review M6: the agent gives each job slot its own host uid and gid; the jailer maps
/// the sandbox's root to exactly those (not to 65534), and the job's files are theirs on the host.
fn host_ids_map_to_the_given_uid_and_gid() {
    use std::os::unix::fs::MetadataExt;
    let mut j = sh("touch made-inside; grep -E '^(Uid|Gid):' /proc/self/status");
    j.spec.host_id = Some(2_080_374_784 + 7);
    j.spec.host_gid = Some(2_080_374_784 + 9);
    let ran = run(&j);
    expect_ok(&ran);
    assert!(ran.stdout.contains("Uid:\t0\t0\t0\t0"), "root inside: {}", ran.stdout);
    let made = std::fs::metadata(j.work.0.join("made-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (2_080_374_791, 2_080_374_793));
    assert!(
        ran.status.layers.iter().any(|l| l.contains("host uid 2080374791 gid 2080374793")),
        "{:?}",
        ran.status.layers
    );
}

/// Security review L4: with the host's network, a job cannot reach the cloud metadata service,
/// over TCP or UDP, IPv4, IPv6 or IPv4-mapped IPv6, while other addresses stay reachable; and
/// without the filter the same job does reach it (so this test can fail).
///
/// Everything happens in a network namespace of this test's own, on a thread that entered it:
/// the metadata addresses are put on its loopback with listeners behind them, so nothing leaves
/// the machine and the host's network is untouched. The jailer inherits the thread's namespace.
fn metadata_is_refused_on_the_host_network() {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of the test's own");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "169.254.169.254/32", "dev", "lo"],
            &["-6", "addr", "add", "fd00:ec2::254/128", "dev", "lo", "nodad"],
        ] {
            let status = std::process::Command::new("ip").args(args).status().expect("ip (iproute2)");
            assert!(status.success(), "ip {args:?}");
        }
        let listeners = [TcpListener::bind("169.254.169.254:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap()];
        let v4_port = listeners[0].local_addr().unwrap().port();
        let control_port = listeners[1].local_addr().unwrap().port();
        let v6 = TcpListener::bind("[fd00:ec2::254]:0").unwrap();
        let v6_port = v6.local_addr().unwrap().port();
        let udp = std::net::UdpSocket::bind("169.254.169.254:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        // Only a bound on a broken run: the datagram is already queued when `recv` is called.
        udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for listener in listeners.into_iter().chain([v6]) {
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    drop(conn);
                }
            });
        }
        let script = format!(
            "try() {{ if (exec 3<>/dev/tcp/$1/$2) 2>err; then echo \"$1 open\"; \
                      elif grep -q 'Operation not permitted' err; then echo \"$1 refused\"; \
                      else echo \"$1 failed: $(tr '\\n' ' ' < err)\"; fi; }}\n\
             try 169.254.169.254 {v4_port}\n\
             try ::ffff:169.254.169.254 {v4_port}\n\
             try fd00:ec2::254 {v6_port}\n\
             try 127.0.0.1 {control_port}\n\
             python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             try:\n    s.sendto(b\"x\", (\"169.254.169.254\", {udp_port})); print(\"udp sent\")\n\
             except OSError as e:\n    print(\"udp refused:\", e.strerror)'\n"
        );
        let mut j = job(&["bash", "-c", &script]);
        j.spec.network = Network::Host;
        j.spec.blocked_destinations = keyward_sandbox::METADATA_ADDRESSES.to_vec();
        let blocked = run(&j);
        expect_ok(&blocked);
        let lines: Vec<&str> = blocked.stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "169.254.169.254 refused",
                "::ffff:169.254.169.254 refused",
                "fd00:ec2::254 refused",
                "127.0.0.1 open",
                "udp refused: Operation not permitted",
            ],
            "stdout: {}\nstderr: {}",
            blocked.stdout,
            blocked.stderr
        );
        assert!(
            blocked.status.layers.iter().any(|l| l.starts_with("egress filter (cgroup bpf): 169.254.169.254")),
            "{:?}",
            blocked.status.layers
        );

        // The same job without the filter reaches every one of them.
        j.spec.blocked_destinations.clear();
        let open = run(&j);
        expect_ok(&open);
        assert_eq!(
            open.stdout,
            "169.254.169.254 open\n::ffff:169.254.169.254 open\nfd00:ec2::254 open\n127.0.0.1 open\nudp sent\n",
            "stderr: {}",
            open.stderr
        );
        let mut byte = [0u8; 1];
        assert_eq!(udp.recv(&mut byte).unwrap(), 1, "the datagram arrived");
    })
    .join()
    .expect("the case passed");
}

// ---------------------------------------------------------------------------------------------
// Run inside the sandbox.

fn errno_result(ret: i64) -> String {
    if ret < 0 { format!("{:?}", nix::errno::Errno::last()) } else { "ok".into() }
}

/// Try syscalls that would *succeed* for an ordinary unprivileged process, so EPERM can only
/// come from the seccomp filter.
#[allow(unsafe_code)]
fn inside_syscalls() {
    let mut out = Vec::new();
    // SAFETY: raw syscalls with integer arguments or pointers to live locals; a clone child,
    // if the filter failed to stop it, exits at once.
    unsafe {
        out.push(("ptrace", errno_result(libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0))));
        out.push(("unshare_user", errno_result(libc::unshare(libc::CLONE_NEWUSER) as i64)));
        let ret = libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0);
        if ret == 0 {
            libc::_exit(0);
        }
        out.push(("clone_newuser", errno_result(ret)));
        out.push(("keyctl", errno_result(libc::syscall(libc::SYS_keyctl, 0 /* GET_KEYRING_ID */, -3, 1))));
        let c: libc::c_char = b'x' as libc::c_char;
        out.push(("tiocsti", errno_result(libc::ioctl(0, libc::TIOCSTI, &c) as i64)));
        out.push(("userfaultfd", errno_result(libc::syscall(libc::SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */))));
        let mut params = [0u8; 120];
        out.push(("io_uring", errno_result(libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr()))));
        let mut buf = [0u8; 8];
        let src = [1u8; 8];
        let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 8 };
        let remote = libc::iovec { iov_base: src.as_ptr() as *mut libc::c_void, iov_len: 8 };
        out.push((
            "process_vm_readv",
            errno_result(libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) as i64),
        ));
    }
    let lo = TcpListener::bind("127.0.0.1:0").and_then(|l| std::net::TcpStream::connect(l.local_addr()?));
    out.push(("loopback", if lo.is_ok() { "ok".into() } else { format!("{lo:?}") }));
    for line in std::fs::read_to_string("/proc/self/status").unwrap().lines() {
        if let Some((k, v)) = line.split_once(':')
            && ["CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"].contains(&k)
        {
            println!("{k}={}", v.trim());
        }
    }
    for (k, v) in out {
        println!("{k}={v}");
    }
}

/// Allocate and touch `mib` MiB, one MiB at a time.
fn inside_alloc(mib: usize) {
    let mut chunks = Vec::new();
    for _ in 0..mib {
        let mut chunk = vec![0u8; 1 << 20];
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        chunks.push(chunk);
    }
    println!("allocated {}", chunks.len());
}

/// Print the environment, then the open descriptors (probed with fcntl, so listing them opens
/// nothing).
#[allow(unsafe_code)]
fn inside_env_fds() {
    for (k, v) in std::env::vars_os() {
        println!("{}={}", k.to_string_lossy(), v.to_string_lossy());
    }
    // SAFETY: F_GETFD on integers only reads descriptor flags.
    let open: Vec<String> =
        (0..4096).filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } != -1).map(|fd| fd.to_string()).collect();
    println!("fds={}", open.join(","));
}
