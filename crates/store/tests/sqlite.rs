//! Runs the store conformance suite against [`SqliteStore`] on a real file in
//! a fresh temporary directory per test (never `:memory:`, so WAL, locking
//! between connections and reopening are the real thing), plus the checks
//! only SQLite has: migrations and the file itself.

use std::path::PathBuf;

use sie_store::conformance::Harness;
use sie_store::{SqliteStore, Store, StoreError};

struct SqliteHarness {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SqliteHarness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("sie.db");
        Self { _dir: dir, path }
    }
}

impl Harness for SqliteHarness {
    fn open(&self) -> Box<dyn Store> {
        Box::new(SqliteStore::open(&self.path).expect("open the test database"))
    }
}

sie_store::conformance_tests!(SqliteHarness::new());

#[test]
fn opens_in_wal_mode_and_reopens_without_migrating_again() {
    let h = SqliteHarness::new();
    drop(SqliteStore::open(&h.path).unwrap());
    let _store = SqliteStore::open(&h.path).unwrap();
    // A WAL-mode database keeps a `-wal` file beside it while open.
    let mut wal = h.path.as_os_str().to_owned();
    wal.push("-wal");
    assert!(
        PathBuf::from(wal).exists(),
        "no -wal file: the database is not in WAL mode"
    );
    let conn = rusqlite::Connection::open(&h.path).unwrap();
    let versions: Vec<i64> = conn
        .prepare("SELECT version FROM schema_version ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5], "each migration is recorded once");
}

#[test]
fn a_newer_schema_is_refused() {
    let h = SqliteHarness::new();
    drop(SqliteStore::open(&h.path).unwrap());
    // Pretend a future sie migrated this file further.
    {
        let conn = rusqlite::Connection::open(&h.path).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
            [],
        )
        .unwrap();
    }
    match SqliteStore::open(&h.path) {
        Err(err @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(err.to_string().contains("newer"), "{err}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn an_unopenable_path_names_the_path() {
    let h = SqliteHarness::new();
    let bad = h.path.join("no-such-dir").join("sie.db");
    let err = SqliteStore::open(&bad).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }));
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}
