//! What every end-to-end test of the `sie` binary shares: running it, reading a child
//! process's output while it lives, the seed's example, the tiny model, `sie admin`, and
//! waiting for a condition with a deadline instead of sleeping a fixed time.

#![allow(dead_code)] // each test binary uses part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
