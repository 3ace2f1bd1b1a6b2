//! The stacks page: every stack the caller may read with its drift state at a glance — drifted
//! stacks first, with what drifted and since when — its schedule and where its code lives.

use maud::{Markup, html};

use super::layout::page;
use crate::clock::rfc3339;
use crate::runs::{DriftStatus, Stack};
use keyward_proto::encoding::percent_encode;

/// The stacks list for `who`: drifted first, then by name.
pub fn list(stacks: &[Stack], who: &str) -> Markup {
    let mut ordered: Vec<&Stack> = stacks.iter().collect();
    ordered.sort_by(|a, b| b.drift.is_drifted().cmp(&a.drift.is_drifted()).then(a.spec.name.cmp(&b.spec.name)));
    let drifted = ordered.iter().filter(|s| s.drift.is_drifted()).count();
    let body = html! {
        h1 { "Stacks" }
        p { (ordered.len()) " stacks; " strong { (drifted) " drifted" } "." }
        @if ordered.is_empty() {
            p.muted { "No stacks yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Stack" } th { "Drift" } th { "Schedule" } th { "Repository" } th { "Space" } } }
                    tbody {
                        @for stack in ordered {
                            tr {
                                td { a href=(format!("/ui/stacks/{}", percent_encode(&stack.spec.name))) { (stack.spec.name) } }
                                td { (drift(&stack.drift)) }
                                td.mono { (stack.drift_settings.drift_schedule.as_deref().unwrap_or("-")) }
                                td.mono { (stack.spec.repository) @if !stack.spec.path.is_empty() { " · " (stack.spec.path) } }
                                td { (stack.spec.space) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Stacks", Some(who), body)
}

/// A stack's drift state in a cell (the list's and the stack page's).
pub(super) fn drift(status: &DriftStatus) -> Markup {
    html! {
        @match status {
            DriftStatus::Unknown => span.muted { "never checked" },
            DriftStatus::InSync { checked_at, .. } => { span.state.state-finished { "in sync" } " " span.muted { "checked " (rfc3339(*checked_at)) } },
            DriftStatus::Drifted { since, to_add, to_change, to_destroy, changed_outside, .. } => {
                span.state.state-failed { "drifted" } " since " span.mono { (rfc3339(*since)) }
                br;
                span.muted { (to_add) " to add, " (to_change) " to change, " (to_destroy) " to destroy, " (changed_outside) " changed outside Terraform" }
            },
            DriftStatus::Failed { checked_at, error, .. } => {
                span.state.state-failed { "check failed" } " " span.muted { (rfc3339(*checked_at)) ": " (error) }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::StackSpec;

    fn stack(name: &str, drift: DriftStatus) -> Stack {
        let spec: StackSpec = serde_json::from_value(serde_json::json!({
            "name": name, "repository": "https://git.example.com/<b>infra</b>.git",
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Stack { drift, ..Stack::new(spec, 1, "admin".into()) }
    }

    #[test]
    fn drifted_stacks_come_first_and_everything_is_escaped() {
        let drifted = DriftStatus::Drifted {
            checked_at: 10,
            run_id: None,
            since: 5,
            to_add: 1,
            to_change: 2,
            to_destroy: 0,
            changed_outside: 3,
            addresses: Vec::new(),
        };
        let html = list(
            &[stack("a-sync", DriftStatus::InSync { checked_at: 9, run_id: None }), stack("b-drift", drifted)],
            "me",
        )
        .into_string();
        let (first, second) = (html.find("b-drift").unwrap_or(usize::MAX), html.find("a-sync").unwrap_or(0));
        assert!(first < second, "the drifted stack is listed first: {html}");
        assert!(
            html.contains("1 drifted") && html.contains("1 to add, 2 to change, 0 to destroy, 3 changed outside"),
            "{html}"
        );
        assert!(!html.contains("<b>") && html.contains("&lt;b&gt;infra&lt;/b&gt;"), "{html}");
    }
}
