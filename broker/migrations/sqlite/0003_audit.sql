-- The audit log (DESIGN.md §4): an append-only sequence of entries, each stored as the exact
-- canonical JSON that was hashed, under an RFC 6962 Merkle tree. It replaces the interim
-- credential_events and issued_tokens tables; every decision and every token is an entry.
-- `INTEGER PRIMARY KEY` makes seq the rowid itself (one B-tree, not a table plus an index).
CREATE TABLE audit_entries (
    seq   INTEGER PRIMARY KEY,
    at    BIGINT  NOT NULL,
    kind  TEXT    NOT NULL,
    body  TEXT    NOT NULL
);
CREATE INDEX audit_entries_by_kind ON audit_entries (kind, seq);

-- (WITHOUT ROWID: these tables are their primary keys; one B-tree per insert instead of two.)
-- Hashes of the tree's perfect subtrees: level 0 are leaf hashes; (level, idx) covers leaves
-- [idx * 2^level, (idx + 1) * 2^level). About two rows per entry; any proof reads O(log n).
CREATE TABLE audit_nodes (
    level  INTEGER  NOT NULL,
    idx    BIGINT   NOT NULL,
    hash   BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

-- Lookup keys for `keyward audit trace`: run:<id>, jti:<jti>, akid:<access key id>,
-- session:<role session name>, accessor:<vault accessor>.
CREATE TABLE audit_refs (
    ref  TEXT    NOT NULL,
    seq  BIGINT  NOT NULL,
    PRIMARY KEY (ref, seq)
) WITHOUT ROWID;

-- One row: the log's size. Appenders update it first, which serialises them across replicas
-- (a row lock on PostgreSQL, the write lock on SQLite), so sequence numbers are gap-free.
-- Entries below pruned_before were exported and pruned; their tree nodes stay, so heads and
-- proofs still cover the whole log.
CREATE TABLE audit_head (
    id             INTEGER  PRIMARY KEY CHECK (id = 1),
    size           BIGINT   NOT NULL,
    written_at     BIGINT   NOT NULL,
    pruned_before  BIGINT   NOT NULL DEFAULT 0
);
INSERT INTO audit_head (id, size, written_at) VALUES (1, 0, 0);

-- Scratch space for readiness probes after a failed commit: a probe rewrites 64 KiB here, so it
-- succeeds only when the database can take a write of a real batch's size, not just a tiny one.
CREATE TABLE audit_probe (
    id   INTEGER  PRIMARY KEY CHECK (id = 1),
    pad  BLOB     NOT NULL
);

-- Signed checkpoints (C2SP signed notes) the broker produced.
CREATE TABLE audit_checkpoints (
    size  BIGINT  PRIMARY KEY,
    root  BLOB   NOT NULL,
    note  TEXT    NOT NULL,
    at    BIGINT  NOT NULL
);

-- The Ed25519 key that signs checkpoints, sealed under the KEK like the signing keys.
CREATE TABLE audit_log_keys (
    name        TEXT    PRIMARY KEY,
    public_key  BLOB   NOT NULL,
    sealed_key  BLOB   NOT NULL,
    created_at  BIGINT  NOT NULL
);

DROP TABLE credential_events;
DROP TABLE issued_tokens;

-- How far each configured sink (file, webhook) has delivered: the next sequence number to send.
-- Advanced only after a delivery succeeded, so delivery is at-least-once across restarts.
CREATE TABLE audit_sink_cursors (
    name      TEXT    PRIMARY KEY,
    next_seq  BIGINT  NOT NULL
);
