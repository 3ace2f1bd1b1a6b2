//! The runs pages: the list (newest first, filtered by stack) and one run — its state and the
//! code it ran, where its pull request and ticket came from (observed from GitHub, or the
//! submitter's word), the plan's resource changes by address, the plan policy's messages, the
//! reviews (counted or not, and why) and the jobs.

use maud::{Markup, html};

use super::layout::page;
use crate::clock::rfc3339;
use crate::runs::{ChangeAction, PlanChanges, RunKind, RunState, RunView};
use crate::store::RunFilter;

/// The runs list for `who`, with the filter applied; the embedded script
/// ([`super::LIVE_SCRIPT_PATH`]) fetches it again whenever `/ui/runs/events` says it changed.
pub fn list(runs: &[RunView], filter: &RunFilter, who: &str) -> Markup {
    let body = html! {
        h1 { "Runs" }
        (filters(filter))
        div #runs-table {
            @if runs.is_empty() {
                p.muted { @if *filter == RunFilter::default() { "No runs yet." } @else { "No runs match." } }
            } @else {
                (table(runs))
            }
        }
        p.muted #runs-live data-events=(format!("/ui/runs/events{}", query_string(filter))) {
            "Newest " (runs.len()) " runs; the list follows changes while this page is open (with script)."
        }
        script src=(super::LIVE_SCRIPT_PATH) defer {}
    };
    page("Runs", Some(who), body)
}

/// Runs in a table, each linking its page (the runs list's, and a stack's newest).
pub(super) fn table(runs: &[RunView]) -> Markup {
    html! {
        div.scroll {
            table {
                thead { tr { th { "Run" } th { "Stack" } th { "Kind" } th { "State" } th { "Commit" } th { "PR" } th { "Ticket" } th { "By" } th { "Submitted" } } }
                tbody {
                    @for run in runs {
                        tr {
                            td { a.mono href=(format!("/ui/runs/{}", run.id)) { (short(&run.id, 13)) } }
                            td { (run.stack) }
                            td { (run.kind) }
                            td { (state(&run.state)) }
                            td.mono { (short(&run.commit_sha, 12)) }
                            td { (pull_request(run)) }
                            td { (run.ticket.as_deref().unwrap_or("")) }
                            td { (run.triggered_by) }
                            td.mono { (rfc3339(run.created_at)) }
                        }
                    }
                }
            }
        }
    }
}

/// `filter` as the list's query string (`?state=planned&…`, empty for none), each value encoded.
fn query_string(filter: &RunFilter) -> String {
    let number = filter.pull_request.map(|n| n.to_string());
    let pairs: Vec<String> = [
        ("stack", filter.stack.as_deref()),
        ("state", filter.state.as_deref()),
        ("kind", filter.kind.as_deref()),
        ("pull_request", number.as_deref()),
        ("submitter", filter.triggered_by.as_deref()),
    ]
    .into_iter()
    .filter_map(|(key, value)| value.map(|v| format!("{key}={}", keyward_proto::encoding::percent_encode(v))))
    .collect();
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

/// The list's filter form: a plain GET, so a filtered list is a link to share.
fn filters(filter: &RunFilter) -> Markup {
    let text = |value: &Option<String>| value.clone().unwrap_or_default();
    html! {
        form.filters method="get" action="/ui/runs" {
            label for="stack" { "Stack" }
            input #stack type="text" name="stack" value=(text(&filter.stack)) autocomplete="off";
            label for="state" { "State" }
            select #state name="state" {
                option value="" { "any" }
                @for state in RunState::ALL {
                    option value=(state.as_str()) selected[filter.state.as_deref() == Some(state.as_str())] { (state.as_str()) }
                }
            }
            label for="kind" { "Kind" }
            select #kind name="kind" {
                option value="" { "any" }
                @for kind in RunKind::ALL {
                    option value=(kind.as_str()) selected[filter.kind.as_deref() == Some(kind.as_str())] { (kind.as_str()) }
                }
            }
            label for="pull_request" { "PR" }
            input #pull_request type="number" min="1" name="pull_request" value=[filter.pull_request] inputmode="numeric";
            label for="submitter" { "Submitted by" }
            input #submitter type="text" name="submitter" value=(text(&filter.triggered_by)) autocomplete="off";
            button type="submit" { "Filter" }
        }
    }
}

/// One run, with its saved plan's changes when it has one, the `review` form (or why there is
/// none, `super::review`) after its reviews, and `evidence` (its credentials and log,
/// `super::run_evidence`) after its jobs.
pub fn detail(run: &RunView, changes: Option<&PlanChanges>, review: Markup, evidence: Markup, who: &str) -> Markup {
    let body = html! {
        h1 { "Run " span.mono { (run.id) } }
        p { a href=(format!("/ui/audit?key={}", run.id)) { "Its audit trail" } " · " a href=(format!("/ui/runs?stack={}", run.stack)) { "Runs of " (run.stack) } }
        table.facts {
            tbody {
                tr { th { "Stack" } td { (run.stack) } }
                tr { th { "Kind" } td { (run.kind) } }
                tr { th { "State" } td #run-state { (state(&run.state)) @if let Some(detail) = &run.detail { " " span.muted { (detail) } } } }
                tr { th { "Commit" } td.mono { (run.commit_sha) } }
                tr { th { "Ref" } td.mono { (run.git_ref.as_deref().unwrap_or("-")) } }
                tr { th { "Pull request" } td { (pull_request(run)) } }
                tr { th { "Ticket" } td { (run.ticket.as_deref().unwrap_or("-")) } }
                tr { th { "Submitted by" } td { (run.triggered_by) " at " span.mono { (rfc3339(run.created_at)) } } }
            }
        }
        h2 { "Plan" }
        @match changes {
            None => p.muted { "No saved plan." },
            Some(changes) => (plan(changes)),
        }
        h2 { "Reviews" }
        @if run.reviews.is_empty() {
            p.muted { "None." }
        } @else {
            ul {
                @for review in &run.reviews {
                    li {
                        (review.by) " " (review.decision) "d at " span.mono { (rfc3339(review.at)) }
                        @if review.counted { " (counted)" } @else { " — did not count: " (review.note.unwrap_or("")) }
                        @if let Some(comment) = &review.comment { ": " q { (comment) } }
                    }
                }
            }
        }
        (review)
        h2 { "Jobs" }
        // Focusable: on a phone it scrolls sideways and holds no link, so a keyboard must reach it.
        div.scroll tabindex="0" {
            table {
                thead { tr { th { "Job" } th { "Phase" } th { "State" } th { "Agent" } th { "Isolation" } } }
                tbody {
                    @for job in &run.jobs {
                        tr data-job=(job.id) {
                            td.mono { (short(&job.id, 13)) }
                            td { (job.phase.as_str()) }
                            td {
                                span.job-state { (job.state) }
                                @if let Some(error) = &job.error { " " span.muted { (error) } }
                                @if let Some(waiting) = &job.waiting_for { " " span.muted.waiting { (waiting) } }
                            }
                            td.mono { (job.agent_id.as_deref().map(|a| short(a, 13)).unwrap_or("-")) }
                            td { (job.isolation.as_deref().unwrap_or("-")) }
                        }
                    }
                }
            }
        }
        (evidence)
    };
    page(&format!("Run {}", short(&run.id, 13)), Some(who), body)
}

/// A plan's changes by address, and what `keyward.plan` said.
fn plan(changes: &PlanChanges) -> Markup {
    let (add, change, destroy) = changes.counts();
    html! {
        p { (add) " to add, " (change) " to change, " (destroy) " to destroy." }
        @if !changes.changes.is_empty() {
            ul.changes {
                @for resource in &changes.changes {
                    li class=(action_class(resource.action)) { (action_sign(resource.action)) " " (resource.address) " (" (resource.action.as_str()) ")" }
                }
            }
        }
        @for (title, messages) in [("Policy denials", &changes.denials), ("Policy warnings", &changes.warnings)] {
            @if !messages.is_empty() {
                h2 { (title) }
                ul { @for message in messages.iter() { li { (message) } } }
            }
        }
    }
}

/// The run's pull request, and whether it was observed or is the submitter's word.
fn pull_request(run: &RunView) -> Markup {
    html! {
        @match (run.pull_request, run.pull_request_source.as_deref()) {
            (None, _) => "-",
            (Some(number), Some(source)) => { "#" (number) " " span.badge.badge-observed title="observed from the provider, not asserted" { "observed from " (source) } },
            (Some(number), None) => { "#" (number) " " span.badge title="given by whoever submitted the run" { "asserted" } },
        }
    }
}

fn state(state: &str) -> Markup {
    html! { span class=(format!("state state-{state}")) { (state) } }
}

fn action_sign(action: ChangeAction) -> &'static str {
    match action {
        ChangeAction::Create => "+",
        ChangeAction::Update => "~",
        ChangeAction::Delete => "-",
        ChangeAction::Replace => "-/+",
    }
}

fn action_class(action: ChangeAction) -> &'static str {
    action.as_str()
}

/// The first `n` characters of an ID or SHA (all of it when shorter).
fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{JobView, ResourceChange};

    fn run() -> RunView {
        RunView {
            id: "01a2-run".to_owned(),
            stack: "network".to_owned(),
            state: "finished".to_owned(),
            kind: "proposed".to_owned(),
            drift: None,
            commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            git_ref: None,
            pull_request: Some(7),
            ticket: Some("<script>alert('ticket')</script>".to_owned()),
            pull_request_source: Some("github".to_owned()),
            triggered_by: "github:<b>octocat</b>".to_owned(),
            detail: Some("planned as proposed".to_owned()),
            created_at: 1,
            updated_at: 2,
            reviews: Vec::new(),
            jobs: Vec::new(),
        }
    }

    #[test]
    fn every_interpolated_string_is_escaped() {
        let changes = PlanChanges {
            changes: vec![ResourceChange {
                address: "terraform_data.x[\"<img src=x>\"]".to_owned(),
                action: ChangeAction::Create,
            }],
            warnings: vec!["<script>alert('policy')</script>".to_owned()],
            denials: Vec::new(),
        };
        let html = detail(&run(), Some(&changes), html! {}, html! {}, "<i>me</i>").into_string();
        assert!(
            !html.contains("<script>") && !html.contains("<img") && !html.contains("<b>") && !html.contains("<i>"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;alert('ticket')&lt;/script&gt;"), "{html}");
        assert!(html.contains("&lt;img src=x&gt;"), "{html}");
        assert!(html.contains("observed from github"), "{html}");
        assert!(html.contains("href=\"/ui/audit?key=01a2-run\""), "the run links its trail: {html}");
        let hostile = RunFilter { stack: Some("\"><script>".into()), ..RunFilter::default() };
        let list = list(&[run()], &hostile, "me").into_string();
        assert!(!list.contains("<script>") && list.contains("value=\"&quot;&gt;&lt;script&gt;\""), "{list}");
    }

    #[test]
    fn the_filter_form_keeps_what_was_asked() {
        let filter = RunFilter {
            state: Some("planned".into()),
            kind: Some("proposed".into()),
            pull_request: Some(7),
            triggered_by: Some("ci".into()),
            ..RunFilter::default()
        };
        let html = list(&[], &filter, "me").into_string();
        assert!(html.contains(r#"<option value="planned" selected>"#), "{html}");
        assert!(html.contains(r#"<option value="proposed" selected>"#), "{html}");
        assert!(html.contains(r#"name="pull_request" value="7""#) && html.contains(r#"name="submitter" value="ci""#));
        assert!(html.contains("No runs match."), "{html}");
        assert!(
            html.contains(
                r#"data-events="/ui/runs/events?state=planned&amp;kind=proposed&amp;pull_request=7&amp;submitter=ci""#
            ),
            "the live list follows the same filter: {html}"
        );
        assert!(list(&[], &RunFilter::default(), "me").into_string().contains("No runs yet."));
    }

    #[test]
    fn a_submitters_pull_request_is_marked_asserted() {
        let asserted = RunView { pull_request_source: None, ..run() };
        let html = detail(&asserted, None, html! {}, html! {}, "me").into_string();
        assert!(html.contains("#7 <span class=\"badge\"") && html.contains(">asserted<"), "{html}");
        assert!(html.contains("No saved plan."), "{html}");
    }

    #[test]
    fn a_queued_job_says_what_it_waits_for() {
        let job = JobView {
            id: "01b2-job".to_owned(),
            phase: keyward_proto::claims::Phase::Plan,
            pool: "blue".to_owned(),
            state: "queued".to_owned(),
            attempt: 0,
            agent_id: None,
            error: None,
            isolation: None,
            layers: None,
            scan: None,
            waiting_for: Some("no active agent in pool `<b>blue</b>` has tofu".to_owned()),
        };
        let queued = RunView { state: "queued".to_owned(), jobs: vec![job], ..run() };
        let html = detail(&queued, None, html! {}, html! {}, "me").into_string();
        assert!(
            html.contains(
                r#"<span class="muted waiting">no active agent in pool `&lt;b&gt;blue&lt;/b&gt;` has tofu</span>"#
            ),
            "{html}"
        );
    }
}
