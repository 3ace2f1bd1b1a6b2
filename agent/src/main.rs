//! The `keyward-agent` binary.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use keyward_agent::daemon::{Daemon, Settings};
use keyward_agent::datadir::DataDir;
use keyward_agent::hostnet::{self, Allowances};
use keyward_agent::idrange;
use keyward_agent::launch::{Isolation, SandboxSettings};
use keyward_agent::runner::{Runner, Work};
use keyward_agent::scan::Scanners;
use keyward_agent::slots::{self, Slots};
use keyward_agent::tools::{Tool, Toolbox};
use keyward_sandbox::Network;

/// Keyward private worker agent: dials out to the broker, takes jobs over mTLS.
#[derive(Debug, Parser)]
#[command(name = "keyward-agent", version, about)]
struct Cli {
    /// Log lines as `text` or `json` (one object per line, with the job's `run_id` and `job_id`).
    #[arg(long, global = true, env = "KEYWARD_AGENT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a one-time join token: generates this agent's key and gets its certificate.
    Join {
        /// The broker's address (the same as `KEYWARD_ADDR`).
        #[arg(long, env = "KEYWARD_ADDR")]
        broker: String,
        /// The join token (`keyward pool join-token POOL`).
        #[arg(long, env = "KEYWARD_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Where the agent keeps its key and certificate.
        #[arg(long, env = "KEYWARD_AGENT_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Connect to the broker and run jobs until stopped (SIGTERM/Ctrl-C drain: finish, then exit).
    Run(Box<RunArgs>),
}

/// `keyward-agent run`: how this agent takes and isolates jobs.
#[derive(Debug, Args)]
struct RunArgs {
    /// Where the agent keeps its key and certificate.
    #[arg(long, env = "KEYWARD_AGENT_DATA_DIR")]
    data_dir: PathBuf,
    /// Jobs to run at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    capacity: u32,
    /// Run each phase as `sh -c CMD` instead of Terraform, with KEYWARD_JOB_ID,
    /// KEYWARD_RUN_ID, KEYWARD_STACK, KEYWARD_PHASE, KEYWARD_REPOSITORY, KEYWARD_COMMIT_SHA
    /// and KEYWARD_PATH set.
    #[arg(long)]
    exec: Option<String>,
    /// The Terraform binary every Terraform command of `tool = "terraform"` stacks runs (init,
    /// plan, show, apply, version): an absolute path or a program on PATH, checked at start.
    /// Default: `terraform` on PATH.
    #[arg(long, value_name = "PATH")]
    terraform_binary: Option<String>,
    /// The OpenTofu binary for `tool = "tofu"` stacks, checked at start. Default: `tofu` on
    /// PATH, if there is one; without it, the broker leases this agent no OpenTofu stack's jobs.
    #[arg(long, value_name = "PATH")]
    tofu_binary: Option<String>,
    /// How jobs are isolated: `sandbox` (namespaces, minimal root, cgroups, Landlock,
    /// seccomp; docs/sandbox.md), or `process` (a process group and a scrubbed environment
    /// only: an explicit, weaker choice).
    #[arg(long, default_value = "sandbox", value_parser = ["sandbox", "process"])]
    isolation: String,
    /// The sandbox's network: `none` (loopback only) or `host`. With `host` the agent
    /// refuses to start unless it can block the cloud metadata service for jobs and the
    /// kernel has Landlock scopes (Linux 6.12), or the flags below accept the gap.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    network: String,
    /// Terraform takes providers from this filesystem mirror (an absolute directory, packed or
    /// unpacked layout) and from nowhere else: for pools that cannot reach a registry. Bound
    /// read-only into each job's sandbox.
    #[arg(long, value_name = "DIR")]
    provider_mirror: Option<PathBuf>,
    /// A security scanner's program, `NAME=PATH` (`checkov=/opt/checkov/bin/checkov`);
    /// repeatable. Scanners not given are looked for on the agent's PATH. Stacks created with
    /// `--scan NAME` have their plan jobs scanned before init (docs/scans.md); the program and its
    /// runtime (a virtualenv, its interpreter) are bound read-only into the sandbox.
    #[arg(long = "scanner", value_name = "NAME=PATH", value_parser = parse_scanner)]
    scanners: Vec<(String, PathBuf)>,
    /// With `--network host`: let jobs reach the cloud metadata service (169.254.169.254,
    /// fd00:ec2::254, …) and with it this host's credentials.
    #[arg(long)]
    allow_metadata_access: bool,
    /// With `--network host`: run jobs on a kernel without Landlock scopes (before 6.12),
    /// where they can connect to the host's abstract Unix sockets.
    #[arg(long)]
    allow_host_abstract_sockets: bool,
    /// The host uids and gids the agent's jobs run as when it is root, one per concurrent
    /// job: `START:COUNT`. Default: the agent user's /etc/subuid and /etc/subgid entries,
    /// else 2080374784:65536 (docs/sandbox.md).
    #[arg(long, value_name = "START:COUNT", value_parser = parse_id_range)]
    id_range: Option<(u32, u32)>,
    /// Memory of one job (all its processes).
    #[arg(long, default_value = "2GiB", value_parser = parse_size)]
    memory_limit: u64,
    /// Processes and threads of one job.
    #[arg(long, default_value_t = 1024)]
    pids_limit: u64,
    /// The longest one phase may run.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    phase_timeout: std::time::Duration,
    /// A regular expression whose matches are masked in every job's log (repeatable), besides
    /// the job's own credential values and the built-in patterns (AWS key IDs, Vault tokens, JWTs).
    #[arg(long = "mask-pattern", value_name = "REGEX")]
    mask_patterns: Vec<String>,
    /// The most output one job may log; the rest is discarded after a signed truncation line.
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    log_limit: u64,
    /// Serve Prometheus metrics at `http://ADDR/metrics` (off by default; a loopback address,
    /// e.g. 127.0.0.1:9465, unless --metrics-listen-any).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address: the page has no authentication.
    #[arg(long, requires = "metrics_listen")]
    metrics_listen_any: bool,
}

fn main() -> ExitCode {
    // The sandbox's jailer is this binary re-executed; it must start before any thread exists.
    keyward_sandbox::enter_jailer_if_requested();
    // Inside a job's sandbox, in front of Terraform: the state relay's inside half.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(keyward_agent::state_relay::RELAY_ARG) {
        return keyward_agent::state_relay::run_inside(args.get(2..).unwrap_or_default());
    }
    let cli = Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    init_logging(cli.log_format == "json");
    // A small runtime: the agent is mostly idle, and its RSS matters on customer hosts.
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Join { broker, token, data_dir } => join(&broker, &token, DataDir::new(data_dir)).await,
            Command::Run(args) => run(*args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", keyward_agent::channel::chain(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `KEYWARD_AGENT_LOG` (default `info`), as text or JSON lines.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal who did not set NO_COLOR (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}

/// `keyward-agent join`: enrolls, prints the agent ID alone on stdout and how to start it on stderr.
async fn join(broker: &str, token: &str, dir: DataDir) -> anyhow::Result<()> {
    let identity = keyward_agent::enroll::join(broker, token, &dir).await?;
    // The ID alone on stdout (`ID=$(keyward-agent join …)`); a reader that went away is no
    // failure: the enrollment is on disk either way.
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", identity.state.agent_id) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    eprintln!(
        "enrolled as agent {} in pool {} (certificate valid until {}); start it with:\n  \
         keyward-agent run --data-dir {}",
        identity.state.agent_id,
        identity.state.pool,
        date(identity.state.not_after),
        dir.path().display()
    );
    Ok(())
}

/// `keyward-agent run`: checks the enrollment and the host, then takes jobs until a stop
/// signal has drained them.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(address) = args.metrics_listen {
        keyward_agent::metrics_http::serve(address, args.metrics_listen_any).await?;
    }
    let mask_patterns = keyward_agent::logs::Patterns::new(&args.mask_patterns)?;
    let dir = DataDir::new(args.data_dir.clone());
    // Not enrolled, or an unreadable identity: say so before anything else.
    dir.load()?;
    let isolation = isolation(&args)?;
    let slots = job_slots(&dir, &isolation, args.capacity, args.id_range)?;
    let (work, tools) = work(&args).await?;
    if let Some(mirror) = &args.provider_mirror
        && (!mirror.is_absolute() || !mirror.is_dir())
    {
        anyhow::bail!("--provider-mirror {}: not an absolute path to a directory", mirror.display());
    }
    let scanners = Scanners::locate(&args.scanners, std::env::var_os("PATH").as_deref()).map_err(anyhow::Error::msg)?;
    tracing::info!(scanners = %scanners.describe(), "security scanners");
    let runner = Runner::new(work, isolation, args.phase_timeout)
        .with_provider_mirror(args.provider_mirror)
        .with_scanners(scanners);
    let settings = Settings { capacity: args.capacity, runner, tools, mask_patterns, log_limit: args.log_limit, slots };
    let daemon = Daemon::new(dir, settings);
    let draining = std::sync::Arc::clone(&daemon);
    tokio::spawn(async move {
        stop_signal().await;
        draining.drain("the agent received a stop signal");
    });
    daemon.run().await?;
    tracing::info!("agent stopped");
    Ok(())
}

/// How jobs are isolated: the sandbox with its limits and, on the host's network, the
/// metadata-service block the host check found (or the gaps the flags accept).
fn isolation(args: &RunArgs) -> anyhow::Result<Isolation> {
    if args.isolation == "process" {
        tracing::warn!("--isolation process: jobs run without the sandbox");
        return Ok(Isolation::Process);
    }
    let network = if args.network == "host" { Network::Host } else { Network::None };
    let mut settings = SandboxSettings {
        network,
        memory_bytes: args.memory_limit,
        pids: args.pids_limit,
        blocked: Vec::new(),
        allow_missing: Vec::new(),
    };
    if network == Network::Host {
        let allowed =
            Allowances { abstract_sockets: args.allow_host_abstract_sockets, metadata: args.allow_metadata_access };
        let host = hostnet::check(keyward_sandbox::landlock_scope(), keyward_sandbox::egress_filter, allowed)?;
        for warning in &host.warnings {
            tracing::warn!("{warning}");
        }
        if !host.blocked.is_empty() {
            tracing::info!(blocked = ?host.blocked, "jobs on the host's network cannot reach the metadata service");
        }
        settings.blocked = host.blocked;
        settings.allow_missing = host.allow_missing;
    }
    Ok(Isolation::Sandbox(settings))
}

/// What each phase runs, and the tools the agent reports: Terraform and OpenTofu as the flags
/// name them or as found on PATH (a named binary that is missing or cannot run stops the agent).
/// An `--exec` agent never runs Terraform, so it reports none: its pool should be one of its own
/// (docs/agents.md), and nothing should present its runs as applies.
async fn work(args: &RunArgs) -> anyhow::Result<(Option<Work>, Toolbox)> {
    if let Some(command) = &args.exec {
        tracing::warn!("--exec: every phase runs `sh -c CMD`, not Terraform");
        return Ok((Some(Work::Exec(command.clone())), Toolbox::default()));
    }
    let path = std::env::var("PATH").ok();
    let tools = Toolbox::locate(args.terraform_binary.as_deref(), args.tofu_binary.as_deref(), path.as_deref()).await?;
    for installed in tools.installed() {
        let (tool, version, path) = (installed.tool.name(), &installed.version, installed.path.display());
        tracing::info!(%tool, %version, %path, "found");
    }
    if tools.get(Tool::Terraform).is_none() {
        tracing::warn!("no terraform (--terraform-binary, or on PATH); Terraform stacks' jobs will fail on this agent");
    }
    let work = (!tools.installed().is_empty()).then(|| Work::Terraform(tools.clone()));
    Ok((work, tools))
}

/// A Unix time as an RFC 3339 UTC date (`2026-12-06T04:21:30Z`).
fn date(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The job slots in `<data dir>/jobs`, with a uid and gid each from the agent's range when it
/// is root and jobs are sandboxed (security review M6); otherwise jobs run as the agent.
fn job_slots(
    dir: &DataDir,
    isolation: &Isolation,
    capacity: u32,
    flag: Option<(u32, u32)>,
) -> anyhow::Result<std::sync::Arc<Slots>> {
    let uid = nix::unistd::geteuid();
    let sandboxed = matches!(isolation, Isolation::Sandbox(_));
    let range = if uid.is_root() && sandboxed {
        let user = nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| "root".to_owned(), |u| u.name);
        let read = |path: &str| match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("{path}: {e}")),
        };
        let (subuid, subgid) = if flag.is_some() { (None, None) } else { (read("/etc/subuid")?, read("/etc/subgid")?) };
        let range = idrange::resolve(flag, subuid.as_deref(), subgid.as_deref(), &user, uid.as_raw(), capacity)?;
        Some(range)
    } else {
        if flag.is_some() {
            anyhow::bail!("--id-range needs an agent that runs as root with --isolation sandbox");
        }
        if sandboxed {
            tracing::info!(
                uid = uid.as_raw(),
                "the agent is not root: its jobs run as its own uid (no uid per job; run it as root for that)"
            );
        }
        None
    };
    let source = range.as_ref().map(|range| range.source.to_string());
    let slots = Slots::open(dir.path().join("jobs"), capacity, range, std::path::Path::new(slots::LOCK_DIR))?;
    if let (Some(ids), Some(from)) = (slots.first_ids(), source) {
        tracing::info!(
            first_uid = ids.uid,
            first_gid = ids.gid,
            slots = capacity,
            %from,
            "each concurrent job runs as a host uid and gid of its own"
        );
    }
    Ok(slots)
}

/// `START:COUNT` for `--id-range`.
/// `NAME=PATH`.
fn parse_scanner(text: &str) -> Result<(String, PathBuf), String> {
    text.split_once('=')
        .map(|(name, path)| (name.to_owned(), PathBuf::from(path)))
        .ok_or_else(|| format!("`{text}` is not NAME=PATH (e.g. checkov=/opt/checkov/bin/checkov)"))
}

fn parse_id_range(text: &str) -> Result<(u32, u32), String> {
    idrange::parse_flag(text).map_err(|e| e.to_string())
}

/// `123`, `64KiB`, `32MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().map_err(|_| format!("`{text}` is not a size like 32MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).filter(|&bytes| bytes >= 1024).ok_or_else(|| format!("`{text}`: use 1KiB to 16EiB"))
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
