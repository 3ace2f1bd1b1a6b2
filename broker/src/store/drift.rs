//! Drift detection's rows: each stack's drift state (`stack_drift`), and the scheduler's claims
//! on the fire times of stacks' drift schedules.
//!
//! A fire time is claimed with a guarded write on the stack (`last_drift_check_at` below the fire
//! time, the schedule unchanged): the claim commits with the run it queues, in the audit log's
//! append, so two schedulers that both believed they held the lease still queue one run per fire
//! time, and a fire time once handled is never handled again, across restarts and replicas.

use sqlx::Row as _;

use super::write::Write;
use super::{Store, StoreError};

/// A stack's drift state as stored (no row: never checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow {
    /// `in_sync`, `drifted` or `failed`.
    pub state: String,
    /// When the last check ended.
    pub checked_at: i64,
    /// That check's run (none when the scheduler could not queue it).
    pub run_id: Option<String>,
    /// `failed`: why.
    pub error: Option<String>,
    /// Resources to add, change and destroy, and changed outside Terraform, at the last check
    /// that ran to the end (a failed check keeps them).
    pub counts: DriftCounts,
    /// JSON array of the drifted resources' addresses.
    pub addresses: String,
    /// The first check that found the current drift.
    pub since: Option<i64>,
}

/// What a drift check counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftCounts {
    /// Resources to create.
    pub to_add: i64,
    /// Resources to update in place.
    pub to_change: i64,
    /// Resources to delete (replacements count here and in `to_add`).
    pub to_destroy: i64,
    /// Resources changed outside Terraform (`resource_drift`).
    pub changed_outside: i64,
}

/// A stack with a drift schedule, as the scheduler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledStack {
    /// The stack.
    pub name: String,
    /// Its cron expression.
    pub schedule: String,
    /// When the schedule was set (fire times up to it never run).
    pub set_at: Option<i64>,
    /// The last fire time handled.
    pub last_check_at: Option<i64>,
}

/// A drift run of a stack that has not ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveDriftRun {
    /// Run ID.
    pub id: String,
    /// `queued` or `planning`.
    pub state: String,
}

/// Reads the drift columns of a stack query (`LEFT JOIN stack_drift d`, columns `drift_*`).
pub(super) fn drift_from(row: &sqlx::any::AnyRow) -> Result<Option<DriftRow>, StoreError> {
    let Some(state) = row.try_get::<Option<String>, _>("drift_state")? else { return Ok(None) };
    Ok(Some(DriftRow {
        state,
        checked_at: row.try_get("drift_checked_at")?,
        run_id: row.try_get("drift_run_id")?,
        error: row.try_get("drift_error")?,
        counts: DriftCounts {
            to_add: row.try_get("drift_to_add")?,
            to_change: row.try_get("drift_to_change")?,
            to_destroy: row.try_get("drift_to_destroy")?,
            changed_outside: row.try_get("drift_changed_outside")?,
        },
        addresses: row.try_get("drift_addresses")?,
        since: row.try_get("drift_since")?,
    }))
}

/// The `stack_drift` columns a stack query selects, named `drift_*`.
pub(super) const DRIFT_COLUMNS: &str = "d.state AS drift_state, d.checked_at AS drift_checked_at, \
     d.run_id AS drift_run_id, d.error AS drift_error, d.to_add AS drift_to_add, d.to_change AS drift_to_change, \
     d.to_destroy AS drift_to_destroy, d.changed_outside AS drift_changed_outside, \
     d.addresses AS drift_addresses, d.since AS drift_since";

/// A check of `stack` (run `run_id`) ended at `now` and found no drift.
pub fn record_in_sync(stack: &str, run_id: &str, now: i64) -> Write {
    Write::one(
        format!("the drift state of stack `{stack}`"),
        "INSERT INTO stack_drift (stack, state, checked_at, run_id, error, to_add, to_change, to_destroy, \
         changed_outside, addresses, since) VALUES ($1, 'in_sync', $2, $3, NULL, 0, 0, 0, 0, '[]', NULL) \
         ON CONFLICT (stack) DO UPDATE SET state = 'in_sync', checked_at = $2, run_id = $3, error = NULL, \
         to_add = 0, to_change = 0, to_destroy = 0, changed_outside = 0, addresses = '[]', since = NULL",
        vec![stack.into(), now.into(), run_id.into()],
    )
}

/// A check of `stack` (run `run_id`) ended at `now` and found drift: `counts` and `addresses`
/// (a JSON array). The drift dates from the first check that found it: `since` stays while
/// checks keep finding drift or fail, and only a check that finds none clears it.
pub fn record_drifted(stack: &str, run_id: &str, counts: DriftCounts, addresses: String, now: i64) -> Write {
    Write::one(
        format!("the drift state of stack `{stack}`"),
        "INSERT INTO stack_drift (stack, state, checked_at, run_id, error, to_add, to_change, to_destroy, \
         changed_outside, addresses, since) VALUES ($1, 'drifted', $2, $3, NULL, $4, $5, $6, $7, $8, $2) \
         ON CONFLICT (stack) DO UPDATE SET state = 'drifted', checked_at = $2, run_id = $3, error = NULL, \
         to_add = $4, to_change = $5, to_destroy = $6, changed_outside = $7, addresses = $8, \
         since = COALESCE(stack_drift.since, $2)",
        vec![
            stack.into(),
            now.into(),
            run_id.into(),
            counts.to_add.into(),
            counts.to_change.into(),
            counts.to_destroy.into(),
            counts.changed_outside.into(),
            addresses.into(),
        ],
    )
}

/// A check of `stack` failed at `now` (its run, if it has one), for `error`. What the last
/// check that ran found, and since when, are kept.
pub fn record_failed(stack: &str, run_id: Option<&str>, error: &str, now: i64) -> Write {
    Write::one(
        format!("the drift state of stack `{stack}`"),
        "INSERT INTO stack_drift (stack, state, checked_at, run_id, error) VALUES ($1, 'failed', $2, $3, $4) \
         ON CONFLICT (stack) DO UPDATE SET state = 'failed', checked_at = $2, run_id = $3, error = $4",
        vec![stack.into(), now.into(), run_id.map(str::to_owned).into(), error.into()],
    )
}

/// Claims the fire time `fire` of `stack`'s drift schedule `schedule` for the drift run that
/// commits with it, `note` saying so: it holds only if no fire time at or after `fire` was
/// handled, the schedule is the one read (and was set before `fire`), and no drift run of the
/// stack is queued or running.
pub fn claim_fire_for_run(stack: &str, schedule: &str, fire: i64, note: String) -> Write {
    Write::one(
        format!("the drift schedule of stack `{stack}` at {fire} (claimed meanwhile, or a check is queued)"),
        "UPDATE stacks SET last_drift_check_at = $1, last_drift_check = $2 \
         WHERE name = $3 AND drift_schedule = $4 \
         AND (last_drift_check_at IS NULL OR last_drift_check_at < $1) \
         AND (drift_schedule_set_at IS NULL OR drift_schedule_set_at < $1) \
         AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.stack = $3 AND runs.kind = 'drift' \
         AND runs.state IN ('queued', 'planning'))",
        vec![fire.into(), note.into(), stack.into(), schedule.into()],
    )
}

/// The claim of [`claim_fire_for_run`] without the condition on running checks: for a fire time
/// the scheduler handles without queueing a run (a check still running, a refusal).
pub fn claim_fire(stack: &str, schedule: &str, fire: i64, note: String) -> Write {
    Write::one(
        format!("the drift schedule of stack `{stack}` at {fire} (claimed meanwhile)"),
        "UPDATE stacks SET last_drift_check_at = $1, last_drift_check = $2 \
         WHERE name = $3 AND drift_schedule = $4 \
         AND (last_drift_check_at IS NULL OR last_drift_check_at < $1) \
         AND (drift_schedule_set_at IS NULL OR drift_schedule_set_at < $1)",
        vec![fire.into(), note.into(), stack.into(), schedule.into()],
    )
}

impl Store {
    /// Every stack with a drift schedule, by name.
    pub async fn scheduled_stacks(&self) -> Result<Vec<ScheduledStack>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, drift_schedule, drift_schedule_set_at, last_drift_check_at FROM stacks \
             WHERE drift_schedule IS NOT NULL ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ScheduledStack {
                    name: row.try_get("name")?,
                    schedule: row.try_get("drift_schedule")?,
                    set_at: row.try_get("drift_schedule_set_at")?,
                    last_check_at: row.try_get("last_drift_check_at")?,
                })
            })
            .collect()
    }

    /// The oldest drift run of `stack` that is queued or running, if any.
    pub async fn active_drift_run(&self, stack: &str) -> Result<Option<ActiveDriftRun>, StoreError> {
        let row = sqlx::query(
            "SELECT id, state FROM runs WHERE stack = $1 AND kind = 'drift' AND state IN ('queued', 'planning') \
             ORDER BY created_at, id LIMIT 1",
        )
        .bind(stack)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(ActiveDriftRun { id: row.try_get("id")?, state: row.try_get("state")? })).transpose()
    }

    /// The oldest run of `stack` that may still apply (a deploy or a remediation not yet
    /// finished, failed, canceled or discarded), if any: a remediation is not queued beside it.
    pub async fn active_applying_run(&self, stack: &str) -> Result<Option<ActiveDriftRun>, StoreError> {
        let row = sqlx::query(
            "SELECT id, state FROM runs WHERE stack = $1 AND kind IN ('deploy', 'remediation') \
             AND state IN ('queued', 'planning', 'planned', 'applying') ORDER BY created_at, id LIMIT 1",
        )
        .bind(stack)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| Ok(ActiveDriftRun { id: row.try_get("id")?, state: row.try_get("state")? })).transpose()
    }

    /// Runs `writes` in one transaction, all or nothing: `false` (and nothing written) when one
    /// of them does not touch the rows it must. For the scheduler's bookkeeping that no audit
    /// entry records (a fire time skipped, or that could not be queued).
    pub async fn apply_writes(&self, writes: &[Write]) -> Result<bool, StoreError> {
        let _turn = self.audit_write_turn().await;
        let mut tx = self.begin_write().await?;
        // Rows after the audit head, as the audit writer takes them, so neither waits for the
        // other in a cycle.
        if self.backend() == super::Backend::Postgres {
            super::write::lock_head(&mut tx).await?;
        }
        for write in writes {
            if write.execute(&mut tx).await?.is_err() {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    /// How many stacks are in each drift state (`in_sync`, `drifted`, `failed`; never-checked
    /// stacks have no row).
    pub async fn drift_states(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS stacks FROM stack_drift GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok((row.try_get("state")?, row.try_get("stacks")?))).collect()
    }
}
