-- sie store, SQLite schema version 2: what a task needs from its worker, and
-- worker tokens for remote workers.

-- Leasing matches these against what the worker announces. Tasks queued
-- before this version were text-to-image with the model's defaults.
ALTER TABLE tasks ADD COLUMN pipeline TEXT NOT NULL DEFAULT 'StableDiffusionPipeline';
ALTER TABLE tasks ADD COLUMN scheduler TEXT;
ALTER TABLE tasks ADD COLUMN needs_safety_checker INTEGER NOT NULL DEFAULT 0;

-- As API keys: only the SHA-256 (hex) is stored. The name is the worker's
-- identity in `tasks.lease_owner` and is never reused.
CREATE TABLE worker_tokens (
    name       TEXT    PRIMARY KEY,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
