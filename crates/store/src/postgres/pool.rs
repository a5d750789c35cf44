//! PostgreSQL connections and transactions, and the statement helpers every PostgreSQL
//! file uses.
//!
//! Connections come from a small pool, opened on demand up to [`POOL_MAX`] (several API
//! nodes share the server's `max_connections`). A connection found closed is dropped,
//! and the idle ones with it: they were most likely cut by the same server restart. A
//! transaction that failed on a closed connection before its `COMMIT` was sent wrote
//! nothing, so it runs once more on a fresh connection; a failure during `COMMIT` is
//! never retried, since the write may have happened.
//!
//! The transaction is the shared [`Db`]: it binds the shared [`Params`] and reads rows
//! through the shared [`Row`].

use std::time::{Duration, Instant};

use postgres::types::{FromSqlOwned, ToSql};
use postgres::{Client, Config, IsolationLevel, NoTls, Transaction};

use super::PostgresStore;
use crate::error::{Result, StoreError};
use crate::sql::rows::{corrupt_column, Column};
use crate::sql::{Access, Db, Each, OpName, Params, Transactions};

/// Idle connections kept for reuse; more are opened on demand under load.
const POOL_IDLE: usize = 16;

/// Connections one store opens at most (the listener's aside): several API
/// nodes share the server's `max_connections` (100 by default), and a burst
/// of callers waits for a free connection instead of being refused by it.
const POOL_MAX: usize = 32;

/// How long a call waits for a free connection before failing.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// The connections of one store: those idle, and how many exist in all.
pub(super) struct Pool {
    idle: Vec<Client>,
    open: usize,
}

impl Pool {
    /// A pool of the one connection a store starts with.
    pub fn holding(client: Client) -> Self {
        Self {
            idle: vec![client],
            open: 1,
        }
    }
}

/// Opening a connection failed: says where, and what to check.
#[derive(Debug, thiserror::Error)]
#[error("could not connect to PostgreSQL at {target}: {source}; check --database-url and that the server is running")]
pub(super) struct ConnectFailed {
    pub target: String,
    #[source]
    pub source: postgres::Error,
}

pub(super) fn open(config: &Config, target: &str) -> std::result::Result<Client, ConnectFailed> {
    config.connect(NoTls).map_err(|source| ConnectFailed {
        target: target.to_owned(),
        source,
    })
}

impl PostgresStore {
    fn lock_pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A poisoned lock only means another thread panicked while pushing or
        // popping a connection; the pool itself is fine.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live connection: an idle one, a new one while fewer than
    /// [`POOL_MAX`] are open, or the next one freed.
    fn checkout(&self, operation: &'static str) -> Result<Client> {
        let deadline = Instant::now() + POOL_WAIT;
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
            let left = deadline.saturating_duration_since(Instant::now());
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
}

impl Transactions for PostgresStore {
    type Tx<'c> = Transaction<'c>;

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
                    // Each statement sees the latest commits, and rows it locks are
                    // re-checked, which is what `SKIP LOCKED` claims need.
                    Access::Write => builder.isolation_level(IsolationLevel::ReadCommitted),
                    // One snapshot that never fails to serialize.
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
}

/// Attaches the operation's name to a postgres error.
pub(super) trait Op<T> {
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

fn bind<'a>(params: Params<'a>) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p.postgres()).collect()
}

impl Db for Transaction<'_> {
    fn exec(&mut self, op: OpName, sql: &str, params: Params<'_>) -> Result<u64> {
        self.execute(sql, &bind(params)).op(op)
    }

    fn query(&mut self, op: OpName, sql: &str, params: Params<'_>, each: Each<'_>) -> Result<()> {
        for r in self.query(sql, &bind(params)).op(op)? {
            each(&r)?;
        }
        Ok(())
    }

    fn batch(&mut self, op: OpName, sql: &str) -> Result<()> {
        self.batch_execute(sql).op(op)
    }
}

impl<T: FromSqlOwned> Column<T> for postgres::Row {
    fn column(&self, idx: usize) -> Result<T> {
        self.try_get(idx).map_err(|e| {
            let name = self.columns().get(idx).map_or("?", |c| c.name());
            corrupt_column(name, e)
        })
    }
}
