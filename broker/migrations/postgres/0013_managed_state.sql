-- Terraform state kept by the broker (issue 19, docs/state.md): the broker is each stack's
-- Terraform `http` backend unless the stack opts out and brings its own.
--
-- Every version a stack's state ever had is kept: numbered per stack (1, 2, …), sealed under the
-- KEK (state holds secrets: database passwords, private keys) and bound to its stack, number and
-- SHA-256, with Terraform's serial and lineage in the clear so writes can be checked without
-- opening anything, and tied to the run and job (or the operator) that wrote it.
CREATE TABLE state_versions (
    stack       TEXT    NOT NULL REFERENCES stacks (name),
    version     BIGINT  NOT NULL CHECK (version > 0),
    serial      BIGINT  NOT NULL CHECK (serial >= 0),
    lineage     TEXT    NOT NULL,
    sha256      BYTEA   NOT NULL,
    size        BIGINT  NOT NULL,
    sealed      BYTEA   NOT NULL,
    -- apply (a run's apply job), push (an operator's import), rollback (an operator's).
    source      TEXT    NOT NULL,
    run_id      TEXT,
    job_id      TEXT,
    written_by  TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (stack, version)
);

-- At most one lock per stack: taken by an apply job through Terraform's LOCK, held until its
-- UNLOCK, its lease's end or an operator's `keyward state unlock`. `info` is Terraform's lock
-- information as sent (who, operation), kept to explain a refusal.
CREATE TABLE state_locks (
    stack          TEXT    PRIMARY KEY REFERENCES stacks (name),
    lock_id        TEXT    NOT NULL,
    info           TEXT    NOT NULL,
    job_id         TEXT,
    fencing_token  BIGINT,
    locked_by      TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL
);

-- Managed state is on for every stack, existing ones included; 0 opts a stack out.
ALTER TABLE stacks ADD COLUMN managed_state BIGINT NOT NULL DEFAULT 1;
