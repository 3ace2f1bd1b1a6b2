//! Sandbox spawn overhead over a plain spawn of the same command (DESIGN.md §11: ≤ 10 ms;
//! bubblewrap ≈ 8 ms). One run = build the command (spec to a memfd), spawn, collect stdout and
//! stderr, wait: what the agent pays per step, measured from the caller's side.
//!
//! `cargo bench -p keyward-sandbox --bench spawn` (as root, like the agent and the jail tests:
//! cgroups and uid mapping). Knobs: `KEYWARD_BENCH_SPAWNS` (runs per case for `sh -c true`, 100),
//! `KEYWARD_BENCH_TERRAFORM_RUNS` (runs per case for `terraform version`, 30; 0 skips it).
//!
//! This binary is its own jailer, as the agent is: `main` calls `enter_jailer_if_requested()`
//! before anything else and passes `current_exe()` as the jailer. Cases are interleaved (one run
//! of each in turn), so drift on a shared machine hits them alike; p50 and p90 are reported and
//! overhead = sandboxed − plain at the same percentile. `terraform version` also runs with the
//! memory and the pids cgroup alone, which splits the cost of cgroup membership from the rest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use keyward_sandbox::{Limits, Network, Spec, Status, command};

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How a case runs its command.
enum How {
    Plain,
    Sandboxed(Box<Spec>),
}

struct Case {
    name: &'static str,
    how: How,
    samples: Vec<Duration>,
}

fn environment(work: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), work.to_str().unwrap().into()),
        // No update check: the sandbox has no network, and the plain run should not wait on it either.
        ("CHECKPOINT_DISABLE".into(), "1".into()),
    ]
}

fn spec(argv: &[&str], work: &Path, state: &Path, limits: Limits, network: Network) -> Spec {
    let mut spec =
        Spec::new(argv.iter().map(|s| (*s).to_owned()).collect(), work.to_path_buf(), state.join("status.json"));
    spec.env = environment(work);
    spec.limits = limits;
    spec.network = network;
    spec
}

/// The agent's realistic limits: the whole job's memory and process count.
fn job_limits() -> Limits {
    Limits { memory_bytes: Some(2 << 30), pids: Some(1024), ..Limits::default() }
}

fn run_once(how: &How, argv: &[&str], work: &Path, jailer: &Path) -> (Duration, Output) {
    let started = Instant::now();
    let mut cmd = match how {
        How::Plain => {
            let mut cmd = Command::new(argv[0]);
            cmd.args(&argv[1..]).env_clear().envs(environment(work)).current_dir(work).stdin(Stdio::null());
            cmd
        }
        How::Sandboxed(spec) => command(jailer, spec).unwrap(),
    };
    let output = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap();
    let took = started.elapsed();
    assert!(
        output.status.success(),
        "{argv:?} failed ({:?}): {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    if let How::Sandboxed(spec) = how {
        let status = Status::read(&spec.status_file).unwrap();
        assert!(status.reason.is_none(), "{argv:?}: {status:?}");
    }
    (took, output)
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// Runs every case `runs` times, interleaved, after a warm-up run each; prints p50/p90 and the
/// overhead of each sandboxed case over the first (plain) one.
fn measure(title: &str, argv: &[&str], cases: &mut [Case], runs: usize, work: &Path, jailer: &Path) {
    for case in cases.iter() {
        let (_, output) = run_once(&case.how, argv, work, jailer);
        if argv[0] == "terraform" {
            assert!(String::from_utf8_lossy(&output.stdout).starts_with("Terraform v"), "{}", case.name);
        }
    }
    for _ in 0..runs {
        for case in cases.iter_mut() {
            let (took, _) = run_once(&case.how, argv, work, jailer);
            case.samples.push(took);
        }
    }
    println!("\n{title}: {runs} runs each, interleaved\n");
    println!("{:<44} {:>9} {:>9} {:>15} {:>15}", "", "p50 ms", "p90 ms", "overhead p50", "overhead p90");
    let mut plain = (0.0, 0.0);
    for (i, case) in cases.iter_mut().enumerate() {
        case.samples.sort();
        let (p50, p90) = (percentile(&case.samples, 50), percentile(&case.samples, 90));
        if i == 0 {
            plain = (p50, p90);
            println!("{:<44} {p50:>9.2} {p90:>9.2}", case.name);
        } else {
            println!("{:<44} {p50:>9.2} {p90:>9.2} {:>12.2} ms {:>12.2} ms", case.name, p50 - plain.0, p90 - plain.1);
        }
    }
}

fn main() {
    keyward_sandbox::enter_jailer_if_requested();
    assert!(nix::unistd::geteuid().is_root(), "the sandbox bench needs root (cgroups, uid mapping), like the agent");
    let jailer = std::env::current_exe().unwrap();
    // Canonical paths: the sandbox binds the work dir by its real path.
    let (work_dir, state_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let work = &std::fs::canonicalize(work_dir.path()).unwrap();
    let state = &std::fs::canonicalize(state_dir.path()).unwrap();

    let true_argv = ["sh", "-c", "true"];
    let sandboxed = |limits, network| How::Sandboxed(Box::new(spec(&true_argv, work, state, limits, network)));
    let case = |name, how| Case { name, how, samples: Vec::new() };
    let mut cases = [
        case("plain spawn (baseline)", How::Plain),
        case("sandboxed, no limits", sandboxed(Limits::default(), Network::None)),
        case("sandboxed, memory + pids cgroup (the agent)", sandboxed(job_limits(), Network::None)),
        case("sandboxed, memory + pids, host network", sandboxed(job_limits(), Network::Host)),
    ];
    measure("sh -c true", &true_argv, &mut cases, env_or("KEYWARD_BENCH_SPAWNS", 100), work, &jailer);

    let runs = env_or("KEYWARD_BENCH_TERRAFORM_RUNS", 30);
    if runs > 0 {
        let argv = ["terraform", "version"];
        let sandboxed = |limits, network| How::Sandboxed(Box::new(spec(&argv, work, state, limits, network)));
        let mut cases = [
            case("plain terraform version (baseline)", How::Plain),
            case("sandboxed, no limits", sandboxed(Limits::default(), Network::None)),
            case("sandboxed, memory + pids cgroup (the agent)", sandboxed(job_limits(), Network::None)),
            case(
                "sandboxed, memory cgroup only, host network",
                sandboxed(Limits { memory_bytes: Some(2 << 30), ..Limits::default() }, Network::Host),
            ),
            case(
                "sandboxed, pids cgroup only, host network",
                sandboxed(Limits { pids: Some(1024), ..Limits::default() }, Network::Host),
            ),
        ];
        measure("terraform version", &argv, &mut cases, runs, work, &jailer);
    }
    println!("\ngoal (DESIGN.md §11): overhead <= 10 ms (bubblewrap ≈ 8 ms)\n");
}
