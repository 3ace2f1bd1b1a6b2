//! The audit page: search the trail by access key ID, run ID, token `jti`, role session name or
//! Vault accessor, and read the chain of custody as `keyward audit trace` prints it — the run,
//! its code, where its pull request came from, who submitted and who approved, every token and
//! credential issued — with the latest signed checkpoint, each entry's inclusion proof
//! (`audit_proofs`, checked in the browser by `verify.js`) and how to check it all offline.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::{Markup, html};
use serde_json::Value;

use super::audit_proofs::{self, Checkpoint, Proved};
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
    /// The entries with their inclusion proofs, in log order.
    pub proved: &'a [Proved],
}

/// The search form alone, or with a trace; the latest signed checkpoint either way.
///
/// A whole token is searched by its own form, posted (with the session's CSRF token `csrf`) so
/// the token is never in a URL, a history or an access log; the page shows only its `jti`.
pub fn search(checkpoint: Option<Checkpoint<'_>>, trace: Option<Trace<'_>>, csrf: &str, who: &str) -> Markup {
    let key = trace.map_or("", |t| t.key);
    let body = html! {
        h1 { "Audit trail" }
        form.filters method="get" action="/ui/audit" {
            label for="key" { "Access key ID, run ID, jti or session" }
            input #key type="text" name="key" value=(key) autocomplete="off" required;
            button type="submit" { "Trace" }
        }
        details.token-search {
            summary { "Trace a whole token (JWT)" }
            form method="post" action="/ui/audit" {
                input type="hidden" name=(super::CSRF_FIELD) value=(csrf);
                label for="token" { "Token" }
                textarea #token name="token" rows="3" autocomplete="off" spellcheck="false" required {}
                button type="submit" { "Trace its jti" }
                p.muted { "Sent in the request body, never in the address; only its jti is shown." }
            }
        }
        @if let Some(trace) = trace {
            @if trace.lines.is_empty() {
                p { "Nothing in the audit log refers to " code { (trace.key) } "." }
            } @else {
                @let entries: Vec<&Value> = trace.lines.iter().map(|line| line.get("entry").unwrap_or(&Value::Null)).collect();
                // Focusable: its lines are wider than a page, and a keyboard must reach them.
                div.scroll tabindex="0" { pre { @for line in render(trace.key, &entries) { (line) "\n" } } }
                p.muted {
                    (trace.lines.len()) " entries, read from a log of " (trace.size) " entries with root " code { (trace.root) } ". "
                    "To check each against the signed tree yourself: " code { "keyward audit trace " (trace.key) } "."
                }
                (audit_proofs::entries(trace.proved, trace.size, trace.root))
            }
        }
        (audit_proofs::checkpoint(checkpoint))
        script src=(super::VERIFY_SCRIPT_PATH) defer {}
    };
    page("Audit trail", Some(who), body)
}

/// The longest token [`jti_of_token`] reads: far above any real JWT, far below a memory problem.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The `jti` claim of a JWT (JWS compact serialization), read from its payload **without
/// verifying anything**: a search key, never a proof. The trail it finds is the log's, whose
/// entries are what is trusted; a forged token only names a `jti` to look up.
pub fn jti_of_token(token: &str) -> Option<String> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let payload = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&payload).ok()?;
    claims.get("jti")?.as_str().filter(|jti| !jti.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_rendered_as_the_cli_prints_it_escaped() {
        let line = serde_json::json!({"entry": {"seq": 1, "at": 1, "kind": "run.created",
            "context": {"run_id": "r1", "stack_id": "network", "phase": "plan", "ticket": "<script>x</script>"},
            "details": {"kind": "deploy"}}});
        let trace = Trace { key: "r1", lines: std::slice::from_ref(&line), size: 7, root: "ab", proved: &[] };
        let html = search(None, Some(trace), "tok", "me").into_string();
        assert!(html.contains("run r1  stack network  (deploy run)"), "{html}");
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"), "{html}");
        let none =
            search(None, Some(Trace { key: "ASIA<x>", lines: &[], size: 7, root: "ab", proved: &[] }), "tok", "me")
                .into_string();
        assert!(none.contains("Nothing in the audit log refers to <code>ASIA&lt;x&gt;</code>"), "{none}");
        assert!(none.contains(r#"<script src="/ui/assets/verify.js" defer></script>"#), "{none}");
    }

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn a_tokens_jti_is_read_without_verifying_and_anything_else_is_none() {
        assert_eq!(jti_of_token(&jwt(r#"{"jti":"run-1.abc","sub":"x"}"#)).as_deref(), Some("run-1.abc"));
        assert_eq!(jti_of_token(&format!("  {}\n", jwt(r#"{"jti":"j"}"#))).as_deref(), Some("j"));
        for bad in [
            jwt(r#"{"sub":"no jti"}"#),
            jwt(r#"{"jti":""}"#),
            jwt(r#"{"jti":7}"#),
            jwt("not json"),
            jwt(r#"["jti"]"#),
            "only.two".to_owned(),
            format!("{}.extra", jwt(r#"{"jti":"j"}"#)),
            "a.!!!.c".to_owned(),
            format!("a.{}.c", "A".repeat(MAX_TOKEN_LEN)),
            String::new(),
        ] {
            assert_eq!(jti_of_token(&bad), None, "{bad}");
        }
    }
}
