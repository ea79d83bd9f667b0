-- Alerts waiting for the webhook. Queued in the transaction that stores
-- the alert, so a replica that dies before delivering it leaves it here
-- for whichever replica holds the delivery lease next.
CREATE TABLE alert_webhooks (
    alert_id         text COLLATE "C" PRIMARY KEY REFERENCES alerts (id) ON DELETE CASCADE,
    attempts         integer NOT NULL CHECK (attempts >= 0),
    next_attempt_ms  bigint NOT NULL
);
