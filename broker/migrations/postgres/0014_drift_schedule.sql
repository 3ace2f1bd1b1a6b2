-- Drift detection on a schedule (docs/drift.md).
--
-- Stacks change in place now (`keyward stack update`): `version` guards an update as it guards a
-- run's transitions, and who changed the stack last is kept beside who created it.
ALTER TABLE stacks ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE stacks ADD COLUMN updated_at BIGINT;
ALTER TABLE stacks ADD COLUMN updated_by TEXT;
-- The drift schedule: a 5-field cron expression read in UTC (NULL: off), and what to do about
-- drift once found (`off`, `plan`, `apply`; stored and shown, acted on later).
ALTER TABLE stacks ADD COLUMN drift_schedule TEXT;
ALTER TABLE stacks ADD COLUMN drift_remediation TEXT NOT NULL DEFAULT 'off';
-- When the schedule was last set or changed: fire times up to it are never run.
ALTER TABLE stacks ADD COLUMN drift_schedule_set_at BIGINT;
-- The last fire time the scheduler handled, and what it did then (queued a run, skipped one
-- because a check was still queued or running, was refused, failed to queue). A fire time is
-- handled once: the scheduler claims it with a guarded write that commits with the run it queues.
ALTER TABLE stacks ADD COLUMN last_drift_check_at BIGINT;
ALTER TABLE stacks ADD COLUMN last_drift_check TEXT;

-- Each stack's drift state, from its last drift check that ended (no row: `unknown`, never
-- checked). Written with the check's `job.finished` (or lease end) entry.
CREATE TABLE stack_drift (
    stack            TEXT    PRIMARY KEY REFERENCES stacks (name),
    state            TEXT    NOT NULL CHECK (state IN ('in_sync', 'drifted', 'failed')),
    checked_at       BIGINT  NOT NULL,   -- when the last check ended
    run_id           TEXT,               -- that check's run
    error            TEXT,               -- `failed`: why
    to_add           BIGINT  NOT NULL DEFAULT 0,
    to_change        BIGINT  NOT NULL DEFAULT 0,
    to_destroy       BIGINT  NOT NULL DEFAULT 0,
    changed_outside  BIGINT  NOT NULL DEFAULT 0,
    addresses        TEXT    NOT NULL DEFAULT '[]',   -- JSON array of the drifted resource addresses
    since            BIGINT              -- the first check that found the current drift (NULL: none)
);
CREATE INDEX stack_drift_by_state ON stack_drift (state);

-- Work that exactly one replica does at a time (the drift scheduler): a row per kind of work,
-- taken or renewed with one conditional upsert by the holder (a per-process ID) until
-- `expires_at`; another replica takes it only once it expired.
CREATE TABLE scheduler_leases (
    name        TEXT    PRIMARY KEY,
    holder      TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL
);

-- The scheduler asks whether a stack has a drift check queued or running.
CREATE INDEX runs_by_stack_kind_state ON runs (stack, kind, state);
