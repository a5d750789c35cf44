//! `sie serve` as an operator and a client meet it: the real binary on a random port with a
//! fresh data directory and the tiny model, spoken to over real HTTP. Here are what only the
//! whole process shows (the seed's example end to end, crashes and restarts, signals,
//! result expiry, `sie admin` and `sie generate` against a running server); every route and
//! refusal is tested in-process in `crates/server/tests/`.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{admin, image_size, small, Server};
use serde_json::{json, Value};
use sie_api::SEED_EXAMPLE;

fn png_size(b64: &Value) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png
    );
    image_size(&bytes)
}

#[test]
fn the_seed_example_succeeds_with_a_512_png() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let r = server.post(SEED_EXAMPLE);
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = r.json().unwrap();
    let url = v["resultUrl"].as_str().unwrap();
    assert_eq!(url, location);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with(v["requestId"].as_str().unwrap()));

    let done = server.finish(url, Duration::from_secs(900));
    assert_eq!(done["status"], "success", "{done}");
    let out = &done["modelOutputs"];
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    assert_eq!(png_size(&out["images"][0]), (512, 512));
    assert_eq!(out["nsfw_content_detected"], json!([false]));
    assert!(out["seed"].as_u64().is_some());
    assert_eq!(out["$meta"]["SCHEDULER"], "LMSDiscreteScheduler");
}

#[test]
fn a_killed_server_finishes_every_accepted_task_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A short lease, so the tasks the killed process held are re-leased soon after restart.
    let args = ["--lease", "2s", "--workers", "2"];
    let mut server = Server::start(dir.path(), &args, None);
    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(server.submit(small(100 + i, 1, 4)));
    }
    // Kill it (SIGKILL) while tasks are running, some done and some still queued.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut succeeded = 0;
        for url in &urls {
            if server.get(url)["status"] == "success" {
                succeeded += 1;
            }
        }
        if succeeded >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut before = Vec::new();
    for url in &urls {
        before.push(server.get(url));
    }
    assert!(
        before.iter().any(|v| v["status"] == "pending"),
        "everything finished before the kill"
    );
    server.proc.kill9();
    let key = server.key.clone();
    drop(server);

    let server = Server::start(dir.path(), &args, Some(&key));
    let mut after = Vec::new();
    for url in &urls {
        let url = url.replace(
            &url[..url.find("/api/").unwrap()],
            &server.base[..server.base.find("/api/").unwrap()],
        );
        let v = server.finish(&url, Duration::from_secs(300));
        assert_eq!(v["status"], "success", "{url}: {v}");
        after.push(v);
    }
    // Tasks that had finished before the kill answer exactly as they did.
    for (b, a) in before.iter().zip(&after) {
        if b["status"] == "success" {
            assert_eq!(b["modelOutputs"]["images"], a["modelOutputs"]["images"]);
        }
    }
    let r = server
        .client
        .get(format!("{}?page_size=100", server.base))
        .header("Salad-Api-Key", &server.key)
        .send()
        .unwrap();
    let list: Value = r.json().unwrap();
    assert_eq!(list["total"], 20, "tasks were lost or duplicated: {list}");

    // SIGTERM: the server stops taking requests and exits cleanly.
    let mut server = server;
    server.proc.sigterm();
    server.proc.expect_clean_exit(Duration::from_secs(60));
}

#[test]
fn sie_admin_manages_accounts_orgs_and_keys_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["account", "create", "bob"],
    );
    admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["org", "create", "acme", "--owner", "bob"],
    );
    let key = admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["key", "create", "--account", "bob"],
    )
    .trim()
    .to_owned();
    assert!(key.starts_with("sie_"), "{key}");
    let acme = server.base.replace("/default/", "/acme/");
    let post = |key: &str| {
        server
            .client
            .post(&acme)
            .header("Salad-Api-Key", key)
            .header("Content-Type", "application/json")
            .body(small(1, 1, 1).to_string())
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post(&key), 403, "no billing information yet");
    admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["org", "approve", "acme"],
    );
    assert_eq!(post(&key), 202);
    // Bob is not a member of `default`; the first key's account is not a member of `acme`.
    let r = server
        .client
        .get(&server.base)
        .header("Salad-Api-Key", &key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["org", "list"],
    );
    assert!(list.contains("acme\tyes\t1"), "{list}");
    let prefix = &key[..12];
    admin(
        &["--data-dir", dir.path().to_str().unwrap()],
        &["key", "revoke", prefix],
    );
    assert_eq!(post(&key), 401, "a revoked key still works");
}

#[test]
fn results_expire_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--result-ttl", "2s"], None);
    let url = server.submit(small(3, 1, 1));
    assert_eq!(
        server.finish(&url, Duration::from_secs(60))["status"],
        "success"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server
            .client
            .get(&url)
            .header("Salad-Api-Key", &server.key)
            .send()
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the result outlived its 2 s TTL");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn sie_generate_saves_the_images_and_prints_the_servers_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let root = server.root().to_owned();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        std::process::Command::new(common::SIE)
            .args([
                "generate",
                "An oil painting of a salad",
                "--server",
                &root,
                "--key",
                &server.key,
            ])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&[
        "--steps", "2", "--width", "64", "--height", "64", "--images", "2", "--seed", "4",
        "--format", "webp",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    assert!(stdout.contains("seed: 4"), "{stdout}");
    let mut files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    for f in &files {
        assert_eq!(f.extension().unwrap(), "webp");
        let img = image::open(f).unwrap();
        assert_eq!((img.width(), img.height()), (64, 64));
    }
    let bad = run(&["--width", "500"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("use 496 or 504"),
        "{stderr}"
    );

    // From an image, and inpainting with a mask: without --width/--height the output takes
    // the image's size rounded down to multiples of 8.
    let photo = dir.path().join("photo.png");
    let mask = dir.path().join("mask.png");
    image::RgbImage::from_fn(75, 70, |x, y| image::Rgb([x as u8 * 3, y as u8 * 3, 90]))
        .save(&photo)
        .unwrap();
    image::RgbImage::from_fn(20, 20, |x, _| image::Rgb([if x > 9 { 255 } else { 0 }; 3]))
        .save(&mask)
        .unwrap();
    for (extra, pipeline) in [
        (vec![], "StableDiffusionImg2ImgPipeline"),
        (
            vec!["--mask", mask.to_str().unwrap()],
            "StableDiffusionInpaintPipeline",
        ),
    ] {
        std::fs::remove_dir_all(&out).unwrap();
        let mut args = vec![
            "--image",
            photo.to_str().unwrap(),
            "--strength",
            "0.5",
            "--steps",
            "2",
        ];
        args.extend(extra);
        let done = run(&args);
        assert!(
            done.status.success(),
            "{pipeline}: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        let files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{pipeline}: {files:?}");
        let img = image::open(&files[0]).unwrap();
        assert_eq!((img.width(), img.height()), (72, 64), "{pipeline}");
    }
    let bad = run(&["--image", photo.to_str().unwrap(), "--strength", "2"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && stderr.contains("modelInputs.strength"),
        "{stderr}"
    );
}

#[test]
fn sigterm_gives_a_running_task_back_and_a_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], None);
    let long = json!({"modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256, "seed": 8}});
    let url = server.submit(long);
    server.wait_until_running(&url);
    server.proc.sigterm();
    // The worker stops at its next step instead of running the other ~149.
    server.proc.expect_clean_exit(Duration::from_secs(30));
    let key = server.key.clone();
    drop(server);

    let server = Server::start(dir.path(), &[], Some(&key));
    let url = format!("{}/{}", server.base, url.rsplit('/').next().unwrap());
    let v = server.get(&url);
    assert_eq!(v["status"], "pending", "{v}");
    let v = server.finish(&url, Duration::from_secs(600));
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["modelOutputs"]["seed"], 8);
}

#[test]
fn a_forgotten_portal_password_is_reset_by_the_operator_and_manual_approval_waits() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--approval", "manual"], None);
    let root = server.root().to_owned();
    let browser = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |path: &str, fields: &[(&str, &str)]| {
        browser
            .post(format!("{root}{path}"))
            .form(fields)
            .send()
            .unwrap()
    };
    let r = form(
        "/portal/signup",
        &[
            ("email", "lin@example.com"),
            ("password", "a forgettable passphrase"),
        ],
    );
    assert_eq!(r.status(), 200);
    let data_dir = ["--data-dir", dir.path().to_str().unwrap()];
    let new = admin(&data_dir, &["account", "reset-password", "LIN@example.com"]);
    let new = new.trim();
    assert_eq!(new.len(), 20, "{new}");
    let old = form(
        "/portal/login",
        &[
            ("email", "lin@example.com"),
            ("password", "a forgettable passphrase"),
        ],
    );
    assert_eq!(old.status(), 401);
    let ok = form(
        "/portal/login",
        &[("email", "lin@example.com"), ("password", new)],
    );
    assert_eq!(ok.status(), 303);
    let cookie = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    // With --approval manual, billing information leaves the organization waiting for the
    // operator; `sie admin org approve` approves it.
    let page = |path: &str| {
        browser
            .get(format!("{root}{path}"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let orgs = page("/portal/orgs");
    let at = orgs.find("name=\"csrf\" value=\"").unwrap() + 19;
    let csrf = orgs[at..at + orgs[at..].find('"').unwrap()].to_owned();
    let post = |path: &str, fields: &[(&str, &str)]| {
        browser
            .post(format!("{root}{path}"))
            .header("cookie", &cookie)
            .form(fields)
            .send()
            .unwrap()
    };
    assert_eq!(
        post("/portal/orgs", &[("csrf", &csrf), ("name", "lins")]).status(),
        303
    );
    let billing = [
        ("csrf", csrf.as_str()),
        ("name", "Lin"),
        ("email", "lin@example.com"),
        ("address", "x"),
        ("country", "NL"),
    ];
    let r = post("/portal/orgs/lins/billing", &billing);
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("waits for the operator"));
    assert!(page("/portal/orgs/lins").contains("waiting for the operator"));
    admin(&data_dir, &["org", "approve", "lins"]);
    assert!(page("/portal/orgs/lins").contains("approved"));
}

/// A request a receiver got: its head, its body, and the status it was answered.
type Hooked = (String, Vec<u8>, u16);

/// A webhook receiver on 127.0.0.1: one thread answering each request `503` until
/// `accepting` is raised, `204` after; every request it got.
struct Receiver {
    url: String,
    accepting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    got: std::sync::Arc<std::sync::Mutex<Vec<Hooked>>>,
}

fn receiver() -> Receiver {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let accepting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a, g) = (accepting.clone(), got.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let status = if a.load(Ordering::SeqCst) { 204 } else { 503 };
            g.lock().unwrap().push((head, body, status));
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    Receiver {
        url,
        accepting,
        got,
    }
}

/// A header's value in a raw request head.
fn header_of<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

#[test]
fn a_killed_server_delivers_its_pending_webhooks_after_restart() {
    use hmac::{Hmac, Mac};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let hook = receiver();
    let args = ["--allow-private-webhooks"];
    let mut server = Server::start(dir.path(), &args, None);
    let data_dir = ["--data-dir", dir.path().to_str().unwrap()];
    let secret = admin(&data_dir, &["org", "webhook-secret", "default"]);
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");

    let mut body = small(11, 1, 2);
    body["callInputs"]["webhook_url"] = hook.url.clone().into();
    let url = server.submit(body);
    let done = server.finish(&url, Duration::from_secs(120));
    assert_eq!(done["status"], "success", "{done}");
    // The receiver refuses the first attempt; the delivery is pending when the server dies.
    assert!(common::eventually(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || !hook.got.lock().unwrap().is_empty()
    ));
    server.proc.kill9();
    let key = server.key.clone();
    drop(server);
    hook.accepting.store(true, Ordering::SeqCst);

    let _server = Server::start(dir.path(), &args, Some(&key));
    let delivered = || {
        hook.got
            .lock()
            .unwrap()
            .iter()
            .find(|(_, _, status)| *status == 204)
            .cloned()
    };
    assert!(
        common::eventually(Duration::from_secs(120), Duration::from_millis(50), || {
            delivered().is_some()
        }),
        "the pending webhook was not delivered after the restart"
    );
    let (head, body, _) = delivered().unwrap();
    // Verified as a Standard Webhooks receiver does.
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    let (id, timestamp) = (
        header_of(&head, "webhook-id"),
        header_of(&head, "webhook-timestamp"),
    );
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(header_of(&head, "webhook-signature"), expected);
    let sent: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sent["status"], "success");
    assert_eq!(sent["requestId"], done["requestId"]);
    assert_eq!(
        sent["modelOutputs"]["images"],
        done["modelOutputs"]["images"]
    );
}

#[test]
fn max_batch_is_taken_and_checked_and_each_task_gets_its_own_seed_and_images() {
    // What batching does is tested in crates/worker/tests/worker.rs; here, the flag's way in.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-batch", "4"], None);
    let urls: Vec<String> = (0..4).map(|i| server.submit(small(40 + i, 1, 3))).collect();
    let mut seen = std::collections::HashSet::new();
    for (i, url) in urls.iter().enumerate() {
        let done = server.finish(url, Duration::from_secs(120));
        assert_eq!(done["status"], "success", "{done}");
        assert_eq!(done["modelOutputs"]["seed"], 40 + i as u64);
        assert!(seen.insert(done["modelOutputs"]["images"][0].to_string()));
    }
    for bad in ["0", "65", "lots"] {
        let refused = common::sie(&["serve", "--max-batch", bad, "--model", "tiny"]);
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("--max-batch") && err.contains("auto"), "{err}");
    }
    // By default (`auto`) the CPU runs one task at a time, and says so.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    server
        .proc
        .wait_for_log("max batch: 1 (on the CPU", Duration::from_secs(30));
}
