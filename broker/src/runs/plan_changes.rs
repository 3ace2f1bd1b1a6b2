//! A saved plan's changes as people read them: each resource's address and what Terraform will
//! do to it, and what `keyward.plan` said. What a pull request's comment shows.
//!
//! Read from the stored plan JSON, whose sensitive values were redacted before it was stored;
//! only addresses and actions leave here, never a value.

use serde_json::Value;

use super::{RunError, Runs};
use crate::store::StoreError;

/// What Terraform will do to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    /// Create it.
    Create,
    /// Update it in place.
    Update,
    /// Destroy it.
    Delete,
    /// Destroy and create it again (either order).
    Replace,
}

impl ChangeAction {
    /// The action of Terraform's `change.actions`; `None` for no-op and read.
    fn of(actions: &[&str]) -> Option<Self> {
        match actions {
            ["create"] => Some(Self::Create),
            ["update"] => Some(Self::Update),
            ["delete"] => Some(Self::Delete),
            ["delete", "create"] | ["create", "delete"] => Some(Self::Replace),
            _ => None,
        }
    }

    /// Terraform's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "destroy",
            Self::Replace => "replace",
        }
    }
}

/// One resource's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceChange {
    /// Its address (`module.net.aws_vpc.main`).
    pub address: String,
    /// What happens to it.
    pub action: ChangeAction,
}

/// A saved plan's changes and the plan policy's messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanChanges {
    /// The resources that change, in the plan's order.
    pub changes: Vec<ResourceChange>,
    /// `keyward.plan`'s warnings.
    pub warnings: Vec<String>,
    /// `keyward.plan`'s denials.
    pub denials: Vec<String>,
}

impl PlanChanges {
    /// How many resources are created, updated, destroyed (a replacement counts as one created
    /// and one destroyed, as Terraform counts it).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |wanted: &[ChangeAction]| self.changes.iter().filter(|c| wanted.contains(&c.action)).count();
        (
            count(&[ChangeAction::Create, ChangeAction::Replace]),
            count(&[ChangeAction::Update]),
            count(&[ChangeAction::Delete, ChangeAction::Replace]),
        )
    }

    /// Reads the stored plan JSON and the policy's messages (JSON arrays of strings).
    fn read(run_id: &str, plan_json: &str, deny: &str, warn: &str) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str, e: serde_json::Error| StoreError::Corrupt(format!("run {run_id}'s plan {what}: {e}"));
        let plan: Value = serde_json::from_str(plan_json).map_err(|e| corrupt("JSON", e))?;
        let changes = plan
            .get("resource_changes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|change| {
                let address = change.get("address")?.as_str()?;
                let actions: Vec<&str> =
                    change.pointer("/change/actions")?.as_array()?.iter().filter_map(Value::as_str).collect();
                Some(ResourceChange { address: address.to_owned(), action: ChangeAction::of(&actions)? })
            })
            .collect();
        Ok(Self {
            changes,
            warnings: serde_json::from_str(warn).map_err(|e| corrupt("warnings", e))?,
            denials: serde_json::from_str(deny).map_err(|e| corrupt("denials", e))?,
        })
    }
}

impl Runs {
    /// The changes of `run_id`'s saved plan, if its plan job submitted one.
    pub async fn plan_changes(&self, run_id: &str) -> Result<Option<PlanChanges>, RunError> {
        let Some((plan_json, deny, warn)) = self.store.plan_json(run_id).await? else { return Ok(None) };
        Ok(Some(PlanChanges::read(run_id, &plan_json, &deny, &warn)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_keep_addresses_and_actions_and_skip_no_ops() -> Result<(), StoreError> {
        let plan = serde_json::json!({"resource_changes": [
            {"address": "terraform_data.a", "change": {"actions": ["create"], "after": {"input": "secret"}}},
            {"address": "terraform_data.b", "change": {"actions": ["no-op"]}},
            {"address": "terraform_data.c", "change": {"actions": ["delete", "create"]}},
            {"address": "terraform_data.d", "change": {"actions": ["update"]}},
            {"address": "terraform_data.e", "change": {"actions": ["delete"]}},
        ]});
        let read = PlanChanges::read("r", &plan.to_string(), "[]", r#"["look"]"#)?;
        let addresses: Vec<(&str, &str)> =
            read.changes.iter().map(|c| (c.address.as_str(), c.action.as_str())).collect();
        assert_eq!(
            addresses,
            [
                ("terraform_data.a", "create"),
                ("terraform_data.c", "replace"),
                ("terraform_data.d", "update"),
                ("terraform_data.e", "destroy")
            ]
        );
        assert_eq!(read.counts(), (2, 1, 2));
        assert_eq!(read.warnings, ["look"]);
        assert!(PlanChanges::read("r", "{", "[]", "[]").is_err());
        Ok(())
    }
}
