-- The `review` scope (docs/api.md): approving and rejecting runs is a scope of its own, so a CI
-- system's `submit` token can never approve the runs it submits (DESIGN.md §8.8). SQLite cannot
-- change a CHECK constraint in place, so the table is rebuilt with the same rows.
CREATE TABLE api_tokens_new (
    id          TEXT    PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    scope       TEXT    NOT NULL CHECK (scope IN ('admin', 'submit', 'review', 'audit')),
    token_hash  BLOB    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    created_by  TEXT    NOT NULL,
    revoked_at  BIGINT
);
INSERT INTO api_tokens_new (id, name, scope, token_hash, created_at, created_by, revoked_at)
    SELECT id, name, scope, token_hash, created_at, created_by, revoked_at FROM api_tokens;
DROP TABLE api_tokens;
ALTER TABLE api_tokens_new RENAME TO api_tokens;
