-- Security scans (issue 20, docs/scans.md). A stack names the scanners its plan jobs run before
-- `init` (a JSON array: `["checkov"]`); existing stacks have none.
ALTER TABLE stacks ADD COLUMN scanners TEXT NOT NULL DEFAULT '[]';

-- What a plan job's scanners found, as its agent reported them, and the `keyward.scan` policy's
-- verdict on it. One per job: the first verdict is final (a job cannot replace a refused scan).
CREATE TABLE job_scans (
    job_id         TEXT    PRIMARY KEY REFERENCES jobs (id),
    run_id         TEXT    NOT NULL REFERENCES runs (id),
    reports        TEXT    NOT NULL,   -- JSON object: scanner -> its findings (docs/scans.md)
    deny           TEXT    NOT NULL,   -- JSON array of the policy's deny messages
    warn           TEXT    NOT NULL,   -- JSON array of its warnings
    policy_digest  TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL
);
CREATE INDEX job_scans_run ON job_scans (run_id);
