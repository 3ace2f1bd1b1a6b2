//! A run page's evidence (docs/console.md): the credentials each job asked for — every decision
//! with its reasons, and what was issued by its identifiers (never a secret: the audit entries
//! hold none, and `audit::run_evidence` keeps only an allow-list of their fields) — and the job's
//! verified, masked log with its seal, followed live while the run is in progress.
//!
//! The live part is progressive: the page shows everything there is when it is rendered, and the
//! embedded script ([`super::LIVE_SCRIPT_PATH`]) appends what arrives later from the page's
//! server-sent events. Without script, a reload shows the same.

use maud::{Markup, html};

use crate::audit::run_evidence::{CredentialEvent, JobEvidence, Moment, Observed, RunEvidence};
use crate::clock::rfc3339;
use crate::joblogs::ChunkView;
use crate::runs::JobView;

/// The log as the page shows it.
#[derive(Debug, Clone, Copy)]
pub struct RunLog<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Its chunks so far, in arrival order.
    pub chunks: &'a [ChunkView],
    /// Whether there were more than the page shows.
    pub truncated: bool,
    /// Whether the run is still in progress (not settled): the page follows it live.
    pub live: bool,
}

impl RunLog<'_> {
    /// The cursor after the last chunk shown: where the live events start.
    pub fn cursor(&self) -> i64 {
        self.chunks.last().map_or(0, |c| c.id)
    }
}

/// The change that started the run, as its provider described it (nothing when no provider's
/// event did): the pull request's title and author are its author's words, shown as text.
pub fn observed(observed: Option<&Observed>) -> Markup {
    html! {
        @if let Some(observed) = observed {
            h2 { "Observed from " (observed.source) }
            @match &observed.pull_request {
                Some(pr) => p.observed {
                    "Pull request #" (pr.number) " " q { (pr.title) } " by " (pr.author) ", "
                    span.mono { (pr.base) " ← " (pr.head) }
                    @if let Some(url) = &pr.url { " · " a href=(url) rel="noreferrer" { "on " (observed.source) } }
                },
                None => p.observed { "A push by " (observed.sender) "." },
            }
        }
    }
}

/// The run's life, from its audit entries: created, each state change, review and job.
pub fn timeline(moments: &[Moment]) -> Markup {
    html! {
        @if !moments.is_empty() {
            h2 { "Timeline" }
            ol.timeline {
                @for moment in moments {
                    li {
                        span.mono { (rfc3339(moment.at)) } " " (moment.what)
                        @if let Some(note) = &moment.note { " " span.muted { (note) } }
                    }
                }
            }
        }
    }
}

/// The credentials of each of `jobs`, then those asked for outside them.
pub fn credentials(jobs: &[JobView], evidence: &RunEvidence) -> Markup {
    html! {
        h2 { "Credentials" }
        p.muted { "Every credentials decision on this run's requests, from the audit log: what was issued is named by its identifiers; secrets are never shown." }
        @for job in jobs {
            h3 { (job.phase.as_str()) " job " span.mono { (short(&job.id)) } }
            @match evidence.job(&job.id).filter(|e| !e.credentials.is_empty()) {
                None => p.muted { "No credentials asked for." },
                Some(job) => (decisions(&job.credentials)),
            }
        }
        @if !evidence.outside_jobs.is_empty() {
            h3 { "Outside its jobs" }
            p.muted { "Run tokens minted for this run and exchanged by whoever held them." }
            (decisions(&evidence.outside_jobs))
        }
    }
}

/// One table of decisions.
fn decisions(events: &[CredentialEvent]) -> Markup {
    html! {
        // Focusable: on a phone it scrolls sideways and holds no link, so a keyboard must reach it.
        div.scroll tabindex="0" {
            table.credentials {
                thead { tr { th { "At" } th { "Target" } th { "Decision" } th { "What" } th { "Expires" } th { "Reasons" } } }
                tbody {
                    @for event in events {
                        tr {
                            td.mono { (rfc3339(event.at)) }
                            td.mono { (event.target) }
                            td { span class=(format!("decision decision-{}", event.decision.as_str())) { (event.decision.as_str()) } }
                            td {
                                @for (label, value) in &event.identifiers {
                                    span.identifier { (label) " " span.mono { (value) } } " "
                                }
                                @if let Some(actor) = event.actor.as_deref().filter(|a| *a != "exchange:job") {
                                    span.muted { "asked by " (actor) }
                                }
                            }
                            td.mono { (event.expires_at.map(rfc3339).unwrap_or_else(|| "-".to_owned())) }
                            td { @for reason in &event.reasons { div { (reason) } } }
                        }
                    }
                }
            }
        }
    }
}

/// The log: how it was verified, each job's seal, how to check it offline, and the output.
pub fn log(jobs: &[JobView], log: RunLog<'_>, evidence: &RunEvidence) -> Markup {
    html! {
        h2 { "Log" }
        p {
            "Every chunk was verified when it arrived: signed by the agent holding the job's lease, and the next link of that lease's chain. "
            "Credentials issued to a job are masked before the agent signs a chunk."
        }
        ul.seals {
            @for job in jobs {
                li { (job.phase.as_str()) " job " span.mono { (short(&job.id)) } ": " (seal(job, evidence.job(&job.id))) }
            }
        }
        p { "Verify it offline: " code { "keyward run logs " (log.run_id) " --verify" } }
        @if log.live {
            p #live-note data-events=(format!("/ui/runs/{}/events?after={}", log.run_id, log.cursor())) {
                "In progress: new output appears here as it arrives (reload if it does not)."
            }
        }
        @if log.chunks.is_empty() && !log.live {
            p.muted { "No output." }
        }
        // Focusable and named: the log scrolls, and a keyboard must reach it (axe-core's
        // scrollable-region-focusable); `log` is the role of output appended as it arrives.
        pre #run-log .log role="log" aria-label="Run output" tabindex="0" {
            @for chunk in log.chunks {
                span class=(stream_class(&chunk.stream)) { (chunk.text) }
            }
        }
        @if log.truncated {
            p.muted { "More output than a page holds: " code { "keyward run logs " (log.run_id) } " prints all of it." }
        }
        @if log.live {
            script src=(super::LIVE_SCRIPT_PATH) defer {}
        }
    }
}

/// Whether `job`'s log is sealed, and how.
fn seal(job: &JobView, evidence: Option<&JobEvidence>) -> Markup {
    html! {
        @match evidence.and_then(|e| e.seal.as_ref()) {
            Some(seal) if seal.complete => {
                span.sealed { "sealed" } ", " (seal.chunks) " chunks, " (seal.bytes) " bytes"
                @if let Some(digest) = &seal.digest { ", head " span.mono { (short(digest)) } }
                ", in its job.finished audit entry"
            }
            Some(seal) => {
                span.unsealed { "sealed incomplete" } ": the broker holds " (seal.chunks)
                " chunks, but the agent reported a different head — output is missing"
            }
            None if matches!(job.state.as_str(), "queued" | "leased") => span.muted { "not sealed yet: the job has not ended" },
            None => span.muted { "not sealed: the job ended without reporting its log's head" },
        }
    }
}

/// The CSS class of a chunk's stream (the agent's text is never a class name).
pub fn stream_class(stream: &str) -> &'static str {
    match stream {
        "stderr" => "log-stderr",
        "keyward" => "log-keyward",
        _ => "log-stdout",
    }
}

/// The first 13 characters of an ID or digest (all of it when shorter).
fn short(text: &str) -> &str {
    text.get(..13).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::run_evidence::{Decision, Seal};
    use keyward_proto::claims::Phase;

    fn job(id: &str, state: &str) -> JobView {
        JobView {
            id: id.to_owned(),
            phase: Phase::Plan,
            pool: "default".to_owned(),
            state: state.to_owned(),
            attempt: 1,
            agent_id: None,
            error: None,
            isolation: None,
            layers: None,
            scan: None,
            waiting_for: None,
        }
    }

    fn chunk(id: i64, stream: &str, text: &str) -> ChunkView {
        ChunkView {
            id,
            job_id: "job-1".to_owned(),
            fencing_token: 1,
            seq: id,
            stream: stream.to_owned(),
            text: text.to_owned(),
            received_at: 1,
        }
    }

    fn evidence() -> RunEvidence {
        let issued = CredentialEvent {
            seq: 4,
            at: 10,
            target: "aws:<b>read</b>".to_owned(),
            phase: Some("plan".to_owned()),
            decision: Decision::Issued,
            identifiers: vec![("access key ID", "ASIA<i>X</i>".to_owned())],
            expires_at: Some(1000),
            reasons: Vec::new(),
            actor: Some("exchange:job".to_owned()),
        };
        let denied = CredentialEvent {
            decision: Decision::Denied,
            reasons: vec!["<script>alert('reason')</script>".to_owned()],
            identifiers: Vec::new(),
            expires_at: None,
            ..issued.clone()
        };
        let mut evidence = RunEvidence::default();
        evidence.jobs.insert(
            "job-1".to_owned(),
            JobEvidence {
                credentials: vec![issued, denied],
                seal: Some(Seal { chunks: 2, bytes: 30, digest: Some("abcdef0123456789".to_owned()), complete: true }),
            },
        );
        evidence
    }

    #[test]
    fn decisions_and_log_are_escaped() {
        let jobs = [job("job-1", "succeeded"), job("job-2", "leased")];
        let evidence = evidence();
        let html = credentials(&jobs, &evidence).into_string();
        assert!(!html.contains("<b>") && !html.contains("<i>") && !html.contains("<script"), "{html}");
        assert!(html.contains("&lt;script&gt;alert('reason')&lt;/script&gt;"), "{html}");
        assert!(html.contains(">issued<") && html.contains(">denied<"), "{html}");
        assert!(html.contains("No credentials asked for."), "job-2 asked for none: {html}");
        let chunks = [chunk(7, "stdout", "<script>alert(1)</script>\n"), chunk(9, "stderr", "oops\n")];
        let shown = RunLog { run_id: "run-1", chunks: &chunks, truncated: false, live: true };
        let html = log(&jobs, shown, &evidence).into_string();
        assert!(html.contains("<span class=\"log-stdout\">&lt;script&gt;alert(1)&lt;/script&gt;\n</span>"), "{html}");
        assert!(html.contains("<span class=\"log-stderr\">oops"), "{html}");
        assert!(html.contains("data-events=\"/ui/runs/run-1/events?after=9\""), "live from the last chunk: {html}");
        assert!(html.contains("<script src=\"/ui/assets/live.js\" defer></script>"), "{html}");
        assert_eq!(html.matches("<script").count(), 1, "only the embedded script: {html}");
        assert!(html.contains("sealed</span>, 2 chunks, 30 bytes, head <span class=\"mono\">abcdef0123456<"), "{html}");
        assert!(html.contains("not sealed yet"), "{html}");
        assert!(
            html.contains(r#"<pre class="log" id="run-log" role="log" aria-label="Run output" tabindex="0">"#),
            "{html}"
        );
        assert!(html.contains("keyward run logs run-1 --verify"), "{html}");
    }

    #[test]
    fn a_settled_run_loads_no_script() {
        let jobs = [job("job-1", "succeeded")];
        let shown = RunLog { run_id: "run-1", chunks: &[], truncated: true, live: false };
        let html = log(&jobs, shown, &RunEvidence::default()).into_string();
        assert!(!html.contains("<script") && !html.contains("data-events"), "{html}");
        assert!(html.contains("No output.") && html.contains("not sealed: the job ended"), "{html}");
        assert!(html.contains("prints all of it"), "{html}");
    }

    #[test]
    fn an_observed_pull_requests_words_are_text_and_only_https_links() {
        use crate::audit::run_evidence::ObservedPullRequest;
        let pr = ObservedPullRequest {
            number: 7,
            title: "<script>alert('title')</script>".into(),
            author: "<b>mallory</b>".into(),
            base: "main".into(),
            head: "feature".into(),
            url: Some("https://github.com/acme/infra/pull/7".into()),
        };
        let seen = Observed { source: "github".into(), sender: "octocat".into(), pull_request: Some(pr) };
        let html = observed(Some(&seen)).into_string();
        assert!(!html.contains("<script") && !html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert('title')&lt;/script&gt;"), "{html}");
        assert!(html.contains(r#"href="https://github.com/acme/infra/pull/7""#), "{html}");
        assert_eq!(observed(None).into_string(), "");
    }
}
