//! Sensitive values taken out of a plan's `terraform show -json` before anyone keeps or judges it.
//!
//! Terraform prints the values of sensitive variables, outputs and attributes in its JSON plan, and
//! says where they are in four shapes, found here wherever they occur (any module depth, resource
//! changes and drift alike):
//! - `before`/`after` with `before_sensitive`/`after_sensitive` beside them (a resource's change,
//!   an output's change);
//! - `values` with `sensitive_values` beside them (a resource in the planned values or the prior
//!   state);
//! - an object with `"sensitive": true`: its `value` (an output), its `default` (a variable's
//!   declaration) and the literal `constant_value`s of its `expression` (an output's);
//! - declarations elsewhere: a root variable's `value` in `variables` is sensitive when
//!   `configuration.root_module.variables.<name>.sensitive` is, and a module call's literal
//!   argument when the called module declares that variable sensitive.
//!
//! A mark mirrors the value: `true` marks the whole value at that place, an object or an array
//! marks its members, anything else marks nothing. A mark whose shape does not fit the value but
//! marks something marks the whole value (fail closed).
//!
//! A marked value (but `null`, which says only that there is none) becomes
//! `"(sensitive 0123456789abcdef)"`: HMAC-SHA256 of the value under a key drawn for this plan and
//! then forgotten. Within the plan equal values get equal markers, so a policy still sees whether
//! a sensitive value changed (`before` against `after`); nobody can test a guess against a marker.
//!
//! Terraform loses the mark where a provider echoes a sensitive value (`terraform_data`'s
//! `output` in the prior state carries the input's password unmarked). So, last, every string in
//! the plan that equals a marked string of at least [`MIN_SWEPT`] bytes is replaced too.
//!
//! What this cannot see, and docs/policies.md says so: a secret no mark points to and that equals
//! no marked string (a literal written into a resource argument), and object keys.

use std::collections::BTreeSet;
use std::fmt;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use serde_json::{Map, Value};

use keyward_proto::encoding::hex;

/// Marked strings shorter than this are replaced where they are marked, but not swept from the
/// rest of the plan (they would replace ordinary words).
pub const MIN_SWEPT: usize = 6;
/// How every marker begins.
pub const MARKER_PREFIX: &str = "(sensitive ";
/// Bytes of the HMAC a marker shows (64 bits: equality within one plan, nothing more).
const MARKER_BYTES: usize = 8;

/// Redacts one plan; its key exists only as long as it does.
pub struct Redactor {
    key: hmac::Key,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor(…)")
    }
}

/// What redacting found.
#[derive(Default)]
struct Found {
    /// Marked strings long enough to sweep.
    secrets: BTreeSet<String>,
    /// Values replaced.
    count: usize,
}

impl Redactor {
    /// A redactor with a fresh random key.
    pub fn new() -> Self {
        let mut key = [0u8; 32];
        if SystemRandom::new().fill(&mut key).is_err() {
            broken_rng();
        }
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, &key) }
    }

    #[cfg(test)]
    fn with_key(key: &[u8]) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, key) }
    }

    /// Replaces every sensitive value in `plan` (a `terraform show -json` document) with a marker;
    /// returns how many values it replaced.
    pub fn redact(&self, plan: &mut Value) -> usize {
        let mut found = Found::default();
        self.root_variables(plan, &mut found);
        self.walk(plan, &mut found);
        if !found.secrets.is_empty() {
            self.sweep(plan, &mut found);
        }
        found.count
    }

    fn marker(&self, value: &Value) -> Value {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let tag = hmac::sign(&self.key, &bytes);
        let shown = tag.as_ref().get(..MARKER_BYTES).unwrap_or_default();
        Value::String(format!("{MARKER_PREFIX}{})", hex(shown)))
    }

    /// `variables.<name>.value` for each root variable the configuration declares sensitive.
    fn root_variables(&self, plan: &mut Value, found: &mut Found) {
        let sensitive: Vec<String> = plan
            .pointer("/configuration/root_module/variables")
            .and_then(Value::as_object)
            .map(|declared| declared.iter().filter(|(_, d)| is_sensitive(d)).map(|(name, _)| name.clone()).collect())
            .unwrap_or_default();
        let Some(variables) = plan.get_mut("variables").and_then(Value::as_object_mut) else { return };
        for name in sensitive {
            if let Some(value) = variables.get_mut(&name).and_then(|v| v.get_mut("value")) {
                self.replace(value, found);
            }
        }
    }

    /// Applies the rules at `node`, then descends.
    fn walk(&self, node: &mut Value, found: &mut Found) {
        match node {
            Value::Object(map) => {
                for (field, marks) in
                    [("before", "before_sensitive"), ("after", "after_sensitive"), ("values", "sensitive_values")]
                {
                    let Some(mirror) = map.get(marks).cloned() else { continue };
                    if let Some(value) = map.get_mut(field) {
                        self.redact_marked(value, &mirror, found);
                    }
                }
                if map.get("sensitive").is_some_and(|s| s == &Value::Bool(true)) {
                    for field in ["value", "default"] {
                        if let Some(value) = map.get_mut(field) {
                            self.replace(value, found);
                        }
                    }
                    if let Some(expression) = map.get_mut("expression") {
                        self.redact_constants(expression, found);
                    }
                }
                self.module_call(map, found);
                for child in map.values_mut() {
                    self.walk(child, found);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.walk(item, found);
                }
            }
            _ => {}
        }
    }

    /// A module call (`expressions` beside the called `module`): the literal arguments of the
    /// variables the module declares sensitive.
    fn module_call(&self, call: &mut Map<String, Value>, found: &mut Found) {
        let sensitive: Vec<String> = call
            .get("module")
            .and_then(|m| m.get("variables"))
            .and_then(Value::as_object)
            .map(|declared| declared.iter().filter(|(_, d)| is_sensitive(d)).map(|(name, _)| name.clone()).collect())
            .unwrap_or_default();
        let Some(expressions) = call.get_mut("expressions").and_then(Value::as_object_mut) else { return };
        for name in sensitive {
            if let Some(expression) = expressions.get_mut(&name) {
                self.redact_constants(expression, found);
            }
        }
    }

    /// Every `constant_value` in an expression (or a nested block's expressions).
    fn redact_constants(&self, expression: &mut Value, found: &mut Found) {
        match expression {
            Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    if key == "constant_value" {
                        self.replace(value, found);
                    } else {
                        self.redact_constants(value, found);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.redact_constants(item, found);
                }
            }
            _ => {}
        }
    }

    /// Replaces what `mirror` marks in `value`.
    fn redact_marked(&self, value: &mut Value, mirror: &Value, found: &mut Found) {
        match (mirror, &mut *value) {
            (Value::Bool(true), _) => self.replace(value, found),
            (Value::Object(marks), Value::Object(members)) => {
                for (key, mark) in marks {
                    if let Some(member) = members.get_mut(key) {
                        self.redact_marked(member, mark, found);
                    }
                }
            }
            (Value::Array(marks), Value::Array(items)) => {
                for (item, mark) in items.iter_mut().zip(marks) {
                    self.redact_marked(item, mark, found);
                }
            }
            (Value::Object(_) | Value::Array(_), _) if marks_anything(mirror) => self.replace(value, found),
            _ => {}
        }
    }

    /// Replaces a whole marked value with its marker, remembering its strings for the sweep.
    fn replace(&self, value: &mut Value, found: &mut Found) {
        if value.is_null() {
            return;
        }
        collect_strings(value, &mut found.secrets);
        *value = self.marker(value);
        found.count += 1;
    }

    /// Every string equal to a marked one, wherever it is.
    fn sweep(&self, node: &mut Value, found: &mut Found) {
        match node {
            Value::String(text) if found.secrets.contains(text.as_str()) => {
                *node = self.marker(node);
                found.count += 1;
            }
            Value::Object(map) => {
                for child in map.values_mut() {
                    self.sweep(child, found);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.sweep(item, found);
                }
            }
            _ => {}
        }
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new()
    }
}

fn is_sensitive(declaration: &Value) -> bool {
    declaration.get("sensitive").is_some_and(|s| s == &Value::Bool(true))
}

fn marks_anything(mirror: &Value) -> bool {
    match mirror {
        Value::Bool(marked) => *marked,
        Value::Object(marks) => marks.values().any(marks_anything),
        Value::Array(marks) => marks.iter().any(marks_anything),
        _ => false,
    }
}

fn collect_strings(value: &Value, into: &mut BTreeSet<String>) {
    match value {
        Value::String(text) if text.len() >= MIN_SWEPT && !text.starts_with(MARKER_PREFIX) => {
            into.insert(text.clone());
        }
        Value::Object(map) => map.values().for_each(|v| collect_strings(v, into)),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, into)),
        _ => {}
    }
}

/// The system RNG failed: continuing would give every plan the same key.
#[cold]
#[allow(clippy::panic)]
fn broken_rng() -> ! {
    panic!("the system RNG failed")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CREATE: &str = include_str!("testdata/plan-create.json");
    const UPDATE: &str = include_str!("testdata/plan-update.json");
    /// Every sensitive value in the fixtures (testdata/README.md).
    const SECRETS: [&str; 6] = [
        "pw-One1Secr3t",
        "pw-Two2Secr3t",
        "tok-Api7Secr3t",
        "child-Literal5Secr3t",
        "output-Literal6Secr3t",
        "billing",
    ];

    fn redacted(text: &str) -> (Value, usize) {
        let mut plan: Value = serde_json::from_str(text).expect("fixture parses");
        let count = Redactor::with_key(b"test key").redact(&mut plan);
        (plan, count)
    }

    fn is_marker(value: &Value) -> bool {
        value.as_str().is_some_and(|s| s.starts_with(MARKER_PREFIX) && s.ends_with(')'))
    }

    #[test]
    fn the_fixtures_hold_the_secrets_unredacted() {
        // Otherwise the tests below would prove nothing.
        for secret in SECRETS {
            assert!(CREATE.contains(secret) || UPDATE.contains(secret), "{secret}");
        }
        assert!(CREATE.contains("pw-One1Secr3t\\\"\\u003c\\u0026\\u003e\\\\x"), "Go's JSON escapes are in the fixture");
    }

    #[test]
    fn no_sensitive_value_survives_in_a_real_plan() {
        for (name, text) in [("create", CREATE), ("update", UPDATE)] {
            let (plan, count) = redacted(text);
            let printed = plan.to_string();
            for secret in SECRETS {
                assert!(!printed.contains(secret), "{name}: {secret} survived: {printed}");
            }
            assert!(count > 10, "{name}: only {count} values were redacted");
            // What is not sensitive stays, for the policies.
            assert!(printed.contains("eu-west-1"), "{name}");
            assert_eq!(plan["resource_changes"][0]["address"], "terraform_data.api", "{name}");
            assert!(printed.contains("\"after_sensitive\""), "{name}: the marks stay");
        }
    }

    #[test]
    fn each_shape_of_mark_is_redacted_in_place() {
        let (plan, _) = redacted(CREATE);
        // Root variables, by their declaration.
        assert!(is_marker(&plan["variables"]["db_password"]["value"]));
        assert!(is_marker(&plan["variables"]["api"]["value"]));
        assert_eq!(plan["variables"]["region"]["value"], "eu-west-1");
        // before/after with their mirrors: a member of an object, an element of a list.
        let db = &plan["resource_changes"][1]["change"];
        assert_eq!(db["after"]["input"]["region"], "eu-west-1");
        assert!(is_marker(&db["after"]["input"]["password"]));
        assert_eq!(db["before"], Value::Null, "nothing before a create: null stays null");
        let list = &plan["resource_changes"][2]["change"]["after"]["input"];
        assert_eq!(list[0], "eu-west-1");
        assert!(is_marker(&list[1]));
        // values with sensitive_values, in a child module too.
        let child = &plan["planned_values"]["root_module"]["child_modules"][0]["resources"][0];
        assert!(is_marker(&child["values"]["input"]));
        // Outputs: planned, changed, and the literal in the configuration.
        assert!(is_marker(&plan["planned_values"]["outputs"]["literal"]["value"]));
        assert_eq!(plan["planned_values"]["outputs"]["region"]["value"], "eu-west-1");
        assert!(is_marker(&plan["output_changes"]["password"]["after"]));
        let config = &plan["configuration"]["root_module"];
        assert!(is_marker(&config["outputs"]["literal"]["expression"]["constant_value"]));
        // Declarations: a sensitive default, a literal passed to a sensitive module variable.
        assert!(is_marker(&config["variables"]["api"]["default"]));
        assert_eq!(config["variables"]["region"]["default"], "eu-west-1");
        assert!(is_marker(&config["module_calls"]["child"]["expressions"]["secret"]["constant_value"]));
    }

    #[test]
    fn equal_values_get_equal_markers_so_a_policy_sees_what_changed() {
        let (plan, _) = redacted(UPDATE);
        let change = |address: &str| {
            plan["resource_changes"].as_array().unwrap().iter().find(|rc| rc["address"] == address).unwrap()["change"]
                .clone()
        };
        let db = change("terraform_data.db");
        assert_ne!(db["before"]["input"]["password"], db["after"]["input"]["password"], "the password changed");
        let api = change("terraform_data.api");
        assert_eq!(api["before"]["input"], api["after"]["input"], "the token did not");
        assert!(is_marker(&api["after"]["input"]));
        // Terraform dropped the mark on terraform_data's echo of the password; the sweep did not.
        let prior = &plan["prior_state"]["values"]["root_module"]["resources"];
        let echoed = prior.as_array().unwrap().iter().find(|r| r["address"] == "terraform_data.db").unwrap();
        assert!(is_marker(&echoed["values"]["output"]["password"]));
        assert_eq!(echoed["values"]["output"]["password"], db["before"]["input"]["password"]);
        assert_eq!(echoed["values"]["output"]["region"], "eu-west-1");
    }

    #[test]
    fn markers_depend_on_the_plan_key() {
        let value = json!({"outputs": {"o": {"sensitive": true, "value": "hunter2hunter2"}}});
        let (mut a, mut b) = (value.clone(), value);
        Redactor::with_key(b"one").redact(&mut a);
        Redactor::with_key(b"two").redact(&mut b);
        assert_ne!(a, b, "a marker cannot be compared across plans (or against a guess)");
    }

    #[test]
    fn marks_that_do_not_fit_the_value_fail_closed() {
        let mut plan = json!({"resource_changes": [
            {"change": {"after": "flat-secret-1", "after_sensitive": {"nested": true}}},
            {"change": {"after": {"a": "keep-this-1"}, "after_sensitive": [false]}},
            {"change": {"after": ["x1-secret", "kept-value"], "after_sensitive": [true]}},
            {"change": {"after": {"a": "odd-mark-1"}, "after_sensitive": "yes"}},
        ]});
        let count = Redactor::with_key(b"k").redact(&mut plan);
        let changes = plan["resource_changes"].as_array().unwrap();
        assert!(is_marker(&changes[0]["change"]["after"]), "a mark deeper than the value marks it whole");
        assert_eq!(changes[1]["change"]["after"]["a"], "keep-this-1", "a mirror that marks nothing");
        assert!(is_marker(&changes[2]["change"]["after"][0]));
        assert_eq!(changes[2]["change"]["after"][1], "kept-value", "a shorter mirror marks only its elements");
        assert_eq!(changes[3]["change"]["after"]["a"], "odd-mark-1", "a mark that is no mark");
        assert_eq!(count, 2);
    }

    #[test]
    fn short_values_are_redacted_where_marked_but_not_swept() {
        let mut plan = json!({
            "outputs": {"pin": {"sensitive": true, "value": "1234"}},
            "elsewhere": ["1234", "eu-west-1234"],
        });
        Redactor::with_key(b"k").redact(&mut plan);
        assert!(is_marker(&plan["outputs"]["pin"]["value"]));
        assert_eq!(plan["elsewhere"], json!(["1234", "eu-west-1234"]));
    }

    #[test]
    fn anything_that_parses_is_walked_without_panicking() {
        for text in ["null", "[]", "1", "\"s\"", "{\"variables\": 3, \"configuration\": []}", "{\"sensitive\": true}"] {
            let mut plan: Value = serde_json::from_str(text).unwrap();
            Redactor::with_key(b"k").redact(&mut plan);
        }
        // Nested as deep as serde_json parses (128), value and mirror alike.
        let (mut value, mut mirror) = (json!("deep-secret"), json!(true));
        for _ in 0..120 {
            value = json!({"a": value});
            mirror = json!({"a": mirror});
        }
        let mut plan = json!({"after": value, "after_sensitive": mirror});
        Redactor::with_key(b"k").redact(&mut plan);
        assert!(!plan.to_string().contains("deep-secret"));
    }

    #[test]
    fn debug_shows_no_key() {
        assert_eq!(format!("{:?}", Redactor::with_key(b"secret key")), "Redactor(…)");
    }
}
