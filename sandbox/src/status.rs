//! The jailer's verdict on a run: [`Status`], written as JSON to `Spec::status_file`.
//!
//! Why it exists: the jailer's exit code alone cannot say *why* a job ended (a deadline kill
//! and an out-of-memory kill both look like SIGKILL), nor which isolation layers were actually
//! applied. The file is written with a temp file + rename so a reader never sees half of it,
//! and the temp file is created with `O_EXCL` (no symlink following): the jailer runs as root.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How a sandboxed run ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The program's exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// The signal that killed the program (or the whole sandbox), if any.
    pub signal: Option<i32>,
    /// Why the jailer thinks it ended that way, when it was not an ordinary exit.
    pub reason: Option<Reason>,
    /// The isolation layers that were in place, in the order they were applied.
    pub layers: Vec<String>,
    /// Layers the level allowed to be missing and that were missing, with why.
    pub skipped: Vec<String>,
}

/// Why a run ended, when it was not an ordinary exit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Killed at `deadline_unix_ms`.
    Deadline,
    /// The kernel's OOM killer acted inside the job's memory cgroup.
    MemoryLimit,
    /// A fork failed because the job hit its pids limit, and the job then failed.
    PidsLimit,
    /// The jailer got SIGTERM, SIGINT or SIGHUP and killed the job.
    Cancelled,
    /// The sandbox could not be set up (or the program could not be executed):
    /// `"layer: why"`. The program did not run.
    SetupFailed(String),
}

/// The status file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// I/O on the status file.
    #[error("status file {path:?}: {source}")]
    Io {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The status file is not valid JSON for a [`Status`].
    #[error("status file {path:?}: {source}")]
    Json {
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Status {
    /// Read a status file written by the jailer.
    pub fn read(path: &Path) -> Result<Status, StatusError> {
        let bytes = std::fs::read(path).map_err(|source| StatusError::Io { path: path.to_owned(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| StatusError::Json { path: path.to_owned(), source })
    }

    /// Write to `<path>.tmp.<pid>` (created exclusively, mode 0600) and rename over `path`.
    pub(crate) fn write_atomic(&self, path: &Path) -> Result<(), StatusError> {
        let io = |source| StatusError::Io { path: path.to_owned(), source };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = Path::new(&tmp_name);
        let json = serde_json::to_vec(self).map_err(|source| StatusError::Json { path: path.to_owned(), source })?;
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp).map_err(io)?;
        let written = file.write_all(&json).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written.and_then(|()| std::fs::rename(tmp, path)) {
            let _ = std::fs::remove_file(tmp);
            return Err(io(e));
        }
        Ok(())
    }
}
