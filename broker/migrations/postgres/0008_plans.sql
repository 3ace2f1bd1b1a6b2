-- Saved plans (DESIGN.md §1): what a plan job produced, kept for its run's apply, with the
-- `keyward.plan` policy's verdict on its `terraform show -json` (masked on the agent). The
-- apply job applies exactly this file, checked by its SHA-256. A plan job that is retried
-- replaces its run's row; each version is on record in the audit log (`plan.evaluated`).
CREATE TABLE plans (
    run_id      TEXT    PRIMARY KEY REFERENCES runs (id),
    job_id      TEXT    NOT NULL REFERENCES jobs (id),
    sha256      BYTEA    NOT NULL,
    plan_file   BYTEA    NOT NULL,
    plan_json   TEXT    NOT NULL,
    deny        TEXT    NOT NULL,   -- JSON array of the policy's deny messages
    warn        TEXT    NOT NULL,   -- JSON array of its warnings
    created_at  BIGINT  NOT NULL
);

-- How the agent that ran a job isolated it (what it reported in Hello), recorded with the lease.
ALTER TABLE jobs ADD COLUMN isolation TEXT;
