//! The audit page: search the trail by access key ID, run ID, token `jti`, role session name or
//! Vault accessor, and read the chain of custody as `keyward audit trace` prints it — the run,
//! its code, where its pull request came from, who submitted and who approved, every token and
//! credential issued — with the log it was read from and how to check it offline.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::page;
use crate::audit::trace_view::render;

/// What the log holds about `key`: its entries (export lines), and the log's size and root.
#[derive(Debug, Clone, Copy)]
pub struct Trace<'a> {
    /// What was searched for.
    pub key: &'a str,
    /// The entries found, as export lines (`{"entry": …}`), in log order.
    pub lines: &'a [Value],
    /// The log's size when read.
    pub size: u64,
    /// Its Merkle root then (hex).
    pub root: &'a str,
}

/// The search form alone, or with a trace.
pub fn search(trace: Option<Trace<'_>>, who: &str) -> Markup {
    let key = trace.map_or("", |t| t.key);
    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/ui/audit" {
            label for="key" { "Access key ID, run ID, jti or session" }
            input #key type="text" name="key" value=(key) autocomplete="off" required;
            button type="submit" { "Trace" }
        }
        @if let Some(trace) = trace {
            @if trace.lines.is_empty() {
                p { "Nothing in the audit log refers to " code { (trace.key) } "." }
            } @else {
                @let entries: Vec<&Value> = trace.lines.iter().map(|line| line.get("entry").unwrap_or(&Value::Null)).collect();
                div.scroll { pre { @for line in render(trace.key, &entries) { (line) "\n" } } }
                p.muted {
                    (trace.lines.len()) " entries, read from a log of " (trace.size) " entries with root " code { (trace.root) } ". "
                    "To check each against the signed tree yourself: " code { "keyward audit trace " (trace.key) } "."
                }
            }
        }
    };
    page("Audit trail", Some(who), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_rendered_as_the_cli_prints_it_escaped() {
        let line = serde_json::json!({"entry": {"seq": 1, "at": 1, "kind": "run.created",
            "context": {"run_id": "r1", "stack_id": "network", "phase": "plan", "ticket": "<script>x</script>"},
            "details": {"kind": "deploy"}}});
        let trace = Trace { key: "r1", lines: std::slice::from_ref(&line), size: 7, root: "ab" };
        let html = search(Some(trace), "me").into_string();
        assert!(html.contains("run r1  stack network  (deploy run)"), "{html}");
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
        let none = search(Some(Trace { key: "ASIA<x>", lines: &[], size: 7, root: "ab" }), "me").into_string();
        assert!(none.contains("Nothing in the audit log refers to <code>ASIA&lt;x&gt;</code>"), "{none}");
    }
}
