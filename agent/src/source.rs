//! The job's source: the stack's repository at exactly the run's commit, in a fresh directory.
//!
//! `git` runs on the host (it needs the network the sandbox may not have), with no user or system
//! configuration, no prompts and no hooks; the checkout is detached at the commit and refused if
//! `HEAD` is anything else. Fetching the commit alone (`--depth 1`) is tried first; a server that
//! refuses to serve a bare commit gets a full fetch instead. A private repository's credentials
//! reach git only through its environment ([`keyward_proto::git`]), and only the fetches get them.

use std::path::Path;
use std::time::SystemTime;

use crate::launch::{Isolation, Launch};
use crate::logs::JobLog;
use crate::step::{self, Cancel, StepEnd};

/// Why the source could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A git command failed.
    #[error("{0}")]
    Git(String),
    /// The job was canceled meanwhile.
    #[error("canceled: {0}")]
    Canceled(String),
}

/// Checks out `commit` of `repository` into `dest` (created), logging git's output; `auth` is
/// the environment that authenticates git to a private repository.
#[allow(clippy::too_many_arguments)]
pub async fn checkout(
    repository: &str,
    commit: &str,
    auth: Option<[(String, String); 3]>,
    dest: &Path,
    scratch: &Path,
    log: &JobLog,
    cancel: &mut Cancel,
    deadline: SystemTime,
) -> Result<(), SourceError> {
    if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SourceError::Git(format!("`{commit}` is not a full commit SHA")));
    }
    std::fs::create_dir_all(dest).map_err(|e| SourceError::Git(format!("cannot create {}: {e}", dest.display())))?;
    log.note(&format!("$ git fetch {repository} {commit}")).await;
    let git = |args: &[&str]| {
        let mut argv = vec!["git".to_owned(), "-c".to_owned(), "core.hooksPath=/dev/null".to_owned()];
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Launch {
            argv,
            env: vec![
                ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
                ("HOME".to_owned(), scratch.display().to_string()),
                ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
                ("GIT_CONFIG_NOSYSTEM".to_owned(), "1".to_owned()),
                ("GIT_CONFIG_GLOBAL".to_owned(), "/dev/null".to_owned()),
            ],
            work_dir: dest.to_path_buf(),
            cwd: dest.to_path_buf(),
            read_only: Vec::new(),
            deadline,
            scratch: scratch.to_path_buf(),
            host_ids: None,
        }
    };
    let fetch = |args: &[&str]| {
        let mut launch = git(args);
        launch.env.extend(auth.iter().flatten().cloned());
        launch
    };
    run_git(git(&["init", "-q", "."]), log, cancel, deadline).await?;
    let shallow =
        run_git(fetch(&["fetch", "-q", "--no-tags", "--depth", "1", "--", repository, commit]), log, cancel, deadline)
            .await;
    if let Err(SourceError::Git(_)) = shallow {
        log.note("keyward: the server would not serve the commit alone; fetching every branch").await;
        run_git(
            fetch(&["fetch", "-q", "--no-tags", "--", repository, "+refs/heads/*:refs/remotes/origin/*"]),
            log,
            cancel,
            deadline,
        )
        .await?;
    } else {
        shallow?;
    }
    run_git(git(&["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", commit]), log, cancel, deadline)
        .await?;
    let head = Isolation::Process.prepare(git(&["rev-parse", "HEAD"])).map_err(SourceError::Git)?;
    let step = step::run(head, log, cancel, deadline, Some(64)).await;
    let head = String::from_utf8_lossy(&step.stdout).trim().to_owned();
    if head != commit {
        return Err(SourceError::Git(format!("the checkout is at `{head}`, not the run's commit {commit}")));
    }
    Ok(())
}

async fn run_git(launch: Launch, log: &JobLog, cancel: &mut Cancel, deadline: SystemTime) -> Result<(), SourceError> {
    let what = launch.argv.get(3).cloned().unwrap_or_default();
    let prepared = Isolation::Process.prepare(launch).map_err(SourceError::Git)?;
    match step::run(prepared, log, cancel, deadline, None).await.end {
        StepEnd::Exited(status) if status.success() => Ok(()),
        StepEnd::Exited(status) => Err(SourceError::Git(format!("git {what} failed ({status})"))),
        StepEnd::Canceled(reason) => Err(SourceError::Canceled(reason)),
        StepEnd::TimedOut => Err(SourceError::Git(format!("git {what} ran past the job's deadline"))),
        StepEnd::NotStarted(error) => Err(SourceError::Git(format!("cannot run git: {error}"))),
    }
}
