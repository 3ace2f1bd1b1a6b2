//! The agents page: every agent in the pools the caller may read — connected or not, active,
//! draining or revoked, what it runs (version, tools, isolation), the jobs it holds a lease
//! on now, and when a broker last heard from it. For a caller who administers an agent's pool,
//! the forms to drain and revoke it (revoking behind a `<details>` that explains it first, so one
//! stray click does nothing).

use maud::{Markup, html};

use super::layout::page;
use crate::agents::AgentView;
use crate::clock::rfc3339;

/// One agent as the page shows it.
#[derive(Debug, Clone)]
pub struct Listed<'a> {
    /// The agent.
    pub agent: &'a AgentView,
    /// The jobs it holds a lease on now.
    pub jobs: Vec<CurrentJob<'a>>,
    /// Whether the viewer administers its pool's space (may drain and revoke it).
    pub may_administer: bool,
}

/// A job an agent holds a lease on.
#[derive(Debug, Clone, Copy)]
pub struct CurrentJob<'a> {
    /// The job.
    pub id: &'a str,
    /// Its run.
    pub run_id: &'a str,
    /// `plan` or `apply`.
    pub phase: &'a str,
}

/// The agents list for `who`; `csrf` is the viewer's CSRF token for the forms (empty for a
/// caller authenticated by a bearer token).
pub fn list(agents: &[Listed<'_>], csrf: &str, who: &str) -> Markup {
    let connected = agents.iter().filter(|a| a.agent.connected).count();
    let busy = agents.iter().filter(|a| !a.jobs.is_empty()).count();
    let actions = agents.iter().any(|a| a.may_administer);
    let body = html! {
        h1 { "Agents" }
        p { (agents.len()) " agents; " (connected) " connected. " (busy) " running a job." }
        @if agents.is_empty() {
            p.muted { "No agents yet: " code { "keyward pool join-token POOL" } ", then " code { "keyward-agent join" } "." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th { "Agent" } th { "Pool" } th { "State" } th { "Current job" } th { "Connected" } th { "Version" }
                        th { "Tools" } th { "Isolation" } th { "Last seen" } @if actions { th { "Actions" } }
                    } }
                    tbody {
                        @for listed in agents {
                            (row(listed, actions, csrf))
                        }
                    }
                }
            }
        }
    };
    page("Agents", Some(who), body)
}

/// One agent's row; `actions`: whether the table has the actions column.
fn row(listed: &Listed<'_>, actions: bool, csrf: &str) -> Markup {
    let agent = listed.agent;
    html! {
        tr data-agent=(agent.id) {
            td { span.mono title=(agent.id) { (short(&agent.id)) } br; span.muted { (agent.hostname) } }
            td { (agent.pool) }
            td { span class=(format!("state state-{}", state_class(&agent.state))) { (agent.state) }
                 @if let Some(by) = &agent.revoked_by { " " span.muted { "by " (by) } } }
            td.current-job {
                @if listed.jobs.is_empty() { span.muted { "-" } }
                @for job in &listed.jobs {
                    div { (job.phase) " " a.mono href=(format!("/ui/runs/{}", percent(job.run_id))) title=(job.id) { (short(job.id)) } }
                }
            }
            td { @if agent.connected { "yes" } @else { span.muted { "no" } } }
            td { (agent.version) }
            td.tools { (tools(agent)) }
            td { (agent.isolation.as_deref().unwrap_or("-")) }
            td.mono { (agent.last_seen_at.map(rfc3339).unwrap_or_else(|| "-".to_owned())) }
            @if actions { td { @if listed.may_administer { (forms(agent, csrf)) } } }
        }
    }
}

/// Drain (an active agent) and revoke (any agent not yet revoked), for an administrator.
fn forms(agent: &AgentView, csrf: &str) -> Markup {
    let base = format!("/ui/agents/{}", percent(&agent.id));
    html! {
        @if agent.state == "active" {
            form.agent-action method="post" action=(format!("{base}/drain")) {
                input type="hidden" name=(super::CSRF_FIELD) value=(csrf);
                button type="submit" { "Drain" }
            }
        }
        @if agent.state != "revoked" {
            details.revoke {
                summary { "Revoke…" }
                p.note {
                    "Revoking ends its certificate and its work stream now, for good: the jobs it holds are not \
                     trusted (a plan fails, an apply is interrupted and never re-applied). To let it finish its \
                     work first, drain it. To bring the machine back, it joins again with a new join token."
                }
                form.agent-action method="post" action=(format!("{base}/revoke")) {
                    input type="hidden" name=(super::CSRF_FIELD) value=(csrf);
                    button.reject type="submit" { "Revoke agent " (short(&agent.id)) }
                }
            }
        }
    }
}

/// `terraform 1.11.4, tofu 1.8.0` as the agent reported them; an agent older than tool reports
/// runs Terraform alone, at the version it reported.
fn tools(agent: &AgentView) -> String {
    match &agent.tools {
        Some(tools) if !tools.is_empty() => {
            tools.iter().map(|(tool, version)| format!("{tool} {version}")).collect::<Vec<_>>().join(", ")
        }
        _ => {
            agent.terraform_version.as_deref().map_or_else(|| "-".to_owned(), |version| format!("terraform {version}"))
        }
    }
}

/// The stylesheet's class for an agent's state.
fn state_class(state: &str) -> &'static str {
    match state {
        "active" => "finished",
        "draining" => "planned",
        _ => "failed",
    }
}

/// The first characters of an ID (all of it when shorter).
fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

fn percent(segment: &str) -> String {
    keyward_proto::encoding::percent_encode(segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(state: &str, hostname: &str) -> AgentView {
        AgentView {
            id: "01a2b3c4-d5e6-7f80".to_owned(),
            pool: "default".to_owned(),
            spiffe_id: "spiffe://keyward/agent/x".to_owned(),
            state: state.to_owned(),
            hostname: hostname.to_owned(),
            version: "0.1.0".to_owned(),
            serial: "01".to_owned(),
            not_after: 0,
            enrolled_at: 0,
            last_seen_at: Some(60),
            revoked_at: (state == "revoked").then_some(61),
            revoked_by: (state == "revoked").then(|| "admin".to_owned()),
            connected: state != "revoked",
            terraform_version: Some("1.11.4".to_owned()),
            isolation: Some("sandbox network=none".to_owned()),
            tools: None,
        }
    }

    #[test]
    fn agents_show_their_state_and_everything_is_escaped() {
        let revoked = agent("revoked", "<script>host</script>");
        let html =
            list(&[Listed { agent: &revoked, jobs: Vec::new(), may_administer: true }], "tok", "me").into_string();
        assert!(
            html.contains("1 agents; 0 connected. 0 running a job.")
                && html.contains("by admin")
                && html.contains("1.11.4"),
            "{html}"
        );
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;host"), "{html}");
        assert!(!html.contains("<form"), "a revoked agent has nothing left to do: {html}");
    }

    #[test]
    fn an_agent_shows_the_tools_it_reported() {
        let mut both = agent("active", "h");
        both.tools =
            Some([("terraform", "1.11.4"), ("tofu", "1.8.<0>")].map(|(t, v)| (t.to_owned(), v.to_owned())).into());
        let html = list(&[Listed { agent: &both, jobs: Vec::new(), may_administer: false }], "", "me").into_string();
        assert!(html.contains(r#"<td class="tools">terraform 1.11.4, tofu 1.8.&lt;0&gt;</td>"#), "{html}");
        let old = agent("active", "h");
        let html = list(&[Listed { agent: &old, jobs: Vec::new(), may_administer: false }], "", "me").into_string();
        assert!(html.contains(r#"<td class="tools">terraform 1.11.4</td>"#), "{html}");
    }

    #[test]
    fn a_busy_agent_links_its_job_s_run() {
        let busy = agent("active", "h");
        let job = CurrentJob { id: "0b1c2d3e-job-id", run_id: "0a1b-run\"><script>", phase: "apply" };
        let html = list(&[Listed { agent: &busy, jobs: vec![job], may_administer: false }], "", "me").into_string();
        assert!(html.contains("1 running a job.") && html.contains("apply <a"), "{html}");
        assert!(html.contains(r#"href="/ui/runs/0a1b-run%22%3E%3Cscript%3E""#), "{html}");
        assert!(html.contains("0b1c2d3e-job-"), "{html}");
    }

    #[test]
    fn only_an_administrator_gets_the_forms_and_revoking_takes_two_clicks() {
        let active = agent("active", "h");
        let viewer =
            list(&[Listed { agent: &active, jobs: Vec::new(), may_administer: false }], "", "me").into_string();
        assert!(!viewer.contains("<form") && !viewer.contains("Revoke") && !viewer.contains("Actions"), "{viewer}");

        let admin =
            list(&[Listed { agent: &active, jobs: Vec::new(), may_administer: true }], "t\"ok", "me").into_string();
        assert!(admin.contains(r#"action="/ui/agents/01a2b3c4-d5e6-7f80/drain""#), "{admin}");
        assert!(admin.contains(r#"name="csrf" value="t&quot;ok""#), "{admin}");
        let details = admin.find("<details").unwrap_or(usize::MAX);
        let revoke = admin.find(r#"action="/ui/agents/01a2b3c4-d5e6-7f80/revoke""#).unwrap_or(0);
        let closed = admin.find("</details>").unwrap_or(0);
        assert!(details < revoke && revoke < closed, "the revoke form is inside the closed details: {admin}");
        assert!(!admin.contains("<details open"), "{admin}");

        let draining = agent("draining", "h");
        let html =
            list(&[Listed { agent: &draining, jobs: Vec::new(), may_administer: true }], "t", "me").into_string();
        assert!(!html.contains("/drain") && html.contains("/revoke"), "a draining agent can still be revoked: {html}");
    }
}
