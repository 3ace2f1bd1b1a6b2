//! What a run started by a version-control event looks like back where the change lives: its
//! commit status (`keyward/<stack>`: pending, then success or failure) and the one comment per
//! stack on its pull request, with the plan's changes and the plan policy's messages.
//!
//! Provider-neutral: the GitHub reporter (`github::reporter`) sends what this renders. Only
//! addresses, actions, states and the policy's own messages are shown — never a value from a
//! plan, and never a run's `detail` (a failed job's detail carries the tail of Terraform's
//! output, which the masker cleans only of the secrets the job was given). Everyone who can read
//! the repository reads the comment. Text a pull request can influence (policy messages quote
//! addresses and module sources) goes into code spans, so it cannot add links, mentions, images
//! or HTML to the comment.

use std::fmt::Write as _;

use crate::runs::{PlanChanges, RunKind, RunState, RunView};

/// What a failed, rejected or interrupted run's comment says instead of its detail.
const WHY_IN_KEYWARD: &str = "Why, and the run's log, are in Keyward: follow the run's link (`keyward run show`).";

/// GitHub refuses a comment longer than this many characters.
pub const MAX_COMMENT_CHARS: usize = 65_536;

/// What a part may hold, leaving room for its header.
const PART_BUDGET: usize = 60_000;

/// The longest line kept (a resource address can be long; a policy message can be longer).
const MAX_LINE_CHARS: usize = 2_000;

/// A commit status's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusState {
    /// Still running, or waiting for people.
    Pending,
    /// Planned (proposed) or applied.
    Success,
    /// Failed, refused, rejected or interrupted.
    Failure,
    /// Canceled by someone.
    Error,
}

impl StatusState {
    /// The name GitHub (and GitLab) use for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
        }
    }
}

/// A commit status: its state and a one-line description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The state.
    pub state: StatusState,
    /// What it means, in a line.
    pub description: String,
}

/// The status context of `stack`'s runs.
pub fn status_context(stack: &str) -> String {
    format!("keyward/{stack}")
}

/// `run`'s commit status.
pub fn status(run: &RunView, changes: Option<&PlanChanges>) -> Status {
    let state = state_of(run);
    let counted = changes.map(|c| {
        let (add, change, destroy) = c.counts();
        format!(": {add} to add, {change} to change, {destroy} to destroy")
    });
    let planned = counted.unwrap_or_default();
    let (status, description) = match state {
        RunState::Queued => (StatusState::Pending, "Queued for an agent".to_owned()),
        RunState::Planning => (StatusState::Pending, "Planning".to_owned()),
        RunState::Planned => (StatusState::Pending, format!("Planned{planned}; waiting for approval")),
        RunState::Applying => (StatusState::Pending, format!("Applying{planned}")),
        RunState::Finished if is_proposed(run) => (StatusState::Success, format!("Planned{planned}")),
        RunState::Finished => (StatusState::Success, format!("Applied{planned}")),
        RunState::Failed => (StatusState::Failure, "Failed; see the run in Keyward".to_owned()),
        RunState::Discarded => (StatusState::Failure, "Rejected at review; not applied".to_owned()),
        RunState::Interrupted => (StatusState::Failure, "The apply was interrupted".to_owned()),
        RunState::Canceled => (StatusState::Error, "Canceled".to_owned()),
    };
    Status { state: status, description }
}

/// The comment on the pull request for `run` of `stack`, in parts that each fit GitHub's limit
/// (most are one part).
pub fn comment(stack: &str, run: &RunView, changes: Option<&PlanChanges>, run_url: &str) -> Vec<String> {
    let state = state_of(run);
    let what = if is_proposed(run) { "proposed plan" } else { "run" };
    let mut summary = format!(
        "**{}** · run [`{}`]({run_url}) at `{}`",
        headline(run, state),
        run.id,
        run.commit_sha.get(..12).unwrap_or(&run.commit_sha)
    );
    if matches!(state, RunState::Failed | RunState::Discarded | RunState::Interrupted) {
        let _ = write!(summary, "\n\n{}", WHY_IN_KEYWARD);
    }
    let mut lines = Vec::new();
    if let Some(changes) = changes {
        let (add, change, destroy) = changes.counts();
        lines.push(format!("**Plan:** {add} to add, {change} to change, {destroy} to destroy."));
        if !changes.changes.is_empty() {
            lines.push(String::new());
            lines.push("```diff".to_owned());
            lines.extend(changes.changes.iter().map(|c| {
                let sign = match c.action {
                    crate::runs::ChangeAction::Create => "+",
                    crate::runs::ChangeAction::Update => "!",
                    crate::runs::ChangeAction::Delete => "-",
                    crate::runs::ChangeAction::Replace => "-/+",
                };
                line(&format!("{sign} {} ({})", c.address, c.action.as_str()))
            }));
            lines.push("```".to_owned());
        }
        for (title, messages) in [("Policy denials", &changes.denials), ("Policy warnings", &changes.warnings)] {
            if !messages.is_empty() {
                lines.push(String::new());
                lines.push(format!("**{title}**"));
                lines.extend(messages.iter().map(|m| format!("- {}", code_span(m))));
            }
        }
    }
    let header = |part: usize, parts: usize| {
        let numbered = if parts > 1 { format!(" (part {part} of {parts})") } else { String::new() };
        format!("{}\n### Keyward · `{stack}` · {what}{numbered}\n\n", marker(stack))
    };
    split(&summary, &lines, header)
}

/// The hidden marker that says which stack a comment is for.
pub fn marker(stack: &str) -> String {
    format!("<!-- keyward:stack={stack} -->")
}

/// `summary` then `lines`, in parts of at most [`PART_BUDGET`] characters after their header.
/// A code fence cut between parts is closed and reopened.
fn split(summary: &str, lines: &[String], header: impl Fn(usize, usize) -> String) -> Vec<String> {
    let mut bodies = vec![format!("{summary}\n\n")];
    let mut in_fence = false;
    for line in lines {
        let Some(current) = bodies.last_mut() else { break };
        if current.chars().count() + line.chars().count() + 8 > PART_BUDGET {
            if in_fence {
                current.push_str("```\n");
            }
            bodies.push(if in_fence { "```diff\n".to_owned() } else { String::new() });
        }
        if line.starts_with("```") {
            in_fence = !in_fence;
        }
        if let Some(current) = bodies.last_mut() {
            current.push_str(line);
            current.push('\n');
        }
    }
    let parts = bodies.len();
    bodies.into_iter().enumerate().map(|(i, body)| format!("{}{body}", header(i + 1, parts))).collect()
}

/// `text` as a Markdown code span: nothing in it is rendered (no link, mention, image, HTML or
/// hidden comment), control characters dropped, at most [`MAX_LINE_CHARS`]. The fence is one
/// backtick longer than the longest run of backticks inside.
fn code_span(text: &str) -> String {
    let text = line(text);
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    format!("{fence} {text} {fence}")
}

/// A line of text for Markdown: control characters dropped, at most [`MAX_LINE_CHARS`].
fn line(text: &str) -> String {
    let clean: String = text.chars().filter(|c| !c.is_control()).take(MAX_LINE_CHARS).collect();
    if text.chars().count() > MAX_LINE_CHARS { format!("{clean}…") } else { clean }
}

fn state_of(run: &RunView) -> RunState {
    run.state.parse().unwrap_or(RunState::Failed)
}

fn is_proposed(run: &RunView) -> bool {
    run.kind == RunKind::Proposed.as_str()
}

fn headline(run: &RunView, state: RunState) -> &'static str {
    match state {
        RunState::Queued => "⏳ Queued",
        RunState::Planning => "⏳ Planning",
        RunState::Planned => "⏸️ Planned: waiting for approval",
        RunState::Applying => "⏳ Applying",
        RunState::Finished if is_proposed(run) => "✅ Planned (proposed: never applied)",
        RunState::Finished => "✅ Applied",
        RunState::Failed => "❌ Failed",
        RunState::Discarded => "❌ Rejected at review",
        RunState::Interrupted => "⚠️ Apply interrupted",
        RunState::Canceled => "⏹️ Canceled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::{ChangeAction, ResourceChange};

    fn run(state: &str, kind: &str) -> RunView {
        RunView {
            id: "run-1".to_owned(),
            stack: "network".to_owned(),
            state: state.to_owned(),
            kind: kind.to_owned(),
            drift: None,
            commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            git_ref: None,
            pull_request: Some(42),
            ticket: None,
            pull_request_source: Some("github".to_owned()),
            triggered_by: "github:octocat".to_owned(),
            detail: None,
            created_at: 1,
            updated_at: 2,
            reviews: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn changes(n: usize) -> PlanChanges {
        PlanChanges {
            changes: (0..n)
                .map(|i| ResourceChange { address: format!("terraform_data.item[{i}]"), action: ChangeAction::Create })
                .collect(),
            warnings: vec!["bucket logs is not encrypted".to_owned()],
            denials: Vec::new(),
        }
    }

    #[test]
    fn statuses_follow_the_run() {
        let planned = changes(2);
        assert_eq!(status(&run("planning", "proposed"), None).state, StatusState::Pending);
        let done = status(&run("finished", "proposed"), Some(&planned));
        assert_eq!(
            (done.state, done.description.as_str()),
            (StatusState::Success, "Planned: 2 to add, 0 to change, 0 to destroy")
        );
        let waiting = status(&run("planned", "deploy"), Some(&planned));
        assert_eq!(waiting.state, StatusState::Pending);
        assert!(waiting.description.ends_with("waiting for approval"));
        assert_eq!(status(&run("failed", "deploy"), None).state, StatusState::Failure);
        assert_eq!(status(&run("canceled", "deploy"), None).state, StatusState::Error);
    }

    #[test]
    fn a_comment_names_its_stack_the_changes_and_the_warnings() {
        let parts = comment("network", &run("finished", "proposed"), Some(&changes(2)), "https://kw/v1/runs/run-1");
        assert_eq!(parts.len(), 1);
        let body = &parts[0];
        assert!(
            body.starts_with("<!-- keyward:stack=network -->\n### Keyward · `network` · proposed plan\n"),
            "{body}"
        );
        assert!(body.contains("**Plan:** 2 to add, 0 to change, 0 to destroy."), "{body}");
        assert!(body.contains("+ terraform_data.item[1] (create)"), "{body}");
        assert!(body.contains("**Policy warnings**\n- ` bucket logs is not encrypted `"), "{body}");
        assert!(body.contains("[`run-1`](https://kw/v1/runs/run-1) at `0123456789ab`"), "{body}");
    }

    #[test]
    fn a_failed_runs_detail_never_reaches_github() {
        let mut failed = run("failed", "proposed");
        failed.detail =
            Some("plan failed: the command exited with 1: Error: hunter2-secret-from-a-data-source".to_owned());
        let parts = comment("network", &failed, None, "https://kw/r");
        assert!(!parts[0].contains("hunter2"), "{}", parts[0]);
        assert!(parts[0].contains("❌ Failed") && parts[0].contains(WHY_IN_KEYWARD), "{}", parts[0]);
        assert!(!status(&failed, None).description.contains("hunter2"));
    }

    #[test]
    fn policy_messages_cannot_add_links_mentions_html_or_markers() {
        let hostile = "x](https://evil.example) @org/admins <!-- keyward:stack=other --> <img src=x> ```";
        let changes = PlanChanges { denials: vec![hostile.to_owned(), "plain".to_owned()], ..changes(1) };
        let body = &comment("network", &run("failed", "proposed"), Some(&changes), "https://kw/r")[0];
        let line = body.lines().find(|l| l.contains("evil.example")).unwrap_or_default();
        assert_eq!(line, format!("- ```` {hostile} ````"), "{body}");
        assert!(body.contains("- ` plain `"), "{body}");
        assert_eq!(
            body.matches("<!-- keyward:stack=").count(),
            2,
            "the real marker, and the quoted one inside a code span"
        );
        assert!(body.starts_with("<!-- keyward:stack=network -->"));
    }

    #[test]
    fn a_long_plan_is_split_under_the_limit_with_its_fences_closed() {
        let parts = comment("network", &run("finished", "proposed"), Some(&changes(4_000)), "https://kw/r");
        assert!(parts.len() > 1, "{}", parts.len());
        for (i, part) in parts.iter().enumerate() {
            assert!(part.chars().count() <= MAX_COMMENT_CHARS, "part {i}: {}", part.chars().count());
            assert!(part.contains(&format!("(part {} of {})", i + 1, parts.len())), "{part:.200}");
            assert_eq!(part.matches("```").count() % 2, 0, "part {i} leaves a fence open");
        }
        let all = parts.concat();
        assert!(all.contains("terraform_data.item[0] ") && all.contains("terraform_data.item[3999] "));
    }
}
