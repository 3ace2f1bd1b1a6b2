//! GitHub, as a GitHub App (docs/vcs.md): its settings and the webhook receiver.
//!
//! - `signature`: `X-Hub-Signature-256`, checked before anything is parsed.
//! - `webhook`: a verified delivery parsed minimally, deduplicated on its delivery ID and queued
//!   with its audit entry in one commit.
//! - `app`: the App's private key and the RS256 JWT it signs.
//! - `api`: the REST API client (installation tokens, PR files, statuses, comments).

pub mod api;
pub mod app;
pub mod signature;
pub mod webhook;

use std::sync::Arc;

use keyward_proto::secret::Secret;

use crate::audit::AuditLog;
use crate::clock::SharedClock;

pub use webhook::{Outcome, WebhookError};

/// The largest webhook body read: GitHub caps payloads at 25 MB.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// The shortest webhook secret accepted (GitHub recommends a long random string).
pub const MIN_SECRET_BYTES: usize = 16;

/// `[vcs.github]`, checked, with its secrets read.
#[derive(Debug, Clone)]
pub struct GithubSettings {
    /// The GitHub App's ID.
    pub app_id: u64,
    /// The App's private key (PEM), for the App JWT.
    pub private_key: Secret,
    /// The secret webhook deliveries are signed with.
    pub webhook_secret: Secret,
    /// The REST API's base URL, without a trailing slash (GitHub Enterprise: its own).
    pub api_url: String,
}

/// The GitHub integration: receives webhook deliveries. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Github {
    settings: Arc<GithubSettings>,
    audit: AuditLog,
    clock: SharedClock,
}

impl Github {
    /// The integration for `settings`, recording through `audit`.
    pub fn new(settings: GithubSettings, audit: AuditLog, clock: SharedClock) -> Self {
        Self { settings: Arc::new(settings), audit, clock }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &GithubSettings {
        &self.settings
    }
}
