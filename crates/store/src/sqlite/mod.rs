//! [`SqliteStore`]: the embedded store behind `sie serve`.
//!
//! One database file in WAL mode, so readers (`GET` polling) never wait for the writer,
//! and nothing to run beside `sie`. The role traits are implemented once, in
//! `sql/`; this folder is what is particular to SQLite: `pool.rs`
//! (connections, and transactions with one writer at a time), `migrate.rs` (its schema)
//! and `dialect.rs` (the lease's pick, turns, and the locks and wake-ups SQLite does not
//! need).

mod dialect;
mod migrate;
mod pool;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use crate::error::Result;
use crate::signal::WorkSignal;

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

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and brings its
    /// schema up to date. Several processes may open the same file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        let mut conn = pool::open_connection(&path)?;
        migrate::migrate(&mut conn)?;
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
}
