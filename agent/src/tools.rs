//! The programs a job's phase can run: Terraform and OpenTofu, found once when the agent starts
//! (`--terraform-binary`, `--tofu-binary`, else on `PATH`) and asked for their versions, so that
//! the broker leases a stack's jobs only to agents that have its tool and each job's log says
//! which binary and version ran. A binary the operator named explicitly must exist and be
//! executable, or the agent does not start: a typo never turns into "this agent has no tofu"
//! at the first job.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keyward_proto::agent_v1 as wire;
use tokio::process::Command;

/// How long `version -json` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// A program that runs a job's phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tool {
    /// HashiCorp Terraform.
    #[default]
    Terraform,
    /// OpenTofu.
    Tofu,
}

impl Tool {
    /// Its name in stacks, flags and logs: `terraform`, `tofu`.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Terraform => "terraform",
            Tool::Tofu => "tofu",
        }
    }

    /// The flag that names its binary.
    pub fn flag(self) -> &'static str {
        match self {
            Tool::Terraform => "--terraform-binary",
            Tool::Tofu => "--tofu-binary",
        }
    }

    /// As the protocol says it.
    pub fn wire(self) -> wire::Tool {
        match self {
            Tool::Terraform => wire::Tool::Terraform,
            Tool::Tofu => wire::Tool::Tofu,
        }
    }

    /// The tool an assignment names: UNSPECIFIED (a broker older than the field) is Terraform;
    /// a value this agent does not know is `None`.
    pub fn from_wire(value: i32) -> Option<Self> {
        match wire::Tool::try_from(value).ok()? {
            wire::Tool::Unspecified | wire::Tool::Terraform => Some(Tool::Terraform),
            wire::Tool::Tofu => Some(Tool::Tofu),
        }
    }
}

/// One tool found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Which.
    pub tool: Tool,
    /// Its binary (absolute).
    pub path: PathBuf,
    /// What `version -json` said (`terraform_version`), or `unknown`.
    pub version: String,
}

/// Why the agent cannot start with the binaries it was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    /// The named binary is not there.
    #[error("{flag} {given}: no such file (and not found on PATH); give an absolute path or a program on PATH")]
    NotFound {
        /// The flag.
        flag: &'static str,
        /// What it said.
        given: String,
    },
    /// It is there but cannot be run.
    #[error("{flag} {path}: not an executable file; check its permissions (chmod +x)")]
    NotExecutable {
        /// The flag.
        flag: &'static str,
        /// The file found.
        path: String,
    },
}

/// The tools this agent runs jobs with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Toolbox {
    installed: Vec<Installed>,
}

impl Toolbox {
    /// Finds Terraform and OpenTofu: each at the path its flag names (absolute, or a program on
    /// `search_path`), which must be an executable file, else on `search_path` if it is there.
    pub async fn locate(
        terraform: Option<&str>,
        tofu: Option<&str>,
        search_path: Option<&str>,
    ) -> Result<Self, ToolError> {
        let mut installed = Vec::new();
        for (tool, given) in [(Tool::Terraform, terraform), (Tool::Tofu, tofu)] {
            let path = match given {
                Some(given) => Some(explicit(tool, given, search_path)?),
                None => find(tool.name(), search_path).filter(|path| executable(path)),
            };
            if let Some(path) = path {
                let version = version(&path).await.unwrap_or_else(|| "unknown".to_owned());
                installed.push(Installed { tool, path, version });
            }
        }
        Ok(Self { installed })
    }

    /// A toolbox of exactly these (tests).
    pub fn of(installed: Vec<Installed>) -> Self {
        Self { installed }
    }

    /// The binary that runs `tool`, if this agent has it.
    pub fn get(&self, tool: Tool) -> Option<&Installed> {
        self.installed.iter().find(|installed| installed.tool == tool)
    }

    /// Every tool found, Terraform first.
    pub fn installed(&self) -> &[Installed] {
        &self.installed
    }

    /// `terraform 1.11.4, tofu 1.8.0`, or `none`.
    pub fn describe(&self) -> String {
        if self.installed.is_empty() {
            return "none".to_owned();
        }
        let each: Vec<String> = self.installed.iter().map(|i| format!("{} {}", i.tool.name(), i.version)).collect();
        each.join(", ")
    }

    /// What `Hello` reports.
    pub fn wire(&self) -> Vec<wire::ToolVersion> {
        self.installed
            .iter()
            .map(|i| wire::ToolVersion { tool: i.tool.wire().into(), version: i.version.clone() })
            .collect()
    }
}

/// The binary a flag names: an absolute path, else a program on `search_path`; an executable file.
fn explicit(tool: Tool, given: &str, search_path: Option<&str>) -> Result<PathBuf, ToolError> {
    let flag = tool.flag();
    let path = if Path::new(given).is_absolute() {
        Some(PathBuf::from(given)).filter(|path| path.is_file())
    } else if given.contains('/') {
        // A relative path would depend on the agent's working directory: refuse it plainly.
        None
    } else {
        find(given, search_path)
    };
    let path = path.ok_or_else(|| ToolError::NotFound { flag, given: given.to_owned() })?;
    if !executable(&path) {
        return Err(ToolError::NotExecutable { flag, path: path.display().to_string() });
    }
    Ok(path)
}

/// `program` in the first directory of `search_path` that holds a file of that name.
fn find(program: &str, search_path: Option<&str>) -> Option<PathBuf> {
    search_path?.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

/// A regular file with an execute bit.
fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// `binary version -json`'s `terraform_version` (OpenTofu answers with the same key), or `None`
/// when it does not answer that within [`VERSION_TIMEOUT`].
pub async fn version(binary: &Path) -> Option<String> {
    let output = Command::new(binary)
        .args(["version", "-json"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VERSION_TIMEOUT, output).await.ok()?.ok()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    report.get("terraform_version")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[tokio::test]
    async fn named_binaries_are_used_and_asked_for_their_version() {
        let dir = tempfile::tempdir().unwrap();
        let tofu = script(dir.path(), "tofu", "#!/bin/sh\necho '{\"terraform_version\": \"1.8.0\"}'\n", 0o755);
        let search = dir.path().display().to_string();
        let by_path = Toolbox::locate(None, Some(tofu.to_str().unwrap()), Some("/nonexistent")).await.unwrap();
        assert_eq!(
            by_path.get(Tool::Tofu).map(|i| (i.path.clone(), i.version.as_str())),
            Some((tofu.clone(), "1.8.0"))
        );
        assert_eq!(by_path.get(Tool::Terraform), None);
        assert_eq!(by_path.describe(), "tofu 1.8.0");
        let by_name = Toolbox::locate(Some("tofu"), None, Some(&search)).await.unwrap();
        let terraform = by_name.get(Tool::Terraform).expect("the terraform flag names the shim");
        assert_eq!(terraform.path, tofu);
        // Found on the search path without a flag too.
        assert!(by_name.get(Tool::Tofu).is_some());
    }

    #[tokio::test]
    async fn a_named_binary_that_is_missing_or_not_executable_stops_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let plain = script(dir.path(), "tofu", "not a program", 0o644);
        let search = dir.path().display().to_string();
        let missing = Toolbox::locate(None, Some("/nonexistent/tofu"), Some(&search)).await.unwrap_err();
        assert!(missing.to_string().starts_with("--tofu-binary /nonexistent/tofu: no such file"), "{missing}");
        let relative = Toolbox::locate(Some("bin/terraform"), None, Some(&search)).await.unwrap_err();
        assert!(matches!(relative, ToolError::NotFound { flag: "--terraform-binary", .. }), "{relative}");
        let denied = Toolbox::locate(None, Some(plain.to_str().unwrap()), Some(&search)).await.unwrap_err();
        assert!(denied.to_string().contains("not an executable file"), "{denied}");
        // Without a flag, a file that cannot run is no tool.
        assert_eq!(Toolbox::locate(None, None, Some(&search)).await.unwrap().get(Tool::Tofu), None);
    }

    #[test]
    fn an_assignment_without_a_tool_runs_terraform_and_an_unknown_one_is_refused() {
        assert_eq!(Tool::from_wire(0), Some(Tool::Terraform));
        assert_eq!(Tool::from_wire(wire::Tool::Tofu.into()), Some(Tool::Tofu));
        assert_eq!(Tool::from_wire(99), None);
    }
}
