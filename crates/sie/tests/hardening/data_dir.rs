//! The data directory (issue 13, items 11 and 13): readable by its owner alone, held by
//! one server at a time, and a restarted server takes back at once what its killed
//! predecessor was running.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::common::{admin, eventually, Proc, Server};
use super::serve;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The directory and each database file, with its mode.
fn modes(data: &Path) -> Vec<(String, u32)> {
    let mut all = vec![("data directory".to_owned(), mode(data))];
    for file in ["sie.db", "sie.db-wal", "sie.db-shm"] {
        let path = data.join(file);
        if path.exists() {
            all.push((file.to_owned(), mode(&path)));
        }
    }
    all
}

fn assert_private(data: &Path) {
    let found = modes(data);
    assert!(found.len() >= 2, "{found:?}");
    for (what, mode) in &found {
        let want = if what == "data directory" {
            0o700
        } else {
            0o600
        };
        assert_eq!(*mode, want, "{what} is {mode:o}: {found:?}");
    }
}

fn loosen(data: &Path) {
    chmod(data, 0o755);
    for file in ["sie.db", "sie.db-wal", "sie.db-shm"] {
        if data.join(file).exists() {
            chmod(&data.join(file), 0o644);
        }
    }
}

/// A fresh data directory is 0700 and its database files 0600; one made readable by
/// others is tightened again by `sie admin --data-dir` and by `sie serve` at start.
#[test]
fn the_data_directory_is_its_owners_alone_and_is_tightened_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = serve(&data, &["--workers", "0"]);
    assert!(
        data.join("sie.db-wal").exists(),
        "WAL mode keeps a -wal file"
    );
    assert_private(&data);
    let key = server.key.clone();
    drop(server);

    loosen(&data);
    admin(&["--data-dir", data.to_str().unwrap()], &["org", "list"]);
    assert_private(&data);

    loosen(&data);
    let _server = Server::start(&data, &["--workers", "0"], Some(&key));
    assert_private(&data);
}

/// While one `sie serve` holds a data directory, a second one on it is refused at start,
/// saying who holds it; `sie admin` still works beside the first.
#[test]
fn a_second_server_on_one_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path(), &["--workers", "0"]);
    let args = [
        "serve",
        "--model",
        "tiny",
        "--workers",
        "0",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    let (mut second, stdout) = Proc::spawn(&args, &[]);
    super::common::drain(stdout);
    let exited = eventually(Duration::from_secs(60), Duration::from_millis(50), || {
        second.child.try_wait().unwrap().is_some()
    });
    assert!(exited, "a second server started on a held data directory");
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let log = second.log();
    assert!(
        log.contains("another `sie serve`") && log.contains("sie.lock"),
        "{log}"
    );
    assert!(log.contains(&first.pid().to_string()), "{log}");
    let orgs = admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["org", "list"],
    );
    assert!(orgs.contains("default"), "{orgs}");
    assert_eq!(first.get(&first.base)["total"], 0, "the first still serves");
}

/// `kill -9` of `sie serve` while its worker runs a task, then a restart on the same data
/// directory: the task runs again at once, though its lease (300 s here) has not lapsed.
#[test]
fn after_kill_9_the_running_task_runs_again_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--lease", "300s"];
    let mut server = serve(dir.path(), &flags);
    let url = server.submit(json!({
        "modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256,
                        "height": 256, "seed": 9}
    }));
    let progress = |v: &Value| v.get("progress").cloned();
    server.wait_until_running(&url);
    server.proc.kill9();
    let key = server.key.clone();
    drop(server);

    let server = Server::start(dir.path(), &flags, Some(&key));
    let url = format!("{}/{}", server.base, url.rsplit('/').next().unwrap());
    // Were the killed run's lease still held, its last progress would stay as it is until
    // the lease lapsed; a new attempt reports progress of its own.
    let at_restart = progress(&server.get(&url));
    let moved = server.poll(&url, Duration::from_secs(90), |v| {
        v["status"] != "pending" || progress(v).is_some_and(|p| Some(p) != at_restart)
    });
    assert_ne!(moved["status"], "failed", "{moved}");
    let log = server.proc.log();
    assert!(log.contains("go back to the queue"), "{log}");
}
