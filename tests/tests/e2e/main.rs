//! Keyward's end-to-end suite, in one test binary (one link, not two dozen): real `keyward` and
//! `keyward-agent` processes against real peers (OpenBao, moto, PostgreSQL, Terraform, PyJWT,
//! regopy, Python `cryptography`), one module per topic. nextest still runs every test in its own
//! process; `cargo nextest run -E 'test(/^terraform::/)'` runs one topic.

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod agent_credentials;
mod agent_logs;
mod agents;
mod audit;
mod audit_durability;
mod audit_sinks;
mod audit_storage;
mod backup;
mod ci_flow;
mod config_and_startup;
mod console;
mod console_audit;
mod console_forms;
mod console_pages;
mod console_run;
mod console_story;
mod contexts;
mod drift_remediation;
mod drift_schedule;
mod exchange;
mod exchange_bad_input;
mod exchange_sts;
mod exchange_vault;
mod external_issuer;
mod github_api;
mod ha;
mod hooks;
mod http_server;
mod issuer;
mod issuer_refresh;
mod managed_state;
mod metrics;
mod notifications;
mod openbao_jwt;
mod opentofu;
mod packaging;
mod policy_library;
mod policy_reload;
mod postgres_broker;
mod runs;
mod runs_cli;
mod scans;
mod spaces;
mod sso;
mod store;
mod terraform;
mod tf_provider;
mod vcs;
mod vcs_runs;
