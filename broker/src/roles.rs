//! Roles in spaces: what a caller may do where, and how a caller's identity becomes the roles it
//! holds.
//!
//! Spaces form a tree under `root`; a role held in a space holds in every space under it. The
//! four roles are ordered, each allowing what the one before allows and more (docs/access.md,
//! "Spaces and roles"):
//!
//! - `viewer` reads the space's stacks, runs, logs, pools, agents and audit entries;
//! - `submitter` also submits and cancels runs;
//! - `reviewer` also approves and rejects runs (never counted for the reviewer's own runs);
//! - `admin` also manages the space's stacks, pools, agents, child spaces, bindings and tokens.
//!
//! A caller's identity is generic: an API token holds exactly one role in one space; a person
//! holds what the bindings of their subject and groups give them ([`person_grants`]). Either way
//! the result is [`Grants`], and checks only ever ask [`Grants::role_in`]. Nothing here does I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The space that always exists, at the top of the tree.
pub const ROOT: &str = "root";

/// A role, from least to most privileged (the order is the derive's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads the space's stacks, runs, logs, pools, agents and audit entries.
    Viewer,
    /// Also submits and cancels runs.
    Submitter,
    /// Also approves and rejects runs.
    Reviewer,
    /// Also manages the space's stacks, pools, agents, child spaces, bindings and tokens.
    Admin,
}

impl Role {
    /// Every role, least privileged first.
    pub const ALL: [Self; 4] = [Self::Viewer, Self::Submitter, Self::Reviewer, Self::Admin];

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Submitter => "submitter",
            Self::Reviewer => "reviewer",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: expected viewer, submitter, reviewer or admin")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|role| role.as_str() == s).ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// One role held in one space (and so in every space under it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Grant {
    /// The space.
    pub space: String,
    /// The role.
    pub role: Role,
}

/// Everything a caller holds: for an API token one grant, for a person one per matching binding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants(Vec<Grant>);

impl Grants {
    /// A single role in a single space: what an API token holds.
    pub fn one(space: impl Into<String>, role: Role) -> Self {
        Self(vec![Grant { space: space.into(), role }])
    }

    /// The grants, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }

    /// The highest role held in a space whose chain (the space, then its parent, … up to `root`)
    /// is `chain`: the best grant on any space of the chain. `None`: nothing there.
    pub fn role_in(&self, chain: &[String]) -> Option<Role> {
        self.0.iter().filter(|grant| chain.contains(&grant.space)).map(|grant| grant.role).max()
    }

    /// The highest role held anywhere: whether a caller could do `role`'s things somewhere.
    pub fn highest(&self) -> Option<Role> {
        self.0.iter().map(|grant| grant.role).max()
    }

    /// The highest role per space where one is granted directly, for policies (`input.actor.roles`).
    pub fn by_space(&self) -> BTreeMap<String, Role> {
        let mut roles = BTreeMap::new();
        for grant in &self.0 {
            let held = roles.entry(grant.space.clone()).or_insert(grant.role);
            *held = (*held).max(grant.role);
        }
        roles
    }
}

/// A role binding: `role` in `space` for everyone in `group`, or for the person `subject`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// The space.
    pub space: String,
    /// The role.
    pub role: Role,
    /// The identity provider's group it applies to.
    pub group: Option<String>,
    /// The person (`issuer#subject`) it applies to.
    pub subject: Option<String>,
}

/// What kind of caller acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    /// An API token (a machine identity).
    Token,
    /// A person signed in through the identity provider.
    Person,
    /// The broker itself (the drift scheduler, remediation) or an embedding caller known by
    /// name only.
    Broker,
}

/// Who acted, as policies see it (`input.actor` in `keyward.run` and `keyward.approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// `token`, `person` or `broker`.
    pub kind: ActorKind,
    /// The token's name, or the person's display name.
    pub name: String,
    /// A person's `issuer#subject`; `None` for a token.
    pub subject: Option<String>,
    /// A person's groups; empty for a token.
    pub groups: Vec<String>,
    /// The highest role per space granted directly (inherited below each).
    pub roles: BTreeMap<String, Role>,
    /// How a person authenticated (the ID token's `amr`, e.g. `["pwd", "mfa"]`); empty for a token.
    pub amr: Vec<String>,
}

impl Actor {
    /// An API token named `name` holding `grants`.
    pub fn token(name: &str, grants: &Grants) -> Self {
        Self {
            kind: ActorKind::Token,
            name: name.to_owned(),
            subject: None,
            groups: Vec::new(),
            roles: grants.by_space(),
            amr: Vec::new(),
        }
    }

    /// Who this is on the record (a run's author, a reviewer, an audit entry's actor): a person's
    /// `issuer#subject`, as the identity provider vouched; a token's or the broker's name.
    pub fn id(&self) -> &str {
        self.subject.as_deref().unwrap_or(&self.name)
    }

    /// The broker acting on its own, or a caller known by name only.
    pub fn broker(name: &str) -> Self {
        Self { kind: ActorKind::Broker, roles: BTreeMap::new(), ..Self::token(name, &Grants::default()) }
    }
}

/// What a person with `subject` (`issuer#subject`) in `groups` holds, given every binding.
pub fn person_grants(subject: &str, groups: &[String], bindings: &[Binding]) -> Grants {
    let matches = |binding: &&Binding| {
        binding.subject.as_deref() == Some(subject)
            || binding.group.as_ref().is_some_and(|group| groups.contains(group))
    };
    let mut grants: Vec<Grant> =
        bindings.iter().filter(matches).map(|b| Grant { space: b.space.clone(), role: b.role }).collect();
    grants.sort();
    grants.dedup();
    Grants(grants)
}

/// The space tree: each space's parent. Built from the stored rows; answers the chain of a
/// space (the space, its parent, … `root`), which is what every role check asks about.
#[derive(Debug, Clone, Default)]
pub struct SpaceTree(BTreeMap<String, Option<String>>);

impl SpaceTree {
    /// The tree of `(name, parent)` pairs.
    pub fn new(spaces: impl IntoIterator<Item = (String, Option<String>)>) -> Self {
        Self(spaces.into_iter().collect())
    }

    /// Whether `space` exists.
    pub fn contains(&self, space: &str) -> bool {
        self.0.contains_key(space)
    }

    /// The space and its ancestors up to `root`; `None` if `space` does not exist. A parent
    /// loop (which the store's rules never make) ends the chain rather than the broker.
    pub fn chain(&self, space: &str) -> Option<Vec<String>> {
        let mut chain = vec![space.to_owned()];
        let mut parent = self.0.get(space)?.as_ref();
        while let Some(next) = parent {
            if chain.contains(next) || chain.len() > self.0.len() {
                break;
            }
            chain.push(next.clone());
            parent = self.0.get(next.as_str()).and_then(Option::as_ref);
        }
        Some(chain)
    }

    /// Whether `space` is `ancestor` or lies under it.
    pub fn within(&self, space: &str, ancestor: &str) -> bool {
        self.chain(space).is_some_and(|chain| chain.iter().any(|s| s == ancestor))
    }

    /// The spaces directly under `space`.
    pub fn children(&self, space: &str) -> Vec<String> {
        self.0.iter().filter(|(_, parent)| parent.as_deref() == Some(space)).map(|(name, _)| name.clone()).collect()
    }

    /// The role `grants` hold in `space` (`None` for an unknown space).
    pub fn role_of(&self, grants: &Grants, space: &str) -> Option<Role> {
        grants.role_in(&self.chain(space)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(spaces: &[&str]) -> Vec<String> {
        spaces.iter().map(|s| (*s).to_owned()).collect()
    }

    fn binding(space: &str, role: Role, group: Option<&str>, subject: Option<&str>) -> Binding {
        Binding { space: space.into(), role, group: group.map(Into::into), subject: subject.map(Into::into) }
    }

    #[test]
    fn the_tree_answers_chains_and_stops_at_loops() {
        let tree = SpaceTree::new([
            ("root".to_owned(), None),
            ("payments".to_owned(), Some("root".to_owned())),
            ("cards".to_owned(), Some("payments".to_owned())),
            ("a".to_owned(), Some("b".to_owned())),
            ("b".to_owned(), Some("a".to_owned())),
        ]);
        assert_eq!(tree.chain("cards"), Some(chain(&["cards", "payments", "root"])));
        assert_eq!(tree.chain("nope"), None);
        assert_eq!(tree.chain("a"), Some(chain(&["a", "b"])), "a loop ends the chain");
        assert!(tree.within("cards", "payments") && tree.within("cards", "root") && !tree.within("payments", "cards"));
        assert_eq!(tree.children("payments"), ["cards"]);
        assert_eq!(tree.role_of(&Grants::one("payments", Role::Viewer), "cards"), Some(Role::Viewer));
    }

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Viewer < Role::Submitter && Role::Submitter < Role::Reviewer && Role::Reviewer < Role::Admin);
        assert_eq!("reviewer".parse::<Role>(), Ok(Role::Reviewer));
        assert_eq!("owner".parse::<Role>().map_err(|e| e.to_string()), Err(UnknownRole("owner".into()).to_string()));
    }

    #[test]
    fn a_role_holds_down_the_tree_never_up_or_sideways() {
        let grants = Grants::one("payments", Role::Reviewer);
        assert_eq!(grants.role_in(&chain(&["payments", "root"])), Some(Role::Reviewer));
        assert_eq!(grants.role_in(&chain(&["cards", "payments", "root"])), Some(Role::Reviewer), "inherited");
        assert_eq!(grants.role_in(&chain(&["root"])), None, "not upwards");
        assert_eq!(grants.role_in(&chain(&["search", "root"])), None, "not sideways");
    }

    #[test]
    fn the_best_grant_on_the_chain_wins() {
        let grants = Grants(vec![
            Grant { space: "root".into(), role: Role::Viewer },
            Grant { space: "payments".into(), role: Role::Admin },
        ]);
        assert_eq!(grants.role_in(&chain(&["payments", "root"])), Some(Role::Admin));
        assert_eq!(grants.role_in(&chain(&["search", "root"])), Some(Role::Viewer));
        assert_eq!(grants.highest(), Some(Role::Admin));
        assert_eq!(Grants::default().highest(), None);
    }

    #[test]
    fn a_person_holds_what_their_subject_and_groups_are_bound_to() {
        let bindings = [
            binding("payments", Role::Submitter, Some("payments-devs"), None),
            binding("payments", Role::Reviewer, None, Some("https://idp#alice")),
            binding("search", Role::Admin, Some("search-leads"), None),
            binding("root", Role::Viewer, Some("everyone"), None),
        ];
        let alice = person_grants("https://idp#alice", &["payments-devs".into(), "everyone".into()], &bindings);
        assert_eq!(
            alice.by_space(),
            BTreeMap::from([("payments".to_owned(), Role::Reviewer), ("root".to_owned(), Role::Viewer)])
        );
        assert_eq!(alice.role_in(&chain(&["search", "root"])), Some(Role::Viewer));
        let bob = person_grants("https://idp#bob", &["payments-devs".into()], &bindings);
        assert_eq!(bob.role_in(&chain(&["payments", "root"])), Some(Role::Submitter));
        // A group name equal to a subject binding's subject does not match it, and the reverse.
        let mallory = person_grants("https://idp#mallory", &["https://idp#alice".into()], &bindings);
        assert_eq!(mallory.highest(), None);
        assert_eq!(person_grants("payments-devs", &[], &bindings).highest(), None);
    }
}
