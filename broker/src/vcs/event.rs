//! A verified webhook delivery's payload as typed facts: what the broker acts on (which
//! repository, which pull request or push, which files) and nothing else.
//!
//! The payload is signed by GitHub, but what it carries was typed by people (titles, labels,
//! branch names): every text is bounded and stripped of control characters here, once, so no
//! later consumer (the policy input, the audit log, a commit status) has to think about it.
//! Identifiers that must be exact (refs, SHAs, repository names) are refused rather than trimmed:
//! a shortened ref would name another branch.

use std::collections::BTreeSet;

/// The longest pull request title kept (characters; longer titles are cut).
pub const MAX_TITLE_CHARS: usize = 1024;
/// The most labels kept per pull request.
pub const MAX_LABELS: usize = 100;
/// The longest git ref accepted (bytes).
pub const MAX_REF_BYTES: usize = 255;
/// The most changed files kept from a push; more marks the list incomplete.
pub const MAX_FILES: usize = 3000;
/// The most commits a push payload carries: GitHub leaves the rest out.
pub const PUSH_COMMITS_CAP: usize = 20;

/// The longest name (login, label, action, repository) kept, in characters.
const MAX_NAME_CHARS: usize = 256;
/// The longest URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// The longest changed file path kept; a longer one makes the list incomplete.
const MAX_PATH_BYTES: usize = 4096;

/// What a delivery is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcsEvent {
    /// The repository it happened in (for a pull request: the base repository).
    pub repository: RepositoryFacts,
    /// Who caused it (`sender.login`).
    pub sender: String,
    /// The GitHub App installation it was delivered for, if any.
    pub installation: Option<u64>,
    /// The event itself.
    pub kind: EventKind,
}

/// The repository of an event, with every URL it can be cloned or shown under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryFacts {
    /// `owner/name`.
    pub full_name: String,
    /// `https://github.com/owner/name.git`.
    pub clone_url: Option<String>,
    /// `https://github.com/owner/name`.
    pub html_url: Option<String>,
    /// `git@github.com:owner/name.git`.
    pub ssh_url: Option<String>,
    /// The repository's default branch.
    pub default_branch: Option<String>,
}

impl RepositoryFacts {
    /// Every URL the repository is known by, to compare with stacks' repositories
    /// (`super::matching::touched`).
    pub fn urls(&self) -> Vec<&str> {
        [&self.clone_url, &self.html_url, &self.ssh_url].into_iter().flatten().map(String::as_str).collect()
    }
}

/// The kinds of event the broker acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `pull_request`, any action (`opened`, `synchronize`, `closed`, …); the push policy decides
    /// which matter.
    PullRequest {
        /// The payload's `action`.
        action: String,
        /// The pull request.
        pull_request: PullRequestFacts,
    },
    /// `push`: a branch or tag moved, was created or was deleted.
    Push(PushFacts),
}

/// A pull request as a webhook showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestFacts {
    /// Its number in the repository.
    pub number: u64,
    /// Its title (bounded, without control characters).
    pub title: String,
    /// Who opened it (`user.login`).
    pub author: String,
    /// The branch it merges into.
    pub base_ref: String,
    /// The branch it merges from (in the head repository).
    pub head_ref: String,
    /// The head commit.
    pub head_sha: String,
    /// The base commit it was compared with.
    pub base_sha: String,
    /// Its page (`html_url`).
    pub url: String,
    /// A draft.
    pub draft: bool,
    /// Its head is in another repository than its base (or in a fork since deleted).
    pub fork: bool,
    /// It was merged (on `closed`).
    pub merged: bool,
    /// The merge commit, once there is one.
    pub merge_commit_sha: Option<String>,
    /// Its label names.
    pub labels: Vec<String>,
}

/// A push as a webhook showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFacts {
    /// The full ref (`refs/heads/main`, `refs/tags/v1`).
    pub git_ref: String,
    /// The commit the ref pointed at before (all zeros: created).
    pub before: String,
    /// The commit it points at now (all zeros: deleted).
    pub after: String,
    /// The ref was created.
    pub created: bool,
    /// The ref was deleted.
    pub deleted: bool,
    /// The push was forced.
    pub forced: bool,
    /// Files the pushed commits added, modified or removed: deduplicated, sorted.
    pub changed_files: Vec<String>,
    /// Whether `changed_files` is the whole list. GitHub puts at most 20 commits in a push
    /// payload; when it left some out (or a path was unusable), ask the API for the comparison.
    pub files_complete: bool,
}

/// Why a payload could not be read as its event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not JSON, or a field the event needs is missing or of the wrong type.
    #[error("`{event}` payload is malformed at `{path}`: {message}")]
    Malformed {
        /// The event name (`X-GitHub-Event`).
        event: &'static str,
        /// Where in the payload (`pull_request.head.sha`).
        path: String,
        /// The parser's message (bounded).
        message: String,
    },
    /// A field is present but its value cannot be right (an empty name, a SHA that is not hex,
    /// a ref longer than git allows).
    #[error("`{event}` payload field `{field}` is invalid: {reason}")]
    Invalid {
        /// The event name.
        event: &'static str,
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl PullRequestFacts {
    /// This pull request, as another source than a webhook payload described it (`source`: the
    /// API's answer about a pushed commit), checked as a payload's is: text bounded and without
    /// control characters, refs, SHAs and the URL refused when odd.
    pub fn checked(self, source: &'static str) -> Result<Self, EventError> {
        Ok(Self {
            title: bounded(&self.title, MAX_TITLE_CHARS),
            author: name(source, "user.login", &self.author)?,
            base_ref: git_ref(source, "base.ref", self.base_ref)?,
            head_ref: git_ref(source, "head.ref", self.head_ref)?,
            head_sha: commit(source, "head.sha", self.head_sha)?,
            base_sha: if self.base_sha.is_empty() { self.base_sha } else { commit(source, "base.sha", self.base_sha)? },
            url: url(source, "html_url", self.url)?,
            merge_commit_sha: self.merge_commit_sha.map(|sha| commit(source, "merge_commit_sha", sha)).transpose()?,
            labels: self
                .labels
                .iter()
                .map(|label| bounded(label, MAX_NAME_CHARS))
                .filter(|label| !label.is_empty())
                .take(MAX_LABELS)
                .collect(),
            ..self
        })
    }
}

impl VcsEvent {
    /// Reads the payload of an `event_name` delivery (its `X-GitHub-Event`). `Ok(None)`: an event
    /// the broker does not act on (`ping`, `issues`, …); the caller records it as ignored.
    pub fn parse(event_name: &str, payload: &[u8]) -> Result<Option<Self>, EventError> {
        match event_name {
            "pull_request" => {
                let raw: raw::PullRequestEvent = from_slice("pull_request", payload)?;
                pull_request(raw).map(Some)
            }
            "push" => {
                let raw: raw::PushEvent = from_slice("push", payload)?;
                push(raw).map(Some)
            }
            _ => Ok(None),
        }
    }
}

fn from_slice<T: serde::de::DeserializeOwned>(event: &'static str, payload: &[u8]) -> Result<T, EventError> {
    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|error| EventError::Malformed {
        event,
        path: bounded(&error.path().to_string(), MAX_NAME_CHARS),
        message: bounded(&error.inner().to_string(), MAX_NAME_CHARS),
    })
}

fn pull_request(raw: raw::PullRequestEvent) -> Result<VcsEvent, EventError> {
    const EVENT: &str = "pull_request";
    let invalid = |field, reason| EventError::Invalid { event: EVENT, field, reason };
    let repository = repository(EVENT, raw.repository)?;
    let pr = raw.pull_request;
    if pr.number == 0 {
        return Err(invalid("pull_request.number", "must be positive"));
    }
    let fork = match &pr.head.repo {
        None => true,
        Some(head) => !head.full_name.eq_ignore_ascii_case(&pr.base.repo.full_name),
    };
    let merge_commit_sha = match pr.merge_commit_sha {
        Some(sha) => Some(commit(EVENT, "pull_request.merge_commit_sha", sha)?),
        None => None,
    };
    let pull_request = PullRequestFacts {
        number: pr.number,
        title: bounded(&pr.title, MAX_TITLE_CHARS),
        author: name(EVENT, "pull_request.user.login", &pr.user.login)?,
        base_ref: git_ref(EVENT, "pull_request.base.ref", pr.base.git_ref)?,
        head_ref: git_ref(EVENT, "pull_request.head.ref", pr.head.git_ref)?,
        head_sha: commit(EVENT, "pull_request.head.sha", pr.head.sha)?,
        base_sha: commit(EVENT, "pull_request.base.sha", pr.base.sha)?,
        url: url(EVENT, "pull_request.html_url", pr.html_url)?,
        draft: pr.draft,
        fork,
        merged: pr.merged,
        merge_commit_sha,
        labels: pr
            .labels
            .iter()
            .map(|label| bounded(&label.name, MAX_NAME_CHARS))
            .filter(|label| !label.is_empty())
            .take(MAX_LABELS)
            .collect(),
    };
    let action = name(EVENT, "action", &raw.action)?;
    Ok(VcsEvent {
        repository,
        sender: name(EVENT, "sender.login", &raw.sender.login)?,
        installation: raw.installation.map(|i| i.id),
        kind: EventKind::PullRequest { action, pull_request },
    })
}

fn push(raw: raw::PushEvent) -> Result<VcsEvent, EventError> {
    const EVENT: &str = "push";
    let repository = repository(EVENT, raw.repository)?;
    let mut files = BTreeSet::new();
    let mut complete = raw.commits.len() < PUSH_COMMITS_CAP;
    if let Some(head) = &raw.head_commit
        && !raw.commits.iter().any(|c| c.id == head.id)
    {
        // The head commit is not among the listed ones (a tag or branch created at an existing
        // commit, or a truncated list): the list does not say what the ref now contains.
        complete = false;
    }
    for path in raw.commits.iter().flat_map(|c| c.added.iter().chain(&c.modified).chain(&c.removed)) {
        if path.is_empty() || path.len() > MAX_PATH_BYTES || path.chars().any(char::is_control) {
            complete = false;
        } else if files.len() < MAX_FILES || files.contains(path.as_str()) {
            files.insert(path.as_str());
        } else {
            complete = false;
        }
    }
    let push = PushFacts {
        git_ref: git_ref(EVENT, "ref", raw.git_ref)?,
        before: commit(EVENT, "before", raw.before)?,
        after: commit(EVENT, "after", raw.after)?,
        created: raw.created,
        deleted: raw.deleted,
        forced: raw.forced,
        changed_files: files.into_iter().map(str::to_owned).collect(),
        files_complete: complete,
    };
    Ok(VcsEvent {
        repository,
        sender: name(EVENT, "sender.login", &raw.sender.login)?,
        installation: raw.installation.map(|i| i.id),
        kind: EventKind::Push(push),
    })
}

fn repository(event: &'static str, raw: raw::Repository) -> Result<RepositoryFacts, EventError> {
    // An identity: refused, never cut or cleaned into another repository's name.
    let full_name = raw.full_name;
    let parts: Vec<&str> = full_name.split('/').collect();
    if parts.len() != 2
        || parts.iter().any(|part| part.is_empty())
        || full_name.len() > MAX_NAME_CHARS
        || full_name.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(EventError::Invalid { event, field: "repository.full_name", reason: "must be owner/name" });
    }
    let optional = |field, value: Option<String>| value.map(|v| url(event, field, v)).transpose();
    Ok(RepositoryFacts {
        full_name,
        clone_url: optional("repository.clone_url", raw.clone_url)?,
        html_url: optional("repository.html_url", raw.html_url)?,
        ssh_url: optional("repository.ssh_url", raw.ssh_url)?,
        default_branch: raw.default_branch.map(|b| git_ref(event, "repository.default_branch", b)).transpose()?,
    })
}

/// A login, label or action: bounded, no control characters, not empty.
fn name(event: &'static str, field: &'static str, value: &str) -> Result<String, EventError> {
    let clean = bounded(value, MAX_NAME_CHARS);
    if clean.is_empty() {
        return Err(EventError::Invalid { event, field, reason: "must not be empty" });
    }
    Ok(clean)
}

/// A ref or branch name, exactly as sent: refused, not cut, when too long or odd.
fn git_ref(event: &'static str, field: &'static str, value: String) -> Result<String, EventError> {
    if value.is_empty() || value.len() > MAX_REF_BYTES || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(EventError::Invalid {
            event,
            field,
            reason: "must be 1-255 bytes without spaces or control characters",
        });
    }
    Ok(value)
}

/// A commit SHA: 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
fn commit(event: &'static str, field: &'static str, value: String) -> Result<String, EventError> {
    let hex = value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !(hex && matches!(value.len(), 40 | 64)) {
        return Err(EventError::Invalid { event, field, reason: "must be a full lowercase hex commit SHA" });
    }
    Ok(value)
}

fn url(event: &'static str, field: &'static str, value: String) -> Result<String, EventError> {
    if value.is_empty() || value.len() > MAX_URL_BYTES || value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(EventError::Invalid { event, field, reason: "must be a URL of at most 2048 bytes without spaces" });
    }
    Ok(value)
}

/// `text` without control characters, cut to `max` characters.
fn bounded(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The payload's shape, as far as the broker reads it. Unknown fields are ignored: GitHub adds
/// fields without notice.
mod raw {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct PullRequestEvent {
        pub action: String,
        pub pull_request: PullRequest,
        pub repository: Repository,
        pub sender: Account,
        pub installation: Option<Installation>,
    }

    #[derive(Deserialize)]
    pub(super) struct PushEvent {
        #[serde(rename = "ref")]
        pub git_ref: String,
        pub before: String,
        pub after: String,
        #[serde(default)]
        pub created: bool,
        #[serde(default)]
        pub deleted: bool,
        #[serde(default)]
        pub forced: bool,
        #[serde(default)]
        pub commits: Vec<Commit>,
        pub head_commit: Option<Commit>,
        pub repository: Repository,
        pub sender: Account,
        pub installation: Option<Installation>,
    }

    #[derive(Deserialize)]
    pub(super) struct Repository {
        pub full_name: String,
        pub clone_url: Option<String>,
        pub html_url: Option<String>,
        pub ssh_url: Option<String>,
        pub default_branch: Option<String>,
    }

    #[derive(Deserialize)]
    pub(super) struct Account {
        pub login: String,
    }

    #[derive(Deserialize)]
    pub(super) struct Installation {
        pub id: u64,
    }

    #[derive(Deserialize)]
    pub(super) struct PullRequest {
        pub number: u64,
        pub title: String,
        pub user: Account,
        pub html_url: String,
        pub base: Base,
        pub head: Head,
        #[serde(default)]
        pub draft: bool,
        #[serde(default)]
        pub merged: bool,
        pub merge_commit_sha: Option<String>,
        #[serde(default)]
        pub labels: Vec<Label>,
    }

    #[derive(Deserialize)]
    pub(super) struct Base {
        #[serde(rename = "ref")]
        pub git_ref: String,
        pub sha: String,
        pub repo: HeadRepository,
    }

    #[derive(Deserialize)]
    pub(super) struct Head {
        #[serde(rename = "ref")]
        pub git_ref: String,
        pub sha: String,
        /// `null` when the fork it came from was deleted.
        pub repo: Option<HeadRepository>,
    }

    #[derive(Deserialize)]
    pub(super) struct HeadRepository {
        pub full_name: String,
    }

    #[derive(Deserialize)]
    pub(super) struct Label {
        pub name: String,
    }

    #[derive(Deserialize)]
    pub(super) struct Commit {
        pub id: String,
        #[serde(default)]
        pub added: Vec<String>,
        #[serde(default)]
        pub modified: Vec<String>,
        #[serde(default)]
        pub removed: Vec<String>,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn fixture(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vcs/testdata").join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}")))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn parse(event: &str, payload: &Value) -> Result<Option<VcsEvent>, EventError> {
        VcsEvent::parse(event, payload.to_string().as_bytes())
    }

    fn pr(event: &VcsEvent) -> (&str, &PullRequestFacts) {
        match &event.kind {
            EventKind::PullRequest { action, pull_request } => (action, pull_request),
            EventKind::Push(_) => panic!("not a pull request: {event:?}"),
        }
    }

    fn pushed(event: &VcsEvent) -> &PushFacts {
        match &event.kind {
            EventKind::Push(push) => push,
            EventKind::PullRequest { .. } => panic!("not a push: {event:?}"),
        }
    }

    #[test]
    fn an_opened_pull_request() {
        let event = parse("pull_request", &fixture("pull_request.opened.json")).unwrap().unwrap();
        assert_eq!(
            event.repository,
            RepositoryFacts {
                full_name: "Codertocat/Hello-World".into(),
                clone_url: Some("https://github.com/Codertocat/Hello-World.git".into()),
                html_url: Some("https://github.com/Codertocat/Hello-World".into()),
                ssh_url: Some("git@github.com:Codertocat/Hello-World.git".into()),
                default_branch: Some("master".into()),
            }
        );
        assert_eq!(event.repository.urls().len(), 3);
        assert_eq!((event.sender.as_str(), event.installation), ("Codertocat", Some(1)));
        let (action, pr) = pr(&event);
        assert_eq!(action, "opened");
        assert_eq!(
            pr,
            &PullRequestFacts {
                number: 2,
                title: "Update the README with new information.".into(),
                author: "Codertocat".into(),
                base_ref: "master".into(),
                head_ref: "changes".into(),
                head_sha: "ec26c3e57ca3a959ca5aad62de7213c562f8c821".into(),
                base_sha: "f95f852bd8fca8fcc58a9a2d6c842781e32a215e".into(),
                url: "https://github.com/Codertocat/Hello-World/pull/2".into(),
                draft: false,
                fork: false,
                merged: false,
                merge_commit_sha: None,
                labels: vec!["bug".into()],
            }
        );
    }

    #[test]
    fn a_synchronized_and_a_merged_pull_request() {
        let sync = parse("pull_request", &fixture("pull_request.synchronize.json")).unwrap().unwrap();
        assert_eq!(pr(&sync).0, "synchronize");
        let merged = parse("pull_request", &fixture("pull_request.closed-merged.json")).unwrap().unwrap();
        let (action, facts) = pr(&merged);
        assert_eq!((action, facts.merged), ("closed", true));
        assert_eq!(facts.merge_commit_sha.as_deref(), Some("c4295bd74fb0f4fda03689c3df3f2803b658fd85"));
    }

    #[test]
    fn a_pull_request_from_a_fork_or_a_deleted_fork_is_a_fork() {
        let fork = fixture("pull_request.opened-fork.json");
        assert!(pr(&parse("pull_request", &fork).unwrap().unwrap()).1.fork);
        let mut deleted = fork.clone();
        deleted["pull_request"]["head"]["repo"] = Value::Null;
        assert!(pr(&parse("pull_request", &deleted).unwrap().unwrap()).1.fork);
        let mut same = fork;
        same["pull_request"]["head"]["repo"]["full_name"] = json!("codertocat/hello-world");
        assert!(!pr(&parse("pull_request", &same).unwrap().unwrap()).1.fork, "GitHub names are case-insensitive");
    }

    #[test]
    fn a_push_lists_its_files() {
        let event = parse("push", &fixture("push.json")).unwrap().unwrap();
        assert_eq!(event.installation, Some(1));
        assert_eq!(
            pushed(&event),
            &PushFacts {
                git_ref: "refs/heads/master".into(),
                before: "0000000000000000000000000000000000000000".into(),
                after: "6113728f27ae82c7b1a177c8d03f9e96e0adf246".into(),
                created: true,
                deleted: false,
                forced: false,
                changed_files: vec!["README.md".into()],
                files_complete: true,
            }
        );
        let deleted = parse("push", &fixture("push.tag-deleted.json")).unwrap().unwrap();
        let deleted = pushed(&deleted);
        assert!(deleted.deleted && deleted.changed_files.is_empty() && deleted.files_complete, "{deleted:?}");
        assert_eq!(deleted.git_ref, "refs/tags/simple-tag");
    }

    #[test]
    fn changed_files_are_the_union_deduplicated_and_sorted() {
        let mut payload = fixture("push.json");
        let commit = payload["commits"][0].clone();
        let mut second = commit.clone();
        second["id"] = json!("1".repeat(40));
        second["added"] = json!(["z.tf", "README.md"]);
        second["modified"] = json!(["stacks/net/main.tf"]);
        second["removed"] = json!(["a.tf"]);
        payload["commits"] = json!([commit, second.clone()]);
        payload["head_commit"] = second;
        let event = parse("push", &payload).unwrap().unwrap();
        let push = pushed(&event);
        assert_eq!(push.changed_files, ["README.md", "a.tf", "stacks/net/main.tf", "z.tf"]);
        assert!(push.files_complete);
    }

    /// GitHub lists at most 20 commits; with 20, or a head commit not among them, the list may
    /// miss files and says so.
    #[test]
    fn a_truncated_push_is_incomplete() {
        let payload = fixture("push.json");
        let commit = payload["commits"][0].clone();
        let mut twenty = payload.clone();
        twenty["commits"] = Value::Array(vec![commit.clone(); PUSH_COMMITS_CAP]);
        assert!(!pushed(&parse("push", &twenty).unwrap().unwrap()).files_complete);
        let mut elsewhere = payload.clone();
        elsewhere["head_commit"]["id"] = json!("2".repeat(40));
        assert!(!pushed(&parse("push", &elsewhere).unwrap().unwrap()).files_complete);
        let mut many = payload;
        let files: Vec<String> = (0..MAX_FILES + 5).map(|i| format!("f{i}.tf")).collect();
        many["commits"][0]["added"] = json!(files);
        let push = parse("push", &many).unwrap().unwrap();
        let push = pushed(&push);
        assert_eq!((push.changed_files.len(), push.files_complete), (MAX_FILES, false));
    }

    #[test]
    fn other_events_are_not_acted_on() {
        assert_eq!(parse("ping", &fixture("ping.json")), Ok(None));
        assert_eq!(VcsEvent::parse("issues", b"not even json"), Ok(None));
    }

    #[test]
    fn text_is_bounded_and_stripped_of_control_characters() {
        let mut payload = fixture("pull_request.opened.json");
        payload["pull_request"]["title"] = json!(format!("fix\u{1b}[31m red\n{}", "x".repeat(5000)));
        payload["pull_request"]["labels"] =
            json!((0..150).map(|i| json!({"name": format!("l{i}\r")})).collect::<Vec<_>>());
        let event = parse("pull_request", &payload).unwrap().unwrap();
        let facts = pr(&event).1;
        assert!(facts.title.starts_with("fix[31m red"), "{}", &facts.title[..20]);
        assert_eq!(facts.title.chars().count(), MAX_TITLE_CHARS);
        assert_eq!(facts.labels.len(), MAX_LABELS);
        assert_eq!(facts.labels[0], "l0");
    }

    #[test]
    fn a_pull_request_from_the_api_is_checked_as_a_payloads_is() {
        let pr = PullRequestFacts {
            number: 7,
            title: "OPS-7\u{7}: add".to_owned(),
            author: "octocat".to_owned(),
            base_ref: "main".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: "a".repeat(40),
            base_sha: String::new(),
            url: "https://github.com/o/r/pull/7".to_owned(),
            draft: false,
            fork: false,
            merged: true,
            merge_commit_sha: Some("b".repeat(40)),
            labels: vec!["ok".to_owned(), "\u{1b}".to_owned()],
        };
        let checked = pr.clone().checked("pulls_of_commit");
        assert!(matches!(&checked, Ok(p) if p.title == "OPS-7: add" && p.labels == ["ok"]), "{checked:?}");
        for bad in [
            PullRequestFacts { head_ref: "feature branch".to_owned(), ..pr.clone() },
            PullRequestFacts { head_sha: "HEAD".to_owned(), ..pr.clone() },
            PullRequestFacts { merge_commit_sha: Some("../x".to_owned()), ..pr.clone() },
            PullRequestFacts { url: "https://x y".to_owned(), ..pr.clone() },
            PullRequestFacts { author: String::new(), ..pr.clone() },
        ] {
            assert!(bad.clone().checked("pulls_of_commit").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn missing_or_wrong_fields_are_typed_errors() {
        let opened = fixture("pull_request.opened.json");
        let mut no_sha = opened.clone();
        no_sha["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
        match parse("pull_request", &no_sha) {
            Err(EventError::Malformed { event: "pull_request", path, message }) => {
                assert_eq!(path, "pull_request.head");
                assert!(message.starts_with("missing field `sha`"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let mut wrong: Vec<(&str, Value)> = Vec::new();
        let mut bad = opened.clone();
        bad["pull_request"]["head"]["sha"] = json!("HEAD");
        wrong.push(("pull_request.head.sha", bad));
        let mut bad = opened.clone();
        bad["pull_request"]["base"]["ref"] = json!("x".repeat(MAX_REF_BYTES + 1));
        wrong.push(("pull_request.base.ref", bad));
        let mut bad = opened.clone();
        bad["repository"]["full_name"] = json!("no-slash");
        wrong.push(("repository.full_name", bad));
        let mut bad = opened.clone();
        bad["repository"]["full_name"] = json!("octo/re\u{0}po");
        wrong.push(("repository.full_name", bad));
        let mut bad = opened.clone();
        bad["repository"]["full_name"] = json!(format!("octo/{}", "r".repeat(300)));
        wrong.push(("repository.full_name", bad));
        let mut bad = opened.clone();
        bad["sender"]["login"] = json!("\u{7}");
        wrong.push(("sender.login", bad));
        let mut bad = opened;
        bad["pull_request"]["number"] = json!(0);
        wrong.push(("pull_request.number", bad));
        for (field, payload) in wrong {
            match parse("pull_request", &payload) {
                Err(EventError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let mut push = fixture("push.json");
        push.as_object_mut().unwrap().remove("ref");
        assert!(matches!(parse("push", &push), Err(EventError::Malformed { event: "push", .. })));
        assert!(matches!(VcsEvent::parse("push", b"{"), Err(EventError::Malformed { .. })));
    }
}
