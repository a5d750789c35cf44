//! The SQLite schema: migrations embedded from `migrations/sqlite/*.sql`, applied in order,
//! each in the transaction that records it in `schema_version`.
//!
//! `BEGIN IMMEDIATE` makes two processes opening one fresh file take turns, so the
//! second finds the schema current. The steps inside are
//! [`schema::migrate`], shared with PostgreSQL.

use rusqlite::{Connection, TransactionBehavior};

use super::pool::Op;
use crate::error::Result;
use crate::sql::schema;

/// The table that records which migrations ran.
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    INTEGER PRIMARY KEY,
    applied_at INTEGER NOT NULL
)";

/// The embedded migrations, in order. A new file gets the next number here.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../../migrations/sqlite/0002_workers.sql")),
    (3, include_str!("../../migrations/sqlite/0003_digest.sql")),
    (4, include_str!("../../migrations/sqlite/0004_portal.sql")),
    (5, include_str!("../../migrations/sqlite/0005_webhooks.sql")),
];

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .op("migrate")?;
    schema::migrate(&mut tx, VERSION_TABLE, MIGRATIONS)?;
    tx.commit().op("migrate")
}
