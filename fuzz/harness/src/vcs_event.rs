//! GitHub webhook payloads (`vcs::event::VcsEvent::parse`), as a verified delivery hands them to
//! the broker: GitHub signs them, but people typed their titles, labels and branch names, and
//! the payload's shape is GitHub's to change.
//!
//! Input: a selector byte (`0`: `pull_request`, `1`: `push`, else `ping`), then the payload. What
//! must hold:
//! - only `pull_request` and `push` are acted on, each as its own kind;
//! - every text taken from the payload is bounded and free of control characters; refs are at
//!   most 255 bytes and SHAs full lowercase hex;
//! - a push's changed files are sorted, distinct, at most 3000, and the list never claims to be
//!   complete when the payload lists 20 commits or more;
//! - every repository URL normalises (or not) without panicking.

use keyward_broker::vcs::event::{EventKind, MAX_FILES, MAX_LABELS, MAX_REF_BYTES, MAX_TITLE_CHARS, VcsEvent};
use keyward_broker::vcs::matching::normalise_repository;
use serde_json::Value;

use crate::Outcome;

/// The event names the selector byte picks.
pub const EVENTS: [&str; 3] = ["pull_request", "push", "ping"];

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&selector, payload)) = data.split_first() else { return Outcome::Refused };
    let name = EVENTS[usize::from(selector).min(EVENTS.len() - 1)];
    let Ok(Some(event)) = VcsEvent::parse(name, payload) else {
        return Outcome::Refused;
    };
    assert_ne!(name, "ping", "ping is never acted on");
    let clean = |text: &str| !text.chars().any(char::is_control);
    assert!(clean(&event.sender) && clean(&event.repository.full_name), "{event:?}");
    for url in event.repository.urls() {
        assert!(clean(url), "{url:?}");
        let _ = normalise_repository(url);
    }
    let sha =
        |s: &str| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match &event.kind {
        EventKind::PullRequest { action, pull_request: pr } => {
            assert_eq!(name, "pull_request");
            assert!(clean(action) && clean(&pr.title) && clean(&pr.author), "{pr:?}");
            assert!(pr.title.chars().count() <= MAX_TITLE_CHARS);
            assert!(pr.labels.len() <= MAX_LABELS && pr.labels.iter().all(|l| !l.is_empty() && clean(l)));
            assert!(pr.base_ref.len() <= MAX_REF_BYTES && pr.head_ref.len() <= MAX_REF_BYTES);
            assert!(sha(&pr.head_sha) && sha(&pr.base_sha) && pr.merge_commit_sha.as_deref().is_none_or(sha));
            assert!(pr.number > 0);
        }
        EventKind::Push(push) => {
            assert_eq!(name, "push");
            assert!(push.git_ref.len() <= MAX_REF_BYTES && sha(&push.before) && sha(&push.after));
            assert!(push.changed_files.len() <= MAX_FILES);
            assert!(push.changed_files.windows(2).all(|pair| pair[0] < pair[1]), "sorted and distinct");
            assert!(push.changed_files.iter().all(|f| clean(f)));
            let commits = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|p| p.get("commits").and_then(Value::as_array).map(Vec::len))
                .unwrap_or_default();
            assert!(commits < 20 || !push.files_complete, "20 commits or more is never complete");
        }
    }
    Outcome::Accepted
}
