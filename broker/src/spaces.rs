//! Spaces: the tree stacks and pools belong to, and the role bindings that say who may do what in
//! each (docs/access.md, "Spaces and roles").
//!
//! `root` always exists and cannot be deleted. A space's parent is fixed when it is created and
//! must exist then, so the tree never has a loop. A space is deleted only while it holds nothing
//! (stacks, pools, child spaces, bindings, API tokens), checked again by the delete itself so a
//! concurrent create cannot slip in. Every change commits with its audit entry.

use serde::Serialize;

use crate::audit::{Append, AuditEvent, AuditLog, ChangeError, Context, Kind};
use crate::clock::SharedClock;
use crate::roles::{Binding, Grants, ROOT, Role, SpaceTree, UnknownRole, person_grants};
use crate::store::spaces::{self as rows, BindingRow, SpaceContents, SpaceRow};
use crate::store::{Store, StoreError};

/// Why a space or binding change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// A name that is not acceptable.
    #[error("invalid space name `{0}`: use 1-63 of a-z, 0-9, `-`, `_`, `.`, starting with a letter or digit")]
    InvalidName(String),
    /// No such space.
    #[error("unknown space `{0}`")]
    Unknown(String),
    /// `root` is permanent.
    #[error("the `root` space cannot be deleted")]
    Root,
    /// The space still holds something.
    #[error("space `{space}` is not empty: it has {what}; move or delete them first")]
    NotEmpty {
        /// The space.
        space: String,
        /// What it holds, e.g. "2 stacks, 1 child space".
        what: String,
    },
    /// A binding names neither a group nor a subject, or both.
    #[error("a binding names exactly one of a group or a subject")]
    BindingIdentity,
    /// A group or subject that is empty, too long or not printable.
    #[error("invalid {0}: 1-256 printable characters")]
    BindingValue(&'static str),
    /// A role name that does not exist.
    #[error(transparent)]
    UnknownRole(#[from] UnknownRole),
    /// No such binding.
    #[error("space `{space}` has no such binding of `{role}`")]
    UnknownBinding {
        /// The space.
        space: String,
        /// The role.
        role: Role,
    },
    /// The row change was refused (duplicate name or binding, a concurrent change).
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A space as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpaceView {
    /// Name.
    pub name: String,
    /// Parent (`None` for `root`).
    pub parent: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

impl From<SpaceRow> for SpaceView {
    fn from(row: SpaceRow) -> Self {
        Self { name: row.name, parent: row.parent, created_at: row.created_at, created_by: row.created_by }
    }
}

/// The space tree as stored now.
pub async fn tree(store: &Store) -> Result<SpaceTree, StoreError> {
    Ok(SpaceTree::new(store.spaces().await?.into_iter().map(|row| (row.name, row.parent))))
}

/// Every binding, decoded (a row with an unknown role is corrupt).
pub async fn bindings(store: &Store) -> Result<Vec<Binding>, StoreError> {
    store.role_bindings(None).await?.into_iter().map(binding).collect()
}

fn binding(row: BindingRow) -> Result<Binding, StoreError> {
    let role = row.role.parse().map_err(|e: UnknownRole| StoreError::Corrupt(format!("role_bindings.role: {e}")))?;
    Ok(Binding { space: row.space, role, group: row.group, subject: row.subject })
}

/// Space names follow stack names.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// What a space's contents say when they keep it from being deleted; `None` when empty.
fn contents_text(contents: SpaceContents) -> Option<String> {
    let parts: Vec<String> = [
        (contents.stacks, "stack"),
        (contents.pools, "pool"),
        (contents.children, "child space"),
        (contents.bindings, "role binding"),
        (contents.tokens, "API token"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}{}", if n == 1 { "" } else { "s" }))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Whom a binding is for: a group or a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bindee {
    /// An identity provider's group.
    Group(String),
    /// A person, `issuer#subject`.
    Subject(String),
}

impl Bindee {
    /// From the request's `group` and `subject`: exactly one must be set, and printable.
    pub fn new(group: Option<String>, subject: Option<String>) -> Result<Self, SpaceError> {
        let ok = |v: &str| (1..=256).contains(&v.len()) && !v.chars().any(char::is_control);
        match (group, subject) {
            (Some(group), None) if ok(&group) => Ok(Self::Group(group)),
            (None, Some(subject)) if ok(&subject) => Ok(Self::Subject(subject)),
            (Some(_), None) => Err(SpaceError::BindingValue("group")),
            (None, Some(_)) => Err(SpaceError::BindingValue("subject")),
            _ => Err(SpaceError::BindingIdentity),
        }
    }

    fn parts(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::Group(group) => (Some(group), None),
            Self::Subject(subject) => (None, Some(subject)),
        }
    }
}

/// Creates, deletes and binds spaces.
#[derive(Debug, Clone)]
pub struct Spaces {
    store: Store,
    audit: AuditLog,
    clock: SharedClock,
}

impl Spaces {
    /// Spaces over `store`, recorded in `audit`.
    pub fn new(store: Store, audit: AuditLog, clock: SharedClock) -> Self {
        Self { store, audit, clock }
    }

    /// The current tree.
    pub async fn tree(&self) -> Result<SpaceTree, StoreError> {
        tree(&self.store).await
    }

    /// Every space, by name.
    pub async fn list(&self) -> Result<Vec<SpaceView>, SpaceError> {
        Ok(self.store.spaces().await?.into_iter().map(SpaceView::from).collect())
    }

    /// The space `name`.
    pub async fn get(&self, name: &str) -> Result<SpaceView, SpaceError> {
        let found = self.store.spaces().await?.into_iter().find(|row| row.name == name);
        found.map(SpaceView::from).ok_or_else(|| SpaceError::Unknown(name.to_owned()))
    }

    /// What `person` holds: the bindings of their `issuer#subject` and of their groups.
    pub async fn grants_of(&self, person: &crate::access::Person) -> Result<Grants, SpaceError> {
        Ok(person_grants(&person.id(), &person.groups, &bindings(&self.store).await?))
    }

    /// The bindings on `space`.
    pub async fn bindings_of(&self, space: &str) -> Result<Vec<Binding>, SpaceError> {
        Ok(self.store.role_bindings(Some(space)).await?.into_iter().map(binding).collect::<Result<_, _>>()?)
    }

    /// Creates `name` under `parent`.
    pub async fn create(&self, name: &str, parent: &str, who: &str, caller: Context) -> Result<SpaceView, SpaceError> {
        if !valid_name(name) {
            return Err(SpaceError::InvalidName(name.to_owned()));
        }
        if !self.tree().await?.contains(parent) {
            return Err(SpaceError::Unknown(parent.to_owned()));
        }
        let row = SpaceRow {
            name: name.to_owned(),
            parent: Some(parent.to_owned()),
            created_at: self.clock.now(),
            created_by: who.to_owned(),
        };
        let event = AuditEvent::new(Kind::SpaceCreated, row.created_at, crate::audit::events::by(who, caller))
            .with("space", name)
            .with("parent", parent)
            .with_ref("space", name);
        self.commit(Append::changes(vec![rows::insert_space(&row)], vec![event])).await?;
        Ok(row.into())
    }

    /// Deletes the empty space `name`; says what it holds otherwise.
    pub async fn delete(&self, name: &str, who: &str, caller: Context) -> Result<(), SpaceError> {
        if name == ROOT {
            return Err(SpaceError::Root);
        }
        if !self.tree().await?.contains(name) {
            return Err(SpaceError::Unknown(name.to_owned()));
        }
        if let Some(what) = contents_text(self.store.space_contents(name).await?) {
            return Err(SpaceError::NotEmpty { space: name.to_owned(), what });
        }
        let event = AuditEvent::new(Kind::SpaceDeleted, self.clock.now(), crate::audit::events::by(who, caller))
            .with("space", name)
            .with_ref("space", name);
        self.commit(Append::changes(vec![rows::delete_space(name)], vec![event])).await
    }

    /// Binds `role` in `space` to `bindee`.
    pub async fn bind(
        &self,
        space: &str,
        role: Role,
        bindee: &Bindee,
        who: &str,
        caller: Context,
    ) -> Result<Binding, SpaceError> {
        if !self.tree().await?.contains(space) {
            return Err(SpaceError::Unknown(space.to_owned()));
        }
        let (group, subject) = bindee.parts();
        let row = BindingRow {
            id: uuid::Uuid::now_v7().to_string(),
            space: space.to_owned(),
            role: role.as_str().to_owned(),
            group: group.map(str::to_owned),
            subject: subject.map(str::to_owned),
            created_at: self.clock.now(),
            created_by: who.to_owned(),
        };
        let event = binding_event(Kind::RoleBound, row.created_at, who, caller, space, role, bindee);
        self.commit(Append::changes(vec![rows::insert_binding(&row)], vec![event])).await?;
        Ok(binding(row)?)
    }

    /// Removes the binding of `role` in `space` to `bindee`.
    pub async fn unbind(
        &self,
        space: &str,
        role: Role,
        bindee: &Bindee,
        who: &str,
        caller: Context,
    ) -> Result<(), SpaceError> {
        let (group, subject) = bindee.parts();
        let exists = self
            .bindings_of(space)
            .await?
            .into_iter()
            .any(|b| b.role == role && b.group.as_deref() == group && b.subject.as_deref() == subject);
        if !exists {
            return Err(SpaceError::UnknownBinding { space: space.to_owned(), role });
        }
        let event = binding_event(Kind::RoleUnbound, self.clock.now(), who, caller, space, role, bindee);
        let write = rows::delete_binding(space, role.as_str(), group, subject);
        self.commit(Append::changes(vec![write], vec![event])).await
    }

    async fn commit(&self, append: Append) -> Result<(), SpaceError> {
        Ok(self.audit.append(append).await?.into_change()?)
    }
}

fn binding_event(
    kind: Kind,
    at: i64,
    who: &str,
    caller: Context,
    space: &str,
    role: Role,
    bindee: &Bindee,
) -> AuditEvent {
    let event = AuditEvent::new(kind, at, crate::audit::events::by(who, caller))
        .with("space", space)
        .with("role", role.as_str());
    let event = match bindee {
        Bindee::Group(group) => event.with("group", group.as_str()),
        Bindee::Subject(subject) => event.with("subject", subject.as_str()),
    };
    event.with_ref("space", space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_say_what_keeps_a_space() {
        assert_eq!(contents_text(SpaceContents::default()), None);
        let full = SpaceContents { stacks: 2, pools: 0, children: 1, bindings: 0, tokens: 1 };
        assert_eq!(contents_text(full).as_deref(), Some("2 stacks, 1 child space, 1 API token"));
    }

    #[test]
    fn a_binding_names_exactly_one_identity() {
        assert_eq!(Bindee::new(Some("devs".into()), None).ok(), Some(Bindee::Group("devs".into())));
        assert!(matches!(Bindee::new(None, None), Err(SpaceError::BindingIdentity)));
        assert!(matches!(Bindee::new(Some("a".into()), Some("b".into())), Err(SpaceError::BindingIdentity)));
        assert!(matches!(Bindee::new(Some(String::new()), None), Err(SpaceError::BindingValue("group"))));
        assert!(!valid_name("Payments") && valid_name("payments") && !valid_name("-x"));
    }
}
