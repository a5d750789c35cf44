-- What identifies the request an idempotency key first came with (SHA-256, hex), so the
-- same key with another request is refused instead of answered with the first task.
-- NULL for tasks stored before this column: those keys match any request, as they did.
ALTER TABLE tasks ADD COLUMN idempotency_digest TEXT;
