-- Webhooks (the same as SQLite schema 5): the URL a task's final status is posted to, each
-- organization's signing secret, and the outbox of deliveries. A delivery row is written in
-- the transaction that ends its task, so no ended task's webhook can be lost; it goes with
-- its task when the result expires.
ALTER TABLE tasks ADD COLUMN webhook_url TEXT;

-- The Standard Webhooks secret (`whsec_` and base64): kept as it is, since signing needs it.
ALTER TABLE organizations ADD COLUMN webhook_secret TEXT;

-- `id` is the message id (`webhook-id`), the same on every retry. `attempts` counts the
-- claims made; a claim holds the row until `claimed_until`, so a node that dies while
-- delivering leaves it to be claimed again then.
CREATE TABLE webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    task_seq        BIGINT  NOT NULL UNIQUE REFERENCES tasks (seq) ON DELETE CASCADE,
    task_id         TEXT    NOT NULL,
    org_id          BIGINT  NOT NULL,
    url             TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    next_attempt_at BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    claimed_until   BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    given_up_at     BIGINT
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
