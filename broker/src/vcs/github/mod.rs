//! GitHub, as a GitHub App (docs/vcs.md): pull requests and pushes drive runs, and runs report
//! back on them.
//!
//! - `signature`: `X-Hub-Signature-256`, checked before anything is parsed.
//! - `webhook`: a verified delivery parsed minimally, deduplicated on its delivery ID and queued
//!   with its audit entry in one commit.
//! - `worker`: queued deliveries processed: the stacks a change touches, `keyward.push`'s
//!   decision for each, the runs it starts.
//! - `reporter`: commit statuses and pull request comments, kept in step with the runs.
//! - `app` and `api`: the App's JWT, installation tokens, and the REST calls made.

pub mod api;
pub mod app;
mod reporter;
pub mod signature;
pub mod webhook;
mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

use keyward_proto::secret::Secret;

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::policy::PolicyEngine;
use crate::runs::Runs;
use crate::store::Store;
use crate::vcs::ticket::TicketPattern;

pub use webhook::{Outcome, WebhookError};
pub use worker::{FORK_REFUSAL, OLDER_PUSH};

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
    /// Finds the ticket in a pull request's title or branch (`[vcs] ticket_pattern`).
    pub ticket_pattern: TicketPattern,
}

/// What the integration works with, besides its settings.
#[derive(Debug, Clone)]
pub struct Services {
    /// Where accepted deliveries and their processing are recorded.
    pub audit: AuditLog,
    /// Deliveries, runs' reporting state, comments.
    pub store: Store,
    /// Stacks, and the runs it starts.
    pub runs: Runs,
    /// `keyward.push` (none: every change is ignored).
    pub policies: Option<Arc<PolicyEngine>>,
    /// The broker's external URL, for links to runs.
    pub external_url: String,
    /// The time.
    pub clock: SharedClock,
}

/// The GitHub integration: receives webhook deliveries, processes them, reports runs back.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Github {
    settings: Arc<GithubSettings>,
    api: api::GithubApi,
    audit: AuditLog,
    store: Store,
    runs: Runs,
    policies: Option<Arc<PolicyEngine>>,
    external_url: Arc<str>,
    clock: SharedClock,
    /// Wakes the worker when a delivery is queued.
    queued: Arc<Notify>,
}

impl Github {
    /// The integration for `settings`; fails when the App's private key cannot be used.
    pub fn new(settings: GithubSettings, services: Services) -> Result<Self, api::ApiError> {
        let Services { audit, store, runs, policies, external_url, clock } = services;
        let api = api::GithubApi::new(&settings, std::sync::Arc::clone(&clock))?;
        Ok(Self {
            settings: Arc::new(settings),
            api,
            audit,
            store,
            runs,
            policies,
            external_url: external_url.into(),
            clock,
            queued: Arc::new(Notify::new()),
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &GithubSettings {
        &self.settings
    }

    /// Starts the delivery worker and the reporter.
    pub fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(self.clone().process_deliveries()), tokio::spawn(self.clone().report_runs())]
    }
}
