//! The policies page: which policy set decides right now (its files, packages and digest), when
//! it was last (re)loaded and whether that worked, and what it decided lately — the denials
//! first, then every recent decision — read from the audit log, the record of each decision.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::page;
use crate::audit::kinds;
use crate::audit::trace_view::{at, text, time};
use keyward_proto::encoding::percent_encode;

/// The entry kinds that record a policy's decision.
pub const DECISION_KINDS: [&str; 4] =
    [kinds::CREDENTIALS_ALLOWED, kinds::CREDENTIALS_DENIED, kinds::RUN_REFUSED, kinds::PLAN_EVALUATED];

/// The entry kinds that record a refusal by policy.
pub const DENIAL_KINDS: [&str; 2] = [kinds::CREDENTIALS_DENIED, kinds::RUN_REFUSED];

/// The entry kinds that record a (re)load of the policy set.
pub const LOAD_KINDS: [&str; 2] = [kinds::POLICY_LOADED, kinds::POLICY_LOAD_FAILED];

/// The policy set in force.
#[derive(Debug, Clone, Copy)]
pub struct Loaded<'a> {
    /// The directory it was read from.
    pub dir: &'a str,
    /// Its digest (what every decision entry names).
    pub digest: &'a str,
    /// Its files.
    pub files: &'a [String],
    /// Its Rego packages.
    pub packages: &'a [String],
}

/// What the page shows: the set, its last load entry, and decision entries (newest first).
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a> {
    /// The set in force; `None` without a `[policy] dir`.
    pub loaded: Option<Loaded<'a>>,
    /// The newest `policy.loaded` or `policy.load_failed` entry.
    pub last_load: Option<&'a Value>,
    /// Recent refusals, newest first.
    pub denials: &'a [Value],
    /// Recent decisions of every kind, newest first.
    pub decisions: &'a [Value],
}

/// What a decision entry says, in a word.
fn outcome(entry: &Value) -> &'static str {
    let details = at(entry, "/details");
    let nonempty = |field: &str| details.get(field).and_then(Value::as_array).is_some_and(|list| !list.is_empty());
    match text(entry, "kind") {
        kinds::CREDENTIALS_ALLOWED => "allowed",
        kinds::CREDENTIALS_DENIED => "denied",
        kinds::RUN_REFUSED => "refused",
        kinds::PLAN_EVALUATED if nonempty("deny") => "denied",
        kinds::PLAN_EVALUATED if nonempty("warn") => "warned",
        _ => "allowed",
    }
}

/// Why: the entry's reasons, or a plan's denials and warnings.
fn reasons(entry: &Value) -> Vec<&str> {
    let details = at(entry, "/details");
    ["reasons", "deny", "warn"]
        .iter()
        .filter_map(|field| details.get(*field).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The page.
pub fn list(view: Policies<'_>, who: &str) -> Markup {
    let body = html! {
        h1 { "Policies" }
        @match view.loaded {
            Some(set) => {
                p { "Policy set " code { (set.digest) } " decides: " (set.files.len()) " files, "
                    (set.packages.len()) " packages, from " code { (set.dir) } "." }
            }
            None => p { "No policy directory is configured (" code { "[policy] dir" } ", docs/policies.md)." },
        }
        (last_load(view.last_load))
        @if let Some(set) = view.loaded {
            table.facts {
                tr { th { "Files" } td { @for file in set.files { code { (file) } " " } } }
                tr { th { "Packages" } td { @for package in set.packages { code { (package) } " " } } }
            }
            p.muted { "Edit the files, then " code { "keyward policy reload" } " (or send the broker SIGHUP)." }
        }
        h2 { "Recent denials" }
        (decisions(view.denials, "No denials on record."))
        h2 { "Recent decisions" }
        (decisions(view.decisions, "No decisions on record yet."))
    };
    page("Policies", Some(who), body)
}

/// The last (re)load: when, by whom, and whether it worked.
fn last_load(entry: Option<&Value>) -> Markup {
    let Some(entry) = entry else { return html! { p.muted { "No policy load on record." } } };
    let details = at(entry, "/details");
    let when = time(at(entry, "/at").as_i64().unwrap_or(0));
    let by = at(entry, "/context/actor").as_str().unwrap_or("unknown");
    html! {
        @if text(entry, "kind") == kinds::POLICY_LOAD_FAILED {
            p.denied {
                "The last reload failed " (when) " (by " (by) "): " (text(details, "error"))
                ". The set " code { (text(details, "kept_digest")) } " stayed in force."
            }
        } @else {
            p { "Last loaded " (when) " by " (by) ": " code { (text(details, "digest")) } "." }
        }
    }
}

/// A table of decision entries.
fn decisions(entries: &[Value], empty: &str) -> Markup {
    html! {
        @if entries.is_empty() {
            p.muted { (empty) }
        } @else {
            div.scroll {
                table {
                    thead { tr { th { "When" } th { "Decision" } th { "About" } th { "Run" } th { "Why" } th { "Entry" } } }
                    tbody {
                        @for entry in entries {
                            @let context = at(entry, "/context");
                            @let outcome = outcome(entry);
                            @let run = text(context, "run_id");
                            tr {
                                td { (time(at(entry, "/at").as_i64().unwrap_or(0))) }
                                td class=(if matches!(outcome, "denied" | "refused") { "denied" } else { "" }) {
                                    (outcome) " " span.muted { code { (text(entry, "kind")) } }
                                }
                                td { (text(context, "target")) " " (text(context, "stack_id")) }
                                td { @if !run.is_empty() { a href={ "/ui/audit?key=" (percent_encode(run)) } { (run) } } }
                                td { (reasons(entry).join("; ")) }
                                td { (at(entry, "/seq")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_set_its_last_load_and_decisions_are_shown_escaped() {
        let files = vec!["credentials.rego".to_owned()];
        let packages = vec!["keyward.credentials".to_owned()];
        let loaded = Loaded { dir: "/etc/keyward/policies", digest: "d1", files: &files, packages: &packages };
        let load = json!({"seq": 0, "at": 0, "kind": "policy.loaded", "context": {"actor": "start"},
            "details": {"digest": "d1"}});
        let denied = json!({"seq": 5, "at": 10, "kind": "credentials.denied",
            "context": {"target": "aws:prod", "run_id": "r <1>"},
            "details": {"reasons": ["<b>plan</b> tokens may not write"]}});
        let plan = json!({"seq": 6, "at": 11, "kind": "plan.evaluated", "context": {"stack_id": "net"},
            "details": {"deny": [], "warn": ["big change"]}});
        let decisions = [plan, denied.clone()];
        let view = Policies {
            loaded: Some(loaded),
            last_load: Some(&load),
            denials: std::slice::from_ref(&denied),
            decisions: &decisions,
        };
        let html = list(view, "me").into_string();
        assert!(html.contains("Policy set <code>d1</code> decides: 1 files, 1 packages"), "{html}");
        assert!(html.contains("Last loaded 1970-01-01T00:00:00Z by start"), "{html}");
        assert!(html.contains("&lt;b&gt;plan&lt;/b&gt; tokens may not write") && !html.contains("<b>"), "{html}");
        assert!(html.contains(r#"href="/ui/audit?key=r%20%3C1%3E""#), "{html}");
        assert!(html.contains("warned") && html.contains("big change"), "{html}");

        let failed = json!({"kind": "policy.load_failed", "at": 0, "context": {"actor": "signal"},
            "details": {"error": "syntax <error>", "kept_digest": "d0"}});
        let view = Policies { loaded: None, last_load: Some(&failed), denials: &[], decisions: &[] };
        let html = list(view, "me").into_string();
        assert!(html.contains("The last reload failed") && html.contains("syntax &lt;error&gt;"), "{html}");
        assert!(html.contains("No policy directory is configured") && html.contains("No denials on record."), "{html}");
    }
}
