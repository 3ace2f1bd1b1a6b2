//! Contexts and stack variables (docs/contexts.md): the environment and files a stack's jobs
//! get, kept by the broker so that nobody puts a `TF_VAR_db_password` in a repository.
//!
//! A context is a named set of variables, attached to stacks by name or by label (`autoattach`),
//! applied in priority order (lower first, so a later context overrides an earlier one); a
//! stack's own variables override every context. A variable with a mount path (`file`) is not
//! put into the environment: the agent writes it as a file at that path in the stack's
//! configuration directory; of two that mount the same path, the later one wins the same way. A
//! secret value is write-only: sealed under the KEK, bound to its owner, name, version and mount
//! path; the API shows only its name, version, a SHA-256 prefix, its path and who set it when; it
//! leaves the broker only to the lease holder of one of its stacks' jobs (`JobVariables`), whose
//! log masks it. Every change is on the audit log, and so is which variables (names, versions and
//! paths, never values) each job received. A context's lifecycle hooks are in
//! [`super::context_hooks`].

use std::collections::BTreeMap;

use aws_lc_rs::digest;
use keyward_proto::encoding::hex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::hooks::Hooks;
use super::{HeldJob, RunError, Runs, run_context, valid_name};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::store::StoreError;
use crate::store::contexts::{self as rows, ContextRow, VariableRow};

/// The longest value a variable may hold.
pub const MAX_VALUE: usize = 64 * 1024;
/// The most variables one owner may have.
const MAX_VARIABLES: usize = 256;

/// Names the agent sets itself, or that would change how the job runs underneath Terraform.
const RESERVED: [&str; 7] =
    ["PATH", "HOME", "TF_IN_AUTOMATION", "TF_INPUT", "CHECKPOINT_DISABLE", "TF_CLI_CONFIG_FILE", "TF_DATA_DIR"];
const RESERVED_PREFIXES: [&str; 2] = ["KEYWARD_", "TF_HTTP_"];

/// Why a context or variable request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Bad input; nothing stored.
    #[error("{0}")]
    Invalid(String),
    /// No such context.
    #[error("context `{0}` does not exist")]
    UnknownContext(String),
    /// No such variable.
    #[error("{owner} has no variable `{name}`")]
    UnknownVariable {
        /// Its owner.
        owner: String,
        /// The name.
        name: String,
    },
    /// A run-level error (an unknown stack, the lease, the store, a guarded write).
    #[error(transparent)]
    Run(#[from] RunError),
}

impl From<StoreError> for ContextError {
    fn from(error: StoreError) -> Self {
        Self::Run(RunError::Store(error))
    }
}

/// `POST /v1/contexts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewContext {
    /// Unique name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Stacks with all of these labels get it.
    #[serde(default)]
    pub autoattach: BTreeMap<String, String>,
    /// Lower first.
    #[serde(default)]
    pub priority: i64,
    /// Lifecycle hooks its stacks' jobs run, before the stack's own at each point.
    #[serde(default)]
    pub hooks: Hooks,
}

/// A variable to set (`PUT …/variables/{key}`): the value, and whether it is secret and mounted
/// as a file.
#[derive(Clone, Copy)]
pub struct NewVariable<'a> {
    /// The name.
    pub name: &'a str,
    /// The value (a file's content).
    pub value: &'a str,
    /// Sealed, never shown, masked.
    pub secret: bool,
    /// Mounted at this path (relative to the configuration directory), not in the environment.
    pub file: Option<&'a str>,
}

impl std::fmt::Debug for NewVariable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewVariable")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// A variable as the API shows it: a secret's value never.
#[derive(Debug, Clone, Serialize)]
pub struct VariableView {
    /// The name.
    pub name: String,
    /// Whether it is secret.
    pub secret: bool,
    /// The value, when not secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// 1, 2, …
    pub version: i64,
    /// The first 8 hex digits of the value's SHA-256 (to tell versions apart, not to guess).
    pub sha256_prefix: String,
    /// Where it is mounted as a file; `null`: an environment variable.
    pub file: Option<String>,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: i64,
}

/// A context as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ContextView {
    /// Name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Label -> value.
    pub autoattach: BTreeMap<String, String>,
    /// Lower first.
    pub priority: i64,
    /// Stacks attached by name.
    pub stacks: Vec<String>,
    /// Its variables.
    pub variables: Vec<VariableView>,
    /// Its lifecycle hooks.
    pub hooks: Hooks,
    /// When.
    pub created_at: i64,
    /// Who.
    pub created_by: String,
}

/// One variable a job gets.
pub struct JobVariable {
    /// The name.
    pub name: String,
    /// The value.
    pub value: Zeroizing<String>,
    /// Whether it is secret (the agent masks it).
    pub secret: bool,
    /// Where the agent writes it as a file; `None`: into the environment.
    pub file: Option<String>,
}

impl std::fmt::Debug for JobVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobVariable")
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// What a secret value is sealed to: its owner, name, version and digest, and a file's mount
/// path (so a sealed file cannot be moved, nor turned into an environment variable, by changing
/// its row).
fn seal_context(owner: &str, name: &str, version: i64, sha256: &[u8], file: Option<&str>) -> Vec<u8> {
    let mut context = format!("keyward variable v1\0{owner}\0{name}\0{version}\0{}", hex(sha256));
    if let Some(path) = file {
        context.push_str("\0file\0");
        context.push_str(path);
    }
    context.into_bytes()
}

/// Refuses a name the job's environment cannot hold or that the agent sets itself.
fn check_variable_name(name: &str) -> Result<(), ContextError> {
    let valid = (1..=128).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ContextError::Invalid(format!(
            "`{}` is not an environment variable name: letters, digits and `_`, not starting with a digit, at most 128",
            name.chars().take(64).collect::<String>()
        )));
    }
    if RESERVED.contains(&name) || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Err(ContextError::Invalid(format!("`{name}` is set by the agent itself; choose another name")));
    }
    Ok(())
}

/// Refuses a value over the cap, and a NUL in one bound for the environment (a file may hold one).
fn check_value(value: &str, file: bool) -> Result<(), ContextError> {
    if value.len() > MAX_VALUE {
        return Err(ContextError::Invalid(format!("the value is {} bytes; at most {MAX_VALUE}", value.len())));
    }
    if !file && value.contains('\0') {
        return Err(ContextError::Invalid("a value cannot hold a NUL byte (an environment cannot)".to_owned()));
    }
    Ok(())
}

impl Runs {
    /// Creates a context.
    pub async fn create_context(
        &self,
        new: NewContext,
        who: &str,
        caller: Context,
    ) -> Result<ContextView, ContextError> {
        if !valid_name(&new.name) {
            return Err(ContextError::Invalid(format!(
                "invalid context name `{}`: use 1-63 of a-z, 0-9, `-`, `_`, `.`, starting with a letter or digit",
                new.name.chars().take(64).collect::<String>()
            )));
        }
        if new.description.len() > 1000 || new.autoattach.len() > 16 {
            return Err(ContextError::Invalid(
                "a description of at most 1000 bytes, at most 16 autoattach labels".into(),
            ));
        }
        new.hooks.validate().map_err(|e| ContextError::Invalid(e.0))?;
        let now = self.clock.now();
        let row = ContextRow {
            name: new.name.clone(),
            description: new.description,
            autoattach: super::json_text(&new.autoattach),
            priority: new.priority,
            hooks: super::json_text(&new.hooks),
            created_at: now,
            created_by: who.to_owned(),
        };
        let mut event = AuditEvent::new(Kind::ContextChanged, now, Context { actor: Some(who.to_owned()), ..caller })
            .with("context", new.name.as_str())
            .with("change", "created")
            .with("autoattach", serde_json::to_value(&new.autoattach).unwrap_or(Value::Null))
            .with("priority", new.priority)
            .with_ref("context", &new.name);
        if !new.hooks.is_empty() {
            event = event.with("hooks", serde_json::to_value(&new.hooks).unwrap_or_default());
        }
        self.commit(Append::changes(vec![rows::insert_context(&row)], vec![event])).await?;
        self.context_view(&new.name).await
    }

    /// Every context.
    pub async fn contexts(&self) -> Result<Vec<ContextView>, ContextError> {
        let mut views = Vec::new();
        for row in self.store.contexts().await? {
            views.push(self.view_of(row).await?);
        }
        Ok(views)
    }

    /// The context `name`.
    pub async fn context_view(&self, name: &str) -> Result<ContextView, ContextError> {
        let row = self.store.context(name).await?.ok_or_else(|| ContextError::UnknownContext(name.to_owned()))?;
        self.view_of(row).await
    }

    async fn view_of(&self, row: ContextRow) -> Result<ContextView, ContextError> {
        let owner = format!("context:{}", row.name);
        Ok(ContextView {
            stacks: self.store.context_stacks(&row.name).await?,
            variables: self.store.variables(&owner).await?.into_iter().map(variable_view).collect(),
            autoattach: serde_json::from_str(&row.autoattach).unwrap_or_default(),
            hooks: serde_json::from_str(&row.hooks).unwrap_or_default(),
            name: row.name,
            description: row.description,
            priority: row.priority,
            created_at: row.created_at,
            created_by: row.created_by,
        })
    }

    /// Deletes a context, its variables and its attachments.
    pub async fn delete_context(&self, name: &str, who: &str, caller: Context) -> Result<(), ContextError> {
        self.store.context(name).await?.ok_or_else(|| ContextError::UnknownContext(name.to_owned()))?;
        let event =
            AuditEvent::new(Kind::ContextChanged, self.clock.now(), Context { actor: Some(who.to_owned()), ..caller })
                .with("context", name)
                .with("change", "deleted")
                .with_ref("context", name);
        self.commit(Append::changes(rows::delete_context(name), vec![event])).await?;
        Ok(())
    }

    /// The owner string of a context or stack, checked to exist.
    pub async fn variable_owner(&self, owner: Owner<'_>) -> Result<String, ContextError> {
        match owner {
            Owner::Context(name) => {
                self.store.context(name).await?.ok_or_else(|| ContextError::UnknownContext(name.to_owned()))?;
                Ok(format!("context:{name}"))
            }
            Owner::Stack(name) => {
                self.store.stack(name).await?.ok_or_else(|| RunError::UnknownStack(name.to_owned()))?;
                Ok(format!("stack:{name}"))
            }
        }
    }

    /// Sets `new` on `owner` (sealed when secret): its next version. A file's path is checked
    /// first, and a second file of the same owner at the same path is refused.
    pub async fn set_variable(
        &self,
        owner: Owner<'_>,
        new: NewVariable<'_>,
        who: &str,
        caller: Context,
    ) -> Result<VariableView, ContextError> {
        check_variable_name(new.name)?;
        if let Some(path) = new.file {
            keyward_proto::mount::check(path).map_err(|e| ContextError::Invalid(e.to_string()))?;
        }
        check_value(new.value, new.file.is_some())?;
        let owner = self.variable_owner(owner).await?;
        let siblings = self.store.variables(&owner).await?;
        let existing = siblings.iter().find(|v| v.name == new.name);
        if existing.is_none() && siblings.len() >= MAX_VARIABLES {
            return Err(ContextError::Invalid(format!("{owner} has {MAX_VARIABLES} variables already")));
        }
        if let Some(path) = new.file
            && let Some(other) = siblings.iter().find(|v| v.name != new.name && v.mount_path.as_deref() == Some(path))
        {
            return Err(ContextError::Invalid(format!(
                "{owner} already mounts `{path}` as `{}`; unset that one first or choose another path",
                other.name
            )));
        }
        let version = existing.map_or(1, |v| v.version + 1);
        let row = self.variable_row(&owner, new, version, who);
        let event = variable_event(&owner, new.name, "set", Some(&row), who, caller, row.set_at);
        self.commit(Append::changes(vec![rows::set_variable(&row)], vec![event])).await?;
        Ok(variable_view(row))
    }

    /// The row `new` is stored as: its value sealed when secret.
    fn variable_row(&self, owner: &str, new: NewVariable<'_>, version: i64, who: &str) -> VariableRow {
        let sha256 = digest::digest(&digest::SHA256, new.value.as_bytes()).as_ref().to_vec();
        let value = if new.secret {
            self.kek.seal(&seal_context(owner, new.name, version, &sha256, new.file), new.value.as_bytes())
        } else {
            new.value.as_bytes().to_vec()
        };
        VariableRow {
            owner: owner.to_owned(),
            name: new.name.to_owned(),
            secret: new.secret,
            version,
            value,
            sha256,
            mount_path: new.file.map(str::to_owned),
            set_by: who.to_owned(),
            set_at: self.clock.now(),
        }
    }

    /// Removes variable `name` of `owner`.
    pub async fn unset_variable(
        &self,
        owner: Owner<'_>,
        name: &str,
        who: &str,
        caller: Context,
    ) -> Result<(), ContextError> {
        let owner = self.variable_owner(owner).await?;
        if self.store.variable(&owner, name).await?.is_none() {
            return Err(ContextError::UnknownVariable { owner, name: name.to_owned() });
        }
        let event = variable_event(&owner, name, "unset", None, who, caller, self.clock.now());
        self.commit(Append::changes(vec![rows::unset_variable(&owner, name)], vec![event])).await?;
        Ok(())
    }

    /// Attaches (`attach`) or detaches context `context` to or from `stack`.
    pub async fn attach_context(
        &self,
        context: &str,
        stack: &str,
        attach: bool,
        who: &str,
        caller: Context,
    ) -> Result<ContextView, ContextError> {
        self.store.context(context).await?.ok_or_else(|| ContextError::UnknownContext(context.to_owned()))?;
        self.store.stack(stack).await?.ok_or_else(|| RunError::UnknownStack(stack.to_owned()))?;
        let now = self.clock.now();
        let write = if attach { rows::attach(context, stack, who, now) } else { rows::detach(context, stack) };
        let event = AuditEvent::new(
            Kind::ContextChanged,
            now,
            Context { actor: Some(who.to_owned()), stack_id: Some(stack.to_owned()), ..caller },
        )
        .with("context", context)
        .with("change", if attach { "attached" } else { "detached" })
        .with("stack", stack)
        .with_ref("context", context)
        .with_ref("stack", stack);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        self.context_view(context).await
    }

    /// What policies see of `stack`'s variables: each one's name, whether it is secret and where
    /// it comes from; never a value.
    pub async fn variable_names(&self, stack: &super::Stack) -> Result<Value, ContextError> {
        let names: Vec<Value> = self
            .resolve_variables(stack)
            .await?
            .iter()
            .map(|v| serde_json::json!({ "name": v.name, "secret": v.secret, "from": v.owner, "file": v.mount_path }))
            .collect();
        Ok(Value::Array(names))
    }

    /// The contexts `stack`'s jobs get: attached by name or by label, in the order their
    /// variables and hooks apply (priority, then name).
    pub(super) async fn stack_contexts(&self, stack: &super::Stack) -> Result<Vec<ContextRow>, StoreError> {
        let attached = self.store.attached_contexts(&stack.spec.name).await?;
        let mut contexts: Vec<ContextRow> = self
            .store
            .contexts()
            .await?
            .into_iter()
            .filter(|context| {
                let labels: BTreeMap<String, String> = serde_json::from_str(&context.autoattach).unwrap_or_default();
                let auto = !labels.is_empty() && labels.iter().all(|(k, v)| stack.spec.labels.get(k) == Some(v));
                auto || attached.contains(&context.name)
            })
            .collect();
        contexts.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        Ok(contexts)
    }

    /// The variables a job of `stack` gets, still sealed: the attached and auto-attached
    /// contexts' in priority order, then the stack's own ([`choose`]).
    async fn resolve_variables(&self, stack: &super::Stack) -> Result<Vec<VariableRow>, ContextError> {
        let mut owners: Vec<String> =
            self.stack_contexts(stack).await?.into_iter().map(|c| format!("context:{}", c.name)).collect();
        owners.push(format!("stack:{}", stack.spec.name));
        let mut layers = Vec::with_capacity(owners.len());
        for owner in &owners {
            layers.push(self.store.variables(owner).await?);
        }
        Ok(choose(layers))
    }

    /// The variables `held`'s job gets, opened, in the order they apply, and the audit entry
    /// saying which (names, versions, where from; never values) it received.
    pub async fn job_variables(&self, held: &HeldJob) -> Result<Vec<JobVariable>, ContextError> {
        let stack = &held.stack;
        let chosen = self.resolve_variables(stack).await?;
        let mut delivered = Vec::with_capacity(chosen.len());
        let mut record = Vec::with_capacity(chosen.len());
        for variable in chosen {
            record.push(serde_json::json!({
                "name": variable.name, "version": variable.version, "secret": variable.secret, "from": variable.owner,
                "file": variable.mount_path,
            }));
            delivered.push(self.open_variable(variable)?);
        }
        let now = self.clock.now();
        let context = run_context(
            &held.run,
            stack,
            held.job.phase,
            &format!("agent:{}", held.job.agent_id.as_deref().unwrap_or_default()),
            Context::default(),
        );
        let event = AuditEvent::new(Kind::JobVariablesIssued, now, context)
            .with("job_id", held.job.id.as_str())
            .with("variables", record)
            .with_ref("job", &held.job.id);
        self.commit(Append::changes(vec![held.lease_guard(now)], vec![event])).await?;
        Ok(delivered)
    }

    fn open_variable(&self, variable: VariableRow) -> Result<JobVariable, ContextError> {
        let value = if variable.secret {
            let file = variable.mount_path.as_deref();
            let context = seal_context(&variable.owner, &variable.name, variable.version, &variable.sha256, file);
            let opened = self.kek.open(&context, &variable.value).map_err(|e| {
                ContextError::Invalid(format!("variable {} of {} cannot be opened: {e}", variable.name, variable.owner))
            })?;
            Zeroizing::new(String::from_utf8_lossy(&opened).into_owned())
        } else {
            Zeroizing::new(String::from_utf8_lossy(&variable.value).into_owned())
        };
        Ok(JobVariable { name: variable.name, value, secret: variable.secret, file: variable.mount_path })
    }
}

/// Whose variable: a context's or a stack's own.
#[derive(Debug, Clone, Copy)]
pub enum Owner<'a> {
    /// A context's.
    Context(&'a str),
    /// A stack's own (overrides every context).
    Stack(&'a str),
}

/// Of `layers` (each owner's variables, in the order they apply), what a job gets: by name, a
/// later layer's replacing an earlier one's; then of the files that mount the same path, the one
/// of the latest layer (within one layer, the last by name). By name.
fn choose(layers: Vec<Vec<VariableRow>>) -> Vec<VariableRow> {
    let mut by_name: BTreeMap<String, (usize, VariableRow)> = BTreeMap::new();
    for (rank, layer) in layers.into_iter().enumerate() {
        for variable in layer {
            by_name.insert(variable.name.clone(), (rank, variable));
        }
    }
    let mut by_path: BTreeMap<String, (usize, String)> = BTreeMap::new();
    for (rank, variable) in by_name.values() {
        if let Some(path) = &variable.mount_path
            && by_path.get(path).is_none_or(|(seen, _)| seen <= rank)
        {
            by_path.insert(path.clone(), (*rank, variable.name.clone()));
        }
    }
    by_name
        .into_values()
        .map(|(_, variable)| variable)
        .filter(|v| v.mount_path.as_ref().is_none_or(|path| by_path.get(path).is_some_and(|(_, n)| *n == v.name)))
        .collect()
}

fn variable_view(row: VariableRow) -> VariableView {
    VariableView {
        value: (!row.secret).then(|| String::from_utf8_lossy(&row.value).into_owned()),
        sha256_prefix: hex(&row.sha256).chars().take(8).collect(),
        file: row.mount_path,
        name: row.name,
        secret: row.secret,
        version: row.version,
        set_by: row.set_by,
        set_at: row.set_at,
    }
}

/// `context.changed` for a variable set (`row`: its version, whether secret, its mount path;
/// never the value) or unset.
fn variable_event(
    owner: &str,
    name: &str,
    change: &str,
    row: Option<&VariableRow>,
    who: &str,
    caller: Context,
    now: i64,
) -> AuditEvent {
    let mut event = AuditEvent::new(Kind::ContextChanged, now, Context { actor: Some(who.to_owned()), ..caller })
        .with("owner", owner)
        .with("variable", name)
        .with("change", change)
        .with_ref("variables", owner);
    if let Some(row) = row {
        event = event.with("version", row.version).with("secret", row.secret);
        if let Some(path) = &row.mount_path {
            event = event.with("file", path.as_str());
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_are_environment_names_and_not_the_agents_own() {
        for good in ["TF_VAR_db_password", "_x", "A1"] {
            assert!(check_variable_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "PATH", "KEYWARD_JOB_ID", "TF_HTTP_PASSWORD", "HOME"] {
            assert!(check_variable_name(bad).is_err(), "{bad}");
        }
        assert!(check_value(&"x".repeat(MAX_VALUE), false).is_ok());
        assert!(check_value(&"x".repeat(MAX_VALUE + 1), false).is_err());
        assert!(check_value(&"x".repeat(MAX_VALUE + 1), true).is_err());
        assert!(check_value("a\0b", false).is_err());
        assert!(check_value("a\0b", true).is_ok(), "a file may hold a NUL");
    }

    #[test]
    fn a_sealed_value_is_bound_to_its_owner_name_version_and_path() {
        let sealed = |owner, name, version, file| seal_context(owner, name, version, &[0; 32], file);
        let env = sealed("context:a", "X", 1, None);
        assert_ne!(env, sealed("context:b", "X", 1, None));
        assert_ne!(env, sealed("context:a", "Y", 1, None));
        assert_ne!(env, sealed("context:a", "X", 2, None));
        assert_ne!(env, sealed("context:a", "X", 1, Some("x.pem")));
        assert_ne!(sealed("context:a", "X", 1, Some("x.pem")), sealed("context:a", "X", 1, Some("y.pem")));
        let before_files = format!("keyward variable v1\0context:a\0X\0{}\0{}", 1, hex(&[0; 32]));
        assert_eq!(env, before_files.into_bytes(), "unchanged for variables: values sealed before files still open");
    }

    fn row(owner: &str, name: &str, file: Option<&str>) -> VariableRow {
        VariableRow {
            owner: owner.into(),
            name: name.into(),
            secret: false,
            version: 1,
            value: Vec::new(),
            sha256: Vec::new(),
            mount_path: file.map(str::to_owned),
            set_by: "admin".into(),
            set_at: 0,
        }
    }

    #[test]
    fn a_later_owner_wins_by_name_and_by_mounted_path() {
        let base = vec![row("context:base", "A", None), row("context:base", "CERT", Some("tls/cert.pem"))];
        let secrets = vec![
            row("context:secrets", "A", Some("a.txt")),
            row("context:secrets", "KEY", Some("tls/key.pem")),
            row("context:secrets", "OWN_CERT", Some("tls/cert.pem")),
        ];
        let stack = vec![row("stack:app", "B", None), row("stack:app", "STACK_KEY", Some("tls/key.pem"))];
        let chosen: Vec<String> = choose(vec![base, secrets, stack])
            .iter()
            .map(|v| format!("{}:{}:{}", v.owner, v.name, v.mount_path.as_deref().unwrap_or("-")))
            .collect();
        assert_eq!(
            chosen,
            [
                // A: the later context's, which made it a file; CERT lost its path to OWN_CERT,
                // KEY its path to the stack's own.
                "context:secrets:A:a.txt",
                "stack:app:B:-",
                "context:secrets:OWN_CERT:tls/cert.pem",
                "stack:app:STACK_KEY:tls/key.pem",
            ]
        );
        let same_layer = vec![row("stack:app", "X", Some("p")), row("stack:app", "Y", Some("p"))];
        let chosen = choose(vec![same_layer]);
        assert_eq!(chosen.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["Y"], "the last by name");
    }
}
