//! Version control integration (docs/vcs.md): pull requests and pushes drive runs. So far only
//! GitHub's webhook is received, verified, deduplicated and queued durably; processing the
//! queue comes next.

pub mod event;
pub mod github;
pub mod matching;
pub mod push_policy;
