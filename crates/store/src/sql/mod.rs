//! The store, written once for both SQL databases.
//!
//! SQLite (`sie serve`) and PostgreSQL (`sie api`) keep the same tables and must behave
//! alike: a behaviour is added to both or neither. Nearly everything they do is the same
//! SQL, the same decoding and the same decisions, so the role traits are implemented
//! here, once, for any [`Backend`]. A backend supplies transactions, a [`Db`] to run
//! statements on, and the few places where its dialect or its concurrency really
//! differ (listed on [`Backend`]); `sqlite/` and `postgres/` hold only that, so a
//! reader finds there exactly what is particular to each database.
//!
//! - [`statements`]: the SQL both run as written, in PostgreSQL's `$1` spelling.
//! - [`schema`]: how both bring their schema up to date.
//! - [`rows`]: how rows decode into records, through the drivers' common [`Row`].
//! - [`accounts`], [`portal`], [`workers`], [`tasks`], [`queue`]: the role traits' implementations;
//!   their decisions come from [`rules`](crate::rules).

mod accounts;
mod portal;
mod queue;
pub(crate) mod rows;
pub(crate) mod schema;
pub(crate) mod statements;
mod tasks;
mod webhooks;
mod workers;

use crate::domain::Timestamp;
use crate::error::{Result, StoreError};
use crate::signal::WorkSignal;
use crate::types::WorkerOffer;
use rows::{Candidate, Row};

/// A value a statement binds: the types both drivers convert alike (`i64`, `bool`,
/// `&str`, `String`, and `Option`s of them). Counts and sizes are bound as `i64`, which
/// both schemas store them as.
pub(crate) trait Param: Sync {
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync> Param for T {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn postgres(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// A statement's parameters, `$1` first.
pub(crate) type Params<'a> = &'a [&'a dyn Param];

/// The operation a statement belongs to, as its errors name it (`database error during
/// enqueue`).
pub(crate) type OpName = &'static str;

/// What [`Db::query`] hands each row to.
pub(crate) type Each<'a> = &'a mut dyn FnMut(&dyn Row) -> Result<()>;

/// Statements in a transaction. Each names the operation its errors report (`database
/// error during enqueue`), and reads rows through the shared [`Row`]. A driver provides
/// [`exec`](Db::exec), [`query`](Db::query) and [`batch`](Db::batch); the ways of
/// reading a result are written once, here.
pub(crate) trait Db {
    /// Runs a statement; how many rows it changed.
    fn exec(&mut self, op: OpName, sql: &str, params: Params<'_>) -> Result<u64>;

    /// Runs a statement and hands each row it returns to `each`, in order.
    fn query(&mut self, op: OpName, sql: &str, params: Params<'_>, each: Each<'_>) -> Result<()>;

    /// Runs statements that take no parameters, one after another (a migration).
    fn batch(&mut self, op: OpName, sql: &str) -> Result<()>;

    /// The row a statement returns, if any, read by `read`. Statements read this way
    /// match one row at most (a key, or `LIMIT 1`).
    fn first<T>(
        &mut self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
        read: impl FnOnce(&dyn Row) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut read = Some(read);
        let mut found = None;
        self.query(op, sql, params, &mut |r| {
            if let Some(read) = read.take() {
                found = Some(read(r)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// The row a statement always returns (an aggregate), read by `read`.
    fn one<T>(
        &mut self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
        read: impl FnOnce(&dyn Row) -> Result<T>,
    ) -> Result<T> {
        self.first(op, sql, params, read)?
            .ok_or_else(|| StoreError::Database {
                operation: op,
                source: "the statement returned no row".into(),
            })
    }

    /// Every row, each read by `read`.
    fn all<T>(
        &mut self,
        op: &'static str,
        sql: &str,
        params: Params<'_>,
        mut read: impl FnMut(&dyn Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query(op, sql, params, &mut |r| {
            out.push(read(r)?);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Which transaction a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// One snapshot, read only: several statements that must agree (a task's state and
    /// its queue position).
    Read,
    /// Changes, committed together at the end.
    Write,
}

/// Transactions on a database, as a backend's connection pool provides them.
pub(crate) trait Transactions: Send + Sync {
    /// A transaction in progress.
    type Tx<'c>: Db;

    /// Runs `f` in one transaction of the kind `access` asks for, and commits. `f` may
    /// run twice (PostgreSQL retries a transaction whose connection died before
    /// `COMMIT`), so it must have no effect outside the transaction.
    fn transaction<T>(
        &self,
        op: &'static str,
        access: Access,
        f: impl FnMut(&mut Self::Tx<'_>) -> Result<T>,
    ) -> Result<T>;

    /// [`Transactions::transaction`] for reading.
    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut Self::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.transaction(op, Access::Read, f)
    }

    /// [`Transactions::transaction`] for writing.
    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnMut(&mut Self::Tx<'_>) -> Result<T>,
    ) -> Result<T> {
        self.transaction(op, Access::Write, f)
    }
}

/// What a database must provide, beyond its [`Transactions`], for the role traits to be
/// implemented on it: each place where SQLite and PostgreSQL differ. SQLite lets one
/// writer in at a time, so its row locks, enqueue lock and cross-process wake-ups are
/// nothing at all; PostgreSQL has many writers at once and needs each of them.
pub(crate) trait Backend: Transactions {
    /// Rung in this process when a task may have become leasable, after the commit.
    fn signal(&self) -> &WorkSignal;

    /// Appended to a `SELECT` of the rows a write transaction goes on to change, so no
    /// other transaction changes them first.
    const LOCK_ROWS: &'static str;

    /// As [`Backend::LOCK_ROWS`], but rows another transaction holds are passed over
    /// rather than waited for.
    const SKIP_LOCKED_ROWS: &'static str;

    /// The column in which `api_keys` counts up as keys are made: what orders the keys
    /// made in the same millisecond.
    const KEY_INSERTION_ORDER: &'static str;

    /// $1 organization: moves it to the back of the leasing turn order.
    const TAKE_TURN: &'static str;

    /// Makes concurrent enqueues take turns: they count what is queued against the caps
    /// and look up idempotency keys, and two of them doing so at once could both pass.
    fn serialize_enqueues(tx: &mut Self::Tx<'_>) -> Result<()>;

    /// Tells the other processes sharing the database, once `tx` commits, that a task
    /// may have become leasable.
    fn announce_work(tx: &mut Self::Tx<'_>, op: &'static str) -> Result<()>;

    /// The waiting task the fairness rule (see [`Queue::lease`](crate::Queue::lease))
    /// gives to `offer` at `now`, among those it can run, as [`Candidate::read`] reads it.
    fn pick(
        tx: &mut Self::Tx<'_>,
        offer: &WorkerOffer,
        now: Timestamp,
    ) -> Result<Option<Candidate>>;
}
