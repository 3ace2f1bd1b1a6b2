//! The audit log's integrator: builds tiles and lookup keys from committed batches, beside the
//! writer, on every replica.
//!
//! Why a separate task: the append transaction writes one row per batch so that its commit (the
//! sync a credential waits for) stays small; the tree's tiles and the lookup keys that `trace`,
//! `tail` and proofs use are derived from those rows afterwards. Reads never wait for this task
//! (they read the batches past its cursor), so it only has to keep up on average. Each step is
//! idempotent and checks every batch against the tree head recorded with it; replicas may run it
//! at once (a step applies only if the cursor has not moved).

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::writer::AuditLog;
use crate::store::Store;

/// Entries one step integrates at most (whole batches): bounds how long its transaction holds
/// SQLite's write lock against the writer.
const STEP_ENTRIES: u64 = 8192;

/// How often an idle integrator looks for batches another replica committed.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The pause after a step that found less than [`STEP_ENTRIES`]: lets the backlog grow into
/// larger steps, so under load the integrator commits (and syncs) a few times a second instead of
/// once per writer commit. Reads never wait for it.
const PACE: Duration = Duration::from_millis(100);

/// Backoff after a failed step.
const RETRY: Duration = Duration::from_secs(2);

/// Integrates forever: at most [`PACE`] after a local commit, every [`IDLE_POLL`] when idle.
pub async fn run(store: Store, log: AuditLog) {
    let committed = log.committed();
    loop {
        // Registered before looking, so a commit between the look and the wait is not missed.
        let notified = committed.notified();
        match store.integrate_audit(STEP_ENTRIES).await {
            Ok(Some(step)) => {
                log.stats().integrated.store(step.to, Ordering::Relaxed);
                if step.to - step.from < STEP_ENTRIES {
                    tokio::time::sleep(PACE).await;
                }
            }
            Ok(None) => {
                if let Ok(size) = store.audit_integrated().await {
                    log.stats().integrated.store(size, Ordering::Relaxed);
                }
                let _ = tokio::time::timeout(IDLE_POLL, notified).await;
            }
            Err(error) => {
                log.stats().integration_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "the audit integrator failed a step; entries stay readable from their batches, will retry");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
