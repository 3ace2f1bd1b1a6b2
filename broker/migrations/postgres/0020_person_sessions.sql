-- Sign-in with OIDC (issue 21 part 1, docs/access.md): people, not token names.
--
-- A pending login is an authorization request the broker sent a browser (or `keyward login`)
-- off with: found by the SHA-256 of its `state`, used once (deleted when the callback comes
-- back), and useless after expires_at. The PKCE verifier is not stored: it is derived from the
-- state with a key derived from the KEK, so a copy of this table cannot redeem a code.
CREATE TABLE sso_logins (
    state_hash    BYTEA   PRIMARY KEY,
    nonce         TEXT    NOT NULL,
    return_to     TEXT    NOT NULL,
    -- The loopback URL `keyward login` listens on, and the S256 challenge of the verifier only
    -- it knows; NULL for a browser sign-in.
    cli_redirect  TEXT,
    cli_challenge TEXT,
    created_at    BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL
);

-- A signed-in person: a browser session (cookie keyward_session) or a CLI bearer token
-- (`keyward login`), which starts as a one-time grant (kind cli_grant, redeemable once with the
-- verifier of grant_challenge) and becomes a token. Only the SHA-256 of a secret is kept. A session ends at expires_at
-- (the absolute timeout), after the idle timeout without use, or when revoked (sign-out).
CREATE TABLE person_sessions (
    id            TEXT    PRIMARY KEY,
    secret_hash   BYTEA   NOT NULL UNIQUE,
    kind          TEXT    NOT NULL CHECK (kind IN ('browser', 'cli_grant', 'cli')),
    issuer        TEXT    NOT NULL,
    subject       TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    groups_json   TEXT    NOT NULL,   -- JSON array of the IdP's group names
    amr_json      TEXT    NOT NULL,   -- JSON array of the ID token's amr values
    created_at    BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    expires_at    BIGINT  NOT NULL,
    revoked_at    BIGINT,
    grant_challenge TEXT
);
CREATE INDEX person_sessions_person ON person_sessions (issuer, subject);
