//! Scale-out as an operator runs it (README, "Running on several machines"): `sie api`
//! nodes on a real PostgreSQL, each test in a fresh database of its own, `sie worker`
//! processes on the tiny model pulling over HTTP, `sie admin --database-url` for accounts
//! and worker tokens. Processes are killed with SIGKILL where the test says so.
//!
//! Needs a PostgreSQL server whose user may create databases: `SIE_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`). The restart test runs a private
//! PostgreSQL of its own (initdb from the installed server), so it can stop it.
//!
//! # Layout
//! - this file: the harness (a fresh database per test, `sie api` and `sie worker`
//!   processes, a tenant made with `sie admin --database-url`, polling helpers);
//! - `two_nodes.rs`: two API nodes and two workers, 200 tasks, each done exactly once;
//! - `crashes.rs`: SIGKILL and SIGTERM of workers and API nodes lose nothing;
//! - `restart.rs`: a PostgreSQL restart loses no accepted task;
//! - `protocol.rs`: what only several processes on PostgreSQL show of the worker
//!   protocol (every refusal is tested in-process in `crates/server/tests/`);
//! - `early_worker.rs`: a worker started before its API node connects once it is up.

#[path = "../common/mod.rs"]
mod common;

mod crashes;
mod early_worker;
mod protocol;
mod restart;
mod two_nodes;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

pub use common::{eventually, tiny_model, Proc};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const BASE: &str = "/api/beta/organizations/acme/inference-endpoints/stable-diffusion-2-1";

fn admin_url() -> String {
    std::env::var("SIE_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    format!("{scheme}://{authority}/{db}")
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {url} ({e}); start it (`pg_ctlcluster 15 main start`) \
             or point SIE_TEST_DATABASE_URL at a server whose user may create databases"
        )
    })
}

/// A fresh database, dropped with the test.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn fresh(admin: &str) -> Database {
        let name = format!("sie_scale_{}", uuid_like());
        connect(admin)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        Database {
            admin: admin.to_owned(),
            url: with_database(admin, &name),
            name,
        }
    }

    /// The attempt count the store holds for a task.
    fn attempt(&self, id: &str) -> i64 {
        let mut c = connect(&self.url);
        let row = c
            .query_one("SELECT attempt FROM tasks WHERE id = $1", &[&id])
            .unwrap();
        row.get::<_, i64>(0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

fn uuid_like() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `sie api` on `database_url`, on a random port.
struct Api {
    proc: Proc,
    url: String,
}

fn start_api(database_url: &str, lease: &str) -> Api {
    start_api_on(database_url, lease, "127.0.0.1:0")
}

fn start_api_on(database_url: &str, lease: &str, listen: &str) -> Api {
    let (proc, mut stdout) = Proc::spawn(
        // 200 tasks are posted faster than two CPU workers run them: above the default cap.
        // And `wait_all` polls all of them in a tight loop with one key, hundreds of
        // requests a second: above the default rate limits, which these tests do not test.
        &[
            "api",
            "--listen",
            listen,
            "--lease",
            lease,
            "--org-queue-cap",
            "500",
            "--key-rate-limit",
            "0",
            "--org-rate-limit",
            "0",
        ],
        &[("SIE_DATABASE_URL", database_url), ("SIE_LOG", "info")],
    );
    let url = common::line_after(&proc, &mut stdout, "listening on ");
    common::drain(stdout);
    Api { proc, url }
}

fn start_worker(server: &str, token: &str, model: &Path) -> Proc {
    let (proc, stdout) = Proc::spawn(
        &[
            "worker",
            "--server",
            server,
            "--model",
            model.to_str().unwrap(),
        ],
        &[("SIE_WORKER_TOKEN", token), ("SIE_LOG", "info")],
    );
    common::drain(stdout);
    proc
}

/// Runs `sie admin --database-url URL ARGS…`; its stdout.
fn admin(database_url: &str, args: &[&str]) -> String {
    common::admin(&["--database-url", database_url], args)
}

/// An account, the approved organization `acme`, its API key, and worker tokens.
struct Tenant {
    key: String,
    tokens: HashMap<&'static str, String>,
}

fn tenant(database_url: &str, workers: &[&'static str]) -> Tenant {
    admin(database_url, &["account", "create", "alice"]);
    admin(database_url, &["org", "create", "acme", "--owner", "alice"]);
    admin(
        database_url,
        &["org", "approve", "acme", "--billing", "invoice"],
    );
    let key = admin(database_url, &["key", "create", "--account", "alice"]);
    // Only the key on stdout, so scripts can capture it.
    assert_eq!(key.lines().count(), 1, "{key:?}");
    let key = key.trim().to_owned();
    assert!(key.starts_with("sie_"));
    let mut tokens = HashMap::new();
    for w in workers {
        let t = admin(database_url, &["worker-token", "create", w]);
        assert_eq!(t.lines().count(), 1, "{t:?}");
        assert!(t.starts_with("siew_"), "{t:?}");
        tokens.insert(*w, t.trim().to_owned());
    }
    let list = admin(database_url, &["worker-token", "list"]);
    for w in workers {
        assert!(list.contains(&format!("{w}\tactive")), "{list}");
    }
    Tenant { key, tokens }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// POSTs a task to `api`; its requestId.
fn submit(c: &Client, api: &str, key: &str, body: &Value) -> String {
    let r = c
        .post(format!("{api}{BASE}"))
        .header("Salad-Api-Key", key)
        .json(body)
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status, 202, "{v}");
    v["requestId"].as_str().unwrap().to_owned()
}

fn get_task(c: &Client, api: &str, key: &str, id: &str) -> Value {
    let r = c
        .get(format!("{api}{BASE}/{id}"))
        .header("Salad-Api-Key", key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "GET {id} on {api}");
    r.json().unwrap()
}

/// Polls (on `apis` in turn) until every task has finished; their final bodies.
fn wait_all(c: &Client, apis: &[&str], key: &str, ids: &[String], limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut done: Vec<Option<Value>> = vec![None; ids.len()];
    let mut turn = 0;
    while done.iter().any(Option::is_none) {
        for (i, id) in ids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            turn += 1;
            let v = get_task(c, apis[turn % apis.len()], key, id);
            if v["status"] != "pending" {
                done[i] = Some(v);
            }
        }
        let left = done.iter().filter(|d| d.is_none()).count();
        assert!(
            Instant::now() < deadline,
            "{left} tasks still pending after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    done.into_iter().map(Option::unwrap).collect()
}

/// Polls `api` until task `id` has finished; its final body.
fn wait_one(c: &Client, api: &str, key: &str, id: &str, limit: Duration) -> Value {
    let ids = [id.to_owned()];
    wait_all(c, &[api], key, &ids, limit).remove(0)
}

/// Polls `api` until task `id` reports progress (a worker is running it).
fn wait_running(c: &Client, api: &str, key: &str, id: &str) {
    let every = Duration::from_millis(50);
    let started = common::eventually(Duration::from_secs(120), every, || {
        get_task(c, api, key, id).get("progress").is_some()
    });
    assert!(started, "{id} never started");
}

fn small(i: u64, steps: u32, size: u32) -> Value {
    json!({"modelInputs": {"prompt": format!("task {i}"), "num_inference_steps": steps,
        "width": size, "height": size, "seed": i}})
}

/// How many times the API nodes' logs record task `id` as completed by a worker.
fn completions(logs: &[String], id: &str) -> usize {
    logs.iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("task succeeded on a remote worker") && l.contains(id))
        .count()
}
