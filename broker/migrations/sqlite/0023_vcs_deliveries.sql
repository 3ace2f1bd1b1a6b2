-- GitHub webhook deliveries, queued durably once their signature is verified (issue 22,
-- docs/vcs.md): the delivery ID is unique, so a replayed delivery is refused by the database
-- itself. `payload` is the raw signed body; later work consumes rows in `queued`.
CREATE TABLE vcs_deliveries (
    delivery_id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued'))
);
CREATE INDEX vcs_deliveries_status ON vcs_deliveries (status, received_at);
