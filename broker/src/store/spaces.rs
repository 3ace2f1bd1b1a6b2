//! Rows of the `spaces` and `role_bindings` tables: the space tree and who holds which role
//! where. Writes are guarded [`Write`]s that commit with their audit entries.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::write::Write;
use super::{Store, StoreError};

/// A stored space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceRow {
    /// Unique name.
    pub name: String,
    /// Its parent; `None` only for `root`.
    pub parent: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// A stored role binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRow {
    /// Random ID.
    pub id: String,
    /// The space.
    pub space: String,
    /// `viewer`, `submitter`, `reviewer` or `admin`.
    pub role: String,
    /// The group it binds, or `None`.
    pub group: Option<String>,
    /// The subject it binds, or `None`.
    pub subject: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Who bound it.
    pub created_by: String,
}

/// What a space holds, each of which keeps it from being deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceContents {
    /// Its stacks.
    pub stacks: i64,
    /// Its pools.
    pub pools: i64,
    /// Spaces whose parent it is.
    pub children: i64,
    /// Role bindings on it.
    pub bindings: i64,
    /// API tokens that belong to it (revoked ones too: their records name it).
    pub tokens: i64,
}

fn space_from(row: &AnyRow) -> Result<SpaceRow, StoreError> {
    Ok(SpaceRow {
        name: row.try_get("name")?,
        parent: row.try_get("parent")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn binding_from(row: &AnyRow) -> Result<BindingRow, StoreError> {
    Ok(BindingRow {
        id: row.try_get("id")?,
        space: row.try_get("space")?,
        role: row.try_get("role")?,
        group: row.try_get("group_name")?,
        subject: row.try_get("subject")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

impl Store {
    /// Every space, by name.
    pub async fn spaces(&self) -> Result<Vec<SpaceRow>, StoreError> {
        let rows = sqlx::query("SELECT name, parent, created_at, created_by FROM spaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(space_from).collect()
    }

    /// Every role binding, or those of one space, oldest first.
    pub async fn role_bindings(&self, space: Option<&str>) -> Result<Vec<BindingRow>, StoreError> {
        let query = match space {
            Some(space) => sqlx::query(
                "SELECT id, space, role, group_name, subject, created_at, created_by FROM role_bindings \
                 WHERE space = $1 ORDER BY created_at, id",
            )
            .bind(space.to_owned()),
            None => sqlx::query(
                "SELECT id, space, role, group_name, subject, created_at, created_by FROM role_bindings \
                 ORDER BY created_at, id",
            ),
        };
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(binding_from).collect()
    }

    /// What `space` holds.
    pub async fn space_contents(&self, space: &str) -> Result<SpaceContents, StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM stacks WHERE space = $1) AS stacks, \
                    (SELECT COUNT(*) FROM pools WHERE space = $1) AS pools, \
                    (SELECT COUNT(*) FROM spaces WHERE parent = $1) AS children, \
                    (SELECT COUNT(*) FROM role_bindings WHERE space = $1) AS bindings, \
                    (SELECT COUNT(*) FROM api_tokens WHERE space = $1) AS tokens",
        )
        .bind(space)
        .fetch_one(&self.pool)
        .await?;
        Ok(SpaceContents {
            stacks: row.try_get("stacks")?,
            pools: row.try_get("pools")?,
            children: row.try_get("children")?,
            bindings: row.try_get("bindings")?,
            tokens: row.try_get("tokens")?,
        })
    }
}

/// Creates `space` under its parent (the name is unique; the parent must exist).
pub fn insert_space(space: &SpaceRow) -> Write {
    Write::one(
        format!("space `{}`", space.name),
        "INSERT INTO spaces (name, parent, created_at, created_by) \
         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM spaces WHERE name = $2)",
        vec![
            space.name.as_str().into(),
            space.parent.clone().into(),
            space.created_at.into(),
            space.created_by.as_str().into(),
        ],
    )
}

/// Deletes the space `name` if it is not `root` and holds nothing (see [`SpaceContents`]).
pub fn delete_space(name: &str) -> Write {
    Write::one(
        format!("empty space `{name}`"),
        "DELETE FROM spaces WHERE name = $1 AND parent IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM stacks WHERE space = $1) \
         AND NOT EXISTS (SELECT 1 FROM pools WHERE space = $1) \
         AND NOT EXISTS (SELECT 1 FROM spaces c WHERE c.parent = $1) \
         AND NOT EXISTS (SELECT 1 FROM role_bindings WHERE space = $1) \
         AND NOT EXISTS (SELECT 1 FROM api_tokens WHERE space = $1)",
        vec![name.into()],
    )
}

/// Stores a binding (a duplicate is refused by the unique index).
pub fn insert_binding(binding: &BindingRow) -> Write {
    Write::one(
        format!("binding of `{}` in space `{}`", binding.role, binding.space),
        "INSERT INTO role_bindings (id, space, role, group_name, subject, created_at, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        vec![
            binding.id.as_str().into(),
            binding.space.as_str().into(),
            binding.role.as_str().into(),
            binding.group.clone().into(),
            binding.subject.clone().into(),
            binding.created_at.into(),
            binding.created_by.as_str().into(),
        ],
    )
}

/// Removes the binding of `role` in `space` to `group` or `subject` (exactly one is set).
pub fn delete_binding(space: &str, role: &str, group: Option<&str>, subject: Option<&str>) -> Write {
    Write::one(
        format!("binding of `{role}` in space `{space}`"),
        "DELETE FROM role_bindings WHERE space = $1 AND role = $2 \
         AND COALESCE(group_name, '') = $3 AND COALESCE(subject, '') = $4",
        vec![space.into(), role.into(), group.unwrap_or_default().into(), subject.unwrap_or_default().into()],
    )
}
