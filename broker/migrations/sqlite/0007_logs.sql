-- Jobs' signed log chunks (DESIGN.md §5): stored only after the broker verified the signature,
-- the digest, the chain and the job binding. One hash chain per lease of a job.

-- The agent certificates that signed stored chunks, kept so a log bundle verifies offline long
-- after the (short-lived) certificate expired. Keyed by the SHA-256 of the DER.
CREATE TABLE log_signers (
    fingerprint    TEXT     PRIMARY KEY,
    agent_id       TEXT     NOT NULL,
    certificate    BLOB     NOT NULL,
    first_seen_at  BIGINT   NOT NULL
);

CREATE TABLE log_chunks (
    id             INTEGER  PRIMARY KEY AUTOINCREMENT,   -- arrival order, the `run logs` cursor
    run_id         TEXT     NOT NULL,
    job_id         TEXT     NOT NULL REFERENCES jobs (id),
    fencing_token  BIGINT   NOT NULL,
    seq            BIGINT   NOT NULL,
    stream         TEXT     NOT NULL,
    prev_digest    BLOB     NOT NULL,
    data           BLOB     NOT NULL,
    digest         BLOB     NOT NULL,
    signature      BLOB     NOT NULL,
    signer         TEXT     NOT NULL REFERENCES log_signers (fingerprint),
    received_at    BIGINT   NOT NULL,
    UNIQUE (job_id, fencing_token, seq)
);
CREATE INDEX log_chunks_by_run ON log_chunks (run_id, id);

-- The head of the log a job's lease holder reported with its end, as the broker verified it:
-- sealed with the job's `job.finished` audit entry, in the same transaction.
ALTER TABLE jobs ADD COLUMN log_digest BLOB;
ALTER TABLE jobs ADD COLUMN log_chunks BIGINT;
