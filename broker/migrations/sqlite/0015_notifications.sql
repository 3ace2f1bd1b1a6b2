-- Notifications (issue 19, docs/notifications.md): events worth telling someone about (a stack
-- drifted or is back in sync, a run awaits approval, failed or finished, credentials were
-- denied), read from the audit log and delivered to the configured `[[notifications]]`.
--
-- One row per (notification, audit entry): whoever inserts it first owns it, so replicas never
-- both send one. A delivery is claimed (`sending`, until `claimed_until`) before it is sent, so
-- two replicas never send it at once either; a replica that died while sending leaves a claim
-- that runs out, and the delivery is sent again (at least once). Every final outcome is also on
-- the audit log (`notification.delivered`, `notification.failed`).
CREATE TABLE notification_deliveries (
    id               TEXT    PRIMARY KEY,
    notification     TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    seq              BIGINT  NOT NULL,
    body             TEXT    NOT NULL,
    -- pending, sending, delivered, failed
    state            TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    claimed_until    BIGINT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    UNIQUE (notification, seq)
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (state, next_attempt_at);
