//! One webhook delivery: verified, parsed minimally, and queued once.
//!
//! The signature is checked over the raw body before anything of it is parsed; an unproven
//! caller writes nothing, not even an audit entry (DESIGN.md §8.10). A verified delivery of an
//! event Keyward acts on (`pull_request`, `push`, `ping`) is queued in `vcs_deliveries` with its
//! `vcs.delivery_accepted` entry in one commit; the delivery ID is unique there, so a replay is
//! recognised by the database and stores nothing new. The worker (`worker`) processes the queue.

use serde::Deserialize;

use super::Github;
use super::signature::{self, SignatureError};
use crate::audit::{Append, AuditEvent, ChangeError, Context, Kind};
use crate::store::vcs::{DeliveryRow, insert_delivery};

/// The events queued; any other is acknowledged and ignored.
pub const EVENTS: [&str; 3] = ["pull_request", "push", "ping"];

/// What the headers of a delivery say (values as sent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Headers<'a> {
    /// `X-GitHub-Event`.
    pub event: Option<&'a [u8]>,
    /// `X-GitHub-Delivery`.
    pub delivery: Option<&'a [u8]>,
    /// `X-Hub-Signature-256`.
    pub signature: Option<&'a [u8]>,
}

/// What became of a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Queued, with its audit entry.
    Accepted,
    /// Its delivery ID was queued before; nothing new was stored.
    Duplicate,
    /// An event Keyward does not act on; nothing was stored.
    Ignored(String),
}

/// Why a delivery was refused; nothing was stored.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The signature is missing or wrong: the caller is not proven to be GitHub.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// A required header is missing or not acceptable.
    #[error("{0}")]
    Header(&'static str),
    /// A `pull_request` or `push` delivery names no App installation: it comes from a
    /// repository webhook, not the GitHub App, and nothing could be reported back.
    #[error(
        "the delivery names no installation: configure the webhook on the GitHub App, not on the repository (docs/vcs.md)"
    )]
    NoInstallation,
    /// The body is not the JSON object GitHub sends.
    #[error("the body is not a JSON webhook payload: {0}")]
    Json(String),
    /// Queuing failed.
    #[error(transparent)]
    Change(ChangeError),
}

/// The few payload fields recorded now; everything else stays in the queued raw payload.
#[derive(Debug, Default, Deserialize)]
struct Payload {
    #[serde(default)]
    repository: Option<Repository>,
    #[serde(default)]
    pull_request: Option<PullRequest>,
    #[serde(default)]
    sender: Option<Account>,
    #[serde(default)]
    installation: Option<Installation>,
    /// A push's new head.
    #[serde(default)]
    after: Option<String>,
    /// A push's ref.
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
    #[serde(default)]
    clone_url: Option<String>,
    #[serde(default)]
    html_url: Option<String>,
    #[serde(default)]
    ssh_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PullRequest {
    number: u64,
    #[serde(default)]
    title: Option<String>,
    head: Head,
    #[serde(default)]
    user: Option<Account>,
}

#[derive(Debug, Deserialize)]
struct Head {
    sha: String,
}

#[derive(Debug, Deserialize)]
struct Account {
    login: String,
}

#[derive(Debug, Deserialize)]
struct Installation {
    id: u64,
}

impl Github {
    /// Verifies, parses and queues one delivery. `context` is the request's audit context.
    pub async fn receive(&self, headers: Headers<'_>, body: &[u8], context: Context) -> Result<Outcome, WebhookError> {
        signature::verify(self.settings.webhook_secret.expose().as_bytes(), body, headers.signature)?;
        let event = header_value(headers.event, 64, "missing or invalid X-GitHub-Event header")?;
        let delivery = header_value(headers.delivery, 128, "missing or invalid X-GitHub-Delivery header")?;
        let payload: Payload = serde_json::from_slice(body).map_err(|e| WebhookError::Json(e.to_string()))?;
        if !EVENTS.contains(&event.as_str()) {
            return Ok(Outcome::Ignored(format!("event `{event}` is not acted on")));
        }
        if event != "ping" && payload.installation.is_none() {
            // Only an App's deliveries name the installation its API calls go through.
            return Err(WebhookError::NoInstallation);
        }
        let received_at = self.clock.now();
        let audit = accepted_event(&event, &delivery, &payload, received_at, context);
        let row = DeliveryRow {
            delivery_id: delivery,
            provider: "github",
            event,
            received_at,
            received_order: receipt_order(),
            payload: body.to_vec(),
        };
        let committed = self.audit.append(Append::changes(vec![insert_delivery(&row)], vec![audit])).await;
        match committed.map_err(ChangeError::from).and_then(|c| c.into_change()) {
            Ok(()) => {
                self.queued.notify_one();
                Ok(Outcome::Accepted)
            }
            Err(ChangeError::Duplicate { .. }) => Ok(Outcome::Duplicate),
            Err(error) => Err(WebhookError::Change(error)),
        }
    }
}

/// Wall-clock nanoseconds now: the order deliveries are acted on in. Not the broker's clock
/// (whole seconds, which two pushes share); only compared, never read as a time.
fn receipt_order() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// A header's value as text: 1 to `max` printable ASCII characters.
fn header_value(value: Option<&[u8]>, max: usize, error: &'static str) -> Result<String, WebhookError> {
    match value {
        Some(value) if !value.is_empty() && value.len() <= max && value.iter().all(u8::is_ascii_graphic) => {
            Ok(String::from_utf8_lossy(value).into_owned())
        }
        _ => Err(WebhookError::Header(error)),
    }
}

fn accepted_event(event: &str, delivery: &str, payload: &Payload, at: i64, context: Context) -> AuditEvent {
    let repository = payload.repository.as_ref();
    let pull_request = payload.pull_request.as_ref();
    let head_sha = pull_request.map(|pr| pr.head.sha.clone()).or_else(|| payload.after.clone());
    let context = Context {
        repository: repository.map(|r| r.full_name.clone()),
        commit_sha: head_sha,
        pull_request: pull_request.map(|pr| pr.number),
        git_ref: payload.git_ref.clone(),
        ..context
    };
    let mut entry = AuditEvent::new(Kind::VcsDeliveryAccepted, at, context)
        .with("provider", "github")
        .with("event", event)
        .with("delivery", delivery)
        .with_ref("delivery", delivery);
    if let Some(sender) = &payload.sender {
        entry = entry.with("sender", sender.login.as_str());
    }
    if let Some(installation) = &payload.installation {
        entry = entry.with("installation", installation.id);
    }
    if let Some(repository) = repository {
        for (key, url) in
            [("clone_url", &repository.clone_url), ("html_url", &repository.html_url), ("ssh_url", &repository.ssh_url)]
        {
            if let Some(url) = url {
                entry = entry.with(key, url.as_str());
            }
        }
    }
    if let Some(pr) = pull_request {
        if let Some(title) = &pr.title {
            entry = entry.with("pull_request_title", title.as_str());
        }
        if let Some(user) = &pr.user {
            entry = entry.with("pull_request_author", user.login.as_str());
        }
    }
    entry
}
