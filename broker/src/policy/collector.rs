//! The broker's own policy module, `package keyward_broker_outputs`: for each policy kind, one rule
//! whose value is the set of `[rule, value]` pairs of the output rules that kind's package defines.
//!
//! A decision is one `eval_rule` of that kind's collector rule, so regorus evaluates only what the
//! outputs depend on (helper rules no output uses are never run) and hands back only the outputs.
//! The module is generated per policy set from what the set declares:
//! - an output no module declares (and `data.json` does not provide) is left out, because every
//!   collector body costs a rule lookup even when the rule is undefined;
//! - a `run` or `plan` package that declares `deny` but no `allow` (the deny-only shape these kinds
//!   had before `allow` was required) gets its `allow` from here: true whenever its `deny` is
//!   defined, so such a policy keeps allowing what it does not deny, while a set with no such
//!   package at all denies by default.
//!
//! When in doubt whether an output is declared (regorus cannot classify a rule head), the body is
//! kept: an extra body costs time, a missing one would drop an output the policy meant.

use super::PolicyKind;

/// The reserved package (a policy set that defines it fails to load).
pub(super) const PACKAGE: &str = "keyward_broker_outputs";

/// The rules the broker reads from each policy kind's package.
pub(super) fn output_rules(kind: PolicyKind) -> &'static [&'static str] {
    match kind {
        PolicyKind::Credentials => &["allow", "deny", "ttl_seconds", "session_policy"],
        PolicyKind::Run | PolicyKind::Plan | PolicyKind::Scan => &["allow", "deny", "warn"],
        PolicyKind::Approval => &["approve", "reject", "pending"],
        PolicyKind::Push => &["propose", "track", "reasons"],
    }
}

/// What one kind's package provides, as far as the collector is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Outputs {
    kind: PolicyKind,
    /// The output rules some module declares (or data provides), in [`output_rules`] order.
    declared: Vec<&'static str>,
}

impl Outputs {
    /// Finds which of `kind`'s output rules `engine`'s modules declare or its data provides.
    pub(super) fn of(engine: &regorus::Engine, kind: PolicyKind) -> Self {
        let package: Vec<&str> = kind.package().split('.').collect();
        let modules = engine.get_policy_package_components().ok();
        let data = engine.get_data();
        let package_data = package.iter().fold(data, |value, component| value[*component].clone());
        let declared = output_rules(kind)
            .iter()
            .copied()
            .filter(|rule| {
                let Some(modules) = &modules else { return true };
                package_data[*rule] != regorus::Value::Undefined
                    || modules.iter().any(|module| declares(engine, module, &package, rule))
            })
            .collect();
        Self { kind, declared }
    }

    /// Whether the package declares `rule`.
    pub(super) fn declares(&self, rule: &str) -> bool {
        self.declared.contains(&rule)
    }

    /// A `run` or `plan` package with `deny` and no `allow`: allowed when no `deny` message.
    pub(super) fn deny_only(&self) -> bool {
        matches!(self.kind, PolicyKind::Run | PolicyKind::Plan | PolicyKind::Scan)
            && !self.declares("allow")
            && self.declares("deny")
    }
}

/// Whether `module` declares `rule` of `package` (the module's own package being `package` or an
/// ancestor of it, with a rule head reaching down). An error classifying a head counts as yes.
fn declares(engine: &regorus::Engine, module: &regorus::PolicyPackageComponents, package: &[&str], rule: &str) -> bool {
    let Some(rest) = package.strip_prefix(module.components.iter().map(String::as_str).collect::<Vec<_>>().as_slice())
    else {
        return false;
    };
    let selector = rest.iter().copied().chain([rule]).collect::<Vec<_>>().join(".");
    engine.has_declared_rule_rooted_at(&module.source_file, &selector).unwrap_or(true)
}

/// The collector module for a set whose kinds provide `outputs`.
pub(super) fn module(outputs: &[Outputs]) -> String {
    let mut module = format!("package {PACKAGE}\n");
    for output in outputs {
        let (kind, package) = (output.kind.as_str(), output.kind.package());
        // A kind with no output at all still needs its rule (it evaluates to the empty set).
        let rules = if output.declared.is_empty() { output_rules(output.kind) } else { &output.declared };
        for rule in rules {
            module.push_str(&format!("{kind} contains [\"{rule}\", value] if {{ value := data.{package}.{rule} }}\n"));
        }
        if output.deny_only() {
            module.push_str(&format!("{kind} contains [\"allow\", true] if {{ _ := data.{package}.deny }}\n"));
        }
    }
    module
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(sources: &[(&str, &str)]) -> regorus::Engine {
        let mut engine = regorus::Engine::new();
        for (name, text) in sources {
            engine.add_policy((*name).to_owned(), (*text).to_owned()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        engine
    }

    #[test]
    fn only_declared_outputs_are_collected() {
        let engine = engine(&[(
            "c.rego",
            "package keyward.credentials\n\ndefault allow := false\n\ndeny contains \"x\" if input.x\n",
        )]);
        let outputs = Outputs::of(&engine, PolicyKind::Credentials);
        assert_eq!(outputs.declared, ["allow", "deny"]);
        assert_eq!(Outputs::of(&engine, PolicyKind::Run).declared, Vec::<&str>::new());
    }

    #[test]
    fn rules_declared_from_a_parent_package_or_in_data_count() {
        let mut engine = engine(&[("k.rego", "package keyward\n\ncredentials.ttl_seconds := 900\n")]);
        engine
            .add_data(regorus::Value::from(serde_json::json!({"keyward": {"credentials": {"session_policy": {}}}})))
            .unwrap();
        assert_eq!(Outputs::of(&engine, PolicyKind::Credentials).declared, ["ttl_seconds", "session_policy"]);
    }

    #[test]
    fn a_deny_only_run_package_gets_an_allow_and_a_positive_one_does_not() {
        let deny_only = engine(&[("r.rego", "package keyward.run\n\ndeny contains \"no\" if input.x\n")]);
        let outputs = Outputs::of(&deny_only, PolicyKind::Run);
        assert!(outputs.deny_only());
        assert!(module(&[outputs]).contains("run contains [\"allow\", true] if { _ := data.keyward.run.deny }"));
        let positive = engine(&[(
            "r.rego",
            "package keyward.run\n\ndefault allow := false\n\nallow if input.y\n\ndeny contains \"no\" if input.x\n",
        )]);
        assert!(!Outputs::of(&positive, PolicyKind::Run).deny_only());
        let credentials = engine(&[("c.rego", "package keyward.credentials\n\ndeny contains \"no\" if input.x\n")]);
        assert!(!Outputs::of(&credentials, PolicyKind::Credentials).deny_only(), "credentials always needs allow");
    }
}
