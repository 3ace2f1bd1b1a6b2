//! The Keyward broker.
//!
//! It issues short-lived, run-scoped OIDC tokens, publishes the discovery document and JWKS that
//! let AWS, Vault and others verify them, and (in later layers) exchanges them for cloud
//! credentials behind a policy check and a tamper-evident audit log.
//!
//! Code map (see ARCHITECTURE.md):
//! - [`config`]: the one TOML file, validated with key paths in errors.
//! - [`store`]: SQLite or PostgreSQL behind one API, with migrations.
//! - [`identity`]: signing keys sealed at rest, rotation, JWKS, run-token minting and issuance.
//! - [`access`]: operator API tokens (hashed, scoped).
//! - [`joblogs`]: jobs' signed log chunks: verified on receipt, stored, sealed, bundled.
//! - [`http`]: the HTTP edge: routes, extractors, and the one error→status table; the only module that knows about axum.
//! - [`grpc`]: the agents' gRPC edge; the only module that builds a `tonic::Status`.
//! - [`server`]: assembles the pieces and runs them.
//! - [`cli`]: the `keyward` command line.

#![forbid(unsafe_code)]

pub mod access;
pub mod agents;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod exchange;
pub mod grpc;
pub mod http;
pub mod issuance;
pub mod joblogs;
pub mod kek;
pub mod keys;
pub mod metrics;
pub mod policy;
pub mod runs;
pub mod server;
pub mod store;
pub mod targets;
pub mod tokens;
