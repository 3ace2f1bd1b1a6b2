//! A job's mounted files (docs/contexts.md, "Files"): variables of its contexts and stack that
//! the broker sends with a path instead of for the environment, written into the stack's
//! configuration directory after the checkout and before any hook or Terraform runs.
//!
//! The agent writes them outside the sandbox, into a tree the repository filled, so never the
//! ordinary way ([`crate::planfile::write_beneath_creating`]): beneath the work directory through
//! no symlink, missing directories created the same way, and never over an existing file: a
//! file of that name in the repository fails the job, saying so, rather than being replaced
//! (which would change the code that was reviewed) or kept (which would drop the value). A
//! secret file is 0600, a plain one 0644; both go with the job's directory when the job ends.
//! Contents are masked in the job's log by [`crate::credentials`], never written to it.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::logs::JobLog;
use crate::planfile::{self, PlanFileError};
use crate::terraform::PhaseError;

/// A variable to mount as a file.
pub struct MountedFile {
    /// The variable's name.
    pub name: String,
    /// Where, relative to the stack's configuration directory (checked by
    /// `keyward_proto::mount::check`).
    pub path: String,
    /// The content.
    pub content: Zeroizing<Vec<u8>>,
    /// Whether it is secret (0600, masked).
    pub secret: bool,
}

impl fmt::Debug for MountedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountedFile")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// Writes `files` beneath `cwd`, the configuration directory inside `work_dir`; the first that
/// cannot be written fails the job, named with why.
pub async fn mount(files: &[MountedFile], work_dir: &Path, cwd: &Path, log: &JobLog) -> Result<(), PhaseError> {
    if files.is_empty() {
        return Ok(());
    }
    let configuration = cwd
        .strip_prefix(work_dir)
        .map_err(|_| PhaseError::Failed("the configuration's directory is outside the work dir".to_owned()))?;
    for file in files {
        let relative = configuration.join(&file.path);
        let mode = if file.secret { 0o600 } else { 0o644 };
        planfile::write_beneath_creating(work_dir, &relative, file.content.clone(), mode)
            .await
            .map_err(|error| PhaseError::Failed(refusal(file, &error)))?;
        let secret = if file.secret { ", secret" } else { "" };
        log.note(&format!("keyward: mounted {} (variable {}{secret})", file.path, file.name)).await;
    }
    Ok(())
}

/// Why `file` could not be mounted, in words that say what to change.
fn refusal(file: &MountedFile, error: &PlanFileError) -> String {
    let what = format!("cannot mount variable `{}` as the file `{}`", file.name, file.path);
    match error {
        PlanFileError::Open { source: nix::Error::EEXIST, .. } => format!(
            "{what}: the repository already has a file or directory there (in the stack's configuration \
             directory); remove it from the repository or mount the variable at another path"
        ),
        PlanFileError::Open { source: nix::Error::ENOTDIR, .. } => {
            format!("{what}: a directory on its way is a file in the repository")
        }
        PlanFileError::OutsideWorkDir(_) => {
            format!("{what}: its way goes through a symlink in the repository (the agent follows none)")
        }
        PlanFileError::Open { source, .. } => format!("{what}: {source}"),
        PlanFileError::Io { source, .. } => format!("{what}: {source}"),
        PlanFileError::TimedOut => format!("{what}: writing it took too long"),
        PlanFileError::NotRegular(_) | PlanFileError::TooLarge { .. } => what,
    }
}
