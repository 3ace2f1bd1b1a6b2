//! `keyward stack update` (`PATCH /v1/stacks/{name}`): change a stack's branch, pool, targets,
//! labels, drift schedule, remediation, managed state, hooks, scanners and trigger globs in place.
//!
//! Fields left out stay as they are; given lists replace; labels merge (RFC 7396: a value sets
//! the label, `null` removes it); hooks replace per point named, then `append_hooks` adds to the
//! end of each point. The stack after the update is checked exactly as a new stack is, and the
//! drift schedule is parsed, before anything is written: a refused update changes nothing. The write is guarded by the stack's version and commits with its `stack.updated`
//! entry, which names each field that changed, from what to what.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::cron::Schedule;
use super::drift::Remediation;
use super::hooks::{Hooks, HooksPatch};
use super::scans::Scanner;
use super::spec::{SpecError, Stack, StackSpec};
use super::tool::Tool;
use super::{RunError, Runs};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::store::{self, runs::StackChange};

/// What an update changes; every field is optional, and at least one must be given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackUpdate {
    /// The new default branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// The new worker pool (it must exist).
    #[serde(default)]
    pub pool: Option<String>,
    /// Replaces the plan-phase targets (read access only; `[]` clears them).
    #[serde(default)]
    pub plan_targets: Option<Vec<String>>,
    /// Replaces the apply-phase targets (`[]` clears them).
    #[serde(default)]
    pub apply_targets: Option<Vec<String>>,
    /// Merged into the labels: a value sets the label, `null` removes it.
    #[serde(default)]
    pub labels: BTreeMap<String, Option<String>>,
    /// The drift schedule: a 5-field cron expression (UTC), or `"off"`, `""` or `null` to stop
    /// scheduled checks. Absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    pub drift_schedule: Option<Option<String>>,
    /// What to do about drift once found.
    #[serde(default)]
    pub drift_remediation: Option<Remediation>,
    /// Whether the broker keeps the stack's Terraform state (`false`: it brings its own backend).
    #[serde(default)]
    pub managed_state: Option<bool>,
    /// Replaces the hooks of each point it names (`[]` or `null` clears one); other points stay.
    #[serde(default)]
    pub hooks: Option<HooksPatch>,
    /// Appended to each point's hooks, after `hooks` replaced any.
    #[serde(default)]
    pub append_hooks: Option<Hooks>,
    /// Replaces the security scanners (`[]`: no scan).
    #[serde(default)]
    pub scanners: Option<Vec<Scanner>>,
    /// Replaces the trigger globs (`[]`: changes under the stack's path concern it).
    #[serde(default)]
    pub triggers: Option<Vec<String>>,
    /// The program its jobs run (`terraform`, `tofu`).
    #[serde(default)]
    pub tool: Option<Tool>,
}

/// A field that is present, even as `null`: `Some(None)`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// The stack as an update leaves it, and what changed.
struct Updated {
    spec: StackSpec,
    /// The normalized cron expression, or `None` (off).
    drift_schedule: Option<String>,
    drift_remediation: Remediation,
    /// `{field: {"from": …, "to": …}}` for every field that changed.
    changes: Map<String, Value>,
}

impl StackUpdate {
    /// Whether it names nothing to change.
    pub fn is_empty(&self) -> bool {
        let Self {
            branch,
            pool,
            plan_targets,
            apply_targets,
            labels,
            drift_schedule,
            drift_remediation,
            managed_state,
            hooks,
            append_hooks,
            scanners,
            triggers,
            tool,
        } = self;
        branch.is_none()
            && pool.is_none()
            && plan_targets.is_none()
            && apply_targets.is_none()
            && labels.is_empty()
            && drift_schedule.is_none()
            && drift_remediation.is_none()
            && managed_state.is_none()
            && hooks.is_none()
            && append_hooks.is_none()
            && scanners.is_none()
            && triggers.is_none()
            && tool.is_none()
    }

    /// `stack` with this update made (not yet checked against the configuration).
    fn apply(self, stack: &Stack) -> Result<Updated, SpecError> {
        let mut spec = stack.spec.clone();
        let mut changes = Map::new();
        let mut change = |field: &str, from: Value, to: Value| {
            if from != to {
                changes.insert(field.to_owned(), json!({ "from": from, "to": to }));
            }
        };
        if let Some(branch) = self.branch {
            change("branch", json!(spec.branch), json!(branch));
            spec.branch = branch;
        }
        if let Some(pool) = self.pool {
            change("pool", json!(spec.pool), json!(pool));
            spec.pool = pool;
        }
        if let Some(targets) = self.plan_targets {
            change("plan_targets", json!(spec.plan_targets), json!(targets));
            spec.plan_targets = targets;
        }
        if let Some(targets) = self.apply_targets {
            change("apply_targets", json!(spec.apply_targets), json!(targets));
            spec.apply_targets = targets;
        }
        if let Some(managed) = self.managed_state {
            change("managed_state", json!(spec.managed_state), json!(managed));
            spec.managed_state = managed;
        }
        if self.hooks.is_some() || self.append_hooks.is_some() {
            let hooks = spec.hooks.patched(self.hooks.unwrap_or_default(), self.append_hooks.unwrap_or_default());
            change("hooks", json!(spec.hooks), json!(hooks));
            spec.hooks = hooks;
        }
        if let Some(tool) = self.tool {
            change("tool", json!(spec.tool), json!(tool));
            spec.tool = tool;
        }
        if let Some(scanners) = self.scanners {
            change("scanners", json!(spec.scanners), json!(scanners));
            spec.scanners = scanners;
        }
        if let Some(triggers) = self.triggers {
            change("triggers", json!(spec.triggers), json!(triggers));
            spec.triggers = triggers;
        }
        let labels = merge_labels(&spec.labels, self.labels);
        change("labels", json!(spec.labels), json!(labels));
        spec.labels = labels;
        let current = stack.drift_settings.drift_schedule.clone();
        let drift_schedule = match self.drift_schedule {
            Some(text) => schedule(text.as_deref())?,
            None => current.clone(),
        };
        change("drift_schedule", json!(current), json!(drift_schedule));
        let remediation = stack.drift_settings.drift_remediation;
        let drift_remediation = self.drift_remediation.unwrap_or(remediation);
        change("drift_remediation", json!(remediation), json!(drift_remediation));
        Ok(Updated { spec, drift_schedule, drift_remediation, changes })
    }
}

/// `labels` with `patch` merged in: a value sets a label, `None` removes it.
fn merge_labels(
    labels: &BTreeMap<String, String>,
    patch: BTreeMap<String, Option<String>>,
) -> BTreeMap<String, String> {
    let mut merged = labels.clone();
    for (key, value) in patch {
        match value {
            Some(value) => merged.insert(key, value),
            None => merged.remove(&key),
        };
    }
    merged
}

/// A drift schedule as given: `None`, `""` and `off` stop scheduled checks; anything else must
/// parse, and is kept in its normal form.
fn schedule(text: Option<&str>) -> Result<Option<String>, SpecError> {
    match text.map(str::trim) {
        None | Some("" | "off") => Ok(None),
        Some(text) => Schedule::parse(text)
            .map(|schedule| Some(schedule.to_string()))
            .map_err(|e| SpecError(format!("invalid drift schedule `{text}`: {e}"))),
    }
}

impl Runs {
    /// Updates the stack `name` as `update` says, on behalf of `who`: the stack after it is
    /// checked as a new one would be, and nothing changes unless all of it holds. An update that
    /// changes nothing writes nothing.
    pub async fn update_stack(
        &self,
        name: &str,
        update: StackUpdate,
        who: &str,
        caller: Context,
    ) -> Result<Stack, RunError> {
        if update.is_empty() {
            return Err(RunError::Spec(SpecError(
                "nothing to update: name a branch, pool, targets, labels, a drift schedule, a remediation, managed state, hooks, scanners, triggers or the tool".to_owned(),
            )));
        }
        let row = self.store.stack(name).await?.ok_or_else(|| RunError::UnknownStack(name.to_owned()))?;
        let (version, set_at) = (row.version, row.drift_schedule_set_at);
        let current = Stack::try_from(row)?;
        let updated = update.apply(&current)?;
        updated.spec.validate(&self.targets)?;
        self.check_space(&updated.spec).await?;
        if updated.changes.is_empty() {
            return Ok(current);
        }
        let now = self.clock.now();
        let rescheduled = updated.changes.contains_key("drift_schedule");
        let write = store::runs::update_stack(
            name,
            version,
            StackChange {
                spec: updated.spec.stored(),
                drift_schedule: updated.drift_schedule,
                drift_remediation: updated.drift_remediation.as_str().to_owned(),
                drift_schedule_set_at: if rescheduled { Some(now) } else { set_at },
                at: now,
                by: who.to_owned(),
            },
        );
        let context = Context {
            stack_id: Some(name.to_owned()),
            repository: Some(current.spec.repository.clone()),
            actor: Some(who.to_owned()),
            ..caller
        };
        let event = AuditEvent::new(Kind::StackUpdated, now, context)
            .with("changes", Value::Object(updated.changes))
            .with_ref("stack", name);
        self.commit(Append::changes(vec![write], vec![event])).await?;
        self.stack(name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        let spec = StackSpec {
            name: "network".into(),
            repository: "https://git.example.com/infra.git".into(),
            path: String::new(),
            branch: "main".into(),
            pool: "default".into(),
            plan_targets: vec!["aws:read".into()],
            apply_targets: vec![],
            labels: [("env".to_owned(), "prod".to_owned()), ("team".to_owned(), "net".to_owned())].into(),
            policies: vec![],
            managed_state: true,
            hooks: Default::default(),
            scanners: Vec::new(),
            tool: Default::default(),
            triggers: Vec::new(),
            space: "root".into(),
        };
        Stack::new(spec, 1, "admin".into())
    }

    fn update(json: Value) -> StackUpdate {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn fields_left_out_stay_lists_replace_and_labels_merge() {
        let body =
            json!({"branch": "release", "plan_targets": [], "labels": {"env": "staging", "team": null, "tier": "1"}});
        let updated = update(body).apply(&stack()).unwrap();
        assert_eq!(updated.spec.branch, "release");
        assert_eq!(updated.spec.pool, "default", "left out: unchanged");
        assert!(updated.spec.plan_targets.is_empty(), "an empty list clears");
        let labels: Vec<(&str, &str)> = updated.spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("env", "staging"), ("tier", "1")]);
        let fields: Vec<&str> = updated.changes.keys().map(String::as_str).collect();
        assert_eq!(fields, ["branch", "labels", "plan_targets"]);
        assert_eq!(updated.changes["branch"], json!({"from": "main", "to": "release"}));
    }

    #[test]
    fn schedules_are_parsed_normalized_and_turned_off() {
        let on = update(json!({"drift_schedule": " */15  * * * * "})).apply(&stack()).unwrap();
        assert_eq!(on.drift_schedule.as_deref(), Some("*/15 * * * *"));
        assert_eq!(on.changes["drift_schedule"], json!({"from": null, "to": "*/15 * * * *"}));
        let mut scheduled = stack();
        scheduled.drift_settings.drift_schedule = Some("0 * * * *".into());
        for off in [json!({"drift_schedule": "off"}), json!({"drift_schedule": ""}), json!({"drift_schedule": null})] {
            assert_eq!(update(off.clone()).apply(&scheduled).unwrap().drift_schedule, None, "{off}");
        }
        let kept = update(json!({"branch": "main"})).apply(&scheduled).unwrap();
        assert_eq!(kept.drift_schedule.as_deref(), Some("0 * * * *"));
        assert!(kept.changes.is_empty(), "the same branch changes nothing");
        let refused = update(json!({"drift_schedule": "61 * * * *"})).apply(&stack()).err().map(|e| e.0);
        assert_eq!(
            refused.as_deref(),
            Some("invalid drift schedule `61 * * * *`: minute field `61`: out of range 0-59")
        );
    }

    #[test]
    fn bodies_name_known_fields_and_values_only() {
        let refused = |body: Value| serde_json::from_value::<StackUpdate>(body).err().map(|e| e.to_string());
        assert!(refused(json!({"drift_remediation": "fix"})).is_some_and(|e| e.contains("unknown variant `fix`")));
        assert!(refused(json!({"name": "other"})).is_some_and(|e| e.contains("unknown field `name`")));
        assert!(refused(json!({"repository": "https://x"})).is_some());
        assert!(update(json!({})).is_empty());
        assert!(!update(json!({"drift_schedule": null})).is_empty(), "null turns the schedule off");
        assert_eq!(update(json!({"drift_remediation": "plan"})).drift_remediation, Some(Remediation::Plan));
    }

    #[test]
    fn triggers_replace_and_an_empty_list_clears_them() {
        let set = update(json!({"triggers": ["modules/**", "*.tfvars"]})).apply(&stack()).unwrap();
        assert_eq!(set.spec.triggers, ["modules/**", "*.tfvars"]);
        assert_eq!(set.changes["triggers"], json!({"from": [], "to": ["modules/**", "*.tfvars"]}));
        let mut triggered = stack();
        triggered.spec.triggers = vec!["modules/**".into()];
        let cleared = update(json!({"triggers": []})).apply(&triggered).unwrap();
        assert!(cleared.spec.triggers.is_empty());
        assert!(!update(json!({"triggers": []})).is_empty(), "clearing is a change");
    }
}
