//! Wake-ups from the run lifecycle to the job dispatcher.
//!
//! The lifecycle writes jobs; the dispatcher hands them to agents. Neither knows the other: the
//! lifecycle raises "a job was queued in pool P" and "job J, leased to agent A, was canceled",
//! and whoever dispatches listens. A queued signal is a permit (`Notify::notify_one`), so one
//! raised while the dispatcher is busy is not lost. Jobs queued by another broker replica raise
//! nothing here; the dispatcher's poll interval finds those. A run's change is also counted on a
//! `watch` channel that any number of watchers (the console's live run pages) may follow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, broadcast, watch};

/// A leased job that was canceled: its agent should stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canceled {
    /// The agent holding the lease.
    pub agent_id: String,
    /// The job.
    pub job_id: String,
    /// Why.
    pub reason: String,
}

/// The signals. Cheap to share.
#[derive(Debug)]
pub struct Signals {
    queued: Mutex<HashMap<String, Arc<Notify>>>,
    canceled: broadcast::Sender<Canceled>,
    changed: Notify,
    revision: watch::Sender<u64>,
}

impl Default for Signals {
    fn default() -> Self {
        Self {
            queued: Mutex::new(HashMap::new()),
            canceled: broadcast::channel(256).0,
            changed: Notify::new(),
            revision: watch::Sender::new(0),
        }
    }
}

impl Signals {
    /// Raised when a job is queued in `pool`.
    pub fn queued(&self, pool: &str) {
        self.pool(pool).notify_one();
    }

    /// What a dispatcher for `pool` waits on.
    pub fn pool(&self, pool: &str) -> Arc<Notify> {
        let mut pools = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(pools.entry(pool.to_owned()).or_default())
    }

    /// Raised when a leased job is canceled.
    pub fn canceled(&self, canceled: Canceled) {
        // No receiver means no dispatcher in this process: the agent learns it at its next heartbeat.
        let _ = self.canceled.send(canceled);
    }

    /// Raised when a run's state was committed on this replica (a permit: one waiter learns of
    /// any number of changes since it last looked).
    pub fn run_changed(&self) {
        self.changed.notify_one();
        self.revision.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What any number of watchers of runs wait on (`changed()`): a counter of the changes
    /// committed on this replica. Other replicas' changes raise nothing here.
    pub fn run_revisions(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// What a watcher of runs (the VCS reporter) waits on; it polls too, for other replicas'.
    pub fn run_changes(&self) -> &Notify {
        &self.changed
    }

    /// Subscribes to cancellations.
    pub fn cancellations(&self) -> broadcast::Receiver<Canceled> {
        self.canceled.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_watcher_of_runs_wakes_and_the_dispatchers_permit_stays() {
        let signals = Signals::default();
        let (mut first, mut second) = (signals.run_revisions(), signals.run_revisions());
        signals.run_changed();
        signals.run_changed();
        // Both watchers learn of it, once for any number of changes.
        first.changed().await.unwrap();
        second.changed().await.unwrap();
        assert!(!first.has_changed().unwrap() && *second.borrow() == 2);
        // The reporter's permit is still there for it.
        tokio::time::timeout(std::time::Duration::from_secs(5), signals.run_changes().notified()).await.unwrap();
    }
}
