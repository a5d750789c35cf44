//! The statements both stores run as written, in PostgreSQL's spelling.
//!
//! Most of the store's SQL reads the same in both dialects, and where two copies could
//! drift, the rules they encode (what "waiting" means, the queue position, the fence on
//! every worker write) would quietly differ between `sie serve` and `sie api`. So each
//! such statement is written once, here, with `$1`-style parameters; the SQLite store
//! spells them `?1` as it runs them (SQLite reads `?NNN` as the same numbered parameter).
//! A backend writes its own SQL only where the dialects really differ (see
//! [`Backend`](super::Backend)): row locks, the enqueue lock and `NOTIFY`, the lease's
//! pick, the turn counter, the key listing's tie-break, and the schema.
//!
//! Each statement's doc lists its parameters and, for a query, what reads its rows.
//! No statement holds a `$` other than a parameter's.

use crate::types::MAX_ATTEMPTS;

// ---- Accounts, organizations, keys ----

/// $1 name, $2 now. Returns the new id; no row when the name is taken.
pub const CREATE_ACCOUNT: &str = "INSERT INTO accounts (name, created_at) VALUES ($1, $2)
     ON CONFLICT (name) DO NOTHING RETURNING id";
/// $1 name.
pub const FIND_ACCOUNT: &str = "SELECT id FROM accounts WHERE name = $1";
/// $1 id.
pub const ACCOUNT_EXISTS: &str = "SELECT id FROM accounts WHERE id = $1";
/// Read by [`rows::account`](super::rows::account).
pub const LIST_ACCOUNTS: &str = "SELECT id, name, created_at FROM accounts ORDER BY name";

/// $1 name, $2 owner, $3 now. Returns the new id; no row when the name is taken.
pub const CREATE_ORG: &str =
    "INSERT INTO organizations (name, owner_id, created_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO NOTHING RETURNING id";
/// $1 name.
pub const ORG_BY_NAME: &str = "SELECT id FROM organizations WHERE name = $1";
/// $1 id.
pub const ORG_EXISTS: &str = "SELECT id FROM organizations WHERE id = $1";
/// $1 organization, $2 account, $3 now. Changes no row for a member already.
pub const ADD_MEMBER: &str =
    "INSERT INTO memberships (org_id, account_id, created_at) VALUES ($1, $2, $3)
     ON CONFLICT DO NOTHING";
/// $1 note, $2 now, $3 name. The first approval time is kept.
pub const APPROVE_ORG: &str =
    "UPDATE organizations SET billing_note = $1, approved_at = COALESCE(approved_at, $2)
     WHERE name = $3";
/// Read by [`rows::org`](super::rows::org).
pub const LIST_ORGS: &str = "SELECT o.id, o.name, o.owner_id,
        (SELECT COUNT(*) FROM memberships m WHERE m.org_id = o.id),
        o.billing_note, o.approved_at, o.created_at
     FROM organizations o ORDER BY o.name";
/// $1 account, $2 organization name. Read by [`rows::org_access`](super::rows::org_access).
pub const ORG_ACCESS: &str = "SELECT o.id, o.approved_at,
        EXISTS (SELECT 1 FROM memberships m WHERE m.org_id = o.id AND m.account_id = $1)
     FROM organizations o WHERE o.name = $2";

/// $1 prefix, $2 hash, $3 account, $4 now. Changes no row when the prefix (or the hash)
/// is taken.
pub const CREATE_API_KEY: &str =
    "INSERT INTO api_keys (prefix, hash, account_id, created_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING";
/// $1 now, $2 prefix.
pub const REVOKE_API_KEY: &str =
    "UPDATE api_keys SET revoked_at = $1 WHERE prefix = $2 AND revoked_at IS NULL";
/// $1 account: its keys, oldest first; `made` is the column that orders keys made in the
/// same millisecond ([`Backend::KEY_INSERTION_ORDER`](super::Backend::KEY_INSERTION_ORDER)).
/// Read by [`rows::api_key`](super::rows::api_key).
pub fn list_api_keys(made: &str) -> String {
    format!(
        "SELECT prefix, created_at, revoked_at, last_used_at FROM api_keys
         WHERE account_id = $1 ORDER BY created_at, {made}"
    )
}
/// $1 the presented key's hash: its account and when it was last used.
pub const AUTHENTICATE: &str =
    "SELECT account_id, last_used_at FROM api_keys WHERE hash = $1 AND revoked_at IS NULL";
/// $1 now, $2 hash, $3 the time before which a last use is stale.
pub const TOUCH_API_KEY: &str = "UPDATE api_keys SET last_used_at = $1
     WHERE hash = $2 AND (last_used_at IS NULL OR last_used_at < $3)";

// ---- The portal: sign-in, sessions, billing ----

/// $1 name, $2 email, $3 password hash, $4 now. Returns the new id; no row when the name
/// or the email is taken.
pub const SIGN_UP: &str =
    "INSERT INTO accounts (name, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING RETURNING id";
/// $1 email.
pub const EMAIL_TAKEN: &str = "SELECT id FROM accounts WHERE email = $1";
/// $1 name.
pub const NAME_TAKEN: &str = "SELECT id FROM accounts WHERE name = $1";
/// $1 email: the account and its password hash (`id, password_hash`).
pub const LOGIN: &str =
    "SELECT id, password_hash FROM accounts WHERE email = $1 AND password_hash IS NOT NULL";
/// $1 password hash, $2 account.
pub const SET_PASSWORD: &str = "UPDATE accounts SET password_hash = $1 WHERE id = $2";
/// $1 account.
pub const END_SESSIONS_OF: &str = "DELETE FROM sessions WHERE account_id = $1";
/// $1 token hash, $2 account, $3 csrf, $4 now.
pub const CREATE_SESSION: &str =
    "INSERT INTO sessions (hash, account_id, csrf, created_at, last_seen_at)
     VALUES ($1, $2, $3, $4, $4)";
/// $1 token hash: `account_id, email, csrf, last_seen_at`.
pub const SESSION: &str = "SELECT s.account_id, a.email, s.csrf, s.last_seen_at
     FROM sessions s JOIN accounts a ON a.id = s.account_id WHERE s.hash = $1";
/// $1 now, $2 token hash.
pub const TOUCH_SESSION: &str = "UPDATE sessions SET last_seen_at = $1 WHERE hash = $2";
/// $1 token hash.
pub const END_SESSION: &str = "DELETE FROM sessions WHERE hash = $1";
/// $1 account. Read by [`rows::org`](super::rows::org).
pub const ORGS_OF: &str = "SELECT o.id, o.name, o.owner_id,
        (SELECT COUNT(*) FROM memberships m WHERE m.org_id = o.id),
        o.billing_note, o.approved_at, o.created_at
     FROM organizations o JOIN memberships me ON me.org_id = o.id AND me.account_id = $1
     ORDER BY o.name";
/// $1 organization name: `id, name, email, owner` per member.
pub const MEMBERS: &str = "SELECT a.id, a.name, a.email, a.id = o.owner_id
     FROM organizations o JOIN memberships m ON m.org_id = o.id
     JOIN accounts a ON a.id = m.account_id
     WHERE o.name = $1 ORDER BY a.name";
/// $1 organization, $2 name, $3 email, $4 address, $5 country, $6 tax id, $7 now.
pub const SET_BILLING: &str =
    "INSERT INTO billing (org_id, name, email, address, country, tax_id, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (org_id) DO UPDATE SET name = excluded.name, email = excluded.email,
        address = excluded.address, country = excluded.country, tax_id = excluded.tax_id,
        updated_at = excluded.updated_at";
/// $1 note, $2 organization. Records the note without approving.
pub const SET_BILLING_NOTE: &str = "UPDATE organizations SET billing_note = $1 WHERE id = $2";
/// $1 organization name: `name, email, address, country, tax_id`.
pub const BILLING: &str = "SELECT b.name, b.email, b.address, b.country, b.tax_id
     FROM billing b JOIN organizations o ON o.id = b.org_id WHERE o.name = $1";

// ---- Worker tokens ----

/// $1 name, $2 hash, $3 now. Changes no row when the name was ever used.
pub const CREATE_WORKER_TOKEN: &str =
    "INSERT INTO worker_tokens (name, hash, created_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO NOTHING";
/// $1 name, $2 now.
pub const REVOKE_WORKER_TOKEN: &str =
    "UPDATE worker_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL";
/// $1 worker, $2 now: its leases lapse now, so the next lease call retries its tasks.
pub const LAPSE_LEASES_OF: &str = "UPDATE tasks SET lease_expires_at = $2
     WHERE state = 'running' AND lease_owner = $1 AND lease_expires_at > $2";
/// $1 prefix of worker ids, $2 now: the leases of those workers lapse now (a restarted
/// `sie serve` takes back what its own dead workers held).
pub const LAPSE_LEASES_WITH_PREFIX: &str = "UPDATE tasks SET lease_expires_at = $2
     WHERE state = 'running' AND lease_expires_at > $2
       AND substr(lease_owner, 1, length(CAST($1 AS TEXT))) = CAST($1 AS TEXT)";
/// Read by [`rows::worker_token`](super::rows::worker_token).
pub const LIST_WORKER_TOKENS: &str =
    "SELECT name, created_at, revoked_at FROM worker_tokens ORDER BY name";
/// $1 the presented token's hash. Read by [`rows::worker_name`](super::rows::worker_name).
pub const AUTHENTICATE_WORKER: &str =
    "SELECT name FROM worker_tokens WHERE hash = $1 AND revoked_at IS NULL";

// ---- Tasks: the client's side ----

/// $1 organization, $2 idempotency key: the task it made (`seq, id, idempotency_digest,
/// finished_at`).
pub const FIND_IDEMPOTENT: &str = "SELECT seq, id, idempotency_digest, finished_at FROM tasks
     WHERE org_id = $1 AND idempotency_key = $2";
/// $1 seq: the task no longer holds its idempotency key (its result expired).
pub const FORGET_IDEMPOTENCY_KEY: &str =
    "UPDATE tasks SET idempotency_key = NULL, idempotency_digest = NULL WHERE seq = $1";
/// $1 organization: its queued tasks, and everyone's.
pub const QUEUED_COUNTS: &str =
    "SELECT COUNT(*) FILTER (WHERE org_id = $1), COUNT(*) FROM tasks WHERE state = 'queued'";
/// $1 since, $2 organization or NULL for all: tasks finished since, for `retry_after`.
pub const FINISHED_SINCE: &str = "SELECT COUNT(*) FROM tasks
     WHERE finished_at IS NOT NULL AND finished_at > $1
       AND (CAST($2 AS BIGINT) IS NULL OR org_id = $2)";
/// $1 id, $2 organization, $3 request, $4 idempotency key, $5 now, $6 pipeline,
/// $7 scheduler, $8 needs the safety checker, $9 idempotency digest, $10 webhook URL.
pub const INSERT_TASK: &str =
    "INSERT INTO tasks (id, org_id, request, idempotency_key, state, created_at,
                        pipeline, scheduler, needs_safety_checker, idempotency_digest,
                        webhook_url)
     VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10)";
/// $1 organization, $2 id: the task a cancel is about (`seq, state`).
pub const CANCEL_TARGET: &str = "SELECT seq, state FROM tasks WHERE org_id = $1 AND id = $2";
/// $1 seq.
pub const REQUEST_CANCEL: &str = "UPDATE tasks SET cancel_requested = TRUE WHERE seq = $1";
/// $1 organization, $2 id: the result of a task that succeeded.
pub const RESULT: &str =
    "SELECT result FROM tasks WHERE org_id = $1 AND id = $2 AND state = 'succeeded'";
/// $1 organization, $2 task id.
pub const REQUEST: &str = "SELECT request FROM tasks WHERE org_id = $1 AND id = $2";
/// $1 organization.
pub const COUNT_TASKS: &str = "SELECT COUNT(*) FROM tasks WHERE org_id = $1";
/// $1 cutoff: tasks finished at or before it.
pub const EXPIRE: &str = "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= $1";
/// $1 organization, $2 first day, $3 last day. Read by
/// [`rows::daily_usage`](super::rows::daily_usage).
pub const USAGE: &str =
    "SELECT day, images, steps, gpu_ms, tasks_succeeded, tasks_failed FROM usage_daily
     WHERE org_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day";

/// The condition for a task that waits to be leased: queued, or running with a lapsed
/// lease and attempts left (and no cancel pending). `t` is the column prefix (`""` or
/// `"t."`), `now` the parameter holding the current time. Leasing, `get`, `list` and the
/// stats share it, so a task whose worker vanished reads as queued, where it is.
pub fn waiting(t: &str, now: &str) -> String {
    format!(
        "({t}state = 'queued' OR ({t}state = 'running' AND {t}lease_expires_at <= {now} \
         AND {t}attempt - {t}released < {MAX_ATTEMPTS} AND NOT {t}cancel_requested))"
    )
}

/// The columns [`TaskRecord::read`](super::rows::TaskRecord::read) reads, in order. Never
/// `result`, which can be tens of megabytes: [`RESULT`] reads it alone.
pub fn task_columns(now: &str) -> String {
    format!(
        "seq, id, org_id, state, attempt, progress_step, progress_steps, cancel_requested, \
         error_code, error_message, usage_images, usage_steps, usage_gpu_ms, \
         created_at, started_at, finished_at, {} AS waiting",
        waiting("", now)
    )
}

/// $1 organization, $2 id, $3 now: one task.
pub fn get_task() -> String {
    format!(
        "SELECT {} FROM tasks WHERE org_id = $1 AND id = $2",
        task_columns("$3")
    )
}

/// $1 organization, $2 page size, $3 offset, $4 now: a page of tasks, newest first.
pub fn list_tasks() -> String {
    format!(
        "SELECT {} FROM tasks WHERE org_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
        task_columns("$4")
    )
}

/// $1 the task's seq, $2 now: how many waiting tasks are ahead of it, by the queue
/// position rule (see [`Tasks::get`](crate::Tasks::get)): a round-robin rank.
pub fn tasks_ahead() -> String {
    format!(
        "WITH q AS (
             SELECT seq, org_id, ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY seq) AS r
             FROM tasks WHERE {}
         ),
         heads AS (SELECT org_id, MIN(seq) AS head FROM q GROUP BY org_id),
         k AS (
             SELECT q.seq, q.r, o.lease_turn AS turn, h.head
             FROM q
             JOIN heads h ON h.org_id = q.org_id
             JOIN organizations o ON o.id = q.org_id
         ),
         me AS (SELECT * FROM k WHERE seq = $1)
         SELECT COUNT(*) FROM k, me
         WHERE k.r < me.r
            OR (k.r = me.r AND (k.turn < me.turn OR (k.turn = me.turn AND k.head < me.head)))",
        waiting("", "$2")
    )
}

/// $1 now. Read by [`rows::queue_stats`](super::rows::queue_stats): waiting, running,
/// the oldest waiting task's `created_at`, lapsed leases.
pub fn queue_stats() -> String {
    let waiting = waiting("", "$1");
    format!(
        "SELECT COUNT(*) FILTER (WHERE {waiting}),
                COUNT(*) FILTER (WHERE state = 'running' AND lease_expires_at > $1),
                MIN(created_at) FILTER (WHERE {waiting}),
                COUNT(*) FILTER (WHERE state = 'running' AND lease_expires_at <= $1)
         FROM tasks WHERE state IN ('queued', 'running')"
    )
}

/// $1 id: the task's organization name, state, attempt and error code, for
/// [`rows::task_outcome`](super::rows::task_outcome).
pub const TASK_OUTCOME: &str = "SELECT o.name, t.state, t.attempt, t.error_code
     FROM tasks t JOIN organizations o ON o.id = t.org_id WHERE t.id = $1";

// ---- The queue: the worker's side ----

/// $1 now, $2 [`MAX_ATTEMPTS`]: lapsed tasks that may not run again (`seq,
/// cancel_requested`), for [`rules::after_lapse`](crate::rules::after_lapse). By
/// organization, so concurrent sweeps take usage rows in one order and cannot deadlock
/// on them.
pub const LAPSED: &str = "SELECT seq, cancel_requested, id FROM tasks
     WHERE state = 'running' AND lease_expires_at <= $1
       AND (attempt - released >= $2 OR cancel_requested)
     ORDER BY org_id";

/// $1 worker, $2 lease expiry, $3 now, $4 seq, $5 state, $6 attempt: takes the task
/// picked, if it is still in the state and attempt it was picked in (compare-and-set).
pub const CLAIM: &str =
    "UPDATE tasks SET state = 'running', attempt = attempt + 1, lease_owner = $1,
         lease_expires_at = $2, started_at = $3, progress_step = NULL, progress_steps = NULL
     WHERE seq = $4 AND state = $5 AND attempt = $6";

/// $1 lease expiry, $2 step, $3 steps, $4 id, $5 attempt, $6 worker. Fenced; returns
/// `cancel_requested`, no row when the fence refuses.
pub const HEARTBEAT: &str = "UPDATE tasks SET lease_expires_at = $1,
         progress_step = COALESCE($2, progress_step),
         progress_steps = COALESCE($3, progress_steps)
     WHERE id = $4 AND attempt = $5 AND state = 'running' AND lease_owner = $6
     RETURNING cancel_requested";

/// $1 result, $2 now, $3 images, $4 steps, $5 GPU ms, $6 id, $7 attempt, $8 worker.
/// Fenced; returns the organization and the seq, no row when the fence refuses.
pub const COMPLETE: &str = "UPDATE tasks SET state = 'succeeded', result = $1, finished_at = $2,
         usage_images = $3, usage_steps = $4, usage_gpu_ms = $5,
         lease_owner = NULL, lease_expires_at = NULL
     WHERE id = $6 AND attempt = $7 AND state = 'running' AND lease_owner = $8
     RETURNING org_id, seq";

/// $1 id, $2 attempt, $3 worker: the task a worker's report is about, if the fence holds.
/// Read by [`Fenced::read`](super::rows::Fenced::read).
pub const FENCED_TASK: &str = "SELECT seq, attempt - released, cancel_requested FROM tasks
     WHERE id = $1 AND attempt = $2 AND state = 'running' AND lease_owner = $3";

/// $1 seq, $2 1 if the attempt was given back (not lost), else 0. `attempt` stays: it is
/// the fence.
pub const REQUEUE: &str =
    "UPDATE tasks SET state = 'queued', released = released + $2, lease_owner = NULL,
         lease_expires_at = NULL, started_at = NULL, progress_step = NULL, progress_steps = NULL
     WHERE seq = $1";

/// $1 seq, $2 code, $3 message, $4 now: fails an unfinished task from the store's side.
/// Returns the organization, no row when it had already finished.
pub const FINISH_FAILED: &str =
    "UPDATE tasks SET state = 'failed', error_code = $2, error_message = $3, finished_at = $4,
         lease_owner = NULL, lease_expires_at = NULL
     WHERE seq = $1 AND state IN ('queued', 'running')
     RETURNING org_id";

/// $1 organization, $2 day, $3 images, $4 steps, $5 GPU ms, $6 succeeded (0 or 1),
/// $7 failed (0 or 1): adds a finished task to its organization's day.
pub const RECORD_USAGE: &str =
    "INSERT INTO usage_daily (org_id, day, images, steps, gpu_ms, tasks_succeeded, tasks_failed)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (org_id, day) DO UPDATE SET
         images = usage_daily.images + EXCLUDED.images,
         steps = usage_daily.steps + EXCLUDED.steps,
         gpu_ms = usage_daily.gpu_ms + EXCLUDED.gpu_ms,
         tasks_succeeded = usage_daily.tasks_succeeded + EXCLUDED.tasks_succeeded,
         tasks_failed = usage_daily.tasks_failed + EXCLUDED.tasks_failed";

/// $1 seq, $2 now: queues the webhook delivery of a task that just ended, if it has a
/// webhook URL (the message id is the task's, so it is the same on every attempt).
pub const QUEUE_WEBHOOK: &str =
    "INSERT INTO webhook_deliveries (id, task_seq, task_id, org_id, url, created_at, next_attempt_at)
     SELECT 'msg_' || id, seq, id, org_id, webhook_url, $2, $2 FROM tasks
     WHERE seq = $1 AND webhook_url IS NOT NULL";
/// $1 secret, $2 organization name.
pub const SET_WEBHOOK_SECRET: &str = "UPDATE organizations SET webhook_secret = $1 WHERE name = $2";
/// $1 organization id.
pub const WEBHOOK_SECRET: &str = "SELECT webhook_secret FROM organizations WHERE id = $1";
/// $1 now, $2 how many: the deliveries due and not held by a claim, oldest due first.
pub const DUE_DELIVERIES: &str = "SELECT id FROM webhook_deliveries
     WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= $1
       AND (claimed_until IS NULL OR claimed_until <= $1)
     ORDER BY next_attempt_at LIMIT $2";
/// $1 id, $2 held until: claims a delivery for one more attempt. Read by
/// [`rows::delivery`](super::rows::delivery).
pub const CLAIM_DELIVERY: &str =
    "UPDATE webhook_deliveries SET claimed_until = $2, attempts = attempts + 1 WHERE id = $1
     RETURNING id, task_id, org_id, url, attempts, created_at";
/// $1 id, $2 now: the receiver took it. Not fenced on the attempt: a delivery that
/// arrived is never sent again, whichever attempt brought it.
pub const DELIVERED: &str =
    "UPDATE webhook_deliveries SET delivered_at = $2, claimed_until = NULL, last_error = NULL
     WHERE id = $1 AND delivered_at IS NULL";
/// $1 id, $2 attempt, $3 next attempt, $4 error.
pub const RETRY_DELIVERY: &str =
    "UPDATE webhook_deliveries SET next_attempt_at = $3, claimed_until = NULL, last_error = $4
     WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND given_up_at IS NULL";
/// $1 id, $2 attempt, $3 now, $4 error.
pub const GIVE_UP_DELIVERY: &str =
    "UPDATE webhook_deliveries SET given_up_at = $3, claimed_until = NULL, last_error = $4
     WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND given_up_at IS NULL";
