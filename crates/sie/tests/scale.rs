//! Scale-out as an operator runs it (README, "Running on several machines"): `sie api`
//! nodes on a real PostgreSQL, each test in a fresh database of its own, `sie worker`
//! processes on the tiny model pulling over HTTP, `sie admin --database-url` for accounts
//! and worker tokens. Processes are killed with SIGKILL where the test says so.
//!
//! Needs a PostgreSQL server whose user may create databases: `SIE_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`). The restart test runs a private
//! PostgreSQL of its own (initdb from the installed server), so it can stop it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{json, Value};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const SIE: &str = env!("CARGO_BIN_EXE_sie");
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

/// A child process whose stderr is kept (for the log assertions) and which dies with the test.
struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Proc, std::io::Lines<BufReader<std::process::ChildStdout>>) {
        let mut cmd = Command::new(SIE);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("sie starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        (Proc { child, log }, stdout)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for a clean exit within `limit`.
    fn expect_clean_exit(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "exit status {status}; log:\n{}",
                    self.log()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
        &[
            "api",
            "--listen",
            listen,
            "--lease",
            lease,
            "--org-queue-cap",
            "500",
        ],
        &[("SIE_DATABASE_URL", database_url), ("SIE_LOG", "info")],
    );
    let url = loop {
        let line = stdout
            .next()
            .unwrap_or_else(|| panic!("sie api exited; log:\n{}", proc.log()))
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_owned();
        }
    };
    std::thread::spawn(move || for _ in stdout {});
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
    std::thread::spawn(move || for _ in stdout {});
    proc
}

/// Runs `sie admin --database-url URL ARGS…`; its stdout.
fn admin(database_url: &str, args: &[&str]) -> String {
    let out = Command::new(SIE)
        .args(["admin", "--database-url", database_url])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sie admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let out = Command::new(SIE)
        .args(["model", "tiny", "--out", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    model
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

#[test]
fn two_api_nodes_two_workers_run_200_tasks_each_exactly_once() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["gpu-1", "gpu-2"]);
    let api1 = start_api(&db.url, "60s");
    let api2 = start_api(&db.url, "60s");
    // One worker per node: a task posted on one node wakes the worker waiting on the other.
    let _w1 = start_worker(&api1.url, &t.tokens["gpu-1"], &model);
    let _w2 = start_worker(&api2.url, &t.tokens["gpu-2"], &model);

    let c = client();
    let apis = [api1.url.as_str(), api2.url.as_str()];
    let ids: Vec<String> = (0..200)
        .map(|i| submit(&c, apis[i % 2], &t.key, &small(i as u64, 2, 64)))
        .collect();
    let finished = wait_all(
        &c,
        &[apis[1], apis[0]],
        &t.key,
        &ids,
        Duration::from_secs(600),
    );
    for (id, v) in ids.iter().zip(&finished) {
        assert_eq!(v["status"], "success", "{id}: {v}");
        assert_eq!(v["modelOutputs"]["images"].as_array().unwrap().len(), 1);
    }
    // Either node answers for a task posted on the other, with the same result.
    let a = get_task(&c, apis[0], &t.key, &ids[1]);
    let b = get_task(&c, apis[1], &t.key, &ids[1]);
    assert_eq!(a, b);
    // No task ran to completion twice: one accepted completion each, none dropped late.
    let logs = [api1.proc.log(), api2.proc.log()];
    for id in &ids {
        assert_eq!(
            completions(&logs, id),
            1,
            "{id} completed {} times",
            completions(&logs, id)
        );
    }
    assert!(!logs.iter().any(|l| l.contains("late result dropped")));
    let usage: Value = c
        .get(format!("{}/api/beta/organizations/acme/usage", apis[0]))
        .header("Salad-Api-Key", &t.key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let succeeded: u64 = usage["days"]
        .as_array()
        .unwrap_or_else(|| panic!("usage: {usage}"))
        .iter()
        .map(|d| d["tasksSucceeded"].as_u64().unwrap())
        .sum();
    assert_eq!(succeeded, 200, "{usage}");
}

#[test]
fn killed_workers_and_api_nodes_lose_nothing() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["gpu-a", "gpu-b", "gpu-c"]);
    // A short lease, so a killed worker's task comes back within seconds.
    let mut api1 = start_api(&db.url, "3s");
    let api2 = start_api(&db.url, "3s");
    let c = client();

    // SIGKILL a worker in the middle of a task: the other worker finishes it, attempt 2.
    let mut a = start_worker(&api1.url, &t.tokens["gpu-a"], &model);
    let long = submit(&c, &api1.url, &t.key, &small(7, 150, 128));
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_task(&c, &api1.url, &t.key, &long)
        .get("progress")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "never started; worker log:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill9();
    let mut b = start_worker(&api2.url, &t.tokens["gpu-b"], &model);
    let v = &wait_all(
        &c,
        &[&api2.url],
        &t.key,
        std::slice::from_ref(&long),
        Duration::from_secs(300),
    )[0];
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(db.attempt(&long), 2);

    // SIGKILL an API node: the other answers for every task, those posted to the dead one too.
    let ids: Vec<String> = (0..10)
        .map(|i| {
            let api = if i % 2 == 0 { &api1.url } else { &api2.url };
            submit(&c, api, &t.key, &small(100 + i, 2, 64))
        })
        .collect();
    api1.proc.kill9();
    let mut all = ids.clone();
    all.push(long.clone());
    for v in wait_all(&c, &[&api2.url], &t.key, &all, Duration::from_secs(300)) {
        assert_eq!(v["status"], "success", "{v}");
    }

    // SIGTERM: an idle worker exits at once; a busy one gives its task back (not counted as
    // a lost attempt) and exits; a worker started later finishes the task.
    b.sigterm();
    b.expect_clean_exit(Duration::from_secs(30));
    let mut c_worker = start_worker(&api2.url, &t.tokens["gpu-c"], &model);
    let last = submit(&c, &api2.url, &t.key, &small(9, 150, 128));
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_task(&c, &api2.url, &t.key, &last)
        .get("progress")
        .is_none()
    {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    c_worker.sigterm();
    c_worker.expect_clean_exit(Duration::from_secs(30));
    let v = get_task(&c, &api2.url, &t.key, &last);
    assert_eq!(v["status"], "pending", "{v}");
    assert!(v.get("progress").is_none(), "given back to the queue: {v}");
    let _again = start_worker(&api2.url, &t.tokens["gpu-c"], &model);
    let v = &wait_all(
        &c,
        &[&api2.url],
        &t.key,
        std::slice::from_ref(&last),
        Duration::from_secs(300),
    )[0];
    assert_eq!(v["status"], "success", "{v}");
}

/// A PostgreSQL server of this test's own (initdb into a temporary directory), so the test
/// may stop and start it. As root, it runs as the `postgres` user, which initdb requires.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect(
                "PostgreSQL's server binaries under /usr/lib/postgresql (apt install postgresql)",
            )
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|b| b.join("initdb").is_file())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = tempfile::tempdir().unwrap();
        let id = |args: &[&str]| -> u32 {
            let out = Command::new("id").args(args).output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let as_postgres = id(&["-u"]) == 0;
        if as_postgres {
            std::os::unix::fs::chown(
                dir.path(),
                Some(id(&["-u", "postgres"])),
                Some(id(&["-g", "postgres"])),
            )
            .unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePostgres {
            dir,
            bin,
            port,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        pg.ctl_start();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").to_str().unwrap().to_owned();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "start",
            ],
        );
    }

    /// A fast shutdown: every connection is cut, as in a restart or a failover.
    fn ctl_stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new(if self.as_postgres { "runuser" } else { "true" })
            .args(if self.as_postgres {
                vec!["-u".to_owned(), "postgres".into(), "--".into()]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

fn readyz(c: &Client, api: &str) -> u16 {
    c.get(format!("{api}/readyz"))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn a_postgresql_restart_loses_no_accepted_task() {
    let pg = PrivatePostgres::start();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&url, &["gpu-1"]);
    let api = start_api(&url, "10s");
    let _w = start_worker(&api.url, &t.tokens["gpu-1"], &model);
    let c = client();
    assert_eq!(readyz(&c, &api.url), 200);

    // Long enough (about a second per task here) that some run across the outage.
    let mut ids: Vec<String> = (0..6)
        .map(|i| submit(&c, &api.url, &t.key, &small(i, 60, 128)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = get_task(&c, &api.url, &t.key, &ids[0]);
        // Running (progress comes with the heartbeat, once a second), or already past it.
        if v.get("progress").is_some() || v["status"] != "pending" {
            break;
        }
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    pg.ctl_stop();
    // While the database is down: not ready, and no 202 (nothing can be stored).
    let deadline = Instant::now() + Duration::from_secs(30);
    while readyz(&c, &api.url) != 503 {
        assert!(
            Instant::now() < deadline,
            "readyz never failed while PostgreSQL was down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = c
        .post(format!("{}{BASE}", api.url))
        .header("Salad-Api-Key", &t.key)
        .json(&small(99, 2, 64))
        .send()
        .unwrap();
    assert!(refused.status().is_server_error(), "{}", refused.status());
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json",
        "an outage is a problem document too"
    );

    pg.ctl_start();
    // The API node recovers by itself: no restart of sie.
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(&c, &api.url) != 200 {
        assert!(
            Instant::now() < deadline,
            "readyz never recovered; log:\n{}",
            api.proc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    ids.extend((10..14).map(|i| submit(&c, &api.url, &t.key, &small(i, 2, 64))));
    for (id, v) in ids.iter().zip(wait_all(
        &c,
        &[&api.url],
        &t.key,
        &ids,
        Duration::from_secs(400),
    )) {
        assert_eq!(v["status"], "success", "{id}: {v}");
    }
}

/// Sends only a request's head, announcing a body of `length` bytes and sending none, on a
/// connection of its own; the status code of the answer (which must come within 10 s).
fn head_only_status(api: &str, path: &str, token: Option<&str>, length: usize) -> u16 {
    use std::io::Write;
    let address = api.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{auth}\r\n"
    )
    .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream)
        .read_line(&mut status_line)
        .expect("an answer before the body was sent");
    status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"))
}

/// Speaks the worker protocol by hand, as a misbehaving or stale node would.
struct RawWorker<'a> {
    c: &'a Client,
    api: &'a str,
    token: &'a str,
}

impl RawWorker<'_> {
    fn call(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .c
            .post(format!("{}/worker/v1{path}", self.api))
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn lease(&self, wait: u32) -> (u16, Value) {
        self.call(
            "/lease",
            json!({"worker": {"model": "raw", "native_width": 64, "native_height": 64,
                "pipelines": ["StableDiffusionPipeline"], "schedulers": ["DDIMScheduler"],
                "safety_checker": false}, "wait_seconds": wait}),
        )
    }

    fn complete(&self, id: &str, attempt: u64, image: &str) -> (u16, Value) {
        self.call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": attempt, "model_outputs": {"images": [image],
                "nsfw_content_detected": null, "seed": 1, "$meta": {}, "$timings": {}},
                "usage": {"images": 1, "steps": 1, "gpu_ms": 1}}),
        )
    }
}

#[test]
fn the_worker_protocol_refuses_revoked_strange_and_stale_workers() {
    let db = Database::fresh(&admin_url());
    let t = tenant(&db.url, &["w1", "w2"]);
    let api = start_api(&db.url, "2s");
    let c = client();
    let w1 = RawWorker {
        c: &c,
        api: &api.url,
        token: &t.tokens["w1"],
    };
    let w2 = RawWorker {
        c: &c,
        api: &api.url,
        token: &t.tokens["w2"],
    };

    // Nothing queued: a short long-poll answers 204.
    assert_eq!(w1.lease(0).0, 204);
    // No token, a made-up token, an API key instead of a token: 401 with a code.
    for token in ["", "siew_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", t.key.as_str()] {
        let (status, body) = RawWorker {
            c: &c,
            api: &api.url,
            token,
        }
        .lease(0);
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_worker_token")),
            "{body}"
        );
    }
    // The token is checked before the body is read: a call announcing a 256 MiB body, none
    // of it sent, is answered 401 at once (a server that read first would wait for it).
    assert_eq!(
        head_only_status(&api.url, "/worker/v1/lease", None, 256 << 20),
        401
    );
    assert_eq!(
        head_only_status(
            &api.url,
            "/worker/v1/tasks/x/complete",
            Some("siew_nope"),
            256 << 20
        ),
        401
    );

    // Malformed announcements and waits are refused, naming what is wrong.
    let (status, body) = w1.call("/lease", json!({"worker": {"model": "x"}}));
    assert_eq!(status, 400, "{body}");
    let (status, body) = w1.call(
        "/lease",
        json!({"worker": {"model": "raw", "native_width": 64, "native_height": 64,
            "pipelines": ["StableDiffusionPipeline"], "schedulers": [], "safety_checker": false},
            "wait_seconds": 31}),
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("out_of_range")),
        "{body}"
    );

    // A task that names a scheduler w1 did not announce is not handed to it.
    let pndm = submit(
        &c,
        &api.url,
        &t.key,
        &json!({"modelInputs": {"prompt": "x"},
        "callInputs": {"SCHEDULER": "PNDMScheduler"}}),
    );
    assert_eq!(w1.lease(0).0, 204, "{pndm} needs PNDM");

    let id = submit(&c, &api.url, &t.key, &small(1, 2, 64));
    let (status, leased) = w1.lease(5);
    assert_eq!(status, 200, "{leased}");
    assert_eq!(
        (leased["id"].as_str(), leased["attempt"].as_u64()),
        (Some(id.as_str()), Some(1))
    );
    assert_eq!(leased["request"]["modelInputs"]["prompt"], "task 1");
    assert_eq!(leased["lease_seconds"], 2);

    // A worker that asks about a task it did not lease is refused.
    for (path, body) in [
        ("heartbeat", json!({"attempt": 1})),
        (
            "fail",
            json!({"attempt": 1, "code": "engine_error", "message": "x", "retryable": false}),
        ),
        ("release", json!({"attempt": 1})),
    ] {
        let (status, b) = w2.call(&format!("/tasks/{id}/{path}"), body);
        assert_eq!(
            (status, b["code"].as_str()),
            (409, Some("lease_lost")),
            "{path}: {b}"
        );
    }
    assert_eq!(w2.complete(&id, 1, "dGhpZWY=").0, 409);
    let (status, beat) = w1.call(
        &format!("/tasks/{id}/heartbeat"),
        json!({"attempt": 1,
        "progress": {"step": 1, "steps": 2}}),
    );
    assert_eq!(
        (status, beat["action"].as_str()),
        (200, Some("continue")),
        "{beat}"
    );

    // w1 goes quiet past its lease; w2 takes the task as attempt 2; w1's late result is ignored.
    std::thread::sleep(Duration::from_millis(2500));
    let (status, again) = w2.lease(5);
    assert_eq!(status, 200);
    assert_eq!(
        (again["id"].as_str(), again["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    let (status, late) = w1.complete(&id, 1, "bGF0ZQ==");
    assert_eq!(
        (status, late["code"].as_str()),
        (409, Some("lease_lost")),
        "{late}"
    );
    assert_eq!(
        w1.call(&format!("/tasks/{id}/heartbeat"), json!({"attempt": 1}))
            .0,
        409
    );
    assert_eq!(w2.complete(&id, 2, "d2lubmVy").0, 200);
    let v = get_task(&c, &api.url, &t.key, &id);
    assert_eq!(v["status"], "success");
    assert_eq!(
        v["modelOutputs"]["images"][0], "d2lubmVy",
        "the live attempt's result stands"
    );
    assert_eq!(db.attempt(&id), 2);

    // A revoked worker is refused at once, and its task is someone else's at once.
    let id = submit(&c, &api.url, &t.key, &small(2, 2, 64));
    let (_, leased) = w1.lease(5);
    assert_eq!(leased["id"].as_str(), Some(id.as_str()));
    admin(&db.url, &["worker-token", "revoke", "w1"]);
    let (status, body) = w1.call(&format!("/tasks/{id}/heartbeat"), json!({"attempt": 1}));
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("invalid_worker_token")),
        "{body}"
    );
    assert_eq!(w1.lease(0).0, 401);
    let (status, taken) = w2.lease(0);
    assert_eq!(status, 200, "the revoked worker's task is leasable at once");
    assert_eq!(
        (taken["id"].as_str(), taken["attempt"].as_u64()),
        (Some(id.as_str()), Some(2))
    );
    assert!(admin(&db.url, &["worker-token", "list"]).contains("w1\trevoked"));
    assert_eq!(w2.complete(&id, 2, "b2s=").0, 200);

    // A worker that hangs up during its lease call costs no attempt: a task leased for it
    // after it left goes straight back to the queue.
    let impatient = Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/worker/v1/lease", api.url))
        .bearer_auth(&t.tokens["w2"])
        .json(
            &json!({"worker": {"model": "raw", "native_width": 64, "native_height": 64,
            "pipelines": ["StableDiffusionPipeline"], "schedulers": [], "safety_checker": false},
            "wait_seconds": 10}),
        )
        .send();
    assert!(gone.is_err(), "the call timed out on the client's side");
    let id = submit(&c, &api.url, &t.key, &small(3, 2, 64));
    // Past the abandoned call's next look (it looks at least every 2 s).
    std::thread::sleep(Duration::from_secs(3));
    let (status, taken) = w2.lease(5);
    assert_eq!(status, 200);
    assert_eq!(taken["id"].as_str(), Some(id.as_str()));
    let given_back: i64 = connect(&db.url)
        .query_one("SELECT released FROM tasks WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    // Either the abandoned call stopped when its worker hung up, or it leased the task
    // and gave it back; either way no attempt was lost.
    let attempt = taken["attempt"].as_i64().unwrap();
    assert_eq!(
        attempt - given_back,
        1,
        "attempt {attempt}, given back {given_back}"
    );
}

#[test]
fn a_worker_started_before_its_api_node_connects_once_it_is_up() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["early"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let worker = start_worker(&format!("http://{address}"), &t.tokens["early"], &model);
    // Nothing listens yet: the worker keeps trying with backoff instead of exiting.
    std::thread::sleep(Duration::from_secs(2));
    let api = start_api_on(&db.url, "60s", &address);
    let c = client();
    let id = submit(&c, &api.url, &t.key, &small(5, 2, 64));
    let v = &wait_all(
        &c,
        &[&api.url],
        &t.key,
        std::slice::from_ref(&id),
        Duration::from_secs(120),
    )[0];
    assert_eq!(v["status"], "success", "{v}");
    assert!(
        worker.log().contains("cannot reach the queue"),
        "{}",
        worker.log()
    );
}
