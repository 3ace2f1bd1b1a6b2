-- Pull requests and pushes drive runs (issue 22, docs/vcs.md).
--
-- The delivery queue gains its worker's bookkeeping: a claimed delivery is `processing` until
-- `claimed_until`, then `done` or, after its attempts, `failed`; a failed attempt waits until
-- `next_attempt_at`.
ALTER TABLE vcs_deliveries DROP CONSTRAINT vcs_deliveries_status_check;
ALTER TABLE vcs_deliveries ADD CONSTRAINT vcs_deliveries_status_check
    CHECK (status IN ('queued', 'processing', 'done', 'failed'));
ALTER TABLE vcs_deliveries ADD COLUMN received_order BIGINT NOT NULL DEFAULT 0;   -- nanoseconds at receipt: the order changes are acted on in
UPDATE vcs_deliveries SET received_order = received_at * 1000000000;
ALTER TABLE vcs_deliveries ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vcs_deliveries ADD COLUMN claims BIGINT NOT NULL DEFAULT 0;   -- bumped by every claim: settling needs the latest
ALTER TABLE vcs_deliveries ADD COLUMN next_attempt_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE vcs_deliveries ADD COLUMN claimed_until BIGINT;
ALTER TABLE vcs_deliveries ADD COLUMN processed_at BIGINT;
ALTER TABLE vcs_deliveries ADD COLUMN error TEXT;
-- Deliveries queued before anything processed them are not acted on now: replaying an old
-- backlog of pushes would deploy old commits.
UPDATE vcs_deliveries SET next_attempt_at = received_at, status = 'done', processed_at = received_at,
    error = 'received before deliveries were processed; not acted on';
DROP INDEX vcs_deliveries_status;
CREATE INDEX vcs_deliveries_due ON vcs_deliveries (status, next_attempt_at);

-- Where a run's pull request and ticket came from: `github` when the broker observed them (a
-- signed webhook delivery and GitHub's API), NULL when they are the submitter's word.
ALTER TABLE runs ADD COLUMN pull_request_source TEXT;

-- The pull request a run was observed for, as GitHub described it, and the delivery that
-- started the run. One per run; (delivery, stack) is unique, so a delivery processed twice
-- (a broker restarted mid-way) starts each stack's run once.
CREATE TABLE vcs_runs (
    run_id           TEXT    PRIMARY KEY REFERENCES runs (id),
    delivery_id      TEXT    NOT NULL,
    stack            TEXT    NOT NULL,
    provider         TEXT    NOT NULL,
    installation_id  BIGINT  NOT NULL,
    repository       TEXT    NOT NULL,   -- owner/name
    status_sha       TEXT    NOT NULL,   -- the commit its status is set on
    pull_request     TEXT,               -- JSON: number, title, author, base, head, head_sha, url
    pull_request_number BIGINT,          -- its number: where its comment goes
    reported_version BIGINT  NOT NULL DEFAULT 0,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    claims           BIGINT  NOT NULL DEFAULT 0,   -- bumped by every claim: settling needs the latest
    next_attempt_at  BIGINT  NOT NULL DEFAULT 0,
    claimed_until    BIGINT,
    last_error       TEXT,
    UNIQUE (delivery_id, stack)
);
CREATE INDEX vcs_runs_due ON vcs_runs (next_attempt_at);
CREATE INDEX vcs_runs_by_pull_request ON vcs_runs (repository, pull_request_number, stack);

-- The comments Keyward keeps on a pull request: one per stack (in parts when long), edited in
-- place on every new run.
CREATE TABLE vcs_comments (
    provider      TEXT    NOT NULL,
    repository    TEXT    NOT NULL,
    pull_request  BIGINT  NOT NULL,
    stack         TEXT    NOT NULL,
    comment_ids   TEXT    NOT NULL,   -- JSON array of the parts' comment IDs, in order
    updated_at    BIGINT  NOT NULL,
    PRIMARY KEY (provider, repository, pull_request, stack)
);
