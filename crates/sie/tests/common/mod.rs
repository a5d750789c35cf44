//! What every end-to-end test of the `sie` binary shares: running it, reading a child
//! process's output while it lives, `sie serve` on the tiny model as a client meets it
//! ([`Server`]), the tiny model, `sie admin`, raw HTTP for what a client library will not
//! send, what /proc says of a process (resident memory, open descriptors), and waiting
//! for a condition with a deadline instead of sleeping a fixed time.

#![allow(dead_code)] // each test binary uses part of the harness

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const SIE: &str = env!("CARGO_BIN_EXE_sie");

/// Runs `sie ARGS…` to the end.
pub fn sie(args: &[&str]) -> Output {
    Command::new(SIE)
        .args(args)
        .output()
        .expect("the sie binary runs")
}

/// Runs `sie ARGS…`, which must succeed; its stdout.
pub fn sie_ok(args: &[&str]) -> String {
    let out = sie(args);
    assert!(
        out.status.success(),
        "sie {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `sie admin STORE… ARGS…`, where `store` is `["--data-dir", DIR]` or
/// `["--database-url", URL]`; its stdout.
pub fn admin(store: &[&str], args: &[&str]) -> String {
    let mut all = vec!["admin"];
    all.extend_from_slice(store);
    all.extend_from_slice(args);
    sie_ok(&all)
}

/// Writes the tiny model into `dir/tiny` with `sie model tiny`; its path.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    sie_ok(&["model", "tiny", "--out", model.to_str().unwrap()]);
    model
}

/// Width and height of an encoded image.
pub fn image_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("the image decodes");
    (img.width(), img.height())
}

/// Whether `done()` comes to hold within `limit`, checking every `every`.
pub fn eventually(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
    true
}

/// A child `sie` process whose stderr is kept (for assertions on its log) and which dies
/// with the test.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `sie ARGS…` with `env`; the process and its stdout, line by line.
    pub fn spawn(
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (Proc, std::io::Lines<BufReader<ChildStdout>>) {
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

    /// Everything it wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) {
        let every = Duration::from_millis(50);
        let found = eventually(limit, every, || self.log().contains(needle));
        assert!(
            found,
            "no {needle:?} in the log within {limit:?}:\n{}",
            self.log()
        );
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for a clean exit within `limit`.
    pub fn expect_clean_exit(&mut self, limit: Duration) {
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

/// Reads `stdout` until a line starting with `prefix`; the rest of that line.
pub fn line_after(
    proc: &Proc,
    stdout: &mut std::io::Lines<BufReader<ChildStdout>>,
    prefix: &str,
) -> String {
    loop {
        let line = stdout
            .next()
            .unwrap_or_else(|| panic!("exited before printing {prefix:?}; log:\n{}", proc.log()))
            .unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

/// Keeps reading `stdout` so the child never blocks on a full pipe.
pub fn drain(stdout: std::io::Lines<BufReader<ChildStdout>>) {
    std::thread::spawn(move || for _ in stdout {});
}

/// `sie serve --model tiny` on a random port, spoken to over real HTTP with the key it
/// printed.
pub struct Server {
    pub proc: Proc,
    /// The SIE base URL of the organization `default`.
    pub base: String,
    pub key: String,
    pub client: reqwest::blocking::Client,
}

impl Server {
    /// Starts `sie serve --model tiny` on `data_dir` and waits for its address (and, on a
    /// fresh directory, its first API key; on a used one, pass the key it printed then).
    pub fn start(data_dir: &Path, extra: &[&str], key: Option<&str>) -> Server {
        Server::start_model("tiny", data_dir, extra, key)
    }

    /// [`Server::start`] with `sie serve --model MODEL`.
    pub fn start_model(model: &str, data_dir: &Path, extra: &[&str], key: Option<&str>) -> Server {
        let mut args = vec![
            "serve",
            "--model",
            model,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ];
        args.push(data_dir.to_str().unwrap());
        args.extend_from_slice(extra);
        let (proc, mut stdout) = Proc::spawn(&args, &[("SIE_LOG", "warn")]);
        let address = line_after(&proc, &mut stdout, "listening on ");
        let key = match key {
            Some(k) => k.to_owned(),
            None => line_after(&proc, &mut stdout, "api key: "),
        };
        drain(stdout);
        Server {
            proc,
            base: format!(
                "{address}/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1"
            ),
            key,
            client: reqwest::blocking::Client::new(),
        }
    }

    /// The process id, for what /proc says of it.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// `127.0.0.1:PORT`, for raw connections.
    pub fn addr(&self) -> &str {
        self.root().trim_start_matches("http://")
    }

    /// The base URL's path (`/api/beta/organizations/default/…`).
    pub fn path(&self) -> &str {
        &self.base[self.root().len()..]
    }

    pub fn root(&self) -> &str {
        &self.base[..self.base.find("/api/").unwrap()]
    }

    pub fn post(&self, body: &str) -> reqwest::blocking::Response {
        self.client
            .post(&self.base)
            .header("Salad-Api-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .unwrap()
    }

    pub fn submit(&self, body: Value) -> String {
        let r = self.post(&body.to_string());
        assert_eq!(r.status(), 202, "{}", r.text().unwrap());
        let v: Value = r.json().unwrap();
        v["resultUrl"].as_str().unwrap().to_owned()
    }

    /// An authenticated GET, the raw response.
    pub fn get_raw(&self, url: &str) -> reqwest::blocking::Response {
        self.client
            .get(url)
            .header("Salad-Api-Key", &self.key)
            .send()
            .unwrap()
    }

    pub fn get(&self, url: &str) -> Value {
        let r = self.get_raw(url);
        assert_eq!(r.status(), 200, "{url}");
        r.json().unwrap()
    }

    /// Polls `url` until its body satisfies `done`, failing after `within`; that body.
    pub fn poll(&self, url: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let every = Duration::from_millis(50);
        let met = eventually(within, every, || {
            last = self.get(url);
            done(&last)
        });
        assert!(met, "{url} after {within:?}: {last}");
        last
    }

    /// Polls until the task reports progress (a worker is running it).
    pub fn wait_until_running(&self, url: &str) {
        let running = |v: &Value| v.get("progress").is_some();
        self.poll(url, Duration::from_secs(120), running);
    }

    /// Polls until the task is no longer pending.
    pub fn finish(&self, url: &str, within: Duration) -> Value {
        self.poll(url, within, |v| v["status"] != "pending")
    }
}

/// A small, fast text-to-image body: 64x64, `steps` steps, `images` images, seed `seed`.
pub fn small(seed: u64, images: u32, steps: u32) -> Value {
    json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": steps,
                        "width": 64, "height": 64, "num_images_per_prompt": images, "seed": seed},
        "callInputs": {"SCHEDULER": "EulerAncestralDiscreteScheduler"}
    })
}

/// A raw connection to `addr` (`host:port`) that gives up reading after `read_timeout`.
pub fn raw(addr: &str, read_timeout: Duration) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("the server accepts connections");
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream
}

/// One HTTP/1.1 answer as it came over a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// Interim answers (`100 Continue`) that came before it.
    pub interim: Vec<u16>,
    pub status: u16,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer: its head (after any `1xx`), then a body of its `Content-Length`, or up
/// to the end of the connection without one. An error when the connection ends (or the
/// read times out) before a whole head came.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let mut interim = Vec::new();
    loop {
        let head = read_head(stream)?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            interim.push(status);
            continue;
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse::<usize>().unwrap());
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                stream.read_exact(&mut body)?;
            }
            None => {
                stream.read_to_end(&mut body)?;
            }
        }
        return Ok(RawResponse {
            interim,
            status,
            headers,
            body,
        });
    }
}

/// Reads up to and including the blank line that ends a head, a byte at a time (so
/// nothing after it is consumed); the head without it.
pub fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    head.truncate(head.len() - 4);
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Whether the other end closed `stream` (or reset it) within `limit`, having sent
/// nothing; `Err` with what it sent instead.
pub fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<bool, String> {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => Ok(true),
        Ok(n) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(false)
        }
        Err(_) => Ok(true),
    }
}

/// A process's resident memory, in bytes (`VmRSS` of /proc/PID/status).
pub fn rss(pid: u32) -> u64 {
    read_rss(pid).expect("VmRSS in /proc/PID/status of a live process")
}

fn read_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    Some(kib * 1024)
}

/// How many descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The highest resident memory a process reaches while this watches it (sampled every
/// 10 ms, so a peak shorter than that may be missed; the allocator keeps freed memory, so
/// peaks last).
pub struct PeakRss {
    stop: Arc<AtomicBool>,
    watcher: JoinHandle<u64>,
}

impl PeakRss {
    pub fn watch(pid: u32) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // A process that died meanwhile (its test failed) reads as no memory.
                let mut peak = 0;
                while !stop.load(Ordering::SeqCst) {
                    peak = peak.max(read_rss(pid).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak.max(read_rss(pid).unwrap_or(0))
            })
        };
        PeakRss { stop, watcher }
    }

    /// The peak seen, in bytes.
    pub fn peak(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.watcher.join().unwrap()
    }
}

pub const MB: u64 = 1_000_000;
