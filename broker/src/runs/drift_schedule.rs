//! The drift scheduler: queues each stack's drift checks at the fire times of its schedule, on
//! one broker replica at a time (docs/drift.md).
//!
//! Every replica runs the loop; each wake it takes or renews a lease in the database
//! (`scheduler_leases`), and only the holder goes on. For each stack with a schedule it takes the
//! most recent fire time at or before now; if that is after the last fire time handled (and after
//! the schedule was set), it queues a drift run from the branch head exactly as `keyward run
//! submit --drift` does, as `scheduler`, unless a drift run of the stack is queued or running
//! (then it records the skip). Handling a fire time is a guarded write that commits with the run
//! (or the refusal, or the skip), so a fire time is handled once whatever happens to the lease:
//! a replica that lost it without knowing, a restart, two replicas racing. A broker that was down
//! over several fire times runs one check when it returns, for the latest of them.

use std::sync::Arc;
use std::time::Duration;

use super::cron::Schedule;
use super::{RunError, RunKind, RunView, Runs, Submission};
use crate::audit::{AuditEvent, ChangeError, Context};
use crate::metrics::{DriftCheck, Metrics};
use crate::store::drift::{self as rows, ScheduledStack};
use crate::store::write::Write;

/// The lease row the drift scheduler's replicas share.
pub const LEASE: &str = "drift-scheduler";
/// Who the scheduler's runs are triggered by (`triggered_by`, the audit entries' actor).
pub const WHO: &str = "scheduler";

/// How the scheduler runs (`[scheduler]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerSettings {
    /// How often each replica wakes: takes or renews the lease, and queues what is due.
    pub interval: Duration,
    /// How long a lease lasts without renewal: after the holder stops, another replica takes over
    /// within this plus one interval.
    pub lease: Duration,
}

/// The most recent fire time of `schedule` at or before `now` that is still to be handled: after
/// the last one handled and after the schedule was set. `None`: nothing is due.
pub fn due(schedule: &Schedule, set_at: Option<i64>, last_handled: Option<i64>, now: i64) -> Option<i64> {
    let fire = schedule.latest_at_or_before(now)?;
    let handled_through = set_at.max(last_handled);
    handled_through.is_none_or(|through| fire > through).then_some(fire)
}

/// A scheduled check's claim on one fire time of its stack's schedule: it commits with what the
/// scheduler did about it (the run it queued, the refusal), or nothing does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FireClaim {
    /// The schedule as read (the claim holds only while it is unchanged).
    pub(super) schedule: String,
    /// The fire time.
    pub(super) fire: i64,
    /// The replica that claims it.
    pub(super) holder: String,
}

impl FireClaim {
    /// The claim that commits with run `run_id` of `stack` (it holds only while no other drift
    /// run of the stack is queued or running).
    pub(super) fn for_run(&self, stack: &str, run_id: &str) -> Write {
        rows::claim_fire_for_run(stack, &self.schedule, self.fire, format!("queued drift run {run_id}"))
    }

    /// The claim and the drift state that commit with `keyward.run`'s refusal of the check.
    pub(super) fn refused(&self, stack: &str, reasons: &[String], now: i64) -> Vec<Write> {
        let why = format!("the scheduled check was refused by keyward.run: {}", reasons.join("; "));
        vec![
            rows::claim_fire(stack, &self.schedule, self.fire, why.clone()),
            rows::record_failed(stack, None, &why, now),
        ]
    }

    /// `event` (the run's `run.created`) saying which fire time of which schedule queued it,
    /// on which replica.
    pub(super) fn describe(&self, event: AuditEvent) -> AuditEvent {
        event
            .with("drift_schedule", self.schedule.as_str())
            .with("scheduled_for", self.fire)
            .with("scheduler", self.holder.as_str())
    }
}

/// What one wake did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Whether this replica held the lease.
    pub leader: bool,
    /// Stacks whose check was queued, with the run.
    pub queued: Vec<(String, String)>,
    /// Stacks whose fire time was skipped: a check was still queued or running.
    pub skipped: Vec<String>,
    /// Stacks whose check could not be queued (refused, the repository unreadable), with why.
    pub failed: Vec<(String, String)>,
}

/// One replica's drift scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DriftScheduler {
    runs: Runs,
    holder: Arc<str>,
    settings: SchedulerSettings,
    metrics: Option<Arc<Metrics>>,
}

impl DriftScheduler {
    /// A scheduler over `runs`, holding the lease under a new per-process ID.
    pub fn new(runs: Runs, settings: SchedulerSettings) -> Self {
        let holder = uuid::Uuid::now_v7().to_string().into();
        Self { runs, holder, settings, metrics: None }
    }

    /// The same scheduler, counting what it does in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// This replica's lease holder ID.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Wakes every `interval` until the task is aborted.
    pub async fn run(self) {
        tracing::info!(holder = %self.holder, interval_ms = self.settings.interval.as_millis(), "drift scheduler started");
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "the drift scheduler could not run; will retry");
            }
        }
    }

    /// One wake: take or renew the lease and, holding it, queue every check that is due.
    pub async fn tick(&self) -> Result<Tick, RunError> {
        let mut tick = Tick { leader: self.hold().await?, ..Tick::default() };
        if !tick.leader {
            return Ok(tick);
        }
        for stack in self.runs.store.scheduled_stacks().await? {
            let schedule = match Schedule::parse(&stack.schedule) {
                Ok(schedule) => schedule,
                Err(error) => {
                    tracing::error!(stack = %stack.name, %error, "a stored drift schedule does not parse; skipped");
                    continue;
                }
            };
            let Some(fire) = due(&schedule, stack.set_at, stack.last_check_at, self.runs.clock.now()) else { continue };
            // Renewed before each check it queues: queueing resolves the branch with git, which
            // may take a while, and a lease that ran out meanwhile belongs to another replica.
            if !self.hold().await? {
                tick.leader = false;
                break;
            }
            self.fire(&stack, fire, &mut tick).await?;
        }
        Ok(tick)
    }

    /// Gives the lease up (this replica is stopping), so another takes over at its next wake.
    pub async fn release(&self) {
        if let Err(error) = self.runs.store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(%error, "could not release the drift scheduler's lease; it expires by itself");
        }
    }

    /// Takes or renews the lease; whether this replica holds it.
    async fn hold(&self) -> Result<bool, RunError> {
        let now = self.runs.clock.now();
        let expires = now.saturating_add(i64::try_from(self.settings.lease.as_secs()).unwrap_or(i64::MAX));
        let held = self.runs.store.take_lease(LEASE, &self.holder, now, expires).await?;
        if let Some(metrics) = &self.metrics {
            metrics.drift_scheduler_leader(held);
        }
        Ok(held)
    }

    /// Handles fire time `fire` of `stack`: skip it when a check is still queued or running,
    /// else queue one.
    async fn fire(&self, stack: &ScheduledStack, fire: i64, tick: &mut Tick) -> Result<(), RunError> {
        let name = stack.name.as_str();
        let claim = FireClaim { schedule: stack.schedule.clone(), fire, holder: self.holder.to_string() };
        if let Some(active) = self.runs.store.active_drift_run(name).await? {
            let note = format!("skipped: drift run {} is still {}", active.id, active.state);
            if self.runs.store.apply_writes(&[rows::claim_fire(name, &claim.schedule, fire, note)]).await? {
                tracing::info!(stack = name, fire, run_id = %active.id, "scheduled drift check skipped: one is still queued or running");
                tick.skipped.push(name.to_owned());
                self.count(DriftCheck::Skipped);
            }
            return Ok(());
        }
        match self.submit(name, &claim).await {
            Ok(run) => {
                tracing::info!(stack = name, fire, run_id = %run.id, "scheduled drift check queued");
                tick.queued.push((name.to_owned(), run.id));
                self.count(DriftCheck::Queued);
            }
            // Another scheduler handled this fire time, the schedule changed, or a check was
            // queued meanwhile: nothing to do.
            Err(RunError::Change(ChangeError::Moved { .. })) => {}
            Err(RunError::Refused(reasons)) => {
                tracing::warn!(stack = name, fire, reasons = ?reasons, "scheduled drift check refused by keyward.run");
                tick.failed.push((name.to_owned(), reasons.join("; ")));
                self.count(DriftCheck::Refused);
            }
            // The database is down, or the append failed: try again at the next wake.
            Err(error @ RunError::Store(_)) => return Err(error),
            Err(error) => self.could_not_queue(name, &claim, &error.to_string(), tick).await?,
        }
        Ok(())
    }

    /// Queues the drift check `claim` stands for, as `run submit --drift` would.
    async fn submit(&self, stack: &str, claim: &FireClaim) -> Result<RunView, RunError> {
        let submission = Submission { stack: stack.to_owned(), kind: RunKind::Drift, ..Submission::default() };
        let origin = super::observed::Origin::Scheduled(claim);
        self.runs.submit_from(submission, &crate::roles::Actor::broker(WHO), Context::default(), origin).await
    }

    /// Records that the check of `claim` could not be queued (its repository or branch could not
    /// be read, say): the fire time is handled, and the stack's drift state says why.
    async fn could_not_queue(
        &self,
        stack: &str,
        claim: &FireClaim,
        error: &str,
        tick: &mut Tick,
    ) -> Result<(), RunError> {
        let why = format!("the scheduled check could not be queued: {error}");
        let now = self.runs.clock.now();
        let writes = [
            rows::claim_fire(stack, &claim.schedule, claim.fire, why.clone()),
            rows::record_failed(stack, None, &why, now),
        ];
        if self.runs.store.apply_writes(&writes).await? {
            tracing::warn!(stack, fire = claim.fire, %error, "scheduled drift check could not be queued");
            tick.failed.push((stack.to_owned(), why));
            self.count(DriftCheck::Failed);
        }
        Ok(())
    }

    fn count(&self, outcome: DriftCheck) {
        if let Some(metrics) = &self.metrics {
            metrics.drift_check(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock as _, ManualClock};

    /// 2026-03-01T10:00:00Z.
    const T0: i64 = 1_772_359_200;

    #[test]
    fn the_latest_fire_time_is_due_once_and_never_before_the_schedule_was_set() {
        let every_minute = Schedule::parse("* * * * *").unwrap();
        let clock = ManualClock::at(T0 + 30);
        // Set at 10:00:30: 10:00 is before it, nothing is due until 10:01.
        let set_at = Some(clock.now());
        assert_eq!(due(&every_minute, set_at, None, clock.now()), None);
        clock.advance(29);
        assert_eq!(due(&every_minute, set_at, None, clock.now()), None, "10:00:59");
        clock.advance(1);
        assert_eq!(due(&every_minute, set_at, None, clock.now()), Some(T0 + 60), "10:01:00");
        // Handled: not again within the minute, due again at the next.
        let handled = Some(T0 + 60);
        clock.advance(45);
        assert_eq!(due(&every_minute, set_at, handled, clock.now()), None);
        clock.advance(15);
        assert_eq!(due(&every_minute, set_at, handled, clock.now()), Some(T0 + 120));
    }

    #[test]
    fn missed_fire_times_run_once_for_the_latest() {
        let quarterly = Schedule::parse("*/15 * * * *").unwrap();
        let clock = ManualClock::at(T0);
        let handled = Some(T0);
        // The broker was down from 10:00 to 11:40: 10:15 … 11:30 were missed; one check, for 11:30.
        clock.advance(100 * 60);
        assert_eq!(due(&quarterly, Some(T0 - 3600), handled, clock.now()), Some(T0 + 90 * 60));
        assert_eq!(due(&quarterly, Some(T0 - 3600), Some(T0 + 90 * 60), clock.now()), None);
        // A schedule that has never fired yet and was never set (a stack from before schedules).
        assert_eq!(due(&quarterly, None, None, clock.now()), Some(T0 + 90 * 60));
    }

    #[test]
    fn a_fire_time_exactly_now_is_due_and_a_schedule_set_at_it_is_not() {
        let hourly = Schedule::parse("0 * * * *").unwrap();
        assert_eq!(due(&hourly, Some(T0 - 1), None, T0), Some(T0));
        assert_eq!(due(&hourly, Some(T0), None, T0), None, "set at 10:00:00 exactly: the next is 11:00");
        assert_eq!(due(&hourly, Some(T0), None, T0 + 3600), Some(T0 + 3600));
    }
}
