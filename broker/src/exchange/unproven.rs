//! Refusals of callers who proved nothing (DESIGN.md §8.10, security review M5).
//!
//! `/v1/token` faces the internet and target names are public, so a refusal of a subject token
//! that did not verify — garbage, a foreign key, an unknown issuer, an expired token — must not
//! cost a durable, fsynced Merkle-log entry: anyone could grow the audit log at will. Such
//! refusals go to metrics (the HTTP edge counts every refusal) and to the service log, at most
//! [`PER_SECOND`] lines a second with a count of what was left out. A subject whose signature
//! verified is another matter: its refusals are always audited.

use std::sync::Mutex;

use crate::audit::Context;

/// Lines logged per second at most; the rest are counted and summarised.
const PER_SECOND: u32 = 10;

/// A rate-limited service log of unproven refusals.
#[derive(Debug, Default)]
pub(super) struct UnprovenRefusals {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    second: i64,
    logged: u32,
    suppressed: u64,
}

impl UnprovenRefusals {
    /// Notes a refusal at `now` (Unix seconds); logs it unless this second's lines are spent.
    /// Returns whether it was logged.
    pub(super) fn refused(&self, now: i64, caller: &Context, target: &str, reason: &str) -> bool {
        let Ok(mut window) = self.window.lock() else { return false };
        if window.second != now {
            if window.suppressed > 0 {
                tracing::warn!(
                    suppressed = window.suppressed,
                    "unverified subject tokens refused; not every one was logged"
                );
            }
            *window = Window { second: now, logged: 0, suppressed: 0 };
        }
        if window.logged >= PER_SECOND {
            window.suppressed += 1;
            return false;
        }
        window.logged += 1;
        tracing::warn!(
            target_name = target,
            request_id = caller.request_id.as_deref().unwrap_or("-"),
            remote_addr = caller.remote_addr.as_deref().unwrap_or("-"),
            reason,
            "subject token refused before it verified (not audited: the caller proved nothing)"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_per_second_lines_are_logged_a_second() {
        let log = UnprovenRefusals::default();
        let logged = (0..100).filter(|_| log.refused(7, &Context::default(), "aws:x", "bad")).count();
        assert_eq!(logged, PER_SECOND as usize);
        assert!(log.refused(8, &Context::default(), "aws:x", "bad"), "a new second logs again");
    }
}
