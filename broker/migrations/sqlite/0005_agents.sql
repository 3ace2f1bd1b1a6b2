-- Worker pools, one-time join tokens, enrolled agents and the agent CA (DESIGN.md §5). Every
-- change to pools, tokens and agents commits with the audit entry that records it.

-- The CA that signs agent certificates (and the broker's own gRPC server certificate). One row,
-- created by the first broker to start; the private key is sealed under the KEK.
CREATE TABLE agent_ca (
    name         TEXT    PRIMARY KEY,
    certificate  BLOB    NOT NULL,   -- DER
    sealed_key   BLOB    NOT NULL,   -- PKCS#8, sealed under the KEK
    created_at   BIGINT  NOT NULL
);

CREATE TABLE pools (
    name        TEXT    PRIMARY KEY,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL
);
-- Stacks name the `default` pool unless told otherwise, so it always exists.
INSERT INTO pools (name, created_at, created_by) VALUES ('default', 0, 'keyward');

-- A join token is stored only as its SHA-256; `used_at` is set once, by the enrollment that
-- consumed it.
CREATE TABLE join_tokens (
    id          TEXT    PRIMARY KEY,
    pool        TEXT    NOT NULL REFERENCES pools (name),
    token_hash  TEXT    NOT NULL UNIQUE,
    expires_at  BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    used_at     BIGINT,
    used_by     TEXT
);

-- An enrolled agent. Its identity is the certificate's SPIFFE ID; `serial` is the current
-- certificate's. A revoked agent stays revoked.
CREATE TABLE agents (
    id            TEXT    PRIMARY KEY,
    pool          TEXT    NOT NULL REFERENCES pools (name),
    hostname      TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('active', 'draining', 'revoked')),
    serial        TEXT    NOT NULL,
    not_after     BIGINT  NOT NULL,
    enrolled_at   BIGINT  NOT NULL,
    renewed_at    BIGINT,
    revoked_at    BIGINT,
    revoked_by    TEXT,
    last_seen_at  BIGINT
);
CREATE INDEX agents_by_pool ON agents (pool);
CREATE INDEX jobs_by_agent ON jobs (agent_id, state);
CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_at);
