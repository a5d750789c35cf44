//! Runs the store conformance suite against [`PostgresStore`], each test in a
//! fresh database of its own, plus the checks only PostgreSQL has: nodes
//! migrating one database at once, wake-ups across handles through
//! `LISTEN/NOTIFY`, and recovery after the server cuts every connection.
//!
//! Needs a PostgreSQL server whose user may create databases:
//! `SIE_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Without one these tests fail, saying how to start it; they never skip.

use std::time::Duration;

use sie_store::conformance::Harness;
use sie_store::{
    AccountName, Accounts, BillingNote, NewTask, OrgName, PostgresStore, Queue, QueueCaps, Store,
    StoreError, TaskId, TaskNeeds, Tasks, Timestamp,
};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn admin_url() -> String {
    std::env::var("SIE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn admin() -> postgres::Client {
    let url = admin_url();
    postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}). These tests need a server whose user \
             may create databases: start one (e.g. `pg_ctlcluster 15 main start`, or \
             `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`) \
             or point SIE_TEST_DATABASE_URL at one"
        )
    })
}

/// `url` with its database replaced by `db` (the query string kept).
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base
        .split_once("://")
        .expect("SIE_TEST_DATABASE_URL is a postgres:// URL");
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    format!("{scheme}://{authority}/{db}{query}")
}

/// A database of its own, dropped (with any connection still on it) when
/// the harness is.
struct PgHarness {
    db: String,
    url: String,
}

impl PgHarness {
    fn new() -> Self {
        let db = format!("sie_test_{}", TaskId::random().as_uuid().simple());
        admin()
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap_or_else(|e| panic!("create the test database {db}: {e}"));
        let url = with_database(&admin_url(), &db);
        Self { db, url }
    }

    fn connect(&self) -> PostgresStore {
        PostgresStore::connect(&self.url).expect("connect to the test database")
    }
}

impl Drop for PgHarness {
    fn drop(&mut self) {
        // Not while panicking for another reason: that message matters more.
        if let Ok(mut admin) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ =
                admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db));
        }
    }
}

impl Harness for PgHarness {
    fn open(&self) -> Box<dyn Store> {
        Box::new(self.connect())
    }
}

sie_store::conformance_tests!(PgHarness::new());

const WAIT: Duration = Duration::from_secs(10);

fn now() -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000)
}

/// A text-to-image task of `org`.
fn task(org: sie_store::OrgId) -> NewTask<'static> {
    NewTask {
        org,
        request_json: "{}",
        needs: txt2img(),
        idempotency: None,
        webhook_url: None,
    }
}

fn txt2img() -> TaskNeeds {
    TaskNeeds {
        pipeline: sie_vocab::Pipeline::Text2Image,
        scheduler: None,
        safety_checker: false,
    }
}

/// An approved organization named `name`, owned by a fresh account.
fn org(s: &dyn Store, name: &str) -> sie_store::OrgId {
    let owner = s
        .create_account(
            &AccountName::parse(&format!("{name}-owner")).unwrap(),
            now(),
        )
        .unwrap();
    let org_name = OrgName::parse(name).unwrap();
    let id = s.create_org(&org_name, owner, now()).unwrap();
    s.approve_org(&org_name, &BillingNote::parse("invoice").unwrap(), now())
        .unwrap();
    id
}

fn enqueue(s: &dyn Store, org: sie_store::OrgId) -> TaskId {
    s.enqueue(&task(org), QueueCaps::default(), now())
        .unwrap()
        .id
}

#[test]
fn nodes_starting_at_once_migrate_once() {
    let h = PgHarness::new();
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let nodes: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    PostgresStore::connect(&h.url)
                })
            })
            .collect();
        for node in nodes {
            node.join().unwrap().expect("every node connects");
        }
    });
    let mut db = postgres::Client::connect(&h.url, postgres::NoTls).unwrap();
    let row = db
        .query_one(
            "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_version",
            &[],
        )
        .unwrap();
    let (recorded, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (recorded, distinct),
        (4, 4),
        "each migration is recorded once"
    );
}

#[test]
fn an_enqueue_on_one_node_wakes_another() {
    let h = PgHarness::new();
    let (a, b) = (h.connect(), h.connect());
    let acme = org(&a, "acme");
    let seen = b.work_signal().generation();
    enqueue(&a, acme);
    assert!(
        b.work_signal().wait_past(seen, WAIT) > seen,
        "the other node's signal did not ring"
    );
}

/// Calls `f` until it succeeds, a few times: the first call after the server
/// cut the connections may fail (only one retry is automatic).
fn soon<T>(mut f: impl FnMut() -> sie_store::Result<T>) -> T {
    let mut last = None;
    for _ in 0..5 {
        match f() {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "still failing after the connections were cut: {:?}",
        last.unwrap()
    );
}

/// The store's signal generation once it has stopped moving: late rings
/// from earlier work are let through first, so the next ring is news.
fn settle(s: &PostgresStore) -> u64 {
    let mut seen = s.work_signal().generation();
    loop {
        let now = s.work_signal().wait_past(seen, Duration::from_millis(300));
        if now == seen {
            return seen;
        }
        seen = now;
    }
}

#[test]
fn recovers_after_the_server_cuts_every_connection() {
    let h = PgHarness::new();
    let (s, other) = (h.connect(), h.connect());
    let acme = org(&s, "acme");
    let queued = enqueue(&s, acme);
    // Both pools hold connections now, and both listeners are connected.
    assert!(s.get(acme, queued, now()).unwrap().is_some());
    assert!(other.get(acme, queued, now()).unwrap().is_some());
    let before = settle(&s);

    let cut: i64 = admin()
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&h.db],
        )
        .unwrap()
        .get(0);
    assert!(
        cut >= 4,
        "expected pooled and listening connections, cut {cut}"
    );

    // The data is still there, through the same handle, without a restart.
    let view = soon(|| s.get(acme, queued, now())).expect("the task survives the cut connections");
    assert_eq!(view.id, queued);
    assert_eq!(
        soon(|| s.find_account(&AccountName::parse("acme-owner").unwrap())).map(|id| id.get() > 0),
        Some(true)
    );

    // The listener reconnected: it rings once on reconnecting (work may have
    // come while it was deaf), and then hears the other node again.
    let reconnected = s.work_signal().wait_past(before, WAIT);
    assert!(reconnected > before, "the listener did not come back");
    let seen = settle(&s);
    soon(|| other.enqueue(&task(acme), QueueCaps::default(), now()));
    assert!(
        s.work_signal().wait_past(seen, WAIT) > seen,
        "the reconnected listener did not hear the other node"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let h = PgHarness::new();
    drop(h.connect());
    let mut db = postgres::Client::connect(&h.url, postgres::NoTls).unwrap();
    db.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (99, 0)",
        &[],
    )
    .unwrap();
    match PostgresStore::connect(&h.url) {
        Err(err @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(err.to_string().contains("newer"), "{err}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[test]
fn an_unreachable_server_is_named_without_the_password() {
    // Port 1 on loopback: refused at once.
    let err = PostgresStore::connect("postgres://sie:s3cret@127.0.0.1:1/sie").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("127.0.0.1:1/sie"), "{msg}");
    assert!(msg.contains("--database-url"), "{msg}");
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(!format!("{err:?}").contains("s3cret"));

    let h = PgHarness::new();
    let store = h.connect();
    assert!(format!("{store:?}").contains(&h.db));
    let bad = PostgresStore::connect("postgres://sie:s3cret@127.0.0.1:notaport/sie").unwrap_err();
    assert!(matches!(bad, StoreError::BadArgument(_)), "{bad:?}");
    assert!(!bad.to_string().contains("s3cret"), "{bad}");
}
