//! The Keyward broker.
//!
//! It issues short-lived, run-scoped OIDC tokens, publishes the discovery document and JWKS that
//! let AWS, Vault and others verify them, exchanges them for cloud credentials behind a policy
//! check and a tamper-evident audit log, and runs Terraform stacks through private agents.
//!
//! Code map, top to bottom (ARCHITECTURE.md has the whole map and the import rules):
//! - [`cli`], [`server`]: the `keyward` command line; start-up and the background tasks.
//! - [`config`]: the TOML file, on top: checked and resolved once into typed `Settings`.
//! - [`http`], [`grpc`]: the edges; the only modules that know HTTP or gRPC, each with one
//!   error→status table.
//! - [`exchange`]: RFC 8693 token exchange; [`runs`]: stacks, runs, reviews, the job queue;
//!   [`agents`]: pools, enrollment, the connected agents; [`joblogs`]: jobs' signed logs;
//!   [`access`]: operator API tokens (hashed, scoped).
//! - [`issuance`]: the one commit that lets a token out; [`keys`]: the signing-key ring;
//!   [`targets`]: the named AWS and Vault targets; [`metrics`]: Prometheus text.
//! - [`tokens`]: where tokens are signed and verified, with no I/O.
//! - [`audit`]: the group-commit writer, proofs, checkpoints, sinks; [`policy`]: Rego.
//! - [`store`]: all the SQL; [`kek`]: sealing secrets at rest; [`clock`]: time.

#![forbid(unsafe_code)]

pub mod access;
pub mod agents;
pub mod audit;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod console_sessions;
pub mod exchange;
pub mod grpc;
pub mod http;
pub mod issuance;
pub mod joblogs;
pub mod kek;
pub mod keys;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod roles;
pub mod runs;
pub mod server;
pub mod spaces;
pub mod sso;
pub mod store;
pub mod targets;
pub mod tokens;
pub mod vcs;
