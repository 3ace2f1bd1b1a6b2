//! The agents page: every agent in the pools the caller may read — connected or not, active,
//! draining or revoked, what it runs (version, Terraform, isolation) and when a broker last heard
//! from it.

use maud::{Markup, html};

use super::layout::page;
use crate::agents::AgentView;
use crate::clock::rfc3339;

/// The agents list for `who`.
pub fn list(agents: &[AgentView], who: &str) -> Markup {
    let connected = agents.iter().filter(|a| a.connected).count();
    let body = html! {
        h1 { "Agents" }
        p { (agents.len()) " agents; " (connected) " connected." }
        @if agents.is_empty() {
            p.muted { "No agents yet: " code { "keyward pool join-token POOL" } ", then " code { "keyward-agent join" } "." }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "Agent" } th { "Pool" } th { "State" } th { "Connected" } th { "Version" } th { "Terraform" } th { "Isolation" } th { "Last seen" } } }
                    tbody {
                        @for agent in agents {
                            tr {
                                td { span.mono { (agent.id.get(..13).unwrap_or(&agent.id)) } br; span.muted { (agent.hostname) } }
                                td { (agent.pool) }
                                td { span class=(format!("state state-{}", state_class(&agent.state))) { (agent.state) }
                                     @if let Some(by) = &agent.revoked_by { " " span.muted { "by " (by) } } }
                                td { @if agent.connected { "yes" } @else { span.muted { "no" } } }
                                td { (agent.version) }
                                td { (agent.terraform_version.as_deref().unwrap_or("-")) }
                                td { (agent.isolation.as_deref().unwrap_or("-")) }
                                td.mono { (agent.last_seen_at.map(rfc3339).unwrap_or_else(|| "-".to_owned())) }
                            }
                        }
                    }
                }
            }
        }
    };
    page("Agents", Some(who), body)
}

/// The stylesheet's class for an agent's state.
fn state_class(state: &str) -> &'static str {
    match state {
        "active" => "finished",
        "draining" => "planned",
        _ => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_show_their_state_and_everything_is_escaped() {
        let agent = AgentView {
            id: "01a2b3c4-d5e6-7f80".to_owned(),
            pool: "default".to_owned(),
            spiffe_id: "spiffe://keyward/agent/x".to_owned(),
            state: "revoked".to_owned(),
            hostname: "<script>host</script>".to_owned(),
            version: "0.1.0".to_owned(),
            serial: "01".to_owned(),
            not_after: 0,
            enrolled_at: 0,
            last_seen_at: Some(60),
            revoked_at: Some(61),
            revoked_by: Some("admin".to_owned()),
            connected: false,
            terraform_version: Some("1.11.4".to_owned()),
            isolation: Some("sandbox network=none".to_owned()),
        };
        let html = list(&[agent], "me").into_string();
        assert!(
            html.contains("1 agents; 0 connected.") && html.contains("by admin") && html.contains("1.11.4"),
            "{html}"
        );
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;host"), "{html}");
    }
}
