//! What a stack's space allows it (docs/access.md, "Spaces and roles"): the space must exist,
//! its pool must belong to the space or one above it, and every target it names must serve the
//! space (`[[targets]] spaces`). Checked when a stack is created or updated; the credential path
//! checks the targets again for every job (`exchange`).

use std::collections::BTreeMap;

use super::spec::{SpecError, StackSpec};
use super::{RunError, Runs};
use crate::roles::SpaceTree;
use crate::targets::TargetConfig;

/// The rules for `spec` in `tree`, given the space its pool belongs to.
pub(super) fn check(
    spec: &StackSpec,
    pool_space: &str,
    tree: &SpaceTree,
    targets: &BTreeMap<String, TargetConfig>,
) -> Result<(), SpecError> {
    let Some(chain) = tree.chain(&spec.space) else {
        return Err(SpecError(format!("unknown space `{}`", spec.space)));
    };
    if !chain.iter().any(|space| space == pool_space) {
        return Err(SpecError(format!(
            "pool `{}` belongs to space `{pool_space}`; a stack in space `{}` may use pools of its space or the spaces above it",
            spec.pool, spec.space
        )));
    }
    for id in spec.plan_targets.iter().chain(&spec.apply_targets) {
        if let Some(target) = targets.get(id)
            && !target.serves(&chain)
        {
            return Err(SpecError(format!(
                "target `{id}` serves the spaces {} only (and those under them); stack space `{}` is not among them",
                target.spaces.join(", "),
                spec.space
            )));
        }
    }
    Ok(())
}

impl Runs {
    /// Checks `spec` against its space (see the module docs). The pool must exist.
    pub(super) async fn check_space(&self, spec: &StackSpec) -> Result<(), RunError> {
        let pool = self.store.pool(&spec.pool).await?.ok_or_else(|| RunError::NoSuchPool(spec.pool.clone()))?;
        let tree = crate::spaces::tree(&self.store).await?;
        Ok(check(spec, &pool.space, &tree, &self.targets)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::{TargetAccess, TargetKind, VaultTarget};

    fn tree() -> SpaceTree {
        SpaceTree::new([
            ("root".to_owned(), None),
            ("payments".to_owned(), Some("root".to_owned())),
            ("search".to_owned(), Some("root".to_owned())),
        ])
    }

    fn spec(space: &str, targets: &[&str]) -> StackSpec {
        let mut spec: StackSpec =
            serde_json::from_value(serde_json::json!({"name": "s", "repository": "https://example.com/r.git"}))
                .unwrap_or_else(|e| unreachable!("{e}"));
        space.clone_into(&mut spec.space);
        spec.apply_targets = targets.iter().map(|t| (*t).to_owned()).collect();
        spec
    }

    fn targets() -> BTreeMap<String, TargetConfig> {
        let target = TargetConfig {
            name: "pay".to_owned(),
            access: TargetAccess::Write,
            duration: std::time::Duration::from_secs(60),
            labels: BTreeMap::new(),
            write_subjects: Vec::new(),
            spaces: vec!["payments".to_owned()],
            kind: TargetKind::Vault(VaultTarget {
                address: "http://127.0.0.1:8200".to_owned(),
                auth_mount: "jwt".to_owned(),
                role: "r".to_owned(),
                audience: "vault".to_owned(),
                return_token: true,
                kv_reads: Vec::new(),
                pki_issues: Vec::new(),
            }),
        };
        BTreeMap::from([("vault:pay".to_owned(), target)])
    }

    #[test]
    fn a_stack_uses_only_what_its_space_may() {
        let (tree, targets) = (tree(), targets());
        assert_eq!(check(&spec("payments", &["vault:pay"]), "root", &tree, &targets), Ok(()));
        let refused = |spec: StackSpec, pool: &str| check(&spec, pool, &tree, &targets).err().map(|e| e.0);
        assert!(
            refused(spec("search", &["vault:pay"]), "root").is_some_and(|e| e.contains("serves the spaces payments"))
        );
        assert!(refused(spec("nowhere", &[]), "root").is_some_and(|e| e.contains("unknown space `nowhere`")));
        assert!(refused(spec("search", &[]), "payments").is_some_and(|e| e.contains("belongs to space `payments`")));
    }
}
