//! What a stack is made of, checked before anything is stored: names that are safe everywhere
//! they appear (URLs, SPIFFE IDs, file names), a repository URL git can read without a shell, a
//! Terraform path that stays inside the repository, and credential targets that exist, with
//! plan-phase targets limited to read access (a plan can never obtain write credentials).

use keyward_proto::claims::Phase;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::drift::{DriftSettings, DriftStatus};
use super::hooks::Hooks;
use super::scans::Scanner;
use super::tool::Tool;
use crate::store::{NewStack, StackRow, StoreError};
use crate::targets::{TargetAccess, TargetConfig};

/// A stack to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    /// Unique name.
    pub name: String,
    /// Git URL: `https://`, `ssh://` or `file://`.
    pub repository: String,
    /// Directory of the Terraform configuration in the repository (`""`: the root).
    #[serde(default)]
    pub path: String,
    /// Default branch.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Worker pool.
    #[serde(default = "default_pool")]
    pub pool: String,
    /// Target IDs (`aws:<name>`, `vault:<name>`) plans may use: read access only.
    #[serde(default)]
    pub plan_targets: Vec<String>,
    /// Target IDs applies may use.
    #[serde(default)]
    pub apply_targets: Vec<String>,
    /// Labels handed to policies (`input.stack.labels`), e.g. `env = "prod"`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Names of policies attached to the stack (`input.stack.policies`): rules can apply only to
    /// stacks that attach them.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Whether the broker keeps the stack's Terraform state (its `http` backend; docs/state.md).
    /// `false`: the configuration brings its own backend.
    #[serde(default = "managed_by_default")]
    pub managed_state: bool,
    /// Lifecycle hooks: shell commands run around Terraform, per point, in order.
    #[serde(default)]
    pub hooks: Hooks,
    /// Security scanners its plan jobs run on the checked-out code before `init`
    /// (docs/scans.md); `keyward.scan` judges what they find.
    #[serde(default)]
    pub scanners: Vec<Scanner>,
    /// The program its jobs run: `terraform` (the default) or `tofu` (`input.stack.tool`);
    /// only agents that have it take its jobs.
    #[serde(default)]
    pub tool: Tool,
    /// Globs of repository files (relative to its root, `**` crossing directories) whose change
    /// concerns the stack: a pull request or push touching one may run it (docs/vcs.md). Empty:
    /// the files under `path`.
    #[serde(default)]
    pub triggers: Vec<String>,
    /// The space it belongs to (docs/access.md): who may see and run it, which targets it may use.
    #[serde(default = "default_space")]
    pub space: String,
}

fn default_space() -> String {
    crate::roles::ROOT.to_owned()
}

fn managed_by_default() -> bool {
    true
}

/// A stored stack: its spec, who created and last updated it when, its drift schedule and its
/// drift state. What the API returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stack {
    /// What it is.
    #[serde(flatten)]
    pub spec: StackSpec,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
    /// The last update's time.
    pub updated_at: Option<i64>,
    /// Who updated it last.
    pub updated_by: Option<String>,
    /// Its drift schedule and remediation, and what the scheduler last did.
    #[serde(flatten)]
    pub drift_settings: DriftSettings,
    /// Its drift state, from the last drift check that ended.
    pub drift: DriftStatus,
}

impl Stack {
    /// A stack as just created by `created_by` at `created_at`: no drift schedule, never
    /// checked.
    pub fn new(spec: StackSpec, created_at: i64, created_by: String) -> Self {
        Self {
            spec,
            created_at,
            created_by,
            updated_at: None,
            updated_by: None,
            drift_settings: DriftSettings::default(),
            drift: DriftStatus::Unknown,
        }
    }

    /// The credential targets of `phase` (`plan` or `apply`).
    pub fn targets(&self, phase: Phase) -> &[String] {
        match phase {
            Phase::Apply => &self.spec.apply_targets,
            Phase::Plan => &self.spec.plan_targets,
        }
    }
}

impl TryFrom<StackRow> for Stack {
    type Error = StoreError;

    /// Decodes the JSON columns, the drift schedule and the drift state once, refusing a row
    /// this build cannot read.
    fn try_from(row: StackRow) -> Result<Self, StoreError> {
        fn column<T: serde::de::DeserializeOwned>(name: &str, column: &str, text: &str) -> Result<T, StoreError> {
            serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stack `{name}` {column}: {e}")))
        }
        let drift_settings = DriftSettings::from_row(&row)?;
        let drift = DriftStatus::from_row(&row.name, row.drift)?;
        let spec = StackSpec {
            plan_targets: column(&row.name, "plan_targets", &row.plan_targets)?,
            apply_targets: column(&row.name, "apply_targets", &row.apply_targets)?,
            labels: column(&row.name, "labels", &row.labels)?,
            policies: column(&row.name, "policies", &row.policies)?,
            managed_state: row.managed_state,
            hooks: column(&row.name, "hooks", &row.hooks)?,
            scanners: column(&row.name, "scanners", &row.scanners)?,
            tool: Tool::parse(&row.tool).map_err(|e| StoreError::Corrupt(format!("stack `{}` tool: {e}", row.name)))?,
            triggers: column(&row.name, "triggers", &row.triggers)?,
            name: row.name,
            repository: row.repository,
            path: row.path,
            branch: row.branch,
            pool: row.pool,
            space: row.space,
        };
        Ok(Self {
            spec,
            created_at: row.created_at,
            created_by: row.created_by,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
            drift_settings,
            drift,
        })
    }
}

fn default_branch() -> String {
    "main".to_owned()
}

/// The pool stacks use unless they name one.
pub const DEFAULT_POOL: &str = "default";

fn default_pool() -> String {
    DEFAULT_POOL.to_owned()
}

/// A name for stacks, pools, labels and policies: 1–63 of `a-z 0-9 - _ .`, starting with a letter
/// or digit.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// A branch name git accepts and that cannot be read as an option or a path escape.
fn valid_branch(branch: &str) -> bool {
    (1..=200).contains(&branch.len())
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.ends_with(".lock")
        && branch.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./+".contains(&b))
}

fn valid_repository(url: &str) -> bool {
    let scheme_ok = ["https://", "http://", "ssh://", "file://"].iter().any(|s| url.starts_with(s));
    scheme_ok && url.len() <= 2048 && !url.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// A relative path with no `..`, no leading `/` and no odd characters.
fn valid_path(path: &str) -> bool {
    path.len() <= 1024
        && !path.starts_with('/')
        && path.split('/').all(|part| part != ".." && part != ".")
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// Why a stack was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

impl StackSpec {
    /// The spec as stored: its lists and maps as JSON text.
    pub(super) fn stored(&self) -> NewStack {
        NewStack {
            name: self.name.clone(),
            repository: self.repository.clone(),
            path: self.path.clone(),
            branch: self.branch.clone(),
            pool: self.pool.clone(),
            plan_targets: super::json_text(&self.plan_targets),
            apply_targets: super::json_text(&self.apply_targets),
            labels: super::json_text(&self.labels),
            policies: super::json_text(&self.policies),
            managed_state: self.managed_state,
            hooks: super::json_text(&self.hooks),
            scanners: super::json_text(&self.scanners),
            tool: self.tool.as_str().to_owned(),
            triggers: super::json_text(&self.triggers),
            space: self.space.clone(),
        }
    }

    /// Checks every field against the configured `targets`.
    pub fn validate(&self, targets: &BTreeMap<String, TargetConfig>) -> Result<(), SpecError> {
        let fail = |message: String| Err(SpecError(message));
        if !valid_name(&self.name) {
            return fail(format!(
                "invalid stack name `{}`: use 1-63 of a-z, 0-9, `-`, `_`, `.`, starting with a letter or digit",
                self.name
            ));
        }
        if !valid_repository(&self.repository) {
            return fail(format!("invalid repository `{}`: use an https://, ssh:// or file:// URL", self.repository));
        }
        if !valid_path(&self.path) {
            return fail(format!("invalid path `{}`: a relative directory inside the repository", self.path));
        }
        if !valid_branch(&self.branch) {
            return fail(format!("invalid branch name `{}`", self.branch));
        }
        if !valid_name(&self.pool) {
            return fail(format!("invalid pool name `{}`", self.pool));
        }
        for (key, value) in &self.labels {
            if !valid_name(key) || value.len() > 256 {
                return fail(format!("invalid label `{key}`: names like stack names, values up to 256 bytes"));
            }
        }
        if let Some(bad) = self.policies.iter().find(|p| !valid_name(p)) {
            return fail(format!("invalid policy name `{bad}`"));
        }
        for (phase, ids) in [("plan", &self.plan_targets), ("apply", &self.apply_targets)] {
            for id in ids {
                let Some(target) = targets.get(id) else {
                    let known: Vec<&str> = targets.keys().map(String::as_str).collect();
                    return fail(format!(
                        "unknown {phase} target `{id}`; configured targets: {}",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                };
                if phase == "plan" && target.access == TargetAccess::Write {
                    return fail(format!(
                        "target `{id}` grants write access; plans may only use read targets (use it as an apply target)"
                    ));
                }
            }
        }
        super::scans::validate(&self.scanners)?;
        super::triggers::check_triggers(&self.triggers).map_err(|e| SpecError(e.to_string()))?;
        self.hooks.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StackSpec {
        StackSpec {
            name: "network".into(),
            repository: "https://git.example.com/platform/infra.git".into(),
            path: "stacks/network".into(),
            branch: "main".into(),
            pool: "default".into(),
            plan_targets: vec![],
            apply_targets: vec![],
            labels: BTreeMap::new(),
            policies: vec![],
            managed_state: true,
            hooks: Hooks::default(),
            scanners: Vec::new(),
            tool: Tool::Terraform,
            triggers: Vec::new(),
            space: "root".into(),
        }
    }

    #[test]
    fn hostile_fields_are_refused() {
        let targets = BTreeMap::new();
        assert_eq!(spec().validate(&targets), Ok(()));
        type Change = fn(&mut StackSpec);
        let cases: [(&str, Change); 14] = [
            ("stack name", |s| s.name = "Network".into()),
            ("repository", |s| s.repository = "--upload-pack=touch /tmp/x".into()),
            ("repository", |s| s.repository = "https://example.com/a b".into()),
            ("path", |s| s.path = "../../etc".into()),
            ("path", |s| s.path = "/abs".into()),
            ("branch", |s| s.branch = "-c core.pager=x".into()),
            ("branch", |s| s.branch = "a..b".into()),
            ("pool", |s| s.pool = "".into()),
            ("unknown plan target", |s| s.plan_targets = vec!["aws:nope".into()]),
            ("trigger glob", |s| s.triggers = vec!["/etc/**".into()]),
            ("trigger glob", |s| s.triggers = vec!["modules/../../x".into()]),
            ("trigger glob", |s| s.triggers = vec!["a[".into()]),
            ("trigger glob", |s| s.triggers = vec![String::new()]),
            ("at most 32 trigger globs", |s| s.triggers = (0..33).map(|i| format!("m{i}/**")).collect()),
        ];
        for (what, change) in cases {
            let mut bad = spec();
            change(&mut bad);
            let error = bad.validate(&targets).err().map(|e| e.0).unwrap_or_default();
            assert!(error.contains(what), "{what}: {error}");
        }
    }
}
