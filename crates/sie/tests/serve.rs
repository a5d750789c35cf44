//! `sie serve` as a client meets it: the real binary on a random port with a fresh data
//! directory and the tiny model, spoken to over real HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The seed document's example request, its trailing comma removed.
const SEED_EXAMPLE: &str = r#"{
  "modelInputs": {
    "prompt": "An oil painting of a salad",
    "num_inference_steps": 50,
    "guidance_scale": 20,
    "width": 512,
    "height": 512
  },
  "callInputs": {
    "PIPELINE": "StableDiffusionPipeline",
    "SCHEDULER": "LMSDiscreteScheduler",
    "safety_checker": "true"
  }
}"#;

struct Server {
    child: Child,
    base: String,
    key: String,
    client: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `sie serve` on `data_dir` and waits for its address (and, on a fresh
    /// directory, its first API key).
    fn start(data_dir: &Path, extra: &[&str], key: Option<&str>) -> Server {
        Self::start_model("tiny", data_dir, extra, key)
    }

    /// As `start`, serving `model` (a directory, or `tiny`).
    fn start_model(model: &str, data_dir: &Path, extra: &[&str], key: Option<&str>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
            .args([
                "serve",
                "--model",
                model,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("SIE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sie serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut address = None;
        let mut found_key = key.map(str::to_owned);
        while address.is_none() || found_key.is_none() {
            let line = lines
                .next()
                .expect("sie serve printed its address")
                .unwrap();
            if let Some(a) = line.strip_prefix("listening on ") {
                address = Some(a.to_owned());
            }
            if let Some(k) = line.strip_prefix("api key: ") {
                found_key = Some(k.to_owned());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base: format!(
                "{}/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1",
                address.unwrap()
            ),
            key: found_key.unwrap(),
            client: reqwest::Client::new(),
        }
    }

    async fn post(&self, body: &str) -> reqwest::Response {
        self.client
            .post(&self.base)
            .header("Salad-Api-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    async fn submit(&self, body: Value) -> String {
        let r = self.post(&body.to_string()).await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
        let v: Value = r.json().await.unwrap();
        v["resultUrl"].as_str().unwrap().to_owned()
    }

    /// An authenticated GET, the raw response.
    async fn get_raw(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .header("Salad-Api-Key", &self.key)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, url: &str) -> Value {
        let r = self.get_raw(url).await;
        assert_eq!(r.status(), 200, "{url}");
        r.json().await.unwrap()
    }

    /// Polls until the task reports progress (a worker is running it).
    async fn wait_until_running(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.get(url).await.get("progress").is_none() {
            assert!(Instant::now() < deadline, "{url} never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit, which it must do cleanly and `within` the limit.
    fn expect_clean_exit(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "sie serve exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sie serve did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the task is no longer pending.
    async fn finish(&self, url: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let v = self.get(url).await;
            if v["status"] != "pending" {
                return v;
            }
            assert!(Instant::now() < deadline, "{url} still pending: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn png_size(b64: &Value) -> (u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Png
    );
    let img = image::load_from_memory(&bytes).unwrap();
    (img.width(), img.height())
}

fn small(seed: u64, images: u32, steps: u32) -> Value {
    json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": steps,
                        "width": 64, "height": 64, "num_images_per_prompt": images, "seed": seed},
        "callInputs": {"SCHEDULER": "EulerAncestralDiscreteScheduler"}
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_example_succeeds_with_a_512_png() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let r = server.post(SEED_EXAMPLE).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = r.json().await.unwrap();
    let url = v["resultUrl"].as_str().unwrap();
    assert_eq!(url, location);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with(v["requestId"].as_str().unwrap()));

    let done = server.finish(url, Duration::from_secs(900)).await;
    assert_eq!(done["status"], "success", "{done}");
    let out = &done["modelOutputs"];
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    assert_eq!(png_size(&out["images"][0]), (512, 512));
    assert_eq!(out["nsfw_content_detected"], json!([false]));
    assert!(out["seed"].as_u64().is_some());
    assert_eq!(out["$meta"]["SCHEDULER"], "LMSDiscreteScheduler");
}

#[tokio::test(flavor = "multi_thread")]
async fn images_seeds_idempotency_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);

    // Three images; the same seed twice gives the same images.
    let a = server.submit(small(5, 3, 2)).await;
    let b = server.submit(small(5, 3, 2)).await;
    let a = server.finish(&a, Duration::from_secs(120)).await;
    let b = server.finish(&b, Duration::from_secs(120)).await;
    assert_eq!(a["status"], "success", "{a}");
    let images = a["modelOutputs"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    assert_eq!(png_size(&images[0]), (64, 64));
    assert_eq!(a["modelOutputs"]["images"], b["modelOutputs"]["images"]);

    // An Idempotency-Key makes a retried POST return the first task.
    let post_with_key = || async {
        let r = server
            .client
            .post(&server.base)
            .header("Salad-Api-Key", &server.key)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", "retry-1")
            .body(small(9, 1, 1).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["requestId"].clone()
    };
    assert_eq!(post_with_key().await, post_with_key().await);

    // A long task occupies the one worker; a second one waits in the queue.
    let long = json!({"modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256}});
    let running = server.submit(long.clone()).await;
    server.wait_until_running(&running).await;
    let queued = server.submit(long).await;
    let v = server.get(&queued).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["queuePosition"], 1, "{v}");

    // Cancel the queued one: it fails at once and never runs.
    let r = server
        .client
        .delete(&queued)
        .header("Salad-Api-Key", &server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = server.get(&queued).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "cancelled");

    // Cancel the running one: it stops at its next step.
    let r = server
        .client
        .delete(&running)
        .header("Salad-Api-Key", &server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = server.finish(&running, Duration::from_secs(60)).await;
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error"]["code"], "cancelled");

    // Usage counts today's images; health and readiness answer.
    let root = &server.base[..server.base.find("/api/").unwrap()];
    let usage: Value = server
        .client
        .get(format!("{root}/api/beta/organizations/default/usage"))
        .header("Salad-Api-Key", &server.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(usage["days"][0]["images"].as_u64().unwrap() >= 7, "{usage}");
    for route in ["healthz", "readyz"] {
        let r = server
            .client
            .get(format!("{root}/{route}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{route}");
    }

    // The organization's list has them all, newest first.
    let r = server
        .client
        .get(&server.base)
        .header("Salad-Api-Key", &server.key)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["total"], 5, "{list}");
    assert_eq!(list["tasks"][0]["status"], "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_are_problems_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--org-queue-cap", "1"], None);
    let c = &server.client;
    let problem = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(ct, "application/problem+json");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], status);
        (status, v)
    };

    // 401: no key, an unknown key.
    let (s, v) = problem(c.get(&server.base).send().await.unwrap()).await;
    assert_eq!((s, v["code"].as_str().unwrap()), (401, "missing_api_key"));
    let (s, v) = problem(
        c.get(&server.base)
            .header("Salad-Api-Key", "sie_nope")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, v["code"].as_str().unwrap()), (401, "invalid_api_key"));
    // 404: an organization the key cannot see; an unknown task; an unknown route.
    let other = server.base.replace("/default/", "/someone-else/");
    let (s, v) = problem(server.get_raw(&other).await).await;
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (404, "unknown_organization")
    );
    let url = format!("{}/{}", server.base, "00000000-0000-4000-8000-000000000000");
    let (s, _) = problem(server.get_raw(&url).await).await;
    assert_eq!(s, 404);
    // 403: an organization without billing information.
    {
        use sie_store::{OrgName, SqliteStore, Store, Timestamp};
        let store = SqliteStore::open(dir.path().join("sie.db")).unwrap();
        let account = store.authenticate(&server.key).unwrap().unwrap();
        store
            .create_org(
                &OrgName::parse("unpaid").unwrap(),
                account,
                Timestamp::now(),
            )
            .unwrap();
    }
    let unpaid = server.base.replace("/default/", "/unpaid/");
    let (s, v) = problem(server.get_raw(&unpaid).await).await;
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (403, "organization_not_approved")
    );

    // 400s name the field; bad JSON names line and column; 415; 413; 405.
    for (body, code, needle) in [
        (
            "{\"modelInputs\": {\"prompt\": \"x\",}}",
            "invalid_json",
            "column",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "width": 500}}"#,
            "invalid_value",
            "use 496 or 504",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "stepz": 1}}"#,
            "unknown_field",
            "modelInputs.stepz",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "num_inference_steps": 151}}"#,
            "out_of_range",
            "1..=150",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"SCHEDULER": "Karras"}}"#,
            "invalid_value",
            "LMSDiscreteScheduler",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"PIPELINE": "Flux"}}"#,
            "invalid_value",
            "StableDiffusionPipeline",
        ),
        (
            r#"{"modelInputs": {"prompt": "x"}, "callInputs": {"safety_checker": "maybe"}}"#,
            "wrong_type",
            "\"true\" or \"false\"",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "image": "@@@"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}"#,
            "invalid_image",
            "base64",
        ),
        (
            r#"{"modelInputs": {"prompt": "x", "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"}, "callInputs": {"PIPELINE": "StableDiffusionImg2ImgPipeline"}}"#,
            "pipeline_unavailable",
            "available: StableDiffusionPipeline",
        ),
    ] {
        let (s, v) = problem(server.post(body).await).await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["code"], code, "{body}: {v}");
        assert!(
            v["detail"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let r = c
        .post(&server.base)
        .header("Salad-Api-Key", &server.key)
        .header("Content-Type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    let (s, v) = problem(r).await;
    assert_eq!(
        (s, v["code"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );
    let big = format!(
        "{{\"modelInputs\": {{\"prompt\": \"{}\"}}}}",
        "a".repeat(21 * 1024 * 1024)
    );
    let (s, v) = problem(server.post(&big).await).await;
    assert_eq!((s, v["code"].as_str().unwrap()), (413, "body_too_large"));
    // Even axum's own rejections (a path segment that is not UTF-8, a bad query) are problems.
    let url = format!("{}/%FF", server.base);
    let r = server.get_raw(&url).await;
    let (s, _) = problem(r).await;
    assert_eq!(s, 400);
    let url = format!("{}?page_size=1000", server.base);
    let r = server.get_raw(&url).await;
    let (s, v) = problem(r).await;
    assert_eq!((s, v["code"].as_str().unwrap()), (400, "out_of_range"));
    let r = c
        .put(&server.base)
        .header("Salad-Api-Key", &server.key)
        .send()
        .await
        .unwrap();
    let (s, _) = problem(r).await;
    assert_eq!(s, 405);

    // 429 with Retry-After once the organization's queue cap (1 here) is reached.
    let long = json!({"modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256}});
    let running = server.submit(long.clone()).await;
    server.wait_until_running(&running).await;
    server.submit(long.clone()).await;
    let r = server.post(&long.to_string()).await;
    assert!(
        r.headers().get("retry-after").is_some(),
        "429 without Retry-After"
    );
    let (s, v) = problem(r).await;
    assert_eq!((s, v["code"].as_str().unwrap()), (429, "queue_full"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_finishes_every_accepted_task_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A short lease, so the tasks the killed process held are re-leased soon after restart.
    let args = ["--lease", "2s", "--workers", "2"];
    let mut server = Server::start(dir.path(), &args, None);
    let mut urls = Vec::new();
    for i in 0..20 {
        urls.push(server.submit(small(100 + i, 1, 4)).await);
    }
    // Kill it (SIGKILL) while tasks are running, some done and some still queued.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut succeeded = 0;
        for url in &urls {
            if server.get(url).await["status"] == "success" {
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut before = Vec::new();
    for url in &urls {
        before.push(server.get(url).await);
    }
    assert!(
        before.iter().any(|v| v["status"] == "pending"),
        "everything finished before the kill"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let key = server.key.clone();
    drop(server);

    let server = Server::start(dir.path(), &args, Some(&key));
    let mut after = Vec::new();
    for url in &urls {
        let url = url.replace(
            &url[..url.find("/api/").unwrap()],
            &server.base[..server.base.find("/api/").unwrap()],
        );
        let v = server.finish(&url, Duration::from_secs(300)).await;
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
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["total"], 20, "tasks were lost or duplicated: {list}");

    // SIGTERM: the server stops taking requests and exits cleanly.
    let mut server = server;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    server.expect_clean_exit(Duration::from_secs(60));
}

fn admin(data_dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sie"))
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
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

#[tokio::test(flavor = "multi_thread")]
async fn sie_admin_manages_accounts_orgs_and_keys_of_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    admin(dir.path(), &["account", "create", "bob"]);
    admin(dir.path(), &["org", "create", "acme", "--owner", "bob"]);
    let key = admin(dir.path(), &["key", "create", "--account", "bob"])
        .trim()
        .to_owned();
    assert!(key.starts_with("sie_"), "{key}");
    let acme = server.base.replace("/default/", "/acme/");
    let post = |key: String| {
        let (client, acme) = (server.client.clone(), acme.clone());
        async move {
            client
                .post(&acme)
                .header("Salad-Api-Key", key)
                .header("Content-Type", "application/json")
                .body(small(1, 1, 1).to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post(key.clone()).await, 403, "no billing information yet");
    admin(dir.path(), &["org", "approve", "acme"]);
    assert_eq!(post(key.clone()).await, 202);
    // Bob is not a member of `default`; the first key's account is not a member of `acme`.
    let r = server
        .client
        .get(&server.base)
        .header("Salad-Api-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let list = admin(dir.path(), &["org", "list"]);
    assert!(list.contains("acme\tyes\t1"), "{list}");
    let prefix = &key[..12];
    admin(dir.path(), &["key", "revoke", prefix]);
    assert_eq!(post(key).await, 401, "a revoked key still works");
}

#[tokio::test(flavor = "multi_thread")]
async fn results_expire_after_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--result-ttl", "2s"], None);
    let url = server.submit(small(3, 1, 1)).await;
    assert_eq!(
        server.finish(&url, Duration::from_secs(60)).await["status"],
        "success"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = server
            .client
            .get(&url)
            .header("Salad-Api-Key", &server.key)
            .send()
            .await
            .unwrap();
        if r.status() == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the result outlived its 2 s TTL");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_checker_asking_for_one_is_refused_and_leaving_it_out_gives_null() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let out = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["model", "tiny", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success());
    let server = Server::start_model(model.to_str().unwrap(), &dir.path().join("data"), &[], None);
    let r = server.post(SEED_EXAMPLE).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "safety_checker_unavailable");
    assert!(
        v["detail"].as_str().unwrap().contains("--safety-checker"),
        "{v}"
    );
    let url = server
        .submit(json!({"modelInputs": {"prompt": "x", "num_inference_steps": 1, "width": 64, "height": 64}}))
        .await;
    let done = server.finish(&url, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success");
    assert_eq!(done["modelOutputs"]["nsfw_content_detected"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn sie_generate_saves_the_images_and_prints_the_servers_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], None);
    let root = server.base[..server.base.find("/api/").unwrap()].to_owned();
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sie"))
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
    let ok = tokio::task::block_in_place(|| {
        run(&[
            "--steps", "2", "--width", "64", "--height", "64", "--images", "2", "--seed", "4",
            "--format", "webp",
        ])
    });
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
    let bad = tokio::task::block_in_place(|| run(&["--width", "500"]));
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("use 496 or 504"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_gives_a_running_task_back_and_a_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[], None);
    let long = json!({"modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256, "seed": 8}});
    let url = server.submit(long).await;
    server.wait_until_running(&url).await;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // The worker stops at its next step instead of running the other ~149.
    server.expect_clean_exit(Duration::from_secs(30));
    let key = server.key.clone();
    drop(server);

    let server = Server::start(dir.path(), &[], Some(&key));
    let url = format!("{}/{}", server.base, url.rsplit('/').next().unwrap());
    let v = server.get(&url).await;
    assert_eq!(v["status"], "pending", "{v}");
    let v = server.finish(&url, Duration::from_secs(600)).await;
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["modelOutputs"]["seed"], 8);
}
