//! [`PostgresStore`]: the scale-out store, shared by several API nodes and
//! their workers through one PostgreSQL database.
//!
//! The semantics are [`SqliteStore`](crate::SqliteStore)'s, rule for rule (the
//! conformance suite checks both); what differs is how they hold up when
//! many processes write at once:
//!
//! - **Claims** lock the task they take with `FOR UPDATE … SKIP LOCKED` in the
//!   statement that picks it by the fairness rule, so two leasers never wait
//!   on each other or take the same row: the second one skips to the next
//!   candidate. The claim then still updates with a compare-and-set on
//!   `state` and `attempt`, and every later write by a worker is fenced on
//!   `state = 'running' AND attempt = $ AND lease_owner = $`. Transactions
//!   are READ COMMITTED, where a row locked after the statement's snapshot is
//!   re-checked against the `WHERE` clause, so a task another leaser took a
//!   moment ago is not taken again. Turns come from a sequence, so concurrent
//!   leases never read the same "latest turn".
//! - **Enqueues** take one transaction-scoped advisory lock, so two enqueues
//!   cannot both pass a queue cap, nor both store the same idempotency key.
//! - **Migrations** run under an advisory lock too, since several API nodes
//!   start at once against one fresh database.
//! - **Connections** come from a small pool, opened on demand. A connection
//!   found closed is dropped (and the idle ones with it: they were most likely
//!   cut by the same server restart), and a transaction that failed on it
//!   before its `COMMIT` was sent is run once more on a fresh connection, so
//!   after PostgreSQL restarts `sie` recovers by itself. A failure during
//!   `COMMIT` is never retried: the write may have happened.
//! - **Wake-ups** cross processes: a transaction that makes a task leasable
//!   runs `NOTIFY sie_work`, delivered on commit, and each store keeps one
//!   connection that `LISTEN`s and rings its [`WorkSignal`], so a task posted
//!   on one node wakes a worker long-polling on another. That listener thread
//!   reconnects with back-off when its connection breaks, and rings once on
//!   reconnecting, since work may have arrived while it was deaf.
//!
//! Times are BIGINT milliseconds passed in by the caller, never `now()`.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use postgres::config::Host;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::FromSql;
use postgres::{Client, Config, IsolationLevel, NoTls, Row, Transaction};

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
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/postgres/0001_init.sql"))];

/// Advisory lock keys (arbitrary, but fixed: every node must use the same).
const MIGRATION_LOCK: i64 = 0x5349_4530_0001;
const ENQUEUE_LOCK: i64 = 0x5349_4530_0002;

/// The `LISTEN/NOTIFY` channel for "a task may be leasable".
const CHANNEL: &str = "sie_work";

/// Idle connections kept for reuse; more are opened on demand under load.
const POOL_IDLE: usize = 16;

/// Connections one store opens at most (the listener's aside): several API
/// nodes share the server's `max_connections` (100 by default), and a burst
/// of callers waits for a free connection instead of being refused by it.
const POOL_MAX: usize = 32;

/// How long a call waits for a free connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How long opening a connection may take before the call fails, so calls
/// fail fast while the database is down instead of hanging the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the listener looks up from its connection to see whether its
/// store is gone.
const LISTEN_POLL: Duration = Duration::from_millis(500);
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

// The messages of failures the store writes itself; the same as SQLite's.

/// The connections of one store: those idle, and how many exist in all.
struct Pool {
    idle: Vec<Client>,
    open: usize,
}

pub struct PostgresStore {
    config: Config,
    /// `user@host:port/database`, for messages: never the password.
    target: String,
    pool: Mutex<Pool>,
    /// Rung when a connection goes back to the pool or is closed.
    freed: Condvar,
    /// The listener thread holds only a `Weak` to this, and stops once the
    /// store (its only strong owner) is dropped.
    signal: Arc<WorkSignal>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish()
    }
}

/// Opening a connection failed: says where, and what to check.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to PostgreSQL at {target}: {source}; check --database-url and that the server is running")]
struct ConnectFailed {
    target: String,
    #[source]
    source: postgres::Error,
}

/// Attaches the operation's name to a postgres error.
trait Op<T> {
    fn op(self, operation: &'static str) -> Result<T>;
}

impl<T> Op<T> for std::result::Result<T, postgres::Error> {
    fn op(self, operation: &'static str) -> Result<T> {
        self.map_err(|e| StoreError::Database {
            operation,
            source: Box::new(e),
        })
    }
}

/// Reads a column; a value of the wrong type means the schema is not ours.
trait Col {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T>;
}

impl Col for Row {
    fn col<'a, T: FromSql<'a>>(&'a self, idx: usize) -> Result<T> {
        self.try_get(idx).map_err(|e| {
            let name = self.columns().get(idx).map_or("?", |c| c.name());
            StoreError::Corrupt(format!("column {name}: {e}"))
        })
    }
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

fn to_u64(n: i64, what: &str) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} is {n}")))
}

fn task_id(s: &str) -> Result<TaskId> {
    TaskId::parse(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// `user@host:port/database`, the URL without its password.
fn describe(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one each (libpq's rule).
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

fn open(config: &Config, target: &str) -> std::result::Result<Client, ConnectFailed> {
    config.connect(NoTls).map_err(|source| ConnectFailed {
        target: target.to_owned(),
        source,
    })
}

/// Finishes lapsed tasks that must not run again (out of attempts, or
/// cancelled); returns how many. Rows another transaction holds are left to it
/// (or to the next sweep).
fn sweep_lapsed(tx: &mut Transaction<'_>, now: Timestamp) -> Result<u64> {
    let doomed = tx
        .query(
            "SELECT seq, cancel_requested FROM tasks
             WHERE state = 'running' AND lease_expires_at <= $1
               AND (attempt - released >= $2 OR cancel_requested)
             ORDER BY org_id
             FOR UPDATE SKIP LOCKED",
            &[&now.as_millis(), &i64::from(MAX_ATTEMPTS)],
        )
        .op("sweep lapsed tasks")?;
    // By organization, so concurrent sweeps take usage rows in one order and
    // cannot deadlock on them.
    let n = doomed.len() as u64;
    for row in doomed {
        let (seq, cancelled): (i64, bool) = (row.col(0)?, row.col(1)?);
        if cancelled {
            finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
        } else {
            finish_failed(tx, seq, codes::WORKER_LOST, WORKER_LOST_MESSAGE, now)?;
        }
    }
    Ok(n)
}

fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .op("migrate")?;
    // Every node starting at once takes its turn here; the later ones find
    // the schema current.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .op("migrate")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .op("migrate")?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .op("migrate")?
        .col(0)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).op("migrate")?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[version, &Timestamp::now().as_millis()],
        )
        .op("migrate")?;
    }
    tx.commit().op("migrate")
}

/// Which transaction a call runs in.
#[derive(Clone, Copy)]
enum Access {
    /// READ COMMITTED: each statement sees the latest commits, and rows it
    /// locks are re-checked, which is what `SKIP LOCKED` claims need.
    Write,
    /// REPEATABLE READ, read only: several statements see one snapshot (a
    /// task's state and its queue position agree), and never fail to serialize.
    Read,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`),
    /// brings its schema up to date and starts listening for work. Several
    /// nodes may connect to one database at once.
    pub fn connect(url: &str) -> Result<Self> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::BadArgument(format!(
                "the database URL is not valid ({e}); use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sie");
        }
        // A silent network partition otherwise leaves a call (or the listener)
        // waiting on a dead socket for the kernel's two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let target = describe(&config);
        let connect_error = |e: ConnectFailed| StoreError::Database {
            operation: "connect",
            source: Box::new(e),
        };
        let mut client = open(&config, &target).map_err(connect_error)?;
        migrate(&mut client)?;
        // LISTEN before returning, so a task enqueued anywhere once this store
        // exists is heard.
        let listener = listen(&config, &target).map_err(connect_error)?;
        let signal = Arc::new(WorkSignal::default());
        spawn_listener(
            listener,
            config.clone(),
            target.clone(),
            Arc::downgrade(&signal),
        )?;
        Ok(Self {
            config,
            target,
            pool: Mutex::new(Pool {
                idle: vec![client],
                open: 1,
            }),
            freed: Condvar::new(),
            signal,
        })
    }

    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A poisoned lock only means another thread panicked while pushing or
        // popping a connection; the pool itself is fine.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live connection: an idle one, a new one while fewer than
    /// [`POOL_MAX`] are open, or the next one freed.
    fn checkout(&self, operation: &'static str) -> Result<Client> {
        let deadline = std::time::Instant::now() + POOL_WAIT;
        let mut pool = self.lock_pool();
        loop {
            if let Some(client) = pool.idle.pop() {
                if !client.is_closed() {
                    return Ok(client);
                }
                pool.open -= 1;
                continue;
            }
            if pool.open < POOL_MAX {
                pool.open += 1;
                drop(pool);
                return open(&self.config, &self.target).map_err(|e| {
                    self.lock_pool().open -= 1;
                    self.freed.notify_one();
                    StoreError::Database {
                        operation,
                        source: Box::new(e),
                    }
                });
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(StoreError::Database {
                    operation,
                    source: format!(
                        "all {POOL_MAX} connections to {} stayed busy for {} s; the database is \
                         overloaded or a call is stuck",
                        self.target,
                        POOL_WAIT.as_secs()
                    )
                    .into(),
                });
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn checkin(&self, client: Client) {
        let mut pool = self.lock_pool();
        if client.is_closed() || pool.idle.len() >= POOL_IDLE {
            pool.open -= 1;
        } else {
            pool.idle.push(client);
        }
        self.freed.notify_one();
    }

    /// Runs `f` in one transaction and commits.
    ///
    /// If the connection turns out closed before `COMMIT` was sent (a pooled
    /// connection the server cut, say on restart), nothing was written: the
    /// idle connections are dropped too, and `f` runs once more on a fresh
    /// one. So `f` must be safe to run twice, which a rolled-back transaction
    /// is, as long as `f` has no effect outside it.
    fn transaction<T>(
        &self,
        operation: &'static str,
        access: Access,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut retried = false;
        loop {
            let mut client = self.checkout(operation)?;
            let mut committing = false;
            let out = (|| {
                let builder = client.build_transaction();
                let builder = match access {
                    Access::Write => builder.isolation_level(IsolationLevel::ReadCommitted),
                    Access::Read => builder
                        .isolation_level(IsolationLevel::RepeatableRead)
                        .read_only(true),
                };
                let mut tx = builder.start().op(operation)?;
                let value = f(&mut tx)?;
                committing = true;
                tx.commit().op(operation)?;
                Ok(value)
            })();
            let closed = client.is_closed();
            self.checkin(client);
            match out {
                Err(_) if closed && !committing && !retried => {
                    let mut pool = self.lock_pool();
                    let stale = pool.idle.len();
                    pool.open -= stale;
                    pool.idle.clear();
                    retried = true;
                }
                out => return out,
            }
        }
    }

    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.transaction(operation, Access::Write, f)
    }

    fn read<T>(
        &self,
        operation: &'static str,
        f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        self.transaction(operation, Access::Read, f)
    }
}

/// Opens the listener's connection and subscribes it.
fn listen(config: &Config, target: &str) -> std::result::Result<Client, ConnectFailed> {
    let mut client = open(config, target)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|source| ConnectFailed {
            target: target.to_owned(),
            source,
        })?;
    Ok(client)
}

fn spawn_listener(
    client: Client,
    config: Config,
    target: String,
    signal: Weak<WorkSignal>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("sie-pg-listen".into())
        .spawn(move || run_listener(client, &config, &target, &signal))
        .map(drop)
        .map_err(|e| StoreError::Database {
            operation: "start the work listener",
            source: Box::new(e),
        })
}

/// Rings the signal; `false` once the store is gone and the listener should stop.
fn ring(signal: &Weak<WorkSignal>) -> bool {
    signal.upgrade().map(|s| s.notify()).is_some()
}

/// What one [`relay`] round ended with.
enum Relay {
    /// The poll interval passed; the connection is fine.
    Quiet,
    /// The connection failed or the server hung up.
    Broken,
    /// The store was dropped: the listener should stop.
    StoreGone,
}

/// Rings `signal` for each notification that arrives on `client` until
/// [`LISTEN_POLL`] passes without one.
fn relay(client: &mut Client, target: &str, signal: &Weak<WorkSignal>) -> Relay {
    {
        let mut notifications = client.notifications();
        let mut iter = notifications.timeout_iter(LISTEN_POLL);
        loop {
            match iter.next() {
                Ok(Some(_)) if ring(signal) => {}
                Ok(Some(_)) => return Relay::StoreGone,
                // The poll interval passed quietly, or the server hung up;
                // `is_closed` below tells which.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "sie_store", error = %e, %target,
                        "the work listener's PostgreSQL connection failed; reconnecting");
                    return Relay::Broken;
                }
            }
        }
    }
    if client.is_closed() {
        tracing::warn!(target: "sie_store", %target,
            "PostgreSQL closed the work listener's connection; reconnecting");
        Relay::Broken
    } else {
        Relay::Quiet
    }
}

/// The listener thread: rings `signal` for every notification, until the
/// store is dropped. A broken connection is replaced with back-off.
fn run_listener(client: Client, config: &Config, target: &str, signal: &Weak<WorkSignal>) {
    let mut client = Some(client);
    let mut backoff = RECONNECT_FIRST;
    while signal.strong_count() > 0 {
        match &mut client {
            Some(c) => match relay(c, target, signal) {
                Relay::Quiet => {}
                Relay::Broken => client = None,
                Relay::StoreGone => return,
            },
            None => {
                // Sleep in short steps, so a dropped store is noticed soon.
                let wake = Instant::now() + backoff;
                while Instant::now() < wake {
                    if signal.strong_count() == 0 {
                        return;
                    }
                    std::thread::sleep(
                        wake.saturating_duration_since(Instant::now())
                            .min(RECONNECT_FIRST),
                    );
                }
                match listen(config, target) {
                    Ok(c) => {
                        client = Some(c);
                        backoff = RECONNECT_FIRST;
                        // Work may have been queued while nobody listened.
                        if !ring(signal) {
                            return;
                        }
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        tracing::warn!(target: "sie_store", error = %e,
                            "the work listener could not reconnect; retrying in {backoff:?}");
                    }
                }
            }
        }
    }
}

/// Tells every listening store, on commit, that a task may be leasable.
fn notify_work(tx: &mut Transaction<'_>, operation: &'static str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .op(operation)?;
    Ok(())
}

fn org_id_by_name(tx: &mut Transaction<'_>, org: &OrgName) -> Result<OrgId> {
    let row = tx
        .query_opt(
            "SELECT id FROM organizations WHERE name = $1",
            &[&org.as_str()],
        )
        .op("find organization")?;
    match row {
        Some(row) => Ok(OrgId::from_row(row.col(0)?)),
        None => Err(StoreError::UnknownOrg(org.as_str().to_owned())),
    }
}

fn require_account(tx: &mut Transaction<'_>, account: AccountId) -> Result<()> {
    let found = tx
        .query_opt("SELECT id FROM accounts WHERE id = $1", &[&account.get()])
        .op("find account")?;
    match found {
        Some(_) => Ok(()),
        None => Err(StoreError::UnknownAccount(account)),
    }
}

/// Adds a finished task to its organization's daily usage row.
fn record_usage(
    tx: &mut Transaction<'_>,
    org: i64,
    now: Timestamp,
    usage: TaskUsage,
    succeeded: bool,
) -> Result<()> {
    tx.execute(
        "INSERT INTO usage_daily (org_id, day, images, steps, gpu_ms, tasks_succeeded, tasks_failed)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (org_id, day) DO UPDATE SET
             images = usage_daily.images + EXCLUDED.images,
             steps = usage_daily.steps + EXCLUDED.steps,
             gpu_ms = usage_daily.gpu_ms + EXCLUDED.gpu_ms,
             tasks_succeeded = usage_daily.tasks_succeeded + EXCLUDED.tasks_succeeded,
             tasks_failed = usage_daily.tasks_failed + EXCLUDED.tasks_failed",
        &[
            &org,
            &now.day().days_since_epoch(),
            &i64::from(usage.images),
            &i64::from(usage.steps),
            &i64::try_from(usage.gpu_ms).unwrap_or(i64::MAX),
            &i64::from(succeeded),
            &i64::from(!succeeded),
        ],
    )
    .op("record usage")?;
    Ok(())
}

/// Fails an unfinished task by its `seq`, from the store's side (cancel,
/// worker lost, a retryable failure out of attempts), and counts it in usage.
fn finish_failed(
    tx: &mut Transaction<'_>,
    seq: i64,
    code: &str,
    message: &str,
    now: Timestamp,
) -> Result<()> {
    let row = tx
        .query_opt(
            "UPDATE tasks SET state = 'failed', error_code = $2, error_message = $3, finished_at = $4,
                 lease_owner = NULL, lease_expires_at = NULL
             WHERE seq = $1 AND state IN ('queued', 'running')
             RETURNING org_id",
            &[&seq, &code, &message, &now.as_millis()],
        )
        .op("fail task")?;
    if let Some(row) = row {
        record_usage(tx, row.col(0)?, now, TaskUsage::default(), false)?;
    }
    Ok(())
}

/// `retry_after_seconds` for a full queue: the time for one queued task to
/// start at the rate tasks of that scope finished over the last minute.
fn retry_after(tx: &mut Transaction<'_>, org: Option<i64>, now: Timestamp) -> Result<u32> {
    let since = now.as_millis() - 60_000;
    let finished: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM tasks
             WHERE finished_at IS NOT NULL AND finished_at > $1
               AND ($2::BIGINT IS NULL OR org_id = $2)",
            &[&since, &org],
        )
        .op("enqueue")?
        .col(0)?;
    Ok(match finished {
        0 => 30,
        n => u32::try_from((60 + n - 1) / n).unwrap_or(60).clamp(1, 60),
    })
}

/// The SQL condition for a task that waits to be leased: queued, or running
/// with a lapsed lease and attempts left (and no cancel pending). `t` is the
/// column prefix (`""` or `"t."`), `now` the placeholder holding the current
/// time. Leasing, `get` and `list` share it, so a task whose worker vanished
/// reads as queued, where it is.
fn waiting(t: &str, now: &str) -> String {
    format!(
        "({t}state = 'queued' OR ({t}state = 'running' AND {t}lease_expires_at <= {now} \
         AND {t}attempt - {t}released < {MAX_ATTEMPTS} AND NOT {t}cancel_requested))"
    )
}

/// The SQL condition for a task the offer `$2` (pipelines), `$3`
/// (schedulers), `$4` (has a safety checker) can run: [`WorkerOffer::can_run`].
fn runnable(t: &str) -> String {
    format!(
        "({t}pipeline = ANY($2) AND ({t}scheduler IS NULL OR {t}scheduler = ANY($3)) \
         AND (NOT {t}needs_safety_checker OR $4))"
    )
}

/// The columns `read_task` reads, in order.
fn task_columns(now: &str) -> String {
    format!(
        "seq, id, org_id, state, attempt, progress_step, progress_steps, cancel_requested, \
         result, error_code, error_message, usage_images, usage_steps, usage_gpu_ms, \
         created_at, started_at, finished_at, {} AS waiting",
        waiting("", now)
    )
}

struct TaskRow {
    seq: i64,
    view: TaskView,
}

fn read_task(r: &Row) -> Result<TaskRow> {
    let id: String = r.col(1)?;
    let state: String = r.col(3)?;
    let step: Option<i64> = r.col(5)?;
    let steps: Option<i64> = r.col(6)?;
    let code: Option<String> = r.col(9)?;
    let images: Option<i64> = r.col(11)?;
    let usage_steps: Option<i64> = r.col(12)?;
    let gpu_ms: Option<i64> = r.col(13)?;
    let waiting: bool = r.col(17)?;
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
            gpu_ms: to_u64(g, "usage gpu_ms")?,
        }),
        _ => None,
    };
    let message: Option<String> = r.col(10)?;
    Ok(TaskRow {
        seq: r.col(0)?,
        view: TaskView {
            id: task_id(&id)?,
            org: OrgId::from_row(r.col(2)?),
            state,
            attempt: to_u32(r.col(4)?, "attempt")?,
            queue_position: None,
            progress,
            cancel_requested: r.col(7)?,
            result_json: r.col(8)?,
            error: code.map(|code| TaskError {
                code,
                message: message.unwrap_or_default(),
            }),
            usage,
            created_at: ts(r.col(14)?),
            started_at: opt_ts(r.col(15)?),
            finished_at: opt_ts(r.col(16)?),
        },
    })
}

impl Store for PostgresStore {
    fn create_account(&self, name: &AccountName, now: Timestamp) -> Result<AccountId> {
        self.write("create account", |tx| {
            let row = tx
                .query_opt(
                    "INSERT INTO accounts (name, created_at) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[&name.as_str(), &now.as_millis()],
                )
                .op("create account")?;
            match row {
                Some(row) => Ok(AccountId::from_row(row.col(0)?)),
                None => Err(StoreError::AccountExists(name.as_str().to_owned())),
            }
        })
    }

    fn find_account(&self, name: &AccountName) -> Result<Option<AccountId>> {
        self.read("find account", |tx| {
            let row = tx
                .query_opt("SELECT id FROM accounts WHERE name = $1", &[&name.as_str()])
                .op("find account")?;
            row.map(|r| r.col(0).map(AccountId::from_row)).transpose()
        })
    }

    fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        self.read("list accounts", |tx| {
            let rows = tx
                .query(
                    "SELECT id, name, created_at FROM accounts ORDER BY name",
                    &[],
                )
                .op("list accounts")?;
            rows.iter()
                .map(|r| {
                    Ok(AccountInfo {
                        id: AccountId::from_row(r.col(0)?),
                        name: AccountName::parse(r.col(1)?)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: ts(r.col(2)?),
                    })
                })
                .collect()
        })
    }

    fn create_org(&self, name: &OrgName, owner: AccountId, now: Timestamp) -> Result<OrgId> {
        self.write("create organization", |tx| {
            require_account(tx, owner)?;
            let row = tx
                .query_opt(
                    "INSERT INTO organizations (name, owner_id, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                    &[&name.as_str(), &owner.get(), &now.as_millis()],
                )
                .op("create organization")?;
            let Some(row) = row else {
                return Err(StoreError::OrgExists(name.as_str().to_owned()));
            };
            let org: i64 = row.col(0)?;
            tx.execute(
                "INSERT INTO memberships (org_id, account_id, created_at) VALUES ($1, $2, $3)",
                &[&org, &owner.get(), &now.as_millis()],
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
                    "INSERT INTO memberships (org_id, account_id, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&org.get(), &account.get(), &now.as_millis()],
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
                    "UPDATE organizations SET billing_note = $1, approved_at = COALESCE(approved_at, $2)
                     WHERE name = $3",
                    &[&billing_note, &now.as_millis(), &org.as_str()],
                )
                .op("approve organization")?;
            if n == 0 {
                return Err(StoreError::UnknownOrg(org.as_str().to_owned()));
            }
            Ok(())
        })
    }

    fn list_orgs(&self) -> Result<Vec<OrgInfo>> {
        self.read("list organizations", |tx| {
            let rows = tx
                .query(
                    "SELECT o.id, o.name, o.owner_id,
                            (SELECT COUNT(*) FROM memberships m WHERE m.org_id = o.id),
                            o.billing_note, o.approved_at, o.created_at
                     FROM organizations o ORDER BY o.name",
                    &[],
                )
                .op("list organizations")?;
            rows.iter()
                .map(|r| {
                    Ok(OrgInfo {
                        id: OrgId::from_row(r.col(0)?),
                        name: OrgName::parse(r.col(1)?)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        owner: AccountId::from_row(r.col(2)?),
                        members: to_u32(r.col(3)?, "member count")?,
                        billing_note: r.col(4)?,
                        approved_at: opt_ts(r.col(5)?),
                        created_at: ts(r.col(6)?),
                    })
                })
                .collect()
        })
    }

    fn create_api_key(&self, account: AccountId, now: Timestamp) -> Result<NewApiKey> {
        self.write("create API key", |tx| {
            require_account(tx, account)?;
            // 40 bits of prefix collide rarely, but they can; draw again then.
            for _ in 0..8 {
                let key = NewApiKey::generate();
                let n = tx
                    .execute(
                        "INSERT INTO api_keys (prefix, hash, account_id, created_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        &[
                            &key.prefix().as_str(),
                            &key.hash(),
                            &account.get(),
                            &now.as_millis(),
                        ],
                    )
                    .op("create API key")?;
                if n == 1 {
                    return Ok(key);
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
                    "UPDATE api_keys SET revoked_at = $1 WHERE prefix = $2 AND revoked_at IS NULL",
                    &[&now.as_millis(), &prefix.as_str()],
                )
                .op("revoke API key")?;
            Ok(n == 1)
        })
    }

    fn list_api_keys(&self, account: AccountId) -> Result<Vec<ApiKeyInfo>> {
        self.read("list API keys", |tx| {
            require_account(tx, account)?;
            let rows = tx
                .query(
                    "SELECT prefix, created_at, revoked_at FROM api_keys
                     WHERE account_id = $1 ORDER BY created_at, id",
                    &[&account.get()],
                )
                .op("list API keys")?;
            rows.iter()
                .map(|r| {
                    Ok(ApiKeyInfo {
                        prefix: KeyPrefix::parse(r.col(0)?)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: ts(r.col(1)?),
                        revoked_at: opt_ts(r.col(2)?),
                    })
                })
                .collect()
        })
    }

    fn authenticate(&self, presented_key: &str) -> Result<Option<AccountId>> {
        if !looks_like_key(presented_key) {
            return Ok(None);
        }
        // Looked up by hash: the secret never reaches SQL or a log line.
        let hash = hash_key(presented_key);
        self.read("authenticate", |tx| {
            let row = tx
                .query_opt(
                    "SELECT account_id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL",
                    &[&hash],
                )
                .op("authenticate")?;
            row.map(|r| r.col(0).map(AccountId::from_row)).transpose()
        })
    }

    fn org_access(&self, account: AccountId, org: &OrgName) -> Result<OrgAccess> {
        self.read("check organization access", |tx| {
            let row = tx
                .query_opt(
                    "SELECT o.id, o.approved_at,
                            EXISTS (SELECT 1 FROM memberships m WHERE m.org_id = o.id AND m.account_id = $1)
                     FROM organizations o WHERE o.name = $2",
                    &[&account.get(), &org.as_str()],
                )
                .op("check organization access")?;
            let Some(r) = row else {
                return Ok(OrgAccess::UnknownOrg);
            };
            let approved: Option<i64> = r.col(1)?;
            let member: bool = r.col(2)?;
            Ok(match (member, approved) {
                (false, _) => OrgAccess::NotMember,
                (true, None) => OrgAccess::NotApproved,
                (true, Some(_)) => OrgAccess::Allowed(OrgId::from_row(r.col(0)?)),
            })
        })
    }

    fn create_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<NewWorkerToken> {
        self.write("create worker token", |tx| {
            let token = NewWorkerToken::generate();
            let n = tx
                .execute(
                    "INSERT INTO worker_tokens (name, hash, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name.as_str(), &token.hash(), &now.as_millis()],
                )
                .op("create worker token")?;
            if n == 0 {
                return Err(StoreError::WorkerExists(name.as_str().to_owned()));
            }
            Ok(token)
        })
    }

    fn revoke_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<bool> {
        let revoked = self.write("revoke worker token", |tx| {
            let n = tx
                .execute(
                    "UPDATE worker_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
                    &[&name.as_str(), &now.as_millis()],
                )
                .op("revoke worker token")?;
            if n == 1 {
                // Its leases lapse now: the next lease call retries those tasks.
                tx.execute(
                    "UPDATE tasks SET lease_expires_at = $2
                     WHERE state = 'running' AND lease_owner = $1 AND lease_expires_at > $2",
                    &[&name.as_str(), &now.as_millis()],
                )
                .op("revoke worker token")?;
                notify_work(tx, "revoke worker token")?;
            }
            Ok(n == 1)
        })?;
        if revoked {
            // The listener hears the NOTIFY too; ringing here as well spares
            // this node's own waiters the round trip.
            self.signal.notify();
        }
        Ok(revoked)
    }

    fn list_worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>> {
        self.read("list worker tokens", |tx| {
            let rows = tx
                .query(
                    "SELECT name, created_at, revoked_at FROM worker_tokens ORDER BY name",
                    &[],
                )
                .op("list worker tokens")?;
            rows.iter()
                .map(|r| {
                    Ok(WorkerTokenInfo {
                        name: WorkerName::parse(r.col(0)?)
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        created_at: ts(r.col(1)?),
                        revoked_at: opt_ts(r.col(2)?),
                    })
                })
                .collect()
        })
    }

    fn authenticate_worker(&self, presented_token: &str) -> Result<Option<WorkerName>> {
        if !looks_like_worker_token(presented_token) {
            return Ok(None);
        }
        let hash = hash_key(presented_token);
        self.read("authenticate worker", |tx| {
            let row = tx
                .query_opt(
                    "SELECT name FROM worker_tokens WHERE hash = $1 AND revoked_at IS NULL",
                    &[&hash],
                )
                .op("authenticate worker")?;
            row.map(|r| {
                WorkerName::parse(r.col(0)?).map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .transpose()
        })
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
            // One enqueue at a time across all nodes: the caps below count
            // what is queued, and two enqueues counting at once could both
            // pass; the idempotency lookup likewise, so the same key sent to
            // two nodes at once makes one task.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ENQUEUE_LOCK])
                .op("enqueue")?;
            let known = tx
                .query_opt("SELECT id FROM organizations WHERE id = $1", &[&org.get()])
                .op("enqueue")?;
            if known.is_none() {
                return Err(StoreError::BadArgument(format!(
                    "no organization with id {org}"
                )));
            }
            if let Some(key) = idempotency_key {
                let existing = tx
                    .query_opt(
                        "SELECT id FROM tasks WHERE org_id = $1 AND idempotency_key = $2",
                        &[&org.get(), &key.as_str()],
                    )
                    .op("enqueue")?;
                if let Some(row) = existing {
                    let id = task_id(row.col(0)?)?;
                    return Ok(Enqueued { id, created: false });
                }
            }
            let counts = tx
                .query_one(
                    "SELECT COUNT(*) FILTER (WHERE org_id = $1), COUNT(*)
                     FROM tasks WHERE state = 'queued'",
                    &[&org.get()],
                )
                .op("enqueue")?;
            let (org_queued, all_queued): (i64, i64) = (counts.col(0)?, counts.col(1)?);
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
                 VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8)",
                &[
                    &id.to_string(),
                    &org.get(),
                    &request_json,
                    &idempotency_key.map(|k| k.as_str()),
                    &now.as_millis(),
                    &needs.pipeline,
                    &needs.scheduler,
                    &needs.safety_checker,
                ],
            )
            .op("enqueue")?;
            notify_work(tx, "enqueue")?;
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
        let now_ms = now.as_millis();
        let expires = now.plus(lease).as_millis();
        self.write("lease", |tx| {
            // Lapsed tasks that must not run again are finished first, so the
            // pick below only sees tasks that may run.
            sweep_lapsed(tx, now)?;

            // The fairness rule (see `Store::lease`): fewest live leases, then
            // least recently served, then oldest head; within the
            // organization, its head. Every waiting task the offer can run is
            // ranked so, and the first one nobody else holds is locked: when
            // a concurrent lease is taking an organization's head, this one
            // takes the next task in line instead of waiting for it.
            //
            // A task's key is its organization's live leases plus its place in
            // the organization's line, so when a concurrent lease holds one
            // organization's head, the next free task goes to the organization
            // that would then have fewest running (as if that head were already
            // leased), not to the same organization's second task. Sequentially
            // the first key is always an organization's head, ranked exactly as
            // SQLite ranks them.
            let pick = tx
                .query_opt(
                    &format!(
                        "SELECT t.seq, t.id, t.org_id, t.state, t.attempt, t.request, t.created_at
                         FROM (SELECT seq, org_id,
                                      ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY seq) AS place,
                                      MIN(seq) OVER (PARTITION BY org_id) AS head
                               FROM tasks WHERE {} AND {}) q
                         JOIN tasks t ON t.seq = q.seq
                         JOIN organizations o ON o.id = q.org_id
                         LEFT JOIN (SELECT org_id, COUNT(*) AS n FROM tasks
                                    WHERE state = 'running' AND lease_expires_at > $1
                                    GROUP BY org_id) b ON b.org_id = q.org_id
                         WHERE {} AND {}
                         ORDER BY COALESCE(b.n, 0) + q.place, o.lease_turn, q.head, t.seq
                         LIMIT 1
                         FOR UPDATE OF t SKIP LOCKED",
                        waiting("", "$1"),
                        runnable(""),
                        waiting("t.", "$1"),
                        runnable("t."),
                    ),
                    &[
                        &now_ms,
                        &offer.pipelines,
                        &offer.schedulers,
                        &offer.safety_checker,
                    ],
                )
                .op("lease")?;
            let Some(pick) = pick else {
                return Ok(None);
            };
            let (seq, org, state, attempt): (i64, i64, String, i64) =
                (pick.col(0)?, pick.col(2)?, pick.col(3)?, pick.col(4)?);
            let claimed = tx
                .execute(
                    "UPDATE tasks SET state = 'running', attempt = attempt + 1, lease_owner = $1,
                         lease_expires_at = $2, started_at = $3, progress_step = NULL, progress_steps = NULL
                     WHERE seq = $4 AND state = $5 AND attempt = $6",
                    &[&offer.worker_id, &expires, &now_ms, &seq, &state, &attempt],
                )
                .op("lease")?;
            if claimed != 1 {
                // Cannot happen while the row is locked; if it ever does, the
                // worker simply polls again.
                return Ok(None);
            }
            tx.execute(
                "UPDATE organizations SET lease_turn = nextval('lease_turns') WHERE id = $1",
                &[&org],
            )
            .op("lease")?;
            Ok(Some(Leased {
                id: task_id(pick.col(1)?)?,
                org: OrgId::from_row(org),
                attempt: to_u32(attempt + 1, "attempt")?,
                request_json: pick.col(5)?,
                created_at: ts(pick.col(6)?),
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
        self.write("heartbeat", |tx| {
            let row = tx
                .query_opt(
                    "UPDATE tasks SET lease_expires_at = $1,
                         progress_step = COALESCE($2, progress_step),
                         progress_steps = COALESCE($3, progress_steps)
                     WHERE id = $4 AND attempt = $5 AND state = 'running' AND lease_owner = $6
                     RETURNING cancel_requested",
                    &[
                        &expires,
                        &progress.map(|p| i64::from(p.step)),
                        &progress.map(|p| i64::from(p.steps)),
                        &id.to_string(),
                        &i64::from(attempt),
                        &worker_id,
                    ],
                )
                .op("heartbeat")?;
            Ok(match row {
                None => Heartbeat::Lost,
                Some(r) if r.col::<bool>(0)? => Heartbeat::Cancelled,
                Some(_) => Heartbeat::Continue,
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
            let row = tx
                .query_opt(
                    "UPDATE tasks SET state = 'succeeded', result = $1, finished_at = $2,
                         usage_images = $3, usage_steps = $4, usage_gpu_ms = $5,
                         lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = $6 AND attempt = $7 AND state = 'running' AND lease_owner = $8
                     RETURNING org_id",
                    &[
                        &result_json,
                        &now.as_millis(),
                        &i64::from(usage.images),
                        &i64::from(usage.steps),
                        &i64::try_from(usage.gpu_ms).unwrap_or(i64::MAX),
                        &id.to_string(),
                        &i64::from(attempt),
                        &worker_id,
                    ],
                )
                .op("complete")?;
            match row {
                None => Ok(false),
                Some(row) => {
                    record_usage(tx, row.col(0)?, now, usage, true)?;
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
        // (owned, requeued)
        let (owned, requeued) = self.write("fail", |tx| {
            let row = tx
                .query_opt(
                    "SELECT seq, attempt - released, cancel_requested FROM tasks
                     WHERE id = $1 AND attempt = $2 AND state = 'running' AND lease_owner = $3
                     FOR UPDATE",
                    &[&id.to_string(), &i64::from(attempt), &worker_id],
                )
                .op("fail")?;
            let Some(row) = row else {
                return Ok((false, false));
            };
            let (seq, counted, cancel_requested): (i64, i64, bool) =
                (row.col(0)?, row.col(1)?, row.col(2)?);
            if retryable && cancel_requested {
                finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
                Ok((true, false))
            } else if retryable && counted < i64::from(MAX_ATTEMPTS) {
                // `attempt` stays, so this attempt counts towards the limit.
                tx.execute(
                    "UPDATE tasks SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL,
                         started_at = NULL, progress_step = NULL, progress_steps = NULL
                     WHERE seq = $1",
                    &[&seq],
                )
                .op("fail")?;
                notify_work(tx, "fail")?;
                Ok((true, true))
            } else {
                finish_failed(tx, seq, code, message, now)?;
                Ok((true, false))
            }
        })?;
        if requeued {
            self.signal.notify();
        }
        Ok(owned)
    }

    fn release(&self, worker_id: &str, id: TaskId, attempt: u32, now: Timestamp) -> Result<bool> {
        // (owned, requeued)
        let (owned, requeued) = self.write("release", |tx| {
            let row = tx
                .query_opt(
                    "SELECT seq, cancel_requested FROM tasks
                     WHERE id = $1 AND attempt = $2 AND state = 'running' AND lease_owner = $3
                     FOR UPDATE",
                    &[&id.to_string(), &i64::from(attempt), &worker_id],
                )
                .op("release")?;
            let Some(row) = row else {
                return Ok((false, false));
            };
            let (seq, cancel_requested): (i64, bool) = (row.col(0)?, row.col(1)?);
            if cancel_requested {
                finish_failed(tx, seq, codes::CANCELLED, CANCELLED_LAPSED_MESSAGE, now)?;
                return Ok((true, false));
            }
            // `attempt` stays (it is the fence); `released` keeps this
            // attempt from counting towards worker_lost.
            tx.execute(
                "UPDATE tasks SET state = 'queued', released = released + 1, lease_owner = NULL,
                     lease_expires_at = NULL, started_at = NULL, progress_step = NULL, progress_steps = NULL
                 WHERE seq = $1",
                &[&seq],
            )
            .op("release")?;
            notify_work(tx, "release")?;
            Ok((true, true))
        })?;
        if requeued {
            self.signal.notify();
        }
        Ok(owned)
    }

    fn cancel(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        self.write("cancel", |tx| {
            let row = tx
                .query_opt(
                    "SELECT seq, state FROM tasks WHERE org_id = $1 AND id = $2 FOR UPDATE",
                    &[&org.get(), &id.to_string()],
                )
                .op("cancel")?;
            let Some(row) = row else {
                return Ok(CancelOutcome::NotFound);
            };
            let (seq, state): (i64, String) = (row.col(0)?, row.col(1)?);
            match TaskState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("task state {state:?}")))?
            {
                TaskState::Queued => {
                    finish_failed(tx, seq, codes::CANCELLED, CANCELLED_QUEUED_MESSAGE, now)?;
                    Ok(CancelOutcome::Cancelled)
                }
                TaskState::Running => {
                    tx.execute(
                        "UPDATE tasks SET cancel_requested = TRUE WHERE seq = $1",
                        &[&seq],
                    )
                    .op("cancel")?;
                    Ok(CancelOutcome::CancelRequested)
                }
                finished => Ok(CancelOutcome::AlreadyFinished(finished)),
            }
        })
    }

    fn get(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<Option<TaskView>> {
        // One snapshot, so the position matches the state read.
        self.read("get task", |tx| {
            let row = tx
                .query_opt(
                    &format!(
                        "SELECT {} FROM tasks WHERE org_id = $1 AND id = $2",
                        task_columns("$3")
                    ),
                    &[&org.get(), &id.to_string(), &now.as_millis()],
                )
                .op("get task")?;
            let Some(row) = row else { return Ok(None) };
            let TaskRow { seq, mut view } = read_task(&row)?;
            if view.state == TaskState::Queued {
                // The queue position rule (see `Store::get`): round-robin rank.
                let ahead: i64 = tx
                    .query_one(
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
                             me AS (SELECT * FROM k WHERE seq = $1)
                             SELECT COUNT(*) FROM k, me
                             WHERE k.r < me.r
                                OR (k.r = me.r AND (k.turn < me.turn OR (k.turn = me.turn AND k.head < me.head)))",
                            waiting("", "$2")
                        ),
                        &[&seq, &now.as_millis()],
                    )
                    .op("get task")?
                    .col(0)?;
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
        let offset = i64::from(page - 1) * i64::from(page_size);
        self.read("list tasks", |tx| {
            let total: i64 = tx
                .query_one("SELECT COUNT(*) FROM tasks WHERE org_id = $1", &[&org.get()])
                .op("list tasks")?
                .col(0)?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {} FROM tasks WHERE org_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3",
                        task_columns("$4")
                    ),
                    &[&org.get(), &i64::from(page_size), &offset, &now.as_millis()],
                )
                .op("list tasks")?;
            let tasks = rows
                .iter()
                .map(|r| {
                    let v = read_task(r)?.view;
                    Ok(TaskSummary {
                        id: v.id,
                        state: v.state,
                        error: v.error,
                        created_at: v.created_at,
                        started_at: v.started_at,
                        finished_at: v.finished_at,
                    })
                })
                .collect::<Result<_>>()?;
            Ok(TaskPage {
                tasks,
                total: to_u64(total, "task count")?,
            })
        })
    }

    fn queue_stats(&self, now: Timestamp) -> Result<QueueStats> {
        self.read("queue stats", |tx| {
            let row = tx
                .query_one(
                    &format!(
                        "SELECT COUNT(*) FILTER (WHERE {}),
                                COUNT(*) FILTER (WHERE state = 'running' AND lease_expires_at > $1)
                         FROM tasks WHERE state IN ('queued', 'running')",
                        waiting("", "$1")
                    ),
                    &[&now.as_millis()],
                )
                .op("queue stats")?;
            Ok(QueueStats {
                queued: to_u64(row.col(0)?, "queued count")?,
                running: to_u64(row.col(1)?, "running count")?,
            })
        })
    }

    fn expire(&self, result_ttl: Duration, now: Timestamp) -> Result<u64> {
        let cutoff = now.as_millis().saturating_sub(duration_ms(result_ttl));
        self.write("expire results", |tx| {
            tx.execute(
                "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= $1",
                &[&cutoff],
            )
            .op("expire results")
        })
    }

    fn usage(&self, org: OrgId, from: UtcDay, to: UtcDay) -> Result<Vec<DailyUsage>> {
        self.read("usage", |tx| {
            let rows = tx
                .query(
                    "SELECT day, images, steps, gpu_ms, tasks_succeeded, tasks_failed FROM usage_daily
                     WHERE org_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
                    &[&org.get(), &from.days_since_epoch(), &to.days_since_epoch()],
                )
                .op("usage")?;
            rows.iter()
                .map(|r| {
                    Ok(DailyUsage {
                        day: UtcDay::from_days_since_epoch(r.col(0)?),
                        images: to_u64(r.col(1)?, "usage images")?,
                        steps: to_u64(r.col(2)?, "usage steps")?,
                        gpu_seconds: to_u64(r.col(3)?, "usage gpu_ms")? as f64 / 1000.0,
                        tasks_succeeded: to_u64(r.col(4)?, "usage tasks_succeeded")?,
                        tasks_failed: to_u64(r.col(5)?, "usage tasks_failed")?,
                    })
                })
                .collect()
        })
    }
}
