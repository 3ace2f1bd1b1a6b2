//! Role checks on a resource's space (docs/access.md, "Spaces and roles").
//!
//! A handler whose resource belongs to a space (a stack, a run through its stack, a pool, an
//! agent through its pool, a space itself) takes its caller through [`Scoped`] (holds the role
//! somewhere), then asks a [`Guard`] about the resource's space. What a caller may not even view
//! is answered exactly like a resource that does not exist (404, same message), so a caller
//! learns nothing about other spaces; what it may view but not change is 403 and says which role
//! it would need. Every other route keeps [`Authorized`](super::extract::Authorized), which needs
//! the role on `root`.

use std::collections::HashMap;

use super::AppState;
use super::error::ApiError;
use crate::access::{Operator, Permission};
use crate::roles::SpaceTree;

/// The caller and the space tree as of this request.
#[derive(Debug)]
pub(super) struct Guard {
    /// Who is asking.
    pub(super) operator: Operator,
    tree: SpaceTree,
}

impl Guard {
    /// A guard for `operator`, reading the current tree.
    pub(super) async fn new(state: &AppState, operator: Operator) -> Result<Self, ApiError> {
        let tree = crate::spaces::tree(&state.store).await.map_err(|e| ApiError::store(&e))?;
        Ok(Self { operator, tree })
    }

    /// Whether the caller holds `permission` in `space`.
    pub(super) fn may(&self, permission: Permission, space: &str) -> bool {
        self.tree.role_of(&self.operator.grants, space).is_some_and(|held| held >= permission.role())
    }

    /// Succeeds if the caller holds `permission` in `space`. One that may not view the space
    /// gets `hidden()` (the resource's own not-found error); one that may view it gets 403.
    pub(super) fn require(
        &self,
        permission: Permission,
        space: &str,
        hidden: impl FnOnce() -> ApiError,
    ) -> Result<(), ApiError> {
        if !self.may(Permission::ReadRuns, space) {
            return Err(hidden());
        }
        let chain = self.tree.chain(space).unwrap_or_default();
        Ok(self.operator.require_in(permission, &chain)?)
    }

    /// For something created in `space`: the space must exist (400) and the caller hold
    /// `permission` there (403, or 400 as if unknown when it may not even view it).
    pub(super) fn require_to_create(&self, permission: Permission, space: &str) -> Result<(), ApiError> {
        let unknown = || ApiError::invalid_request(format!("unknown space `{space}`"));
        if !self.tree.contains(space) {
            return Err(unknown());
        }
        self.require(permission, space, unknown)
    }

    /// The tree.
    pub(super) fn tree(&self) -> &SpaceTree {
        &self.tree
    }
}

/// Each stack's space, to filter lists of runs and audit entries.
pub(super) async fn stack_spaces(state: &AppState) -> Result<HashMap<String, String>, ApiError> {
    let stacks = state.runs.stacks().await?;
    Ok(stacks.into_iter().map(|stack| (stack.spec.name, stack.spec.space)).collect())
}

/// The space of the stack `name` (the stack's not-found error if there is none).
pub(super) async fn stack_space(state: &AppState, name: &str) -> Result<String, ApiError> {
    Ok(state.runs.stack(name).await?.spec.space)
}

/// The space of the pool `name`.
pub(super) async fn pool_space(state: &AppState, name: &str) -> Result<String, ApiError> {
    let pool = state.store.pool(name).await.map_err(|e| ApiError::store(&e))?;
    pool.map(|p| p.space).ok_or_else(|| crate::agents::AgentError::UnknownPool(name.to_owned()).into())
}
