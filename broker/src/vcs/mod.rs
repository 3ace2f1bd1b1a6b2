//! Version control integration (docs/vcs.md): pull requests and pushes drive runs, and runs
//! report back on them.
//!
//! Provider-neutral parts: `event` (a delivery's payload as typed facts), `matching` (which
//! stacks a change touches), `push_policy` (`keyward.push`'s input and decision), `ticket` (the
//! ticket in a pull request's title or branch) and `report` (statuses and comments rendered).
//! `github` is the one provider so far.

pub mod event;
pub mod github;
pub mod matching;
pub mod push_policy;
pub mod report;
pub mod ticket;
