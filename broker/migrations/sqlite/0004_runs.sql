-- Stacks, runs, reviews and jobs (DESIGN.md §1 "queue"). Every change to these rows commits in
-- the same transaction as the audit entry that records it (store/write.rs).

-- A stack: what to run (repository, path, branch), where (worker pool) and with which
-- credential targets per phase. `name` is its ID.
CREATE TABLE stacks (
    name           TEXT    PRIMARY KEY,
    repository     TEXT    NOT NULL,
    path           TEXT    NOT NULL,
    branch         TEXT    NOT NULL,
    pool           TEXT    NOT NULL,
    plan_targets   TEXT    NOT NULL,   -- JSON array of target IDs (read access only)
    apply_targets  TEXT    NOT NULL,   -- JSON array of target IDs
    labels         TEXT    NOT NULL,   -- JSON object, handed to policies
    policies       TEXT    NOT NULL,   -- JSON array of attached policy names, handed to policies
    created_at     BIGINT  NOT NULL,
    created_by     TEXT    NOT NULL
);

-- A run: one stack at one commit. `version` increases with every change, so a transition
-- applies only to the state it was decided on.
CREATE TABLE runs (
    id             TEXT    PRIMARY KEY,
    stack          TEXT    NOT NULL REFERENCES stacks (name),
    state          TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    commit_sha     TEXT    NOT NULL,
    git_ref        TEXT,
    pull_request   BIGINT,
    ticket         TEXT,
    triggered_by   TEXT    NOT NULL,
    detail         TEXT,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX runs_by_stack ON runs (stack, created_at);
CREATE INDEX runs_by_state ON runs (state, created_at);

-- One review per person per run.
CREATE TABLE run_reviews (
    run_id    TEXT    NOT NULL REFERENCES runs (id),
    reviewer  TEXT    NOT NULL,
    decision  TEXT    NOT NULL CHECK (decision IN ('approve', 'reject')),
    comment   TEXT,
    at        BIGINT  NOT NULL,
    PRIMARY KEY (run_id, reviewer)
);

-- The work agents do: a plan or apply of a run. Claimed with a lease; `fencing_token` grows
-- with every lease, so only the current holder's reports and credential requests count.
CREATE TABLE jobs (
    id                TEXT    PRIMARY KEY,
    run_id            TEXT    NOT NULL REFERENCES runs (id),
    phase             TEXT    NOT NULL CHECK (phase IN ('plan', 'apply')),
    pool              TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    attempt           BIGINT  NOT NULL,
    agent_id          TEXT,
    fencing_token     BIGINT  NOT NULL,
    lease_expires_at  BIGINT,
    error             TEXT,
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);
CREATE INDEX jobs_queued ON jobs (pool, state, created_at);
CREATE INDEX jobs_by_run ON jobs (run_id);
