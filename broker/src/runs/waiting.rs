//! Why a queued job is still queued, when its pool's agents can say: no active agent at all, or
//! none that has the stack's tool. `keyward run show` and the console's run page print it with
//! the job, so a run that would wait forever says what it waits for instead of looking stuck.
//!
//! Read from the agents' rows (every replica's), not from this replica's connections: an agent
//! that is enrolled and active but offline still counts, since it takes the job when it is back.

use std::collections::BTreeMap;

use super::tool::{EXEC_ISOLATION, Tool};
use crate::store::AgentRow;

/// What a queued job of a stack run by `tool` waits for in `pool`, given the agents `agents`
/// (any pools; the others are ignored); `None` when an active agent of the pool could take it
/// (it waits for a free slot or the next dispatch round, which is not news).
pub(super) fn waiting_for(pool: &str, tool: Tool, agents: &[AgentRow]) -> Option<String> {
    let active: Vec<&AgentRow> = agents.iter().filter(|agent| agent.pool == pool && agent.state == "active").collect();
    if active.is_empty() {
        return Some(format!(
            "no active agent in pool `{pool}`: enroll one with a token from `keyward pool join-token {pool}`"
        ));
    }
    if active.iter().any(|agent| can_run(agent, tool)) {
        return None;
    }
    let tool = tool.as_str();
    Some(format!("no active agent in pool `{pool}` has {tool} (the stack's tool): start one with --{tool}-binary PATH"))
}

/// Whether `agent` takes jobs of stacks run by `tool`, by what it reported in its last Hello
/// (the dispatcher's rule: `grpc::wire::tools`).
fn can_run(agent: &AgentRow, tool: Tool) -> bool {
    if agent.isolation.as_deref().is_some_and(|isolation| isolation.ends_with(EXEC_ISOLATION)) {
        return true;
    }
    match agent.tools.as_deref().map(serde_json::from_str::<BTreeMap<String, String>>) {
        // An agent older than tool reports runs Terraform alone.
        None => tool == Tool::Terraform,
        Some(Ok(tools)) => tools.contains_key(tool.as_str()),
        // Unreadable: say nothing rather than something false.
        Some(Err(_)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(pool: &str, state: &str, tools: Option<&str>, isolation: &str) -> AgentRow {
        AgentRow {
            pool: pool.to_owned(),
            state: state.to_owned(),
            tools: tools.map(str::to_owned),
            isolation: Some(isolation.to_owned()),
            ..AgentRow::default()
        }
    }

    #[test]
    fn a_pool_without_active_agents_says_so() {
        let elsewhere = agent("green", "active", None, "process");
        let draining = agent("blue", "draining", None, "process");
        let said = waiting_for("blue", Tool::Terraform, &[elsewhere, draining]).unwrap_or_default();
        assert_eq!(said, "no active agent in pool `blue`: enroll one with a token from `keyward pool join-token blue`");
    }

    #[test]
    fn a_pool_without_the_stack_s_tool_names_it_and_the_flag() {
        let terraform = agent("blue", "active", Some(r#"{"terraform":"1.11.4"}"#), "sandbox network=none");
        let said = waiting_for("blue", Tool::Tofu, std::slice::from_ref(&terraform)).unwrap_or_default();
        assert_eq!(
            said,
            "no active agent in pool `blue` has tofu (the stack's tool): start one with --tofu-binary PATH"
        );
        assert_eq!(waiting_for("blue", Tool::Terraform, &[terraform]), None);
    }

    #[test]
    fn old_agents_run_terraform_and_exec_agents_run_anything() {
        let old = agent("blue", "active", None, "process");
        assert_eq!(waiting_for("blue", Tool::Terraform, std::slice::from_ref(&old)), None);
        assert!(waiting_for("blue", Tool::Tofu, &[old]).is_some());
        let exec = agent("blue", "active", Some(r#"{"terraform":"1.11.4"}"#), &format!("process{EXEC_ISOLATION}"));
        assert_eq!(waiting_for("blue", Tool::Tofu, &[exec]), None);
        let unreadable = agent("blue", "active", Some("not json"), "process");
        assert_eq!(waiting_for("blue", Tool::Tofu, &[unreadable]), None, "nothing false said");
    }
}
