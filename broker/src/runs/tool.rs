//! Which program runs a stack's jobs: Terraform (the default) or OpenTofu (`keyward stack create
//! --tool tofu`; docs/agents.md, "OpenTofu"). The stack names it; each job's assignment carries
//! it; agents report the tools they have, and the dispatcher leases a job only to an agent that
//! has its stack's tool, so a pool mixing Terraform-only and OpenTofu agents never hands an
//! OpenTofu stack to an agent that would run it with the wrong binary.

use serde::{Deserialize, Serialize};

use super::spec::SpecError;

/// What the isolation text of an `--exec` agent ends with (the broker writes it from the agent's
/// Hello): such an agent runs its own command whatever the stack's tool.
pub const EXEC_ISOLATION: &str = ", runs --exec (not terraform)";

/// The program a stack's jobs run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// HashiCorp Terraform.
    #[default]
    Terraform,
    /// OpenTofu.
    Tofu,
}

impl Tool {
    /// Every tool.
    pub const ALL: [Self; 2] = [Self::Terraform, Self::Tofu];

    /// Its name in stacks, on the wire, in `input.stack.tool` and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terraform => "terraform",
            Self::Tofu => "tofu",
        }
    }

    /// The tool named `name`.
    pub fn parse(name: &str) -> Result<Self, SpecError> {
        Self::ALL.into_iter().find(|tool| tool.as_str() == name).ok_or_else(|| {
            SpecError(format!("unknown tool `{name}`; known: {}", Self::ALL.map(Self::as_str).join(", ")))
        })
    }

    fn bit(self) -> u8 {
        match self {
            Self::Terraform => 1,
            Self::Tofu => 2,
        }
    }
}

/// The tools one agent runs jobs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tools(u8);

impl Tools {
    /// Every tool: an `--exec` agent runs its own command whatever the stack's tool, and callers
    /// of the queue alone (tests) take any job.
    pub const ANY: Self = Self(3);
    /// Terraform alone: an agent older than tool reports.
    pub const TERRAFORM: Self = Self(1);

    /// Whether `tool` is among them.
    pub fn contains(self, tool: Tool) -> bool {
        self.0 & tool.bit() != 0
    }

    /// The tools of either set.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The tool of a set of exactly one; `None` for a set of several or none.
    pub fn single(self) -> Option<Tool> {
        let mut held = Tool::ALL.into_iter().filter(|tool| self.contains(*tool));
        match (held.next(), held.next()) {
            (Some(tool), None) => Some(tool),
            _ => None,
        }
    }
}

impl FromIterator<Tool> for Tools {
    fn from_iter<I: IntoIterator<Item = Tool>>(tools: I) -> Self {
        Self(tools.into_iter().fold(0, |bits, tool| bits | tool.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_of_one_tool_names_it_and_unions_hold_both() {
        let tofu: Tools = [Tool::Tofu].into_iter().collect();
        assert_eq!(tofu.single(), Some(Tool::Tofu));
        assert_eq!(Tools::TERRAFORM.single(), Some(Tool::Terraform));
        assert_eq!(Tools::ANY.single(), None);
        assert_eq!(std::iter::empty::<Tool>().collect::<Tools>().single(), None);
        assert_eq!(Tools::TERRAFORM.union(tofu), Tools::ANY);
        assert_eq!(tofu.union(tofu), tofu);
    }

    #[test]
    fn tools_parse_by_name_and_sets_hold_what_they_were_made_of() {
        assert_eq!(Tool::parse("tofu"), Ok(Tool::Tofu));
        assert_eq!(Tool::parse("terraform"), Ok(Tool::Terraform));
        let unknown = Tool::parse("pulumi").unwrap_err();
        assert_eq!(unknown.0, "unknown tool `pulumi`; known: terraform, tofu");
        let tofu_only: Tools = [Tool::Tofu].into_iter().collect();
        assert!(tofu_only.contains(Tool::Tofu) && !tofu_only.contains(Tool::Terraform));
        assert!(Tools::ANY.contains(Tool::Tofu) && Tools::ANY.contains(Tool::Terraform));
        assert!(!Tools::TERRAFORM.contains(Tool::Tofu));
        assert_eq!(serde_json::to_value(Tool::Tofu).unwrap(), serde_json::json!("tofu"));
        assert!(serde_json::from_value::<Tool>(serde_json::json!("Tofu")).is_err());
    }
}
