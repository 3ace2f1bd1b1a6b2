//! A context's lifecycle hooks (docs/contexts.md, "Hooks"): shell commands every job of its
//! stacks runs at a point, before the stack's own, so a team's context can bring a check (a
//! scanner, a linter, a login) to every stack it is attached to.
//!
//! They are set when the context is created and changed the way a stack's are (`PATCH
//! /v1/contexts/{name}`: `hooks` replaces the points it names, then `append_hooks` adds), checked
//! by the same rules, and each change is a `context.changed` entry saying what they were and
//! became. A change commits only if the hooks are still those it was decided on, so of two
//! concurrent changes the second is refused rather than lost. At lease time the job's hooks are
//! its contexts' in the order their variables apply, then its stack's ([`super::hooks::job_hooks`]).

use keyward_proto::claims::Phase;
use serde::Deserialize;
use serde_json::json;

use super::contexts::{ContextError, ContextView};
use super::hooks::{Hooks, HooksPatch, JobHook, job_hooks};
use super::{Runs, Stack};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::store::StoreError;
use crate::store::contexts as rows;

/// `PATCH /v1/contexts/{name}`: what to change (today, its hooks).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextUpdate {
    /// Replaces the hooks of each point it names (`[]` or `null` clears one); other points stay.
    #[serde(default)]
    pub hooks: Option<HooksPatch>,
    /// Appended to each point's hooks, after `hooks` replaced any.
    #[serde(default)]
    pub append_hooks: Option<Hooks>,
}

impl Runs {
    /// Changes context `name` as `update` says, on behalf of `who`; the hooks after it are
    /// checked as a new context's would be, and nothing changes unless they hold. An update that
    /// changes nothing writes nothing.
    pub async fn update_context(
        &self,
        name: &str,
        update: ContextUpdate,
        who: &str,
        caller: Context,
    ) -> Result<ContextView, ContextError> {
        let ContextUpdate { hooks: patch, append_hooks } = update;
        if patch.is_none() && append_hooks.is_none() {
            return Err(ContextError::Invalid("nothing to update: give `hooks` or `append_hooks`".to_owned()));
        }
        let row = self.store.context(name).await?.ok_or_else(|| ContextError::UnknownContext(name.to_owned()))?;
        let current: Hooks = serde_json::from_str(&row.hooks)
            .map_err(|e| StoreError::Corrupt(format!("the hooks of context `{name}`: {e}")))?;
        let hooks = current.patched(patch.unwrap_or_default(), append_hooks.unwrap_or_default());
        hooks.validate().map_err(|e| ContextError::Invalid(e.0))?;
        if hooks == current {
            return self.context_view(name).await;
        }
        let event =
            AuditEvent::new(Kind::ContextChanged, self.clock.now(), Context { actor: Some(who.to_owned()), ..caller })
                .with("context", name)
                .with("change", "updated")
                .with("hooks", json!({ "from": current, "to": hooks }))
                .with_ref("context", name);
        let write = rows::set_context_hooks(name, &row.hooks, &super::json_text(&hooks));
        self.commit(Append::changes(vec![write], vec![event])).await?;
        self.context_view(name).await
    }

    /// The hooks a job of `stack` in `phase` runs: at each point its contexts' (in the order
    /// their variables apply), then the stack's own.
    pub(super) async fn lease_hooks(&self, stack: &Stack, phase: Phase) -> Result<Vec<JobHook>, StoreError> {
        let mut contexts = Vec::new();
        for context in self.stack_contexts(stack).await? {
            let hooks: Hooks = serde_json::from_str(&context.hooks)
                .map_err(|e| StoreError::Corrupt(format!("the hooks of context `{}`: {e}", context.name)))?;
            if !hooks.is_empty() {
                contexts.push((context.name, hooks));
            }
        }
        Ok(job_hooks(&contexts, &stack.spec.hooks, phase))
    }
}
