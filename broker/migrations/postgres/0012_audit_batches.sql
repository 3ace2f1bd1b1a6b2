-- The audit log stored as one row per committed batch (issue 18, shared/reviews/audit-storage.md).
--
-- The append transaction used to write about seven B-tree rows per entry (the entry, its kind
-- index, about two tree nodes, about three lookup keys). Now it writes one row per batch: the
-- batch's entries (their canonical JSON, exactly as hashed, with their kinds and lookup keys)
-- compressed, the tree head after them and the tree's right edge (the frontier), so the next
-- batch, on any replica, extends the tree from this row alone. The tree as tiles (C2SP
-- tlog-tiles) and the lookup keys are built afterwards by the integrator, off the append path;
-- reads look at the batches past its cursor too, so nothing is ever stale or missing.
--
-- Existing entries and tree nodes are renamed here and converted by the broker at startup
-- (store/audit_convert.rs), in resumable steps: leaf hashes and old checkpoints do not change.
CREATE TABLE audit_batches (
    first_seq  BIGINT  PRIMARY KEY,
    n          INTEGER  NOT NULL CHECK (n > 0),
    -- 1: zstd of the length-prefixed (kind, lookup keys, canonical JSON) of each entry.
    codec      INTEGER  NOT NULL,
    body       BYTEA    NOT NULL,
    -- The tree head of the first first_seq + n entries, and its frontier: the hashes of
    -- merkle::frontier(first_seq + n), largest subtree first, concatenated.
    root       BYTEA    NOT NULL,
    frontier   BYTEA    NOT NULL
);
-- Bodies are compressed already: stored out of line as they are, without pglz trying again.
ALTER TABLE audit_batches ALTER COLUMN body SET STORAGE EXTERNAL;

-- Tile (level, idx): the hashes of the perfect subtrees of height 8 * level at positions
-- 256 * idx .. 256 * idx + 255, concatenated (the rightmost tile of a level may hold fewer).
CREATE TABLE audit_tiles (
    level   INTEGER  NOT NULL,
    idx     BIGINT   NOT NULL,
    hashes  BYTEA    NOT NULL,
    PRIMARY KEY (level, idx)
);

-- How far the integrator has come: tiles and lookup keys cover the first `size` entries
-- (always a batch boundary). `legacy` is 1 until the entries of the old layout are converted.
CREATE TABLE audit_integration (
    id      INTEGER  PRIMARY KEY CHECK (id = 1),
    size    BIGINT   NOT NULL,
    legacy  INTEGER  NOT NULL
);
INSERT INTO audit_integration (id, size, legacy) VALUES (1, 0, 1);

-- Entries are found by kind through the lookup keys now: kind:<kind>.
INSERT INTO audit_refs (ref, seq) SELECT 'kind:' || kind, seq FROM audit_entries;
DROP INDEX audit_entries_by_kind;
ALTER TABLE audit_entries RENAME TO audit_legacy_entries;
ALTER TABLE audit_nodes RENAME TO audit_legacy_nodes;
