//! Lifecycle hooks of stacks and contexts (docs/runs.md, "Lifecycle hooks"): shell commands the
//! agent runs at fixed points around Terraform, in the same sandbox. Each point holds an ordered
//! list; a job runs, at each point, its contexts' hooks (in the order their variables apply) and
//! then its stack's own ([`job_hooks`]), each named by where it came from.
//!
//! Checked before anything is stored: known points only (an unknown one fails to parse), at most
//! [`MAX_HOOKS`] commands per point, each at most [`MAX_HOOK_LEN`] bytes with no control
//! characters but tab.

use keyward_proto::claims::Phase;
use serde::{Deserialize, Serialize};

use super::spec::SpecError;

/// Most commands one point may hold.
pub const MAX_HOOKS: usize = 16;
/// Longest command, in bytes.
pub const MAX_HOOK_LEN: usize = 4096;

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    /// Before `terraform init` (both phases).
    BeforeInit,
    /// Before `terraform plan` (plan jobs and drift checks).
    BeforePlan,
    /// After `terraform plan` succeeded (and its plan was shown).
    AfterPlan,
    /// Before `terraform apply`.
    BeforeApply,
    /// After `terraform apply` succeeded.
    AfterApply,
}

impl HookPoint {
    /// Its name, as in the stack's `hooks` and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeInit => "before_init",
            Self::BeforePlan => "before_plan",
            Self::AfterPlan => "after_plan",
            Self::BeforeApply => "before_apply",
            Self::AfterApply => "after_apply",
        }
    }

    /// The points a job of `phase` runs, in order.
    pub fn of(phase: Phase) -> [Self; 3] {
        match phase {
            Phase::Plan => [Self::BeforeInit, Self::BeforePlan, Self::AfterPlan],
            Phase::Apply => [Self::BeforeInit, Self::BeforeApply, Self::AfterApply],
        }
    }
}

/// Every point's commands, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Before `terraform init`.
    #[serde(default)]
    pub before_init: Vec<String>,
    /// Before `terraform plan`.
    #[serde(default)]
    pub before_plan: Vec<String>,
    /// After `terraform plan`.
    #[serde(default)]
    pub after_plan: Vec<String>,
    /// Before `terraform apply`.
    #[serde(default)]
    pub before_apply: Vec<String>,
    /// After `terraform apply`.
    #[serde(default)]
    pub after_apply: Vec<String>,
}

/// A change to hooks (`PATCH`): each point given in `hooks` replaces that point's list (`[]` or
/// `null` clears it), then `append_hooks` adds to the end.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksPatch {
    /// Replaces these points' lists; `null` clears one.
    #[serde(default, deserialize_with = "present")]
    pub before_init: Option<Option<Vec<String>>>,
    /// See `before_init`.
    #[serde(default, deserialize_with = "present")]
    pub before_plan: Option<Option<Vec<String>>>,
    /// See `before_init`.
    #[serde(default, deserialize_with = "present")]
    pub after_plan: Option<Option<Vec<String>>>,
    /// See `before_init`.
    #[serde(default, deserialize_with = "present")]
    pub before_apply: Option<Option<Vec<String>>>,
    /// See `before_init`.
    #[serde(default, deserialize_with = "present")]
    pub after_apply: Option<Option<Vec<String>>>,
}

/// A field that is present, even as `null`: `Some(None)`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Option::<Vec<String>>::deserialize(deserializer).map(Some)
}

impl Hooks {
    /// The list at `point`.
    pub fn at(&self, point: HookPoint) -> &[String] {
        match point {
            HookPoint::BeforeInit => &self.before_init,
            HookPoint::BeforePlan => &self.before_plan,
            HookPoint::AfterPlan => &self.after_plan,
            HookPoint::BeforeApply => &self.before_apply,
            HookPoint::AfterApply => &self.after_apply,
        }
    }

    fn at_mut(&mut self, point: HookPoint) -> &mut Vec<String> {
        match point {
            HookPoint::BeforeInit => &mut self.before_init,
            HookPoint::BeforePlan => &mut self.before_plan,
            HookPoint::AfterPlan => &mut self.after_plan,
            HookPoint::BeforeApply => &mut self.before_apply,
            HookPoint::AfterApply => &mut self.after_apply,
        }
    }

    const POINTS: [HookPoint; 5] = [
        HookPoint::BeforeInit,
        HookPoint::BeforePlan,
        HookPoint::AfterPlan,
        HookPoint::BeforeApply,
        HookPoint::AfterApply,
    ];

    /// The hooks a job of `phase` runs: `(point, command)` in order.
    pub fn for_phase(&self, phase: Phase) -> Vec<(HookPoint, String)> {
        HookPoint::of(phase)
            .into_iter()
            .flat_map(|point| self.at(point).iter().map(move |command| (point, command.clone())))
            .collect()
    }

    /// These hooks with `patch` made (replacements first), then `append` added.
    pub fn patched(&self, patch: HooksPatch, append: Hooks) -> Self {
        let mut hooks = self.clone();
        let HooksPatch { before_init, before_plan, after_plan, before_apply, after_apply } = patch;
        let replacements = [before_init, before_plan, after_plan, before_apply, after_apply];
        for (point, replacement) in Self::POINTS.into_iter().zip(replacements) {
            if let Some(list) = replacement {
                *hooks.at_mut(point) = list.unwrap_or_default();
            }
        }
        for point in Self::POINTS {
            hooks.at_mut(point).extend(append.at(point).iter().cloned());
        }
        hooks
    }

    /// Whether no point holds a command.
    pub fn is_empty(&self) -> bool {
        Self::POINTS.into_iter().all(|point| self.at(point).is_empty())
    }

    /// Refuses too many commands at a point, and commands that are empty, too long or hold
    /// control characters other than tab.
    pub fn validate(&self) -> Result<(), SpecError> {
        for point in Self::POINTS {
            let list = self.at(point);
            let name = point.as_str();
            if list.len() > MAX_HOOKS {
                return Err(SpecError(format!(
                    "too many {name} hooks: {} (at most {MAX_HOOKS} per point)",
                    list.len()
                )));
            }
            for (index, command) in list.iter().enumerate() {
                let number = index + 1;
                if command.trim().is_empty() {
                    return Err(SpecError(format!("{name} hook {number} is empty")));
                }
                if command.len() > MAX_HOOK_LEN {
                    return Err(SpecError(format!(
                        "{name} hook {number} is {} bytes long (at most {MAX_HOOK_LEN})",
                        command.len()
                    )));
                }
                if command.chars().any(|c| c.is_control() && c != '\t') {
                    return Err(SpecError(format!(
                        "{name} hook {number} holds a control character (only tab is allowed; use `;` or `&&` between commands)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// One hook a job runs, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobHook {
    /// Where it runs.
    pub point: HookPoint,
    /// The shell command.
    pub command: String,
    /// The context it comes from; `None`: the stack's own.
    pub context: Option<String>,
}

/// The hooks a job of `phase` runs, in order: at each point, those of `contexts` (already in
/// the order their variables apply: lower priority first), then the stack's own.
pub(super) fn job_hooks(contexts: &[(String, Hooks)], stack: &Hooks, phase: Phase) -> Vec<JobHook> {
    let sources = contexts.iter().map(|(name, hooks)| (Some(name), hooks)).chain([(None, stack)]);
    let sources: Vec<(Option<&String>, &Hooks)> = sources.collect();
    let mut hooks = Vec::new();
    for point in HookPoint::of(phase) {
        for (context, source) in &sources {
            hooks.extend(source.at(point).iter().map(|command| JobHook {
                point,
                command: command.clone(),
                context: context.cloned(),
            }));
        }
    }
    hooks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hooks(value: serde_json::Value) -> Result<Hooks, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn points_run_in_phase_order() {
        let all = hooks(json!({
            "after_apply": ["aa"], "before_init": ["bi1", "bi2"], "before_plan": ["bp"], "after_plan": ["ap"],
            "before_apply": ["ba"],
        }))
        .unwrap();
        let names = |phase| -> Vec<String> {
            all.for_phase(phase).into_iter().map(|(p, c)| format!("{}:{c}", p.as_str())).collect()
        };
        assert_eq!(names(Phase::Plan), ["before_init:bi1", "before_init:bi2", "before_plan:bp", "after_plan:ap"]);
        assert_eq!(names(Phase::Apply), ["before_init:bi1", "before_init:bi2", "before_apply:ba", "after_apply:aa"]);
    }

    #[test]
    fn contexts_hooks_run_before_the_stacks_at_each_point_in_priority_order() {
        let base = hooks(json!({"before_plan": ["base-1", "base-2"], "after_apply": ["base-aa"]})).unwrap();
        let secrets = hooks(json!({"before_init": ["secrets-bi"], "before_plan": ["secrets-bp"]})).unwrap();
        let stack = hooks(json!({"before_init": ["stack-bi"], "before_plan": ["stack-bp"]})).unwrap();
        let contexts = [("base".to_owned(), base), ("secrets".to_owned(), secrets)];
        let seen = |phase| -> Vec<String> {
            job_hooks(&contexts, &stack, phase)
                .into_iter()
                .map(|h| format!("{}:{}:{}", h.point.as_str(), h.context.as_deref().unwrap_or("stack"), h.command))
                .collect()
        };
        assert_eq!(
            seen(Phase::Plan),
            [
                "before_init:secrets:secrets-bi",
                "before_init:stack:stack-bi",
                "before_plan:base:base-1",
                "before_plan:base:base-2",
                "before_plan:secrets:secrets-bp",
                "before_plan:stack:stack-bp",
            ]
        );
        assert_eq!(
            seen(Phase::Apply),
            ["before_init:secrets:secrets-bi", "before_init:stack:stack-bi", "after_apply:base:base-aa"]
        );
        let stack_only = job_hooks(&[], &stack, Phase::Plan);
        let expected: Vec<JobHook> = stack
            .for_phase(Phase::Plan)
            .into_iter()
            .map(|(point, command)| JobHook { point, command, context: None })
            .collect();
        assert_eq!(stack_only, expected, "without contexts: the stack's hooks as before");
    }

    #[test]
    fn bad_hooks_are_refused_with_the_reason() {
        let unknown = hooks(json!({"after_init": ["x"]})).unwrap_err();
        assert!(unknown.contains("unknown field `after_init`"), "{unknown}");
        let cases = [
            (json!({"before_plan": vec!["true"; MAX_HOOKS + 1]}), "too many before_plan hooks: 17"),
            (json!({"after_apply": ["echo a\necho b"]}), "after_apply hook 1 holds a control character"),
            (json!({"before_init": ["ok", "a\u{0}b"]}), "before_init hook 2 holds a control character"),
            (json!({"before_apply": ["x".repeat(MAX_HOOK_LEN + 1)]}), "before_apply hook 1 is 4097 bytes long"),
            (json!({"after_plan": [" "]}), "after_plan hook 1 is empty"),
        ];
        for (value, reason) in cases {
            let error = hooks(value).unwrap().validate().unwrap_err().0;
            assert!(error.contains(reason), "{reason}: {error}");
        }
        assert_eq!(hooks(json!({"before_plan": vec!["printf 'a\tb'"; MAX_HOOKS]})).unwrap().validate(), Ok(()));
    }

    #[test]
    fn a_patch_replaces_given_points_then_appends() {
        let current = hooks(json!({"before_plan": ["a"], "after_plan": ["b"], "after_apply": ["c"]})).unwrap();
        let patch: HooksPatch = serde_json::from_value(json!({"before_plan": null, "after_plan": ["d"]})).unwrap();
        let append = hooks(json!({"after_plan": ["e"], "after_apply": ["f"]})).unwrap();
        let patched = current.patched(patch, append);
        assert_eq!(patched, hooks(json!({"after_plan": ["d", "e"], "after_apply": ["c", "f"]})).unwrap());
    }
}
