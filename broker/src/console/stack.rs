//! A stack's page: its drift state and whether its state is locked first, then what it is
//! (repository, branch, pool, space, labels, targets, triggers, schedule), its newest runs, and
//! its Terraform state's versions by their metadata.
//!
//! A state version is shown by serial, lineage, source, the run and job that wrote it, size,
//! digest and time — never its content, which holds the stack's secrets (and is only ever read
//! sealed, by `runs::tfstate`, never here).

use maud::{Markup, html};

use super::layout::page;
use super::{runs, stacks};
use crate::clock::rfc3339;
use crate::runs::{DriftStatus, RunView, Stack, StateLockView, StateSummary, StateVersionView};
use keyward_proto::encoding::percent_encode;

/// The most state versions the page lists (the newest); `keyward state list` lists them all.
pub const VERSIONS_SHOWN: usize = 50;

/// What the page shows.
#[derive(Debug, Clone, Copy)]
pub struct StackPage<'a> {
    /// The stack.
    pub stack: &'a Stack,
    /// Its newest runs, newest first.
    pub runs: &'a [RunView],
    /// Its state's lock and versions (metadata only).
    pub state: &'a StateSummary,
}

/// The stack's page for `who`.
pub fn detail(view: StackPage<'_>, who: &str) -> Markup {
    let (stack, spec) = (view.stack, &view.stack.spec);
    let encoded = percent_encode(&spec.name);
    let body = html! {
        h1 { "Stack " (spec.name) }
        p {
            "Drift: " (stacks::drift(&stack.drift))
            @if spec.managed_state { br; "State: " (lock(view.state.lock.as_ref())) }
        }
        p { a href=(format!("/ui/runs?stack={encoded}")) { "All runs of " (spec.name) } }
        (facts(stack))
        @if let DriftStatus::Drifted { addresses, run_id, .. } = &stack.drift {
            h2 { "Drifted resources" }
            @if let Some(run) = run_id { p { "Found by run " a.mono href=(format!("/ui/runs/{}", percent_encode(run))) { (run) } "." } }
            @if addresses.is_empty() { p.muted { "The check stored no addresses." } }
            @else { ul.changes { @for address in addresses { li.update { "~ " (address) } } } }
        }
        h2 { "Newest runs" }
        @if view.runs.is_empty() { p.muted { "No runs yet." } } @else { (runs::table(view.runs)) }
        h2 { "State versions" }
        @if spec.managed_state { (versions(&view.state.versions)) }
        @else { p.muted { "Its configuration brings its own backend: the broker keeps no state for it." } }
    };
    page(&format!("Stack {}", spec.name), Some(who), body)
}

/// What the stack is: where its code lives, where it runs, what it may use, when it is checked.
fn facts(stack: &Stack) -> Markup {
    let (spec, drift) = (&stack.spec, &stack.drift_settings);
    let list = |items: &[String]| html! { @if items.is_empty() { span.muted { "none" } } @for item in items { code { (item) } " " } };
    html! {
        table.facts { tbody {
            tr { th { "Repository" } td.mono { (spec.repository) } }
            tr { th { "Path" } td.mono { @if spec.path.is_empty() { "(the root)" } @else { (spec.path) } } }
            tr { th { "Branch" } td.mono { (spec.branch) } }
            tr { th { "Pool" } td { (spec.pool) } }
            tr { th { "Space" } td { (spec.space) } }
            tr { th { "Labels" } td { @if spec.labels.is_empty() { span.muted { "none" } }
                @for (key, value) in &spec.labels { code { (key) " = " (value) } " " } } }
            tr { th { "Plan targets" } td { (list(&spec.plan_targets)) } }
            tr { th { "Apply targets" } td { (list(&spec.apply_targets)) } }
            tr { th { "Policies" } td { (list(&spec.policies)) } }
            tr { th { "Triggers" } td { @if spec.triggers.is_empty() { span.muted { "files under its path" } } @else { (list(&spec.triggers)) } } }
            tr { th { "Drift schedule" } td {
                @match &drift.drift_schedule {
                    None => span.muted { "none" },
                    Some(cron) => { code { (cron) } " (UTC), remediation " (drift.drift_remediation)
                        @if let Some(next) = drift.next_drift_check_at { br; span.muted { "next check " (rfc3339(next)) } } },
                }
                @if let (Some(at), Some(what)) = (drift.last_drift_check_at, &drift.last_drift_check) {
                    br; span.muted { "last " (rfc3339(at)) ": " (what) }
                }
            } }
            tr { th { "State" } td { @if spec.managed_state { "kept by the broker" } @else { "its own backend" } } }
            tr { th { "Created" } td { (stack.created_by) " at " span.mono { (rfc3339(stack.created_at)) }
                @if let (Some(at), Some(by)) = (stack.updated_at, &stack.updated_by) { br; span.muted { "updated by " (by) " at " (rfc3339(at)) } } } }
        } }
    }
}

/// Whether the state is locked, and by whom.
fn lock(lock: Option<&StateLockView>) -> Markup {
    html! {
        @match lock {
            None => span.muted { "not locked" },
            Some(lock) => {
                span.state.state-planning { "locked" } " by " span.mono { (lock.locked_by) } " since " span.mono { (rfc3339(lock.created_at)) }
                @if let Some(operation) = lock.info.get("Operation").and_then(|v| v.as_str()) { " (" (operation) ")" }
            },
        }
    }
}

/// The newest versions by their metadata.
fn versions(versions: &[StateVersionView]) -> Markup {
    let older = versions.len().saturating_sub(VERSIONS_SHOWN);
    html! {
        @if versions.is_empty() { p.muted { "No state yet: its first apply writes one." } } @else {
            div.scroll { table {
                thead { tr { th { "Version" } th { "Serial" } th { "Lineage" } th { "Source" } th { "Run" } th { "Job" } th { "Written by" } th { "Size" } th { "SHA-256" } th { "At" } } }
                tbody { @for version in versions.iter().take(VERSIONS_SHOWN) {
                    tr {
                        td { (version.version) }
                        td { (version.serial) }
                        td.mono { (version.lineage) }
                        td { (version.source) }
                        td { @match &version.run_id { Some(run) => a.mono href=(format!("/ui/runs/{}", percent_encode(run))) title=(run) { (short(run)) }, None => "-" } }
                        td.mono { @match &version.job_id { Some(job) => span title=(job) { (short(job)) }, None => "-" } }
                        td { (version.written_by) }
                        td { (version.size) " bytes" }
                        td.mono title=(version.sha256) { (version.sha256.get(..12).unwrap_or(&version.sha256)) }
                        td.mono { (rfc3339(version.created_at)) }
                    }
                } }
            } }
            @if older > 0 { p.muted { (older) " older versions: " code { "keyward state list" } "." } }
        }
    }
}

/// The first characters of an ID (all of it when shorter).
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::StackSpec;

    fn stack(drift: DriftStatus) -> Stack {
        let spec: StackSpec = serde_json::from_value(serde_json::json!({
            "name": "network", "repository": "https://git.example.com/<b>infra</b>.git",
            "labels": {"env": "<script>alert('label')</script>"}, "plan_targets": ["aws:read"],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Stack { drift, ..Stack::new(spec, 1, "admin".into()) }
    }

    fn version(n: i64) -> StateVersionView {
        StateVersionView {
            stack: "network".into(),
            version: n,
            serial: n + 10,
            lineage: "lin-<i>eage</i>".into(),
            sha256: "ab".repeat(32),
            size: 1234,
            source: "apply".into(),
            run_id: Some("0a1b2c3d-run-id".into()),
            job_id: Some("0f1e2d3c-job-id".into()),
            written_by: "job:0f1e2d3c-job-id".into(),
            created_at: 60,
        }
    }

    fn summary(versions: Vec<StateVersionView>, lock: Option<StateLockView>) -> StateSummary {
        StateSummary { stack: "network".into(), managed: true, lock, versions }
    }

    #[test]
    fn the_page_shows_facts_versions_and_lock_everything_escaped() {
        let drifted = DriftStatus::Drifted {
            checked_at: 10,
            run_id: Some("0c-drift-run".into()),
            since: 5,
            to_add: 0,
            to_change: 1,
            to_destroy: 0,
            changed_outside: 1,
            addresses: vec!["aws_s3_bucket.b[\"<img src=x>\"]".into()],
        };
        let lock = StateLockView {
            id: "lock-1".into(),
            locked_by: "job:0f1e".into(),
            job_id: Some("0f1e".into()),
            created_at: 30,
            info: serde_json::json!({"Operation": "<b>OperationTypeApply</b>"}),
        };
        let state = summary(vec![version(2), version(1)], Some(lock));
        let stack = stack(drifted);
        let html = detail(StackPage { stack: &stack, runs: &[], state: &state }, "me").into_string();
        for hostile in ["<script>", "<img", "<b>", "<i>"] {
            assert!(!html.contains(hostile), "{hostile}: {html}");
        }
        assert!(html.contains("env = &lt;script&gt;alert('label')&lt;/script&gt;"), "{html}");
        assert!(html.contains("~ aws_s3_bucket.b[&quot;&lt;img src=x&gt;&quot;]"), "the drifted address: {html}");
        assert!(html.contains("href=\"/ui/runs/0c-drift-run\""), "{html}");
        assert!(html.contains(">locked<") && html.contains("job:0f1e") && html.contains("&lt;b&gt;OperationTypeApply"));
        assert!(html.contains("<td>12</td>") && html.contains("<td>11</td>") && html.contains("1234 bytes"), "{html}");
        assert!(html.contains("href=\"/ui/runs/0a1b2c3d-run-id\"") && html.contains("<code>aws:read</code>"), "{html}");
        assert!(html.contains("No runs yet.") && html.contains("href=\"/ui/runs?stack=network\""), "{html}");
    }

    #[test]
    fn only_the_newest_versions_are_listed_and_an_own_backend_has_none() {
        let many: Vec<StateVersionView> = (1..=60).rev().map(version).collect();
        let stack = stack(DriftStatus::Unknown);
        let state = summary(many, None);
        let html = detail(StackPage { stack: &stack, runs: &[], state: &state }, "me").into_string();
        assert!(html.contains("10 older versions") && html.contains("not locked"), "{html}");
        assert!(html.contains("<td>60</td>") && !html.contains("<td>10</td>"), "{html}");

        let mut own = stack.clone();
        own.spec.managed_state = false;
        let html = detail(StackPage { stack: &own, runs: &[], state: &summary(Vec::new(), None) }, "me").into_string();
        assert!(html.contains("brings its own backend") && !html.contains("not locked"), "{html}");
    }
}
