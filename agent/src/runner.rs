//! Running a job's phase: Terraform on the stack's repository at the run's commit
//! ([`crate::terraform`], [`crate::source`]), or an operator's own command (`--exec CMD`), each
//! process isolated as the agent is configured ([`crate::launch`]: the sandbox by default) in a
//! private job directory removed afterwards. Output goes to the job's masked, signed log
//! ([`crate::logs`]); the last masked output of a failing step becomes the job's error.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::credentials::JobCredentials;
use crate::idrange::JobIds;
use crate::job::{Job, Task};
use crate::launch::{Isolation, Launch, Layers};
use crate::logs::JobLog;
use crate::planfile;
use crate::plans::Plans;
use crate::scan::{Place, Scanners};
use crate::slots::Slot;
use crate::source::{self, SourceError};
use crate::state_relay::{Backend, StateRelay};
use crate::step::{self, Cancel, StepEnd};
use crate::terraform::{Drift, Phase, PhaseError};
use crate::tools::{Installed, Tool, Toolbox};

/// A job's error when the agent lacks the stack's tool (the broker leases such jobs only to
/// agents that reported the tool, so this is an agent whose binary vanished, or one reporting
/// nothing: older than tool reports).
fn missing_tool(tool: Tool) -> String {
    format!(
        "this agent has no {name} (the stack's tool): start it with {flag} PATH or put `{name}` on its PATH",
        name = tool.name(),
        flag = tool.flag()
    )
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step succeeded.
    Succeeded,
    /// A drift check ran to the end, and found this.
    Checked(Drift),
    /// Something failed, and why.
    Failed(String),
    /// Stopped on request.
    Canceled,
}

/// What a job's phase runs.
#[derive(Debug, Clone)]
pub enum Work {
    /// Terraform or OpenTofu, whichever the job's stack names, from these binaries: the
    /// stack's repository at the run's commit, then the phase's commands.
    Terraform(Toolbox),
    /// `sh -c CMD` in an empty work directory, with the job described in `KEYWARD_*` variables
    /// (`keyward-agent run --exec`: for operators' own runners and for tests).
    Exec(String),
}

/// Runs jobs' phases.
#[derive(Debug, Clone)]
pub struct Runner {
    work: Option<Work>,
    isolation: Isolation,
    phase_timeout: Duration,
    provider_mirror: Option<PathBuf>,
    scanners: Scanners,
}

impl Runner {
    /// A runner of `work` (without it, every job fails saying why) in `isolation`, each phase
    /// at most `phase_timeout`.
    pub fn new(work: Option<Work>, isolation: Isolation, phase_timeout: Duration) -> Self {
        Self { work, isolation, phase_timeout, provider_mirror: None, scanners: Scanners::default() }
    }

    /// Terraform takes providers from the filesystem mirror `dir` and nowhere else
    /// (`--provider-mirror`): for pools that cannot reach a registry. The directory is bound
    /// read-only into each job's sandbox.
    pub fn with_provider_mirror(mut self, dir: Option<PathBuf>) -> Self {
        self.provider_mirror = dir;
        self
    }

    /// The security scanners plan jobs of scanned stacks run before `init` (docs/scans.md).
    pub fn with_scanners(mut self, scanners: Scanners) -> Self {
        self.scanners = scanners;
        self
    }

    /// How this runner isolates jobs.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// What `Hello` reports and each job's record and log header carry: the isolation, and for
    /// `--exec` that jobs run the operator's command, not Terraform, so `agent list`, `run show`
    /// and the audit log never present an `--exec` run as a Terraform apply.
    pub fn describe(&self) -> String {
        match &self.work {
            Some(Work::Exec(_)) => format!("{}, runs --exec (not terraform)", self.isolation.describe()),
            _ => self.isolation.describe(),
        }
    }

    /// Whether jobs run Terraform (not an `--exec` command).
    pub fn runs_terraform(&self) -> bool {
        !matches!(self.work, Some(Work::Exec(_)))
    }

    /// Runs `job` in `slot` (its directory and host ids) with `credentials` in its environment
    /// and its output in `log`, until it ends or `cancel` fires; the sandbox layers its
    /// processes ran under go to `layers`. A scanned plan job arrives with only its checkout's
    /// credentials and gets the rest once its scan is allowed.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        job: &Job,
        slot: &Slot,
        plans: &mut Plans,
        credentials: &mut JobCredentials,
        log: &JobLog,
        layers: &Layers,
        cancel: oneshot::Receiver<String>,
    ) -> Outcome {
        let mut cancel = Cancel::new(cancel);
        let Some(work) = &self.work else {
            return Outcome::Failed("this agent has no terraform on its PATH (and no --exec command)".to_owned());
        };

        let dir = match JobDir::create(slot.dir(), &job.job_id) {
            Ok(dir) => dir,
            Err(error) => return Outcome::Failed(format!("cannot create the job's directory: {error}")),
        };
        let setting =
            Setting { job, slot, dir: &dir, host_ids: self.host_ids(slot), deadline: self.deadline(job), log, layers };
        let result = match work {
            Work::Exec(command) => self.exec(command, setting, credentials, &mut cancel).await.map(|()| None),
            Work::Terraform(tools) => match tools.get(job.tool) {
                Some(installed) => self.terraform(installed, setting, plans, credentials, &mut cancel).await,
                None => Err(PhaseError::Failed(missing_tool(job.tool))),
            },
        };
        outcome(result, job, log).await
    }

    /// The host ids the job's processes run as: the slot's own uid and gid when the agent is root
    /// and jobs are sandboxed; with `--isolation process` jobs run as the agent itself.
    fn host_ids(&self, slot: &Slot) -> Option<JobIds> {
        match self.isolation {
            Isolation::Sandbox(_) => slot.ids(),
            Isolation::Process => None,
        }
    }

    /// The stack's repository at the run's commit, its scan (a scanned stack's plan job), then
    /// the task's Terraform commands; a drift check's finding when that is the task.
    async fn terraform(
        &self,
        installed: &Installed,
        setting: Setting<'_>,
        plans: &mut Plans,
        credentials: &mut JobCredentials,
        cancel: &mut Cancel,
    ) -> Result<Option<Drift>, PhaseError> {
        let Setting { job, slot, dir, host_ids, deadline, log, layers } = setting;
        let binary = installed.path.as_path();
        let tool = installed.tool.name();
        log.note(&format!("keyward: {tool} binary {}, {tool} {}", binary.display(), installed.version)).await;
        let src = dir.work.join("src");
        let started = std::time::Instant::now();
        let git = credentials.git_environment();
        match source::checkout(&job.repository, &job.commit_sha, git, &src, &dir.scratch, log, cancel, deadline).await {
            Err(SourceError::Canceled(reason)) => return Err(PhaseError::Canceled(reason)),
            Err(error) => return Err(PhaseError::Failed(format!("cannot check out the run's commit: {error}"))),
            Ok(()) => log.note(&format!("keyward: checkout took {:.2} s", started.elapsed().as_secs_f64())).await,
        }
        let cwd = configuration_dir(&dir.work, &src, &job.path)?;
        if !job.scanners.is_empty() {
            // Before any hook or Terraform command, and before the broker gives the job anything
            // but its checkout's credentials.
            let place = Place {
                job,
                isolation: &self.isolation,
                work_dir: &dir.work,
                cwd: &cwd,
                scratch: &dir.scratch,
                deadline,
                host_ids,
                layers,
            };
            place.scan(&self.scanners, plans, log, cancel).await?;
            plans
                .rest_of_credentials(job, credentials, slot.dir())
                .await
                .map_err(|e| PhaseError::Failed(e.to_string()))?;
            log.mask_from_now(credentials.secret_values()).await;
            credentials.note_received(job, log).await;
        }
        let (mut env, mut read_only) = granted(job, dir, credentials, host_ids)?;
        let relay = match credentials.take_state_backend() {
            Some(backend) => Some(managed_state(backend, dir, &cwd, log).await?),
            None => None,
        };
        // Before any hook or Terraform command: the variables mounted as files.
        crate::mounts::mount(credentials.files(), &dir.work, &cwd, log).await?;
        if let Some(mirror) = &self.provider_mirror {
            let config = provider_installation(mirror, dir).await?;
            env.push(("TF_CLI_CONFIG_FILE".to_owned(), config.display().to_string()));
            read_only.extend([config, mirror.clone()]);
        }
        // Terraform's own directory is not bound (security review L5): the jailer binds the
        // binary alone when the sandbox cannot see it, so its neighbours (other tools, files
        // beside it) stay out of the job's view.
        let phase = Phase {
            job,
            isolation: &self.isolation,
            terraform: binary,
            work_dir: &dir.work,
            cwd,
            env,
            read_only,
            scratch: &dir.scratch,
            plan_dir: &dir.plans,
            deadline,
            layers,
            host_ids,
            relay: relay.as_ref(),
        };
        match job.task {
            Task::Plan => phase.plan(plans, log, cancel).await.map(|()| None),
            Task::CheckDrift => phase.check_drift(log, cancel).await.map(Some),
            Task::Apply => phase.apply(plans, log, cancel).await.map(|()| None),
        }
    }

    /// `sh -c command` in the job's work directory.
    async fn exec(
        &self,
        command: &str,
        setting: Setting<'_>,
        credentials: &JobCredentials,
        cancel: &mut Cancel,
    ) -> Result<(), PhaseError> {
        let Setting { job, dir, host_ids, deadline, log, layers, .. } = setting;
        let (env, read_only) = granted(job, dir, credentials, host_ids)?;
        log.note(&format!("$ sh -c {command}")).await;
        let launch = Launch {
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()],
            env,
            work_dir: dir.work.clone(),
            cwd: dir.work.clone(),
            read_only,
            deadline,
            scratch: dir.scratch.clone(),
            host_ids,
        };
        let prepared = self.isolation.prepare(launch).map_err(PhaseError::Failed)?;
        let status_file = prepared.status_file.clone();
        let step = step::run(prepared, log, cancel, deadline, None).await;
        let verdict = self.isolation.verdict(status_file.as_deref(), layers);
        match step.end {
            StepEnd::Exited(status) if status.success() => Ok(()),
            StepEnd::Exited(status) => {
                let why = verdict.unwrap_or_else(|| format!("exited with {status}"));
                log.note(&format!("keyward: the command {why}")).await;
                Err(PhaseError::Failed(format!("the command {why}: {}", log.tail().await)))
            }
            StepEnd::Canceled(reason) => Err(PhaseError::Canceled(reason)),
            StepEnd::TimedOut => Err(PhaseError::Failed("the command ran past the job's deadline".to_owned())),
            StepEnd::NotStarted(error) => Err(PhaseError::Failed(format!("cannot start the job's command: {error}"))),
        }
    }

    /// The broker's deadline for the job, or the phase timeout from now, whichever is sooner.
    fn deadline(&self, job: &Job) -> SystemTime {
        let own = SystemTime::now() + self.phase_timeout;
        let broker = u64::try_from(job.deadline_unix)
            .ok()
            .filter(|&secs| secs > 0)
            .map(|secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        broker.map_or(own, |broker| broker.min(own))
    }
}

/// The stack's state is the broker's: the relay that carries Terraform's state calls to it, and
/// the backend override in the configuration's directory (written by the agent, never a file of
/// the repository: one of that name there fails the job).
async fn managed_state(backend: Backend, dir: &JobDir, cwd: &Path, log: &JobLog) -> Result<StateRelay, PhaseError> {
    // In the slot's directory, not the job's: a Unix socket's path must stay under ~100 bytes.
    // One job per slot at a time; a socket a crashed agent left behind is replaced.
    let socket = dir.root.parent().unwrap_or(&dir.root).join("state.sock");
    let _ = std::fs::remove_file(&socket);
    let relay = StateRelay::start(&socket, backend)
        .map_err(|e| PhaseError::Failed(format!("cannot start the state relay at {}: {e}", socket.display())))?;
    let relative = cwd
        .strip_prefix(&dir.work)
        .map_err(|_| PhaseError::Failed("the configuration's directory is outside the work dir".to_owned()))?
        .join(STATE_OVERRIDE);
    planfile::write_beneath(&dir.work, &relative, STATE_OVERRIDE_TEXT.as_bytes().to_vec()).await.map_err(|e| {
        PhaseError::Failed(format!(
            "cannot add the state backend ({STATE_OVERRIDE}; the broker keeps this stack's state, so the repository must not have a file of that name): {e}"
        ))
    })?;
    log.note(&format!("keyward: state kept by the broker ({STATE_OVERRIDE}, backend \"http\" through the agent)"))
        .await;
    Ok(relay)
}

/// A Terraform CLI configuration, written where only the agent writes, that installs every
/// provider from `mirror` and from nowhere else.
async fn provider_installation(mirror: &Path, dir: &JobDir) -> Result<PathBuf, PhaseError> {
    let text = format!(
        "# Generated by keyward-agent (--provider-mirror): providers come from this mirror only.\n\
         provider_installation {{\n  filesystem_mirror {{\n    path = \"{}\"\n  }}\n}}\n",
        mirror.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
    );
    planfile::write_private(&dir.plans, "terraform.rc", text.into_bytes())
        .await
        .map_err(|e| PhaseError::Failed(format!("cannot write the provider mirror's CLI configuration: {e}")))
}

/// The generated override that makes the broker the configuration's backend.
const STATE_OVERRIDE: &str = "keyward_state_override.tf";
const STATE_OVERRIDE_TEXT: &str = "# Generated by keyward-agent: the broker keeps this stack's state (docs/state.md).\n\
terraform {\n  backend \"http\" {}\n}\n";

/// Where and how a job's processes run, gathered once for whichever work it does.
struct Setting<'a> {
    job: &'a Job,
    slot: &'a Slot,
    dir: &'a JobDir,
    host_ids: Option<JobIds>,
    deadline: SystemTime,
    log: &'a JobLog,
    layers: &'a Layers,
}

/// A process's environment, `(name, value)` pairs.
type Environment = Vec<(String, String)>;

/// The job's environment and the read-only paths it needs (its credential files, readable by
/// the job's uid from now on).
fn granted(
    job: &Job,
    dir: &JobDir,
    credentials: &JobCredentials,
    host_ids: Option<JobIds>,
) -> Result<(Environment, Vec<PathBuf>), PhaseError> {
    if let Some(ids) = host_ids {
        credentials.grant(ids).map_err(|error| PhaseError::Failed(error.to_string()))?;
    }
    let read_only = credentials.dir().map(Path::to_path_buf).into_iter().collect();
    Ok((environment(job, dir, credentials), read_only))
}

/// The job's environment: a fixed `PATH` and Terraform's automation settings, the job described
/// in `KEYWARD_*` variables, and its credentials.
fn environment(job: &Job, dir: &JobDir, credentials: &JobCredentials) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), dir.work.display().to_string()),
        ("TF_IN_AUTOMATION".to_owned(), "1".to_owned()),
        ("TF_INPUT".to_owned(), "0".to_owned()),
        ("CHECKPOINT_DISABLE".to_owned(), "1".to_owned()),
        ("KEYWARD_JOB_ID".to_owned(), job.job_id.clone()),
        ("KEYWARD_RUN_ID".to_owned(), job.run_id.clone()),
        ("KEYWARD_STACK".to_owned(), job.stack_id.clone()),
        ("KEYWARD_PHASE".to_owned(), job.task.phase().as_str().to_owned()),
        ("KEYWARD_REPOSITORY".to_owned(), job.repository.clone()),
        ("KEYWARD_COMMIT_SHA".to_owned(), job.commit_sha.clone()),
        ("KEYWARD_PATH".to_owned(), job.path.clone()),
    ];
    env.extend(credentials.environment().map(|(k, v)| (k.to_owned(), v.to_owned())));
    env
}

/// How the job ended, from what its work returned; a cancellation is noted in its log.
async fn outcome(result: Result<Option<Drift>, PhaseError>, job: &Job, log: &JobLog) -> Outcome {
    match result {
        Ok(None) => Outcome::Succeeded,
        Ok(Some(drift)) => Outcome::Checked(drift),
        Err(PhaseError::Canceled(reason)) => {
            log.note(&format!("keyward: canceled: {reason}")).await;
            tracing::info!(job_id = %job.job_id, %reason, "job canceled");
            Outcome::Canceled
        }
        Err(PhaseError::Failed(why)) => Outcome::Failed(why),
    }
}

/// A job's private directory on the agent, inside its slot: `work/` (the sandbox's writable
/// directory) and `scratch/` (the agent's own: git's home, the sandbox status files). Removed
/// with the job (and the slot's directory with it).
#[derive(Debug)]
struct JobDir {
    root: PathBuf,
    work: PathBuf,
    scratch: PathBuf,
    /// The saved plan's copies: written only by the agent, bound read-only into the sandbox.
    plans: PathBuf,
}

/// The stack's configuration directory in the checkout: `src/<path>`, which must be a real
/// directory beneath the work dir, reached through no symlink the repository committed (the
/// agent works with paths under it outside the sandbox).
fn configuration_dir(work: &Path, src: &Path, path: &str) -> Result<PathBuf, PhaseError> {
    let cwd = if path.is_empty() { src.to_path_buf() } else { src.join(path) };
    let plain = cwd.strip_prefix(work).is_ok_and(|relative| crate::planfile::is_plain_dir(work, relative));
    if plain {
        Ok(cwd)
    } else {
        Err(PhaseError::Failed(format!(
            "the stack's path `{path}` is not a directory inside the checkout reached without symlinks"
        )))
    }
}

impl JobDir {
    fn create(parent: &Path, job_id: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut suffix = [0_u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut suffix);
        let name: String =
            job_id.chars().take(64).map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let root = parent.join(format!("run-{name}-{}", keyward_proto::encoding::hex(&suffix)));
        // The agent's alone: the jailer (the agent's rights) opens `work/` and binds it, so the
        // job's uid never traverses this directory.
        std::fs::DirBuilder::new().mode(0o700).create(&root)?;
        let dir = Self { work: root.join("work"), scratch: root.join("scratch"), plans: root.join("plans"), root };
        std::fs::DirBuilder::new().mode(0o700).create(&dir.work)?;
        std::fs::DirBuilder::new().mode(0o700).create(&dir.scratch)?;
        std::fs::DirBuilder::new().mode(0o700).create(&dir.plans)?;
        Ok(dir)
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(dir = %self.root.display(), %error, "could not remove a job's directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::logs::{MaskRules, Outbox, Patterns};

    fn job() -> Job {
        Job { job_id: "j1".into(), task: Task::Plan, ..Job::default() }
    }

    fn new_log() -> (JobLog, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let rules = MaskRules::patterns_only(Patterns::default());
        (JobLog::new(&job(), &rules, 1 << 20, Arc::clone(&outbox)), outbox)
    }

    /// Plans that are never asked for (exec jobs talk to no broker).
    fn plans() -> Plans {
        use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
        Plans::new(AgentServiceClient::new(
            tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
        ))
    }

    /// A slot of its own, in a temporary data dir removed with the first value.
    fn slot() -> (tempfile::TempDir, Slot) {
        let data = tempfile::tempdir().expect("tempdir");
        let slot = crate::slots::Slots::open(data.path().join("jobs"), 1, None, Path::new("/nonexistent"))
            .expect("slots")
            .acquire()
            .expect("slot");
        (data, slot)
    }

    fn exec(command: &str) -> Runner {
        Runner::new(Some(Work::Exec(command.to_owned())), Isolation::Process, Duration::from_secs(60))
    }

    #[tokio::test]
    async fn a_command_sees_its_job_and_its_exit_status_counts() {
        let (_data, slot) = slot();
        let (log, outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let ok = exec("test \"$KEYWARD_PHASE\" = plan && echo planned")
            .run(&job(), &slot, &mut plans(), &mut JobCredentials::default(), &log, &Layers::default(), cancel)
            .await;
        assert_eq!(ok, Outcome::Succeeded);
        log.finish().await;
        let logged: Vec<u8> =
            outbox.take_unsent().into_iter().filter(|c| c.stream == "stdout").flat_map(|c| c.data).collect();
        assert_eq!(logged, b"planned\n");
        let (log, _outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let failed = exec("echo boom; exit 3")
            .run(&job(), &slot, &mut plans(), &mut JobCredentials::default(), &log, &Layers::default(), cancel)
            .await;
        assert!(matches!(&failed, Outcome::Failed(why) if why.contains("boom") && why.contains('3')), "{failed:?}");
    }

    #[tokio::test]
    async fn a_job_for_a_tool_the_agent_lacks_fails_naming_it_and_runs_nothing() {
        let (_data, slot) = slot();
        let (log, _outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let terraform = Installed {
            tool: Tool::Terraform,
            path: PathBuf::from("/nonexistent/terraform"),
            version: "1.11.4".into(),
        };
        let runner = Runner::new(
            Some(Work::Terraform(Toolbox::of(vec![terraform]))),
            Isolation::Process,
            Duration::from_secs(60),
        );
        let job = Job { tool: Tool::Tofu, ..job() };
        let failed = runner
            .run(&job, &slot, &mut plans(), &mut JobCredentials::default(), &log, &Layers::default(), cancel)
            .await;
        let expected =
            "this agent has no tofu (the stack's tool): start it with --tofu-binary PATH or put `tofu` on its PATH";
        assert_eq!(failed, Outcome::Failed(expected.to_owned()));
    }

    #[tokio::test]
    async fn the_terraform_on_path_reports_its_version() {
        // The machines this runs on have Terraform (DESIGN.md §9).
        let path = std::env::var("PATH").ok();
        let tools = Toolbox::locate(None, None, path.as_deref()).await.expect("no flags, no error");
        let version = tools.get(Tool::Terraform).expect("terraform on PATH").version.clone();
        assert!(version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()), "{version}");
    }

    /// Whether process `pid` is gone (or a zombie: dead, not yet reaped by its new parent).
    fn dead(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')))
    }

    #[tokio::test]
    async fn a_canceled_command_is_killed_and_a_late_one_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pids = dir.path().join("pids");
        // The shell and a child it started, both of which must die with the job.
        let command = format!("sleep 30 & echo \"$$ $!\" > '{}.tmp' && mv '{0}.tmp' '{0}'; wait", pids.display());
        let (cancel, canceled) = oneshot::channel();
        let running = tokio::spawn(async move {
            let (_data, slot) = slot();
            let (log, _outbox) = new_log();
            exec(&command)
                .run(&job(), &slot, &mut plans(), &mut JobCredentials::default(), &log, &Layers::default(), canceled)
                .await
        });
        let started = std::time::Instant::now();
        let pids = loop {
            if let Ok(pids) = std::fs::read_to_string(&pids) {
                break pids;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the command never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pids: Vec<&str> = pids.split_whitespace().collect();
        assert_eq!(pids.len(), 2, "{pids:?}");
        assert!(!pids.iter().any(|pid| dead(pid)), "the command runs");
        cancel.send("test".into()).expect("send");
        assert_eq!(running.await.expect("joined"), Outcome::Canceled);
        // SIGKILL went to the whole group; the kernel takes a moment to finish each off.
        let killed = std::time::Instant::now();
        while !pids.iter().all(|pid| dead(pid)) {
            assert!(killed.elapsed() < Duration::from_secs(10), "{pids:?} outlived the canceled job");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let runner = Runner::new(Some(Work::Exec("sleep 30".to_owned())), Isolation::Process, Duration::ZERO);
        let (_data, slot) = slot();
        let (log, _outbox) = new_log();
        let (_keep, cancel) = oneshot::channel();
        let late = runner
            .run(&job(), &slot, &mut plans(), &mut JobCredentials::default(), &log, &Layers::default(), cancel)
            .await;
        assert!(matches!(&late, Outcome::Failed(why) if why.contains("deadline")), "{late:?}");
    }
}
