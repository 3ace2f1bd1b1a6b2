//! Rows of contexts, variables and attachments (migrations 0016 and 0018: mounted files, context
//! hooks): reads, and the guarded writes that commit with their audit entries.

use sqlx::Row as _;

use super::write::Write;
use super::{Store, StoreError};

/// A context as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRow {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// JSON object of label -> value.
    pub autoattach: String,
    /// Lower first.
    pub priority: i64,
    /// JSON object of lifecycle hooks (point -> commands).
    pub hooks: String,
    /// When.
    pub created_at: i64,
    /// Who.
    pub created_by: String,
}

/// A variable as stored: its value plain, or sealed when secret.
#[derive(Clone, PartialEq, Eq)]
pub struct VariableRow {
    /// `context:<name>` or `stack:<name>`.
    pub owner: String,
    /// The environment variable's name.
    pub name: String,
    /// Whether the value is secret (sealed, never shown).
    pub secret: bool,
    /// 1, 2, … per (owner, name).
    pub version: i64,
    /// The value, or its sealed form.
    pub value: Vec<u8>,
    /// SHA-256 of the plain value.
    pub sha256: Vec<u8>,
    /// Where the agent writes the value as a file, relative to the stack's configuration
    /// directory; `None`: an environment variable.
    pub mount_path: Option<String>,
    /// Who set it.
    pub set_by: String,
    /// When.
    pub set_at: i64,
}

impl std::fmt::Debug for VariableRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VariableRow")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("secret", &self.secret)
            .field("version", &self.version)
            .field("mount_path", &self.mount_path)
            .finish_non_exhaustive()
    }
}

fn context_from(row: &sqlx::any::AnyRow) -> Result<ContextRow, StoreError> {
    Ok(ContextRow {
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        autoattach: row.try_get("autoattach")?,
        priority: row.try_get("priority")?,
        hooks: row.try_get("hooks")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn variable_from(row: &sqlx::any::AnyRow) -> Result<VariableRow, StoreError> {
    Ok(VariableRow {
        owner: row.try_get("owner")?,
        name: row.try_get("name")?,
        secret: row.try_get::<i64, _>("secret")? != 0,
        version: row.try_get("version")?,
        value: row.try_get("value")?,
        sha256: row.try_get("sha256")?,
        mount_path: row.try_get("mount_path")?,
        set_by: row.try_get("set_by")?,
        set_at: row.try_get("set_at")?,
    })
}

const CONTEXT_COLUMNS: &str = "name, description, autoattach, priority, hooks, created_at, created_by";
const VARIABLE_COLUMNS: &str = "owner, name, secret, version, value, sha256, mount_path, set_by, set_at";

impl Store {
    /// Every context, by priority then name.
    pub async fn contexts(&self) -> Result<Vec<ContextRow>, StoreError> {
        let sql = format!("SELECT {CONTEXT_COLUMNS} FROM contexts ORDER BY priority, name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(context_from).collect()
    }

    /// The context `name`.
    pub async fn context(&self, name: &str) -> Result<Option<ContextRow>, StoreError> {
        let sql = format!("SELECT {CONTEXT_COLUMNS} FROM contexts WHERE name = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(context_from).transpose()
    }

    /// The stacks `context` is attached to by name.
    pub async fn context_stacks(&self, context: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT stack FROM context_attachments WHERE context = $1 ORDER BY stack")
            .bind(context)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("stack")?)).collect()
    }

    /// The contexts attached to `stack` by name.
    pub async fn attached_contexts(&self, stack: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT context FROM context_attachments WHERE stack = $1")
            .bind(stack)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("context")?)).collect()
    }

    /// The variables of `owner`, by name.
    pub async fn variables(&self, owner: &str) -> Result<Vec<VariableRow>, StoreError> {
        let sql = format!("SELECT {VARIABLE_COLUMNS} FROM variables WHERE owner = $1 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner).fetch_all(&self.pool).await?;
        rows.iter().map(variable_from).collect()
    }

    /// The variable `name` of `owner`.
    pub async fn variable(&self, owner: &str, name: &str) -> Result<Option<VariableRow>, StoreError> {
        let sql = format!("SELECT {VARIABLE_COLUMNS} FROM variables WHERE owner = $1 AND name = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(variable_from).transpose()
    }
}

/// Creates `context` (a taken name is refused as a duplicate).
pub fn insert_context(context: &ContextRow) -> Write {
    Write::one(
        format!("context `{}`", context.name),
        "INSERT INTO contexts (name, description, autoattach, priority, hooks, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            context.name.as_str().into(),
            context.description.as_str().into(),
            context.autoattach.as_str().into(),
            context.priority.into(),
            context.hooks.as_str().into(),
            context.created_at.into(),
            context.created_by.as_str().into(),
        ],
    )
}

/// Sets context `name`'s hooks to `hooks`, if they are still `before` (two concurrent changes
/// cannot both apply to the same hooks: the second is refused, not lost).
pub fn set_context_hooks(name: &str, before: &str, hooks: &str) -> Write {
    Write::one(
        format!("the hooks of context `{name}` as read"),
        "UPDATE contexts SET hooks = $3 WHERE name = $1 AND hooks = $2",
        vec![name.into(), before.into(), hooks.into()],
    )
}

/// Deletes context `name` with its variables and attachments.
pub fn delete_context(name: &str) -> Vec<Write> {
    vec![
        Write::any(
            format!("the variables of context `{name}`"),
            "DELETE FROM variables WHERE owner = $1",
            vec![format!("context:{name}").into()],
        ),
        Write::any(
            format!("the attachments of context `{name}`"),
            "DELETE FROM context_attachments WHERE context = $1",
            vec![name.into()],
        ),
        Write::one(format!("context `{name}`"), "DELETE FROM contexts WHERE name = $1", vec![name.into()]),
    ]
}

/// Sets `variable` as version `variable.version`, if the stored version is still the one before.
pub fn set_variable(variable: &VariableRow) -> Write {
    Write::one(
        format!("variable {} of {} (version {})", variable.name, variable.owner, variable.version - 1),
        "INSERT INTO variables (owner, name, secret, version, value, sha256, set_by, set_at, mount_path) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 \
         WHERE COALESCE((SELECT version FROM variables WHERE owner = $1 AND name = $2), 0) = $4 - 1 \
         ON CONFLICT (owner, name) DO UPDATE SET secret = $3, version = $4, value = $5, sha256 = $6, \
         set_by = $7, set_at = $8, mount_path = $9",
        vec![
            variable.owner.as_str().into(),
            variable.name.as_str().into(),
            i64::from(variable.secret).into(),
            variable.version.into(),
            variable.value.clone().into(),
            variable.sha256.clone().into(),
            variable.set_by.as_str().into(),
            variable.set_at.into(),
            variable.mount_path.clone().into(),
        ],
    )
}

/// Removes the variable `name` of `owner`.
pub fn unset_variable(owner: &str, name: &str) -> Write {
    Write::one(
        format!("variable {name} of {owner}"),
        "DELETE FROM variables WHERE owner = $1 AND name = $2",
        vec![owner.into(), name.into()],
    )
}

/// Attaches `context` to `stack`.
pub fn attach(context: &str, stack: &str, by: &str, at: i64) -> Write {
    Write::one(
        format!("context `{context}` on stack `{stack}`"),
        "INSERT INTO context_attachments (context, stack, attached_at, attached_by) VALUES ($1, $2, $3, $4)",
        vec![context.into(), stack.into(), at.into(), by.into()],
    )
}

/// Detaches `context` from `stack`.
pub fn detach(context: &str, stack: &str) -> Write {
    Write::one(
        format!("context `{context}` on stack `{stack}`"),
        "DELETE FROM context_attachments WHERE context = $1 AND stack = $2",
        vec![context.into(), stack.into()],
    )
}
