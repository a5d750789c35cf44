//! [`SqliteStore`]: the embedded store behind `sie serve`.
//!
//! One database file in WAL mode, so readers (`GET` polling) never wait for
//! the writer. Connections come from a small pool, each with foreign keys on,
//! `synchronous = FULL` (a 202 must survive a power cut, not only a crash) and
//! a busy timeout, so concurrent writers queue inside SQLite instead of
//! failing. SQLite has no `SKIP LOCKED`, so a claim runs inside
//! `BEGIN IMMEDIATE` (one writer at a time) and still uses a compare-and-set
//! `UPDATE … WHERE seq = ? AND state = ? AND attempt = ?`, so the fence is in
//! the statement and not only in the locking. Every later write by a worker is
//! fenced with `AND attempt = ? AND state = 'running'`.
//!
//! Migrations are embedded from `migrations/sqlite/*.sql` and applied in order,
//! each in the transaction that records it in `schema_version`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{
    params, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use crate::domain::{
    duration_ms, AccountId, AccountName, IdempotencyKey, KeyPrefix, OrgId, OrgName, TaskId,
};
use crate::domain::{Timestamp, UtcDay, WorkerName};
use crate::error::{QueueScope, Result, StoreError};
use crate::keys::{hash_key, looks_like_key, looks_like_worker_token, NewApiKey, NewWorkerToken};
use crate::signal::WorkSignal;
use crate::store::Store;
use crate::types::messages::{
    CANCELLED_LAPSED_MESSAGE, CANCELLED_QUEUED_MESSAGE, WORKER_LOST_MESSAGE,
};
use crate::types::*;

/// The embedded migrations, in order. A new file gets the next number here.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_workers.sql")),
];

/// How long a statement waits for another connection's write lock before
/// giving up with `SQLITE_BUSY`. Writes are short; this only bites when the
/// disk stalls, and then an error beats an API request hanging for ever.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept for reuse; more are opened on demand under load.
const POOL_IDLE: usize = 8;

pub struct SqliteStore {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Serializes this handle's writers before they reach SQLite. SQLite lets
    /// one writer in at a time anyway, but its busy handler waits by sleeping
    /// and polling, so a thread that commits and immediately begins again
    /// wins every time and the others starve; a mutex hands over in turn.
    /// Other processes on the same file still meet the busy timeout.
    writer: Mutex<()>,
    /// Rung in-process on enqueue and requeue; other processes on the same
    /// file are not heard, so waiters also look again on a timer.
    signal: WorkSignal,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

/// Attaches the operation's name to a rusqlite error.
trait Op<T> {
    fn op(self, operation: &'static str) -> Result<T>;
}

impl<T> Op<T> for rusqlite::Result<T> {
    fn op(self, operation: &'static str) -> Result<T> {
        self.map_err(|e| db_error(operation, e))
    }
}

fn db_error(operation: &'static str, e: rusqlite::Error) -> StoreError {
    StoreError::Database {
        operation,
        source: Box::new(e),
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn opt_ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

fn to_u32(n: i64, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} is {n}")))
}

fn open_connection(path: &Path) -> Result<Connection> {
    let open_err = |e: rusqlite::Error| StoreError::Open {
        path: path.to_owned(),
        source: Box::new(e),
    };
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // journal_mode answers with a row, so it is a query, not an execute.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            source: format!("the database would not switch to WAL mode (it reports {mode:?})")
                .into(),
        });
    }
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL;")
        .map_err(open_err)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .op("migrate")?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .op("migrate")?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .op("migrate")?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.execute_batch(sql).op("migrate")?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version, Timestamp::now().as_millis()],
        )
        .op("migrate")?;
    }
    tx.commit().op("migrate")
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and brings its
    /// schema up to date. Several processes may open the same file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let mut conn = open_connection(&path)?;
        migrate(&mut conn)?;
        Ok(Self {
            path,
            idle: Mutex::new(vec![conn]),
            writer: Mutex::new(()),
            signal: WorkSignal::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        // A poisoned lock only means another thread panicked while pushing or
        // popping a connection; the Vec itself is fine.
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path)?,
        };
        let out = f(&mut conn);
        // A failed call leaves no open transaction (Transaction rolls back on
        // drop), so the connection is safe to reuse either way.
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_IDLE {
            idle.push(conn);
        }
        out
    }

    /// Runs `f` inside `BEGIN IMMEDIATE … COMMIT`: the write lock is taken up
    /// front, so a read-then-write inside cannot race another writer.
    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .op(operation)?;
            let out = f(&tx)?;
            tx.commit().op(operation)?;
            Ok(out)
        })
    }
}

fn org_id_by_name(tx: &Connection, org: &OrgName) -> Result<OrgId> {
    tx.query_row(
        "SELECT id FROM organizations WHERE name = ?1",
        [org.as_str()],
        |r| r.get(0),
    )
    .optional()
    .op("find organization")?
    .map(OrgId::from_row)
    .ok_or_else(|| StoreError::UnknownOrg(org.as_str().to_owned()))
}

fn require_account(tx: &Connection, account: AccountId) -> Result<()> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT id FROM accounts WHERE id = ?1",
            [account.get()],
            |r| r.get(0),
        )
        .optional()
        .op("find account")?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::UnknownAccount(account)),
    }
}

/// Adds a finished task to its organization's daily usage row.
fn record_usage(
    tx: &Connection,
    org: i64,
    now: Timestamp,
    usage: TaskUsage,
    succeeded: bool,
) -> Result<()> {
    tx.execute(
        "INSERT INTO usage_daily (org_id, day, images, steps, gpu_ms, tasks_succeeded, tasks_failed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (org_id, day) DO UPDATE SET
             images = images + excluded.images,
             steps = steps + excluded.steps,
             gpu_ms = gpu_ms + excluded.gpu_ms,
             tasks_succeeded = tasks_succeeded + excluded.tasks_succeeded,
             tasks_failed = tasks_failed + excluded.tasks_failed",
        params![
            org,
            now.day().days_since_epoch(),
            usage.images,
            usage.steps,
            i64::try_from(usage.gpu_ms).unwrap_or(i64::MAX),
            i64::from(succeeded),
            i64::from(!succeeded),
        ],
    )
    .op("record usage")?;
    Ok(())
}

/// Fails an unfinished task by its `seq`, from the store's side (cancel,
/// worker lost), and counts it in usage.
fn finish_failed(
    tx: &Connection,
    seq: i64,
    code: &str,
    message: &str,
    now: Timestamp,
) -> Result<()> {
    let org: Option<i64> = tx
        .query_row(
            "UPDATE tasks SET state = 'failed', error_code = ?2, error_message = ?3, finished_at = ?4,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE seq = ?1 AND state IN ('queued', 'running')
             RETURNING org_id",
            params![seq, code, message, now.as_millis()],
            |r| r.get(0),
        )
        .optional()
        .op("fail task")?;
    if let Some(org) = org {
        record_usage(tx, org, now, TaskUsage::default(), false)?;
    }
    Ok(())
}

/// Finishes lapsed tasks that must not run again (out of attempts:
/// `worker_lost`; cancel requested: `cancelled`); returns how many.
fn sweep_lapsed(tx: &Connection, now: Timestamp) -> Result<u64> {
    let mut doomed = tx
        .prepare(
            "SELECT seq, cancel_requested FROM tasks
             WHERE state = 'running' AND lease_expires_at <= ?1
               AND (attempt - released >= ?2 OR cancel_requested = 1)",
        )
        .op("sweep lapsed tasks")?;
    let doomed: Vec<(i64, bool)> = doomed
        .query_map(params![now.as_millis(), MAX_ATTEMPTS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .op("sweep lapsed tasks")?
        .collect::<rusqlite::Result<_>>()
        .op("sweep lapsed tasks")?;
    for &(seq, cancelled) in &doomed {
        if cancelled {
            finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
        } else {
            finish_failed(tx, seq, codes::WORKER_LOST, WORKER_LOST_MESSAGE, now)?;
        }
    }
    Ok(doomed.len() as u64)
}

/// `retry_after_seconds` for a full queue: the time for one queued task to
/// start at the rate tasks of that scope finished over the last minute.
fn retry_after(tx: &Connection, org: Option<i64>, now: Timestamp) -> Result<u32> {
    let since = now.as_millis() - 60_000;
    let finished: i64 = tx
        .query_row(
            "SELECT COUNT(*) FROM tasks
             WHERE finished_at IS NOT NULL AND finished_at > ?1 AND (?2 IS NULL OR org_id = ?2)",
            params![since, org],
            |r| r.get(0),
        )
        .op("enqueue")?;
    Ok(match finished {
        0 => 30,
        n => u32::try_from((60 + n - 1) / n).unwrap_or(60).clamp(1, 60),
    })
}

/// The SQL condition for a task that waits to be leased: queued, or running
/// with a lapsed lease and attempts left (and no cancel pending). `now` is the
/// placeholder holding the current time. Leasing, `get` and `list` share it,
/// so a task whose worker vanished reads as queued, where it is.
fn waiting(now: &str) -> String {
    format!(
        "(state = 'queued' OR (state = 'running' AND lease_expires_at <= {now} \
         AND attempt - released < {MAX_ATTEMPTS} AND cancel_requested = 0))"
    )
}

/// The columns `read_task` reads, in order.
fn task_columns(now: &str) -> String {
    format!(
        "seq, id, org_id, state, attempt, progress_step, progress_steps, cancel_requested, \
         result, error_code, error_message, usage_images, usage_steps, usage_gpu_ms, \
         created_at, started_at, finished_at, {} AS waiting",
        waiting(now)
    )
}

struct TaskRow {
    seq: i64,
    view: TaskView,
}

fn read_task(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TaskRow>> {
    let id: String = r.get(1)?;
    let state: String = r.get(3)?;
    let attempt: i64 = r.get(4)?;
    let step: Option<i64> = r.get(5)?;
    let steps: Option<i64> = r.get(6)?;
    let code: Option<String> = r.get(9)?;
    let message: Option<String> = r.get(10)?;
    let images: Option<i64> = r.get(11)?;
    let usage_steps: Option<i64> = r.get(12)?;
    let gpu_ms: Option<i64> = r.get(13)?;
    let seq: i64 = r.get(0)?;
    let org: i64 = r.get(2)?;
    let cancel_requested: bool = r.get(7)?;
    let result_json: Option<String> = r.get(8)?;
    let created_at: i64 = r.get(14)?;
    let started_at: Option<i64> = r.get(15)?;
    let finished_at: Option<i64> = r.get(16)?;
    let waiting: bool = r.get(17)?;
    // Conversions that can fail on a hand-edited row are reported as Corrupt,
    // not as a rusqlite error, so the message says what is wrong.
    Ok((|| {
        let id = TaskId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let state = TaskState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("task state {state:?}")))?;
        // A lapsed lease puts the task back in the queue in all but the row.
        let state = if waiting { TaskState::Queued } else { state };
        let progress = match (step, steps) {
            (Some(step), Some(steps)) if !waiting => Some(Progress {
                step: to_u32(step, "progress step")?,
                steps: to_u32(steps, "progress steps")?,
            }),
            _ => None,
        };
        let usage = match (images, usage_steps, gpu_ms) {
            (Some(i), Some(s), Some(g)) => Some(TaskUsage {
                images: to_u32(i, "usage images")?,
                steps: to_u32(s, "usage steps")?,
                gpu_ms: u64::try_from(g)
                    .map_err(|_| StoreError::Corrupt(format!("usage gpu_ms {g}")))?,
            }),
            _ => None,
        };
        Ok(TaskRow {
            seq,
            view: TaskView {
                id,
                org: OrgId::from_row(org),
                state,
                attempt: to_u32(attempt, "attempt")?,
                queue_position: None,
                progress,
                cancel_requested,
                result_json,
                error: code.map(|code| TaskError {
                    code,
                    message: message.unwrap_or_default(),
                }),
                usage,
                created_at: ts(created_at),
                started_at: opt_ts(started_at),
                finished_at: opt_ts(finished_at),
            },
        })
    })())
}

impl Store for SqliteStore {
    fn create_account(&self, name: &AccountName, now: Timestamp) -> Result<AccountId> {
        self.write("create account", |tx| {
            match tx.execute(
                "INSERT INTO accounts (name, created_at) VALUES (?1, ?2)",
                params![name.as_str(), now.as_millis()],
            ) {
                Ok(_) => Ok(AccountId::from_row(tx.last_insert_rowid())),
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::AccountExists(name.as_str().to_owned()))
                }
                Err(e) => Err(db_error("create account", e)),
            }
        })
    }

    fn find_account(&self, name: &AccountName) -> Result<Option<AccountId>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT id FROM accounts WHERE name = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()
            .op("find account")
            .map(|id| id.map(AccountId::from_row))
        })
    }

    fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare("SELECT id, name, created_at FROM accounts ORDER BY name")
                .op("list accounts")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .op("list accounts")?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, created_at) = row.op("list accounts")?;
                out.push(AccountInfo {
                    id: AccountId::from_row(id),
                    name: AccountName::parse(&name)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: ts(created_at),
                });
            }
            Ok(out)
        })
    }

    fn create_org(&self, name: &OrgName, owner: AccountId, now: Timestamp) -> Result<OrgId> {
        self.write("create organization", |tx| {
            require_account(tx, owner)?;
            let org = match tx.execute(
                "INSERT INTO organizations (name, owner_id, created_at) VALUES (?1, ?2, ?3)",
                params![name.as_str(), owner.get(), now.as_millis()],
            ) {
                Ok(_) => tx.last_insert_rowid(),
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::OrgExists(name.as_str().to_owned()))
                }
                Err(e) => return Err(db_error("create organization", e)),
            };
            tx.execute(
                "INSERT INTO memberships (org_id, account_id, created_at) VALUES (?1, ?2, ?3)",
                params![org, owner.get(), now.as_millis()],
            )
            .op("create organization")?;
            Ok(OrgId::from_row(org))
        })
    }

    fn add_member(&self, org: &OrgName, account: AccountId, now: Timestamp) -> Result<bool> {
        self.write("add member", |tx| {
            let org = org_id_by_name(tx, org)?;
            require_account(tx, account)?;
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO memberships (org_id, account_id, created_at) VALUES (?1, ?2, ?3)",
                    params![org.get(), account.get(), now.as_millis()],
                )
                .op("add member")?;
            Ok(n == 1)
        })
    }

    fn approve_org(&self, org: &OrgName, billing_note: &str, now: Timestamp) -> Result<()> {
        if billing_note.trim().is_empty() {
            return Err(StoreError::BadArgument(
                "the billing information is empty; give what the organization is billed by \
                 (e.g. an invoice address or contract number)"
                    .into(),
            ));
        }
        self.write("approve organization", |tx| {
            let n = tx
                .execute(
                    "UPDATE organizations SET billing_note = ?1, approved_at = COALESCE(approved_at, ?2)
                     WHERE name = ?3",
                    params![billing_note, now.as_millis(), org.as_str()],
                )
                .op("approve organization")?;
            if n == 0 {
                return Err(StoreError::UnknownOrg(org.as_str().to_owned()));
            }
            Ok(())
        })
    }

    fn list_orgs(&self) -> Result<Vec<OrgInfo>> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT o.id, o.name, o.owner_id,
                            (SELECT COUNT(*) FROM memberships m WHERE m.org_id = o.id),
                            o.billing_note, o.approved_at, o.created_at
                     FROM organizations o ORDER BY o.name",
                )
                .op("list organizations")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .op("list organizations")?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, owner, members, billing_note, approved_at, created_at) =
                    row.op("list organizations")?;
                out.push(OrgInfo {
                    id: OrgId::from_row(id),
                    name: OrgName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    owner: AccountId::from_row(owner),
                    members: to_u32(members, "member count")?,
                    billing_note,
                    approved_at: opt_ts(approved_at),
                    created_at: ts(created_at),
                });
            }
            Ok(out)
        })
    }

    fn create_api_key(&self, account: AccountId, now: Timestamp) -> Result<NewApiKey> {
        self.write("create API key", |tx| {
            require_account(tx, account)?;
            // 40 bits of prefix collide rarely, but they can; draw again then.
            for _ in 0..8 {
                let key = NewApiKey::generate();
                match tx.execute(
                    "INSERT INTO api_keys (prefix, hash, account_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![key.prefix().as_str(), key.hash(), account.get(), now.as_millis()],
                ) {
                    Ok(_) => return Ok(key),
                    Err(e) if is_unique_violation(&e) => continue,
                    Err(e) => return Err(db_error("create API key", e)),
                }
            }
            Err(StoreError::Corrupt(
                "eight fresh API key prefixes in a row were already taken; the random source is broken".into(),
            ))
        })
    }

    fn revoke_api_key(&self, prefix: &KeyPrefix, now: Timestamp) -> Result<bool> {
        self.write("revoke API key", |tx| {
            let n = tx
                .execute(
                    "UPDATE api_keys SET revoked_at = ?1 WHERE prefix = ?2 AND revoked_at IS NULL",
                    params![now.as_millis(), prefix.as_str()],
                )
                .op("revoke API key")?;
            Ok(n == 1)
        })
    }

    fn list_api_keys(&self, account: AccountId) -> Result<Vec<ApiKeyInfo>> {
        self.with_conn(|c| {
            require_account(c, account)?;
            let mut stmt = c
                .prepare(
                    "SELECT prefix, created_at, revoked_at FROM api_keys
                     WHERE account_id = ?1 ORDER BY created_at, rowid",
                )
                .op("list API keys")?;
            let rows = stmt
                .query_map([account.get()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .op("list API keys")?;
            let mut out = Vec::new();
            for row in rows {
                let (prefix, created_at, revoked_at) = row.op("list API keys")?;
                out.push(ApiKeyInfo {
                    prefix: KeyPrefix::parse(&prefix)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: ts(created_at),
                    revoked_at: opt_ts(revoked_at),
                });
            }
            Ok(out)
        })
    }

    fn authenticate(&self, presented_key: &str) -> Result<Option<AccountId>> {
        if !looks_like_key(presented_key) {
            return Ok(None);
        }
        // Looked up by hash: the secret never reaches SQL or a log line.
        let hash = hash_key(presented_key);
        self.with_conn(|c| {
            c.query_row(
                "SELECT account_id FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL",
                [hash],
                |r| r.get(0),
            )
            .optional()
            .op("authenticate")
            .map(|id| id.map(AccountId::from_row))
        })
    }

    fn org_access(&self, account: AccountId, org: &OrgName) -> Result<OrgAccess> {
        self.with_conn(|c| {
            let row: Option<(i64, Option<i64>, bool)> = c
                .query_row(
                    "SELECT o.id, o.approved_at,
                            EXISTS (SELECT 1 FROM memberships m WHERE m.org_id = o.id AND m.account_id = ?1)
                     FROM organizations o WHERE o.name = ?2",
                    params![account.get(), org.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .op("check organization access")?;
            Ok(match row {
                None => OrgAccess::UnknownOrg,
                Some((_, _, false)) => OrgAccess::NotMember,
                Some((_, None, true)) => OrgAccess::NotApproved,
                Some((id, Some(_), true)) => OrgAccess::Allowed(OrgId::from_row(id)),
            })
        })
    }

    fn create_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<NewWorkerToken> {
        self.write("create worker token", |tx| {
            let token = NewWorkerToken::generate();
            match tx.execute(
                "INSERT INTO worker_tokens (name, hash, created_at) VALUES (?1, ?2, ?3)",
                params![name.as_str(), token.hash(), now.as_millis()],
            ) {
                Ok(_) => Ok(token),
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::WorkerExists(name.as_str().to_owned()))
                }
                Err(e) => Err(db_error("create worker token", e)),
            }
        })
    }

    fn revoke_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<bool> {
        let revoked = self.write("revoke worker token", |tx| {
            let n = tx
                .execute(
                    "UPDATE worker_tokens SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
                    params![name.as_str(), now.as_millis()],
                )
                .op("revoke worker token")?;
            if n == 1 {
                // Its leases lapse now: the next lease call retries those tasks.
                tx.execute(
                    "UPDATE tasks SET lease_expires_at = ?2
                     WHERE state = 'running' AND lease_owner = ?1 AND lease_expires_at > ?2",
                    params![name.as_str(), now.as_millis()],
                )
                .op("revoke worker token")?;
            }
            Ok(n == 1)
        })?;
        if revoked {
            self.signal.notify();
        }
        Ok(revoked)
    }

    fn list_worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare("SELECT name, created_at, revoked_at FROM worker_tokens ORDER BY name")
                .op("list worker tokens")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .op("list worker tokens")?;
            let mut out = Vec::new();
            for row in rows {
                let (name, created, revoked) = row.op("list worker tokens")?;
                out.push(WorkerTokenInfo {
                    name: WorkerName::parse(&name)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    created_at: ts(created),
                    revoked_at: opt_ts(revoked),
                });
            }
            Ok(out)
        })
    }

    fn authenticate_worker(&self, presented_token: &str) -> Result<Option<WorkerName>> {
        if !looks_like_worker_token(presented_token) {
            return Ok(None);
        }
        let hash = hash_key(presented_token);
        let name: Option<String> = self.with_conn(|c| {
            c.query_row(
                "SELECT name FROM worker_tokens WHERE hash = ?1 AND revoked_at IS NULL",
                [hash],
                |r| r.get(0),
            )
            .optional()
            .op("authenticate worker")
        })?;
        name.map(|n| WorkerName::parse(&n).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    fn work_signal(&self) -> &WorkSignal {
        &self.signal
    }

    fn enqueue(
        &self,
        org: OrgId,
        request_json: &str,
        needs: &TaskNeeds,
        idempotency_key: Option<&IdempotencyKey>,
        caps: QueueCaps,
        now: Timestamp,
    ) -> Result<Enqueued> {
        let enqueued = self.write("enqueue", |tx| {
            let known: Option<i64> = tx
                .query_row("SELECT id FROM organizations WHERE id = ?1", [org.get()], |r| r.get(0))
                .optional()
                .op("enqueue")?;
            if known.is_none() {
                return Err(StoreError::BadArgument(format!("no organization with id {org}")));
            }
            if let Some(key) = idempotency_key {
                let existing: Option<String> = tx
                    .query_row(
                        "SELECT id FROM tasks WHERE org_id = ?1 AND idempotency_key = ?2",
                        params![org.get(), key.as_str()],
                        |r| r.get(0),
                    )
                    .optional()
                    .op("enqueue")?;
                if let Some(id) = existing {
                    let id = TaskId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    return Ok(Enqueued { id, created: false });
                }
            }
            let (org_queued, all_queued): (i64, i64) = tx
                .query_row(
                    "SELECT COALESCE(SUM(org_id = ?1), 0), COUNT(*) FROM tasks WHERE state = 'queued'",
                    [org.get()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .op("enqueue")?;
            if org_queued >= i64::from(caps.per_org) {
                return Err(StoreError::QueueFull {
                    scope: QueueScope::Org,
                    retry_after_seconds: retry_after(tx, Some(org.get()), now)?,
                });
            }
            if all_queued >= i64::from(caps.global) {
                return Err(StoreError::QueueFull {
                    scope: QueueScope::Global,
                    retry_after_seconds: retry_after(tx, None, now)?,
                });
            }
            let id = TaskId::random();
            tx.execute(
                "INSERT INTO tasks (id, org_id, request, idempotency_key, state, created_at,
                                    pipeline, scheduler, needs_safety_checker)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8)",
                params![
                    id.to_string(),
                    org.get(),
                    request_json,
                    idempotency_key.map(|k| k.as_str()),
                    now.as_millis(),
                    needs.pipeline,
                    needs.scheduler,
                    needs.safety_checker,
                ],
            )
            .op("enqueue")?;
            Ok(Enqueued { id, created: true })
        })?;
        if enqueued.created {
            self.signal.notify();
        }
        Ok(enqueued)
    }

    fn sweep(&self, now: Timestamp) -> Result<u64> {
        self.write("sweep lapsed tasks", |tx| sweep_lapsed(tx, now))
    }

    fn lease(
        &self,
        offer: &WorkerOffer,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<Leased>> {
        // The offer's lists travel as JSON arrays and are unpacked by json_each,
        // so the statement text stays fixed whatever the worker announces.
        let json_list =
            |v: &[String]| serde_json::to_string(v).expect("a list of strings serializes");
        let (pipelines, schedulers) = (json_list(&offer.pipelines), json_list(&offer.schedulers));
        let now_ms = now.as_millis();
        let expires = now.plus(lease).as_millis();
        self.write("lease", |tx| {
            // Lapsed tasks that must not run again are finished first, so the
            // pick below only sees tasks that may run.
            sweep_lapsed(tx, now)?;

            // The fairness rule (see `Store::lease`): fewest live leases, then
            // least recently served, then oldest head; within the
            // organization, its head.
            let pick: Option<(i64, String, i64, String, i64, String, i64)> = tx
                .query_row(
                    &format!(
                        "WITH waiting AS (
                         SELECT seq, org_id FROM tasks WHERE {}
                           AND pipeline IN (SELECT value FROM json_each(?2))
                           AND (scheduler IS NULL OR scheduler IN (SELECT value FROM json_each(?3)))
                           AND (needs_safety_checker = 0 OR ?4)
                     ),
                     heads AS (SELECT org_id, MIN(seq) AS head FROM waiting GROUP BY org_id),
                     busy AS (
                         SELECT org_id, COUNT(*) AS n FROM tasks
                         WHERE state = 'running' AND lease_expires_at > ?1 GROUP BY org_id
                     )
                     SELECT t.seq, t.id, t.org_id, t.state, t.attempt, t.request, t.created_at
                     FROM heads h
                     JOIN tasks t ON t.seq = h.head
                     JOIN organizations o ON o.id = h.org_id
                     LEFT JOIN busy b ON b.org_id = h.org_id
                     ORDER BY COALESCE(b.n, 0), o.lease_turn, h.head
                     LIMIT 1",
                        waiting("?1")
                    ),
                    params![now_ms, pipelines, schedulers, offer.safety_checker],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
                )
                .optional()
                .op("lease")?;
            let Some((seq, id, org, state, attempt, request_json, created_at)) = pick else {
                return Ok(None);
            };
            let claimed = tx
                .execute(
                    "UPDATE tasks SET state = 'running', attempt = attempt + 1, lease_owner = ?1,
                         lease_expires_at = ?2, started_at = ?3, progress_step = NULL, progress_steps = NULL
                     WHERE seq = ?4 AND state = ?5 AND attempt = ?6",
                    params![offer.worker_id, expires, now_ms, seq, state, attempt],
                )
                .op("lease")?;
            if claimed != 1 {
                // Cannot happen under BEGIN IMMEDIATE; if it ever does, the
                // worker simply polls again.
                return Ok(None);
            }
            tx.execute(
                "UPDATE organizations SET lease_turn = (SELECT MAX(lease_turn) FROM organizations) + 1
                 WHERE id = ?1",
                [org],
            )
            .op("lease")?;
            Ok(Some(Leased {
                id: TaskId::parse(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                org: OrgId::from_row(org),
                attempt: to_u32(attempt + 1, "attempt")?,
                request_json,
                created_at: ts(created_at),
            }))
        })
    }

    fn heartbeat(
        &self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        progress: Option<Progress>,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Heartbeat> {
        let expires = now.plus(lease).as_millis();
        // One statement, fenced in its WHERE clause.
        self.write("heartbeat", |c| {
            let cancel: Option<bool> = c
                .query_row(
                    "UPDATE tasks SET lease_expires_at = ?1,
                         progress_step = COALESCE(?2, progress_step),
                         progress_steps = COALESCE(?3, progress_steps)
                     WHERE id = ?4 AND attempt = ?5 AND state = 'running' AND lease_owner = ?6
                     RETURNING cancel_requested",
                    params![
                        expires,
                        progress.map(|p| p.step),
                        progress.map(|p| p.steps),
                        id.to_string(),
                        attempt,
                        worker_id
                    ],
                    |r| r.get(0),
                )
                .optional()
                .op("heartbeat")?;
            Ok(match cancel {
                None => Heartbeat::Lost,
                Some(true) => Heartbeat::Cancelled,
                Some(false) => Heartbeat::Continue,
            })
        })
    }

    fn complete(
        &self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        result_json: &str,
        usage: TaskUsage,
        now: Timestamp,
    ) -> Result<bool> {
        self.write("complete", |tx| {
            let org: Option<i64> = tx
                .query_row(
                    "UPDATE tasks SET state = 'succeeded', result = ?1, finished_at = ?2,
                         usage_images = ?3, usage_steps = ?4, usage_gpu_ms = ?5,
                         lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = ?6 AND attempt = ?7 AND state = 'running' AND lease_owner = ?8
                     RETURNING org_id",
                    params![
                        result_json,
                        now.as_millis(),
                        usage.images,
                        usage.steps,
                        i64::try_from(usage.gpu_ms).unwrap_or(i64::MAX),
                        id.to_string(),
                        attempt,
                        worker_id
                    ],
                    |r| r.get(0),
                )
                .optional()
                .op("complete")?;
            match org {
                None => Ok(false),
                Some(org) => {
                    record_usage(tx, org, now, usage, true)?;
                    Ok(true)
                }
            }
        })
    }

    fn fail(
        &self,
        worker_id: &str,
        id: TaskId,
        attempt: u32,
        code: &str,
        message: &str,
        retryable: bool,
        now: Timestamp,
    ) -> Result<bool> {
        if code.is_empty() {
            return Err(StoreError::BadArgument(
                "a failure needs an error code (e.g. \"cancelled\" or \"inference_failed\")".into(),
            ));
        }
        let requeued = std::cell::Cell::new(false);
        let owned = self.write("fail", |tx| {
            let row: Option<(i64, u32, u32, bool)> = tx
                .query_row(
                    "SELECT seq, attempt, released, cancel_requested FROM tasks
                     WHERE id = ?1 AND attempt = ?2 AND state = 'running' AND lease_owner = ?3",
                    params![id.to_string(), attempt, worker_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()
                .op("fail")?;
            let Some((seq, attempt, released, cancel_requested)) = row else {
                return Ok(false);
            };
            if retryable && cancel_requested {
                finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
            } else if retryable && attempt.saturating_sub(released) < MAX_ATTEMPTS {
                // `attempt` stays, so this attempt counts towards the limit.
                tx.execute(
                    "UPDATE tasks SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                         started_at = NULL, progress_step = NULL, progress_steps = NULL
                     WHERE seq = ?1",
                    [seq],
                )
                .op("fail")?;
                requeued.set(true);
            } else {
                finish_failed(tx, seq, code, message, now)?;
            }
            Ok(true)
        })?;
        if requeued.get() {
            self.signal.notify();
        }
        Ok(owned)
    }

    fn release(&self, worker_id: &str, id: TaskId, attempt: u32, now: Timestamp) -> Result<bool> {
        let requeued = std::cell::Cell::new(false);
        let owned = self.write("release", |tx| {
            let row: Option<(i64, bool)> = tx
                .query_row(
                    "SELECT seq, cancel_requested FROM tasks
                     WHERE id = ?1 AND attempt = ?2 AND state = 'running' AND lease_owner = ?3",
                    params![id.to_string(), attempt, worker_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .op("release")?;
            match row {
                None => Ok(false),
                Some((seq, true)) => {
                    finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
                    Ok(true)
                }
                Some((seq, false)) => {
                    // `attempt` stays (it is the fence); `released` keeps this
                    // attempt from counting towards worker_lost.
                    tx.execute(
                        "UPDATE tasks SET state = 'queued', released = released + 1, lease_owner = NULL,
                             lease_expires_at = NULL, started_at = NULL, progress_step = NULL, progress_steps = NULL
                         WHERE seq = ?1",
                        [seq],
                    )
                    .op("release")?;
                    requeued.set(true);
                    Ok(true)
                }
            }
        })?;
        if requeued.get() {
            self.signal.notify();
        }
        Ok(owned)
    }

    fn cancel(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        self.write("cancel", |tx| {
            let row: Option<(i64, String)> = tx
                .query_row(
                    "SELECT seq, state FROM tasks WHERE org_id = ?1 AND id = ?2",
                    params![org.get(), id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .op("cancel")?;
            let Some((seq, state)) = row else {
                return Ok(CancelOutcome::NotFound);
            };
            match TaskState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("task state {state:?}")))?
            {
                TaskState::Queued => {
                    finish_failed(tx, seq, codes::CANCELLED, CANCELLED_QUEUED_MESSAGE, now)?;
                    Ok(CancelOutcome::Cancelled)
                }
                TaskState::Running => {
                    tx.execute(
                        "UPDATE tasks SET cancel_requested = 1 WHERE seq = ?1",
                        [seq],
                    )
                    .op("cancel")?;
                    Ok(CancelOutcome::CancelRequested)
                }
                finished => Ok(CancelOutcome::AlreadyFinished(finished)),
            }
        })
    }

    fn get(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<Option<TaskView>> {
        self.with_conn(|c| {
            // One read transaction so the position matches the state read.
            let tx = c.transaction().op("get task")?;
            let row = tx
                .query_row(
                    &format!("SELECT {} FROM tasks WHERE org_id = ?1 AND id = ?2", task_columns("?3")),
                    params![org.get(), id.to_string(), now.as_millis()],
                    read_task,
                )
                .optional()
                .op("get task")?;
            let Some(row) = row else { return Ok(None) };
            let TaskRow { seq, mut view } = row?;
            if view.state == TaskState::Queued {
                // The queue position rule (see `Store::get`): round-robin rank.
                let ahead: i64 = tx
                    .query_row(
                        &format!(
                            "WITH q AS (
                             SELECT seq, org_id,
                                    ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY seq) AS r
                             FROM tasks WHERE {}
                         ),
                         heads AS (SELECT org_id, MIN(seq) AS head FROM q GROUP BY org_id),
                         k AS (
                             SELECT q.seq, q.r, o.lease_turn AS turn, h.head
                             FROM q
                             JOIN heads h ON h.org_id = q.org_id
                             JOIN organizations o ON o.id = q.org_id
                         ),
                         me AS (SELECT * FROM k WHERE seq = ?1)
                         SELECT COUNT(*) FROM k, me
                         WHERE k.r < me.r
                            OR (k.r = me.r AND (k.turn < me.turn OR (k.turn = me.turn AND k.head < me.head)))",
                            waiting("?2")
                        ),
                        params![seq, now.as_millis()],
                        |r| r.get(0),
                    )
                    .op("get task")?;
                view.queue_position = Some(to_u32(ahead + 1, "queue position")?);
            }
            Ok(Some(view))
        })
    }

    fn list(&self, org: OrgId, page: u32, page_size: u32, now: Timestamp) -> Result<TaskPage> {
        if page == 0 {
            return Err(StoreError::BadArgument(
                "page 0 does not exist; pages count from 1".into(),
            ));
        }
        if !(1..=1000).contains(&page_size) {
            return Err(StoreError::BadArgument(format!(
                "page_size {page_size} is out of range; use 1 to 1000"
            )));
        }
        self.with_conn(|c| {
            let tx = c.transaction().op("list tasks")?;
            let total: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM tasks WHERE org_id = ?1",
                    [org.get()],
                    |r| r.get(0),
                )
                .op("list tasks")?;
            let offset = i64::from(page - 1) * i64::from(page_size);
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT {} FROM tasks WHERE org_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
                    task_columns("?4")
                ))
                .op("list tasks")?;
            let rows = stmt
                .query_map(
                    params![org.get(), page_size, offset, now.as_millis()],
                    read_task,
                )
                .op("list tasks")?;
            let mut tasks = Vec::new();
            for row in rows {
                let v = row.op("list tasks")??.view;
                tasks.push(TaskSummary {
                    id: v.id,
                    state: v.state,
                    error: v.error,
                    created_at: v.created_at,
                    started_at: v.started_at,
                    finished_at: v.finished_at,
                });
            }
            Ok(TaskPage {
                tasks,
                total: u64::try_from(total).unwrap_or(0),
            })
        })
    }

    fn queue_stats(&self, now: Timestamp) -> Result<QueueStats> {
        self.with_conn(|c| {
            let (queued, running): (i64, i64) = c
                .query_row(
                    &format!(
                        "SELECT COALESCE(SUM({}), 0),
                                COALESCE(SUM(state = 'running' AND lease_expires_at > ?1), 0)
                         FROM tasks WHERE state IN ('queued', 'running')",
                        waiting("?1")
                    ),
                    [now.as_millis()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .op("queue stats")?;
            Ok(QueueStats {
                queued: u64::try_from(queued).unwrap_or(0),
                running: u64::try_from(running).unwrap_or(0),
            })
        })
    }

    fn expire(&self, result_ttl: Duration, now: Timestamp) -> Result<u64> {
        let cutoff = now.as_millis().saturating_sub(duration_ms(result_ttl));
        self.write("expire results", |tx| {
            let n = tx
                .execute(
                    "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= ?1",
                    [cutoff],
                )
                .op("expire results")?;
            Ok(n as u64)
        })
    }

    fn usage(&self, org: OrgId, from: UtcDay, to: UtcDay) -> Result<Vec<DailyUsage>> {
        self.with_conn(|c| {
            let mut stmt = c
                .prepare(
                    "SELECT day, images, steps, gpu_ms, tasks_succeeded, tasks_failed FROM usage_daily
                     WHERE org_id = ?1 AND day BETWEEN ?2 AND ?3 ORDER BY day",
                )
                .op("usage")?;
            let rows = stmt
                .query_map(
                    params![org.get(), from.days_since_epoch(), to.days_since_epoch()],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .op("usage")?;
            let mut out = Vec::new();
            for row in rows {
                let (day, images, steps, gpu_ms, ok, failed) = row.op("usage")?;
                let n = |v: i64| u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("usage count {v}")));
                out.push(DailyUsage {
                    day: UtcDay::from_days_since_epoch(day),
                    images: n(images)?,
                    steps: n(steps)?,
                    gpu_seconds: n(gpu_ms)? as f64 / 1000.0,
                    tasks_succeeded: n(ok)?,
                    tasks_failed: n(failed)?,
                });
            }
            Ok(out)
        })
    }
}
