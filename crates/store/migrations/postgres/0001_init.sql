-- sie store, PostgreSQL schema version 1: accounts, organizations, keys,
-- worker tokens, tasks, usage. The same tables as SQLite's versions 1 and 2.
-- Times are BIGINT milliseconds since the Unix epoch (UTC), passed in by the
-- caller: never now(), so tests drive time and every node agrees on one clock
-- format.

CREATE TABLE accounts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

-- Round-robin turns: each lease moves its organization to the back of the
-- turn order by giving it the next value. A sequence, unlike SQLite's
-- MAX(lease_turn) + 1, never makes two concurrent leases read the same
-- maximum, and needs no lock on the other organizations' rows.
CREATE SEQUENCE lease_turns;

CREATE TABLE organizations (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT   NOT NULL UNIQUE,
    owner_id     BIGINT NOT NULL REFERENCES accounts (id),
    billing_note TEXT,
    approved_at  BIGINT,
    created_at   BIGINT NOT NULL,
    -- 0 until first served, so never-served organizations go first.
    lease_turn   BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE memberships (
    org_id     BIGINT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (org_id, account_id)
);

-- Only the SHA-256 (hex) of a key is stored; the prefix is its public handle.
-- `id` only orders keys made in the same millisecond (SQLite's rowid).
CREATE TABLE api_keys (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    prefix     TEXT   NOT NULL UNIQUE,
    hash       TEXT   NOT NULL UNIQUE,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_by_account ON api_keys (account_id);

-- As API keys: only the SHA-256 (hex) is stored. The name is the worker's
-- identity in `tasks.lease_owner` and is never reused.
CREATE TABLE worker_tokens (
    name       TEXT   PRIMARY KEY,
    hash       TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- `seq` is the enqueue order (FIFO); `id` is the public UUID, as text.
-- `attempt` is the fencing token and only ever grows; `released` counts the
-- attempts given back on graceful shutdown, which do not count as lost.
-- An identity never hands out a number twice, so a seq is not reused after
-- expiry deletes the newest rows.
-- `pipeline`, `scheduler` and `needs_safety_checker` are what the task needs
-- from its worker; leasing matches them against the worker's offer.
CREATE TABLE tasks (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT    NOT NULL UNIQUE,
    org_id               BIGINT  NOT NULL REFERENCES organizations (id),
    request              TEXT    NOT NULL,
    idempotency_key      TEXT,
    pipeline             TEXT    NOT NULL,
    scheduler            TEXT,
    needs_safety_checker BOOLEAN NOT NULL,
    state                TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    attempt              BIGINT  NOT NULL DEFAULT 0,
    released             BIGINT  NOT NULL DEFAULT 0,
    lease_owner          TEXT,
    lease_expires_at     BIGINT,
    cancel_requested     BOOLEAN NOT NULL DEFAULT FALSE,
    progress_step        BIGINT,
    progress_steps       BIGINT,
    result               TEXT,
    error_code           TEXT,
    error_message        TEXT,
    usage_images         BIGINT,
    usage_steps          BIGINT,
    usage_gpu_ms         BIGINT,
    created_at           BIGINT  NOT NULL,
    started_at           BIGINT,
    finished_at          BIGINT,
    UNIQUE (org_id, idempotency_key)
);

CREATE INDEX tasks_by_state ON tasks (state, org_id, seq);
CREATE INDEX tasks_by_org ON tasks (org_id, seq);
CREATE INDEX tasks_by_finish ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX tasks_by_owner ON tasks (lease_owner) WHERE state = 'running';

-- Usage outlives the tasks it counts (those expire after the result TTL).
CREATE TABLE usage_daily (
    org_id          BIGINT NOT NULL REFERENCES organizations (id),
    day             BIGINT NOT NULL, -- days since 1970-01-01, UTC
    images          BIGINT NOT NULL DEFAULT 0,
    steps           BIGINT NOT NULL DEFAULT 0,
    gpu_ms          BIGINT NOT NULL DEFAULT 0,
    tasks_succeeded BIGINT NOT NULL DEFAULT 0,
    tasks_failed    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, day)
);
