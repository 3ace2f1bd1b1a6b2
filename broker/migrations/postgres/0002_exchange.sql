-- Token IDs already exchanged: each subject token may be exchanged once (DESIGN.md §8.2). Rows
-- can be pruned once the token has expired (it would be refused as expired anyway).
CREATE TABLE used_token_ids (
    issuer      TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    used_at     BIGINT  NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX used_token_ids_by_expiry ON used_token_ids (expires_at);

-- Every credential decision (allowed or denied, with reasons) and every credential issued. The
-- audit log will make these tamper-evident; the shape is its context chain. Never a secret.
CREATE TABLE credential_events (
    id              TEXT    PRIMARY KEY,
    at              BIGINT  NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('allowed', 'denied', 'issued')),
    target          TEXT    NOT NULL,
    subject_issuer  TEXT    NOT NULL,
    subject_jti     TEXT,
    run_id          TEXT,
    stack_id        TEXT,
    phase           TEXT,
    reasons         TEXT    NOT NULL,
    details         TEXT    NOT NULL
);
CREATE INDEX credential_events_by_run ON credential_events (run_id);
