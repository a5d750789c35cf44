-- sie store, SQLite schema version 1: accounts, organizations, keys, tasks, usage.
-- Times are INTEGER milliseconds since the Unix epoch (UTC).

CREATE TABLE accounts (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE organizations (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL UNIQUE,
    owner_id     INTEGER NOT NULL REFERENCES accounts (id),
    billing_note TEXT,
    approved_at  INTEGER,
    created_at   INTEGER NOT NULL,
    -- Round-robin turn: set to one more than every other organization's each
    -- time one of its tasks is leased, so the least recently served goes next.
    lease_turn   INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE memberships (
    org_id     INTEGER NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org_id, account_id)
);

-- Only the SHA-256 (hex) of a key is stored; the prefix is its public handle.
CREATE TABLE api_keys (
    prefix     TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- `seq` is the enqueue order (FIFO); `id` is the public UUID.
-- `attempt` is the fencing token and only ever grows; `released` counts the
-- attempts given back on graceful shutdown, which do not count as lost.
-- AUTOINCREMENT so a seq is never reused after expiry deletes the newest rows.
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    org_id           INTEGER NOT NULL REFERENCES organizations (id),
    request          TEXT    NOT NULL,
    idempotency_key  TEXT,
    state            TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempt          INTEGER NOT NULL DEFAULT 0,
    released         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_step    INTEGER,
    progress_steps   INTEGER,
    result           TEXT,
    error_code       TEXT,
    error_message    TEXT,
    usage_images     INTEGER,
    usage_steps      INTEGER,
    usage_gpu_ms     INTEGER,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (org_id, idempotency_key)
);

CREATE INDEX tasks_by_state ON tasks (state, org_id, seq);
CREATE INDEX tasks_by_org ON tasks (org_id, seq);
CREATE INDEX tasks_by_finish ON tasks (finished_at) WHERE finished_at IS NOT NULL;

-- Usage outlives the tasks it counts (those expire after the result TTL).
CREATE TABLE usage_daily (
    org_id          INTEGER NOT NULL REFERENCES organizations (id),
    day             INTEGER NOT NULL, -- days since 1970-01-01, UTC
    images          INTEGER NOT NULL DEFAULT 0,
    steps           INTEGER NOT NULL DEFAULT 0,
    gpu_ms          INTEGER NOT NULL DEFAULT 0,
    tasks_succeeded INTEGER NOT NULL DEFAULT 0,
    tasks_failed    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day)
);
