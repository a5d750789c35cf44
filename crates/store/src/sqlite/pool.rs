//! SQLite connections and transactions, and the statement helpers every SQLite file uses.
//!
//! Each connection has foreign keys on, `synchronous = FULL` (a 202 must survive a power
//! cut, not only a crash) and a busy timeout, so concurrent writers queue inside SQLite
//! instead of failing. A few stay idle for reuse. Reads run in a deferred transaction
//! (one snapshot, no write lock); writes run in `BEGIN IMMEDIATE`, which takes the write
//! lock up front, so a read-then-write inside cannot race another writer: that one lock
//! is what PostgreSQL's row locks and advisory locks do there.
//!
//! The transaction is the shared [`Db`]: it binds the shared [`Params`], reads rows
//! through the shared [`Row`], and spells the shared statements' `$1` as `?1`.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use rusqlite::types::FromSql;
use rusqlite::{params_from_iter, Connection, OpenFlags, Transaction, TransactionBehavior};

use super::SqliteStore;
use crate::error::{Result, StoreError};
use crate::sql::rows::{corrupt_column, Column};
use crate::sql::{Access, Db, Each, OpName, Params, Transactions};

/// How long a statement waits for another connection's write lock before
/// giving up with `SQLITE_BUSY`. Writes are short; this only bites when the
/// disk stalls, and then an error beats an API request hanging for ever.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle connections kept for reuse; more are opened on demand under load.
const POOL_IDLE: usize = 8;

pub(super) fn open_connection(path: &Path) -> Result<Connection> {
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

impl SqliteStore {
    /// Runs `f` on a pooled connection (opening one if none is idle).
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
}

impl Transactions for SqliteStore {
    type Tx<'c> = Transaction<'c>;

    /// Runs `f` in one transaction and commits. A read is a deferred transaction: one
    /// snapshot, no write lock, no turn as a writer. A write runs inside `BEGIN
    /// IMMEDIATE … COMMIT`, as this handle's only writer.
    fn transaction<T>(
        &self,
        operation: &'static str,
        access: Access,
        mut f: impl FnMut(&mut Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let (_writer, behavior) = match access {
            Access::Read => (None, TransactionBehavior::Deferred),
            Access::Write => (
                Some(self.writer.lock().unwrap_or_else(|p| p.into_inner())),
                TransactionBehavior::Immediate,
            ),
        };
        self.with_conn(|conn| {
            let mut tx = conn.transaction_with_behavior(behavior).op(operation)?;
            let out = f(&mut tx)?;
            tx.commit().op(operation)?;
            Ok(out)
        })
    }
}

/// Attaches the operation's name to a rusqlite error.
pub(super) trait Op<T> {
    fn op(self, operation: &'static str) -> Result<T>;
}

impl<T> Op<T> for rusqlite::Result<T> {
    fn op(self, operation: &'static str) -> Result<T> {
        self.map_err(|e| StoreError::Database {
            operation,
            source: Box::new(e),
        })
    }
}

/// A shared statement as SQLite reads it: `$1` becomes `?1`, the same numbered parameter.
/// (SQLite would take `$1` as a *named* parameter and number it by first appearance,
/// which binds `$2 … $1` the wrong way round.)
fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    debug_assert!(
        sql.match_indices('$')
            .all(|(i, _)| sql[i + 1..].starts_with(|c: char| c.is_ascii_digit())),
        "a `$` that is not a parameter: {sql}"
    );
    Cow::Owned(sql.replace('$', "?"))
}

fn bind<'a>(params: Params<'a>) -> impl rusqlite::Params + 'a {
    params_from_iter(params.iter().map(|p| p.sqlite()))
}

impl Db for Transaction<'_> {
    fn exec(&mut self, op: OpName, sql: &str, params: Params<'_>) -> Result<u64> {
        let changed = self.execute(&numbered(sql), bind(params)).op(op)?;
        Ok(changed as u64)
    }

    fn query(&mut self, op: OpName, sql: &str, params: Params<'_>, each: Each<'_>) -> Result<()> {
        let mut stmt = self.prepare(&numbered(sql)).op(op)?;
        let mut rows = stmt.query(bind(params)).op(op)?;
        while let Some(r) = rows.next().op(op)? {
            each(r)?;
        }
        Ok(())
    }

    fn batch(&mut self, op: OpName, sql: &str) -> Result<()> {
        self.execute_batch(sql).op(op)
    }
}

impl<T: FromSql> Column<T> for rusqlite::Row<'_> {
    fn column(&self, idx: usize) -> Result<T> {
        self.get(idx)
            .map_err(|e| corrupt_column(self.as_ref().column_name(idx).unwrap_or("?"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn shared_parameters_are_numbered_for_sqlite() {
        assert_eq!(
            numbered("UPDATE t SET a = $2 WHERE b = $10"),
            "UPDATE t SET a = ?2 WHERE b = ?10"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
    }
}
