//! The audit trail as people read it: `keyward audit trace` and the console's trace page render
//! what the log holds about a key (an access key ID, a token `jti`, a role session name, a Vault
//! accessor or a run ID) through the same pure function of the entries ([`render`]), so what it
//! claims — who approved, who only submitted, which phase a key belongs to, whether a pull request
//! was observed — is tested without a broker and shown the same everywhere.

use std::collections::BTreeMap;

use serde_json::Value;

/// The value at JSON `pointer`, or null.
pub fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&Value::Null)
}

/// The string at `key` of a JSON object, or "".
pub fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// RFC 3339 UTC for a Unix time.
pub fn time(unix: i64) -> String {
    crate::clock::rfc3339(unix)
}

/// One line about an entry's details.
pub fn summary(entry: &Value) -> String {
    let context = &at(entry, "/context");
    let details = &at(entry, "/details");
    let target = at(context, "/target").as_str().unwrap_or("");
    match at(entry, "/kind").as_str().unwrap_or("") {
        "token.minted" => format!(
            "jti {}  aud {}  expires {}",
            text(details, "jti"),
            text(details, "aud"),
            time(at(details, "/exp").as_i64().unwrap_or(0))
        ),
        "credentials.issued" => {
            let mut parts = vec![target.to_owned()];
            for (field, label) in [
                ("role_arn", "role"),
                ("role_session_name", "session"),
                ("access_key_id", "access key"),
                ("accessor", "vault accessor"),
                ("mode", "mode"),
            ] {
                if let Some(value) = details[field].as_str() {
                    parts.push(format!("{label} {value}"));
                }
            }
            parts.join("  ")
        }
        "credentials.denied" | "credentials.allowed" => {
            let reasons: Vec<&str> =
                at(details, "/reasons").as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if reasons.is_empty() { target.to_owned() } else { format!("{target}  {}", reasons.join("; ")) }
        }
        _ => details.to_string(),
    }
}

/// The trace of `key` over `entries` (in log order), grouped by run.
pub fn render(key: &str, entries: &[&Value]) -> Vec<String> {
    let mut runs: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for entry in entries {
        runs.entry(at(entry, "/context/run_id").as_str().unwrap_or("(no run)")).or_default().push(entry);
    }
    let mut out = Vec::new();
    for (run, entries) in &runs {
        render_run(key, run, entries, &mut out);
    }
    out
}

/// The fields of a CI token worth naming, in this order (GitHub Actions, then GitLab CI).
const CI_CLAIMS: &[&str] = &[
    "sub",
    "repository",
    "workflow",
    "job_workflow_ref",
    "environment",
    "event_name",
    "run_id",
    "run_attempt",
    "actor",
    "project_path",
    "pipeline_id",
    "job_id",
    "user_login",
    "ci_config_ref_uri",
];

/// The credential entry `key` names: the one whose own identifiers include it.
fn traced_entry<'a>(key: &str, entries: &[&'a Value]) -> Option<&'a Value> {
    let names = ["access_key_id", "minted_jti", "role_session_name", "accessor", "jti"];
    let credential = |e: &&&Value| {
        let kind = at(e, "/kind").as_str().unwrap_or("");
        kind == "credentials.issued" || kind == "token.minted"
    };
    let names_key = |e: &&&Value| names.iter().any(|n| at(e, "/details").get(*n).and_then(Value::as_str) == Some(key));
    entries.iter().filter(credential).find(names_key).or_else(|| entries.iter().find(names_key)).copied()
}

/// A review from its `run.reviewed` entry: who, what, and whether it counted (entries written
/// before the broker recorded that say so only implicitly: the author's approval never counted
/// towards the shipped policy).
fn review_line(entry: &Value, author: Option<&str>) -> String {
    let who = at(entry, "/context/actor").as_str().unwrap_or("-");
    let decision = text(at(entry, "/details"), "decision");
    let counted = at(entry, "/details/counted").as_bool().unwrap_or(!(Some(who) == author && decision == "approve"));
    let note = at(entry, "/details/note").as_str().unwrap_or("the run's author cannot approve it");
    let when = time(at(entry, "/at").as_i64().unwrap_or(0));
    if counted {
        format!("{who} {decision}d ({when}, counted)")
    } else {
        format!("{who} {decision}d ({when}) did not count: {note}")
    }
}

/// One run's part of a trace: the traced entry, the code and the reason, the people, and the
/// tokens and credentials issued for it.
fn render_run(key: &str, run: &str, entries: &[&Value], out: &mut Vec<String>) {
    let field = |name: &str| {
        entries.iter().find_map(|e| at(e, "/context").get(name).and_then(Value::as_str)).unwrap_or("-").to_owned()
    };
    let created = entries.iter().find(|e| at(e, "/kind") == "run.created");
    let kind = created.and_then(|e| at(e, "/details/kind").as_str()).map_or(String::new(), |k| format!("  ({k} run)"));
    out.push(format!("run {run}  stack {}{kind}", field("stack_id")));
    let traced = traced_entry(key, entries);
    if let Some(entry) = traced {
        out.push(traced_line(key, entry));
    }
    let pr = entries.iter().find_map(|e| at(e, "/context/pull_request").as_u64());
    out.push(format!(
        "├─ code       repository {}  commit {}  ref {}",
        field("repository"),
        field("commit_sha"),
        field("ref")
    ));
    out.push(format!(
        "├─ reason     PR {}  ticket {}{}",
        pr.map_or_else(|| "-".to_owned(), |n| format!("#{n}")),
        field("ticket"),
        source_note(entries, pr.is_some() || field("ticket") != "-")
    ));
    if let Some(line) = created.and_then(|e| observed_line(e)) {
        out.push(line);
    }
    render_people(entries, traced, out);
    render_issued(entries, out);
}

/// Whether the run's pull request and ticket were observed or are the submitter's word.
fn source_note(entries: &[&Value], any: bool) -> String {
    match entries.iter().find_map(|e| at(e, "/context/pull_request_source").as_str()) {
        Some(source) => format!("  (observed from {source})"),
        None if any => "  (the submitter's word)".to_owned(),
        None => String::new(),
    }
}

/// The `├─ observed` line: the pull request as the provider described it, and the delivery.
fn observed_line(created: &Value) -> Option<String> {
    let observed = at(created, "/details/observed");
    let source = observed.get("source")?.as_str()?;
    let delivery = text(observed, "delivery");
    let change = match observed.get("pull_request").filter(|pr| pr.is_object()) {
        Some(pr) => format!(
            "#{} {:?} by {}  {} ← {}  {}",
            at(pr, "/number"),
            text(pr, "title"),
            text(pr, "author"),
            text(pr, "base"),
            text(pr, "head"),
            text(pr, "url")
        ),
        None => format!("a push by {}", text(observed, "sender")),
    };
    Some(format!("├─ observed   {source} delivery {delivery}: {change}"))
}

/// The `├─ traced` line: the entry the key names, when, for which phase, target and job.
fn traced_line(key: &str, entry: &Value) -> String {
    let details = at(entry, "/details");
    let mut parts = vec![
        format!("{} #{}", text(entry, "kind"), at(entry, "/seq")),
        time(at(entry, "/at").as_i64().unwrap_or(0)),
        format!("phase {}", at(entry, "/context/phase").as_str().unwrap_or("-")),
    ];
    if let Some(target) = at(entry, "/context/target").as_str() {
        parts.push(format!("target {target}"));
    }
    for (name, label) in [("agent_id", "agent"), ("pool", "pool"), ("job_id", "job")] {
        if let Some(value) = details.get(name).and_then(Value::as_str) {
            parts.push(format!("{label} {value}"));
        }
    }
    format!("├─ traced     {key}: {}", parts.join("  "))
}

/// Who submitted (or which CI job asked), who asserted the context, the reviews, and whose
/// approvals counted.
fn render_people(entries: &[&Value], traced: Option<&Value>, out: &mut Vec<String>) {
    let ci = entries.iter().find(|e| at(e, "/details/subject_kind") == "ci");
    let author = entries.iter().find_map(|e| at(e, "/context/triggered_by").as_str());
    match ci {
        Some(ci) => render_ci(ci, author, out),
        None => out.push(format!("├─ submitted  by {}", author.unwrap_or("-"))),
    }
    if let Some(asserted) = entries.iter().find_map(|e| at(e, "/context/asserted_by").as_str()) {
        out.push(format!(
            "├─ asserted   by {asserted}: a token minted on request; its run context is that token's word"
        ));
    }

    let reviews: Vec<String> =
        entries.iter().filter(|e| at(e, "/kind") == "run.reviewed").map(|e| review_line(e, author)).collect();
    for (i, line) in reviews.iter().enumerate() {
        out.push(format!("{} {line}", if i == 0 { "├─ reviews   " } else { "│            " }));
    }
    // What the traced credential itself carried; for a run, whose approvals counted in the end.
    let approvers: Vec<&str> = traced
        .or_else(|| entries.iter().rev().find(|e| at(e, "/context/approved_by").is_array()).copied())
        .map(|entry| {
            at(entry, "/context/approved_by").as_array().into_iter().flatten().filter_map(Value::as_str).collect()
        })
        .unwrap_or_default();
    let approved = if approvers.is_empty() { "nobody".to_owned() } else { approvers.join(", ") };
    let scope = if traced.is_some() { " (as this credential carries it)" } else { "" };
    out.push(format!("├─ approved   by {approved}{scope}"));
}

/// The tokens minted and the credentials allowed, issued or denied for the run.
fn render_issued(entries: &[&Value], out: &mut Vec<String>) {
    let sections: [(&str, &[&str]); 2] = [
        ("tokens minted", &["token.minted"]),
        ("credentials", &["credentials.allowed", "credentials.issued", "credentials.denied"]),
    ];
    for (title, kinds) in sections {
        let chosen: Vec<&&Value> =
            entries.iter().filter(|e| kinds.contains(&at(e, "/kind").as_str().unwrap_or(""))).collect();
        out.push(format!("├─ {title}{}", if chosen.is_empty() { ": none" } else { "" }));
        for (i, entry) in chosen.iter().enumerate() {
            let branch = if i + 1 == chosen.len() { "└─" } else { "├─" };
            let context = &at(entry, "/context");
            let who = at(context, "/actor").as_str().unwrap_or("-");
            let phase = at(context, "/phase").as_str().unwrap_or("-");
            out.push(format!(
                "│  {branch} #{} {} {:<20} {phase:<5} {}  (by {who})",
                at(entry, "/seq"),
                time(at(entry, "/at").as_i64().unwrap_or(0)),
                text(entry, "kind"),
                summary(entry)
            ));
        }
    }
}

/// A CI exchange: which issuer vouched, for which job.
fn render_ci(entry: &Value, actor: Option<&str>, out: &mut Vec<String>) {
    let issuer = at(entry, "/context/subject_issuer").as_str().unwrap_or("-");
    let name = at(entry, "/details/issuer_name").as_str().unwrap_or("-");
    out.push(format!("├─ CI job     issuer {name} ({issuer}); actor {}", actor.unwrap_or("-")));
    let claims = at(entry, "/details/subject_claims");
    for claim in CI_CLAIMS {
        if let Some(value) = claims.get(*claim).filter(|v| !v.is_null()) {
            let value = value.as_str().map_or_else(|| value.to_string(), str::to_owned);
            out.push(format!("│            {claim} {value}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn context(phase: &str, approved_by: &[&str]) -> Value {
        json!({"run_id": "r1", "stack_id": "network", "phase": phase, "repository": "https://git/x",
               "commit_sha": "abc1234", "ref": "refs/heads/main", "pull_request": 42, "ticket": "CHG-7",
               "triggered_by": "alice", "approved_by": approved_by})
    }

    fn entries() -> Vec<Value> {
        let review = |seq, who: &str, counted: bool| {
            let mut c = context("apply", &[]);
            c["actor"] = json!(who);
            json!({"seq": seq, "at": 1, "kind": "run.reviewed", "context": c,
                   "details": {"decision": "approve", "counted": counted}})
        };
        let alice = review(2, "alice", false);
        let bob = review(3, "bob", true);
        let mut plan = context("plan", &[]);
        plan["target"] = json!("aws:read");
        let mut apply = context("apply", &["bob"]);
        apply["target"] = json!("aws:write");
        vec![
            json!({"seq": 1, "at": 1, "kind": "run.created", "context": context("plan", &[]), "details": {"kind": "deploy"}}),
            alice,
            bob,
            json!({"seq": 4, "at": 1, "kind": "credentials.issued", "context": plan,
                   "details": {"access_key_id": "ASIAPLAN", "agent_id": "a-1", "pool": "dev", "job_id": "j-1"}}),
            json!({"seq": 5, "at": 1, "kind": "credentials.issued", "context": apply,
                   "details": {"access_key_id": "ASIAAPPLY", "agent_id": "a-2", "pool": "dev", "job_id": "j-2"}}),
        ]
    }

    #[test]
    fn an_apply_key_names_its_phase_and_the_approver_who_counted() {
        let entries = entries();
        let refs: Vec<&Value> = entries.iter().collect();
        let text = render("ASIAAPPLY", &refs).join("\n");
        assert!(text.contains("ASIAAPPLY: credentials.issued #5"), "{text}");
        assert!(text.contains("phase apply  target aws:write  agent a-2  pool dev  job j-2"), "{text}");
        assert!(text.contains("approved   by bob (as this credential carries it)"), "{text}");
        assert!(text.contains("submitted  by alice"), "{text}");
        assert!(text.contains("alice approved (1970-01-01T00:00:01Z) did not count"), "{text}");
        assert!(text.contains("bob approved (1970-01-01T00:00:01Z, counted)"), "{text}");
        assert!(!text.contains("approved   by alice"), "the author is never named as approver: {text}");
        assert!(text.contains("PR #42  ticket CHG-7") && text.contains("commit abc1234"), "{text}");
    }

    #[test]
    fn an_observed_pull_request_is_marked_observed_and_described() {
        let mut entries = entries();
        for entry in &mut entries {
            entry["context"]["pull_request_source"] = json!("github");
        }
        entries[0]["details"]["observed"] = json!({"source": "github", "delivery": "d-1", "sender": "octocat",
            "pull_request": {"number": 42, "title": "Add a bucket", "author": "octocat", "base": "main",
                             "head": "feature/bucket", "head_sha": "abc1234", "url": "https://github.com/o/r/pull/42"}});
        let refs: Vec<&Value> = entries.iter().collect();
        let text = render("ASIAAPPLY", &refs).join("\n");
        assert!(text.contains("PR #42  ticket CHG-7  (observed from github)"), "{text}");
        assert!(text.contains("observed   github delivery d-1: #42 \"Add a bucket\" by octocat  main ← feature/bucket  https://github.com/o/r/pull/42"), "{text}");
        // The same run asserted by its submitter says so.
        let asserted = render("ASIAAPPLY", &self::entries().iter().collect::<Vec<_>>()).join("\n");
        assert!(
            asserted.contains("PR #42  ticket CHG-7  (the submitter's word)") && !asserted.contains("observed"),
            "{asserted}"
        );
    }

    #[test]
    fn a_plan_key_says_plan_and_that_nobody_had_approved_it() {
        let entries = entries();
        let refs: Vec<&Value> = entries.iter().collect();
        let text = render("ASIAPLAN", &refs).join("\n");
        assert!(text.contains("phase plan  target aws:read  agent a-1"), "{text}");
        assert!(text.contains("approved   by nobody (as this credential carries it)"), "{text}");
    }

    #[test]
    fn a_ci_key_names_the_issuer_and_the_job() {
        let mut c = context("apply", &[]);
        c["subject_issuer"] = json!("https://token.actions.githubusercontent.com");
        c["triggered_by"] = json!("octocat");
        let entry = json!({"seq": 9, "at": 1, "kind": "credentials.issued", "context": c,
            "details": {"access_key_id": "ASIACI", "subject_kind": "ci", "issuer_name": "github",
                        "subject_claims": {"sub": "repo:org/infra:ref:refs/heads/main", "workflow": "deploy", "run_attempt": 2}}});
        let text = render("ASIACI", &[&entry]).join("\n");
        assert!(
            text.contains("CI job     issuer github (https://token.actions.githubusercontent.com); actor octocat"),
            "{text}"
        );
        assert!(text.contains("sub repo:org/infra:ref:refs/heads/main") && text.contains("workflow deploy"), "{text}");
        assert!(text.contains("run_attempt 2"), "{text}");
        assert!(!text.contains("submitted"), "{text}");
    }

    #[test]
    fn old_review_entries_without_a_counted_flag_never_count_the_author() {
        let entry = json!({"seq": 1, "at": 1, "kind": "run.reviewed", "context": {"actor": "alice"}, "details": {"decision": "approve"}});
        assert!(review_line(&entry, Some("alice")).contains("did not count"));
        assert!(review_line(&entry, Some("bob")).contains("counted"));
    }
}
