//! A PostgreSQL restart (every connection cut) loses no accepted task, and the API
//! recovers by itself.

use std::path::PathBuf;
use std::process::Command;

use std::time::Duration;

use super::*;

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
    // Running (progress comes with the heartbeat, once a second), or already past it.
    let every = Duration::from_millis(50);
    let started = eventually(Duration::from_secs(120), every, || {
        let v = get_task(&c, &api.url, &t.key, &ids[0]);
        v.get("progress").is_some() || v["status"] != "pending"
    });
    assert!(started, "never started");

    pg.ctl_stop();
    // While the database is down: not ready, and no 202 (nothing can be stored).
    let down = eventually(Duration::from_secs(30), every, || {
        readyz(&c, &api.url) == 503
    });
    assert!(down, "readyz never failed while PostgreSQL was down");
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
    let up = eventually(Duration::from_secs(60), every, || {
        readyz(&c, &api.url) == 200
    });
    assert!(up, "readyz never recovered; log:\n{}", api.proc.log());
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
