-- Signing keys: at most one `next` (published, not yet signing) and one `current` (signing).
-- `sealed_key` is the PKCS#8 private key sealed with AES-256-GCM under the KEK; it is erased when a
-- key retires, so a retired key can only ever verify, never sign again.
CREATE TABLE signing_keys (
    kid           TEXT    PRIMARY KEY,
    algorithm     TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('next', 'current', 'retired')),
    sealed_key    BLOB,
    public_jwk    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    activated_at  BIGINT,
    retired_at    BIGINT,
    publish_until BIGINT
);
CREATE UNIQUE INDEX signing_keys_one_per_live_state ON signing_keys (state) WHERE state IN ('next', 'current');

-- Operator API tokens, stored as SHA-256 of a 256-bit random secret.
CREATE TABLE api_tokens (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    scope       TEXT    NOT NULL CHECK (scope IN ('admin', 'submit', 'audit')),
    token_hash  BLOB    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  BIGINT
);

-- Every token the broker signed: its jti, who asked, and its (non-secret) claims.
CREATE TABLE issued_tokens (
    jti         TEXT    PRIMARY KEY,
    kid         TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    audience    TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    stack_id    TEXT    NOT NULL,
    phase       TEXT    NOT NULL,
    issued_at   BIGINT  NOT NULL,
    expires_at  BIGINT  NOT NULL,
    issued_by   TEXT    NOT NULL,
    claims      TEXT    NOT NULL
);
CREATE INDEX issued_tokens_by_run ON issued_tokens (run_id);
