-- Console sessions acting as an API token (issue 23, docs/console.md).
--
-- `keyward console` asks for a one-time sign-in link: a row of kind `link` holding the hash of
-- the link's secret, usable for a minute. Redeeming it turns the row into a `browser` session
-- in place (its secret replaced by the session's), once: the update only matches a live link.
-- The session acts as its token, so revoking the token ends it (authentication joins on a live
-- token).
CREATE TABLE console_sessions (
    id           TEXT    PRIMARY KEY,
    secret_hash  BLOB    NOT NULL UNIQUE,
    kind         TEXT    NOT NULL CHECK (kind IN ('link', 'browser')),
    token_id     TEXT    NOT NULL REFERENCES api_tokens (id),
    created_at   BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX console_sessions_token ON console_sessions (token_id);

-- The runs list (the console's, `GET /v1/runs`) reads the newest runs first: without an index in
-- that order, every page sorted the whole table (docs/performance.md, "The console's runs list").
CREATE INDEX runs_newest ON runs (created_at, id);
