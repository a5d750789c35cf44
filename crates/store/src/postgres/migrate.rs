//! The PostgreSQL schema: migrations embedded from `migrations/postgres/*.sql`, applied in
//! order in one transaction that records them in `schema_version`.
//!
//! Several API nodes start at once against one fresh database, so the transaction
//! first takes an advisory lock: the nodes take turns, and the later ones find the
//! schema current. The steps inside are [`schema::migrate`], shared with
//! SQLite.

use postgres::{Client, IsolationLevel};

use super::pool::Op;
use crate::error::Result;
use crate::sql::{schema, Db};

/// The table that records which migrations ran.
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    version    BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// The embedded migrations, in order. A new file gets the next number here.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (2, include_str!("../../migrations/postgres/0002_digest.sql")),
    (3, include_str!("../../migrations/postgres/0003_portal.sql")),
    (
        4,
        include_str!("../../migrations/postgres/0004_webhooks.sql"),
    ),
];

/// Advisory lock key (arbitrary, but fixed: every node must use the same).
const MIGRATION_LOCK: i64 = 0x5349_4530_0001;

pub(super) fn migrate(client: &mut Client) -> Result<()> {
    let mut tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .op("migrate")?;
    tx.exec(
        "migrate",
        "SELECT pg_advisory_xact_lock($1)",
        &[&MIGRATION_LOCK],
    )?;
    schema::migrate(&mut tx, VERSION_TABLE, MIGRATIONS)?;
    tx.commit().op("migrate")
}
