//! The in-process harness every server test shares: the real router on `127.0.0.1:0`, a
//! real SQLite file in a fresh directory, and (when asked) worker threads running the tiny
//! model through the same `StoreSource` seam `sie serve` uses. Tests speak real HTTP to it.
//!
//! One tiny model is written and loaded per test binary (it takes a second); every app
//! gets its own store, organization and key, so tests run in parallel without meeting.

#![allow(dead_code)] // each test binary uses part of the harness

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_engine::{LoadOptions, SafetyCheckerSource, StableDiffusion};
use sie_server::{AppState, Settings, Workers};
use sie_store::{AccountName, BillingNote, OrgName, QueueCaps, SqliteStore, Store, Timestamp};
use sie_worker::{StoreSource, Worker};

pub const BASE_PATH: &str = "/api/beta/organizations/acme/inference-endpoints/stable-diffusion-2-1";

/// The tiny model with a checker that flags nothing, the same model without one, and the
/// tiny inpainting model (a 9-channel UNet, no checker).
struct Models {
    _dir: tempfile::TempDir,
    with_checker: Arc<StableDiffusion>,
    without_checker: Arc<StableDiffusion>,
    inpainting: Arc<StableDiffusion>,
}

fn models() -> &'static Models {
    static MODELS: OnceLock<Models> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("tiny");
        write_tiny_model(&path, TinyOptions::default()).expect("write the tiny model");
        write_tiny_safety_checker(
            &path,
            TinyCheckerOptions {
                threshold: 1.0,
                ..Default::default()
            },
        )
        .expect("write the tiny checker");
        let load = |safety_checker| {
            let options = LoadOptions {
                safety_checker,
                ..LoadOptions::default()
            };
            Arc::new(StableDiffusion::load(&path, &options).expect("load the tiny model"))
        };
        let inpainting = dir.path().join("tiny-inpainting");
        let options = TinyOptions {
            inpainting: true,
            ..TinyOptions::default()
        };
        write_tiny_model(&inpainting, options).expect("write the tiny inpainting model");
        Models {
            with_checker: load(SafetyCheckerSource::ModelDefault),
            without_checker: load(SafetyCheckerSource::Disabled),
            inpainting: Arc::new(
                StableDiffusion::load(&inpainting, &LoadOptions::default())
                    .expect("load the tiny inpainting model"),
            ),
            _dir: dir,
        }
    })
}

/// How a test app is set up.
#[derive(Clone)]
pub struct Options {
    /// In-process workers running the tiny model; 0 keeps every task queued.
    pub workers: usize,
    pub safety_checker: bool,
    pub caps: QueueCaps,
    pub lease: Duration,
    /// The workers run the tiny inpainting model (9 channels: inpainting only, no checker).
    pub inpainting: bool,
    /// `--request-timeout`.
    pub request_timeout: Duration,
    /// The per-key and per-organization rate limits, when not the defaults.
    pub rate_limits: Option<(sie_server::Rate, sie_server::Rate)>,
    /// `--allow-private-webhooks`: webhooks to the test's own receivers on 127.0.0.1.
    pub allow_private_webhooks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: 1,
            safety_checker: true,
            caps: QueueCaps::default(),
            lease: Duration::from_secs(60),
            inpainting: false,
            request_timeout: sie_server::Limits::default().request_timeout,
            rate_limits: None,
            allow_private_webhooks: false,
        }
    }
}

impl Options {
    /// No workers: every task stays queued, for tests that drive the queue themselves.
    pub fn idle() -> Self {
        Options {
            workers: 0,
            ..Options::default()
        }
    }

    /// The tiny model without its safety checker.
    pub fn without_checker(self) -> Self {
        Options {
            safety_checker: false,
            ..self
        }
    }

    /// See [`Options::inpainting`].
    pub fn inpainting(self) -> Self {
        Options {
            inpainting: true,
            safety_checker: false,
            ..self
        }
    }

    pub fn request_timeout(self, request_timeout: Duration) -> Self {
        Options {
            request_timeout,
            ..self
        }
    }

    /// See [`Options::allow_private_webhooks`].
    pub fn allow_private_webhooks(self) -> Self {
        Options {
            allow_private_webhooks: true,
            ..self
        }
    }

    pub fn rate_limits(self, per_key: sie_server::Rate, per_org: sie_server::Rate) -> Self {
        Options {
            rate_limits: Some((per_key, per_org)),
            ..self
        }
    }

    pub fn lease(self, lease: Duration) -> Self {
        Options { lease, ..self }
    }

    pub fn caps(self, per_org: u32, global: u32) -> Self {
        let caps = QueueCaps { per_org, global };
        Options { caps, ..self }
    }
}

/// A running app: its address, a key of the approved organization `acme`, and its store.
pub struct TestApp {
    pub root: String,
    pub base: String,
    pub key: String,
    pub store: Arc<SqliteStore>,
    pub client: reqwest::Client,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

pub async fn spawn_app(options: Options) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Arc::new(SqliteStore::open(dir.path().join("sie.db")).expect("open the store"));
    let key = tenant(store.as_ref(), "acme");
    let model = match (options.inpainting, options.safety_checker) {
        (true, _) => models().inpainting.clone(),
        (false, true) => models().with_checker.clone(),
        (false, false) => models().without_checker.clone(),
    };
    let capabilities = sie_worker::task::capabilities(&model);
    let announcement = sie_worker::task::announcement(&model, "tiny");
    let mut settings = Settings {
        caps: options.caps,
        lease: options.lease,
        ..Settings::default()
    };
    settings.limits.request_timeout = options.request_timeout;
    settings.webhooks.allow_private = options.allow_private_webhooks;
    if let Some((per_key, per_org)) = options.rate_limits {
        (settings.limits.per_key, settings.limits.per_org) = (per_key, per_org);
    }
    let state = AppState::new(store.clone(), Workers::Local(capabilities), settings);
    state.metrics.set_local_workers(options.workers);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..options.workers)
        .map(|i| {
            let offer = sie_worker::task::offer(&announcement, &format!("local:{i}"));
            // As `sie serve` does: through the API's counted queue.
            let source = Arc::new(StoreSource::new(state.worker_queue(), offer, options.lease));
            let worker = Worker::new(source, model.clone()).with_stop(stop.clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    worker
                        .run_one(Duration::from_millis(200))
                        .expect("the in-process store answers");
                }
            })
        })
        .collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(sie_server::serve(listener, state, async {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("{root}{BASE_PATH}"),
        root,
        key,
        store,
        client: reqwest::Client::new(),
        stop,
        workers,
        shutdown: Some(tx),
        _dir: dir,
    }
}

/// An account owning the approved organization `org`; its API key.
pub fn tenant(store: &dyn Store, org: &str) -> String {
    let now = Timestamp::now();
    let account = store
        .create_account(&AccountName::parse(&format!("{org}-owner")).unwrap(), now)
        .unwrap();
    let name = OrgName::parse(org).unwrap();
    store.create_org(&name, account, now).unwrap();
    let billing = BillingNote::parse("invoice").unwrap();
    store.approve_org(&name, &billing, now).unwrap();
    store
        .create_api_key(account, now)
        .unwrap()
        .expose_key()
        .to_owned()
}

/// A small, fast text-to-image body: 64x64, `steps` steps, `images` images, seed `seed`.
pub fn small(seed: u64, images: u32, steps: u32) -> Value {
    json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": steps,
                        "width": 64, "height": 64, "num_images_per_prompt": images, "seed": seed},
        "callInputs": {"SCHEDULER": "EulerAncestralDiscreteScheduler"}
    })
}

/// A PNG of `w` x `h` pixels (colour gradients), base64.
pub fn png_base64(w: u32, h: u32) -> String {
    use base64::Engine as _;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A body that keeps a worker busy for a while (150 steps at 256x256).
pub fn long() -> Value {
    json!({"modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256}})
}

/// A response's status and its body as JSON (`null` when it is not JSON).
pub async fn read(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A problem document's status and body, checking its content type and `status` field.
pub async fn problem(r: reqwest::Response) -> (u16, Value) {
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, v) = read(r).await;
    assert_eq!(
        content_type.as_deref(),
        Some("application/problem+json"),
        "{status}: {v}"
    );
    assert_eq!(v["status"], status, "{v}");
    (status, v)
}

impl TestApp {
    pub async fn post_with(&self, key: &str, body: &str) -> reqwest::Response {
        self.client
            .post(&self.base)
            .header("Salad-Api-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, body: &str) -> reqwest::Response {
        self.post_with(&self.key, body).await
    }

    /// POSTs `body`, expects 202; the result URL.
    pub async fn submit(&self, body: Value) -> String {
        let (status, v) = read(self.post(&body.to_string()).await).await;
        assert_eq!(status, 202, "{v}");
        v["resultUrl"].as_str().unwrap().to_owned()
    }

    /// An authenticated GET.
    pub async fn get_raw(&self, url: &str) -> reqwest::Response {
        self.client
            .get(url)
            .header("Salad-Api-Key", &self.key)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, url: &str) -> Value {
        let (status, v) = read(self.get_raw(url).await).await;
        assert_eq!(status, 200, "{url}: {v}");
        v
    }

    pub async fn delete(&self, url: &str) -> (u16, Value) {
        read(
            self.client
                .delete(url)
                .header("Salad-Api-Key", &self.key)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Polls `url` until its body satisfies `done`, failing after two minutes; that body.
    pub async fn poll(&self, url: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let v = self.get(url).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{url} is still {v}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// POSTs `body` and waits until a worker runs it; the result URL.
    pub async fn submit_running(&self, body: Value) -> String {
        let url = self.submit(body).await;
        self.wait_until_running(&url).await;
        url
    }

    /// Polls until the task reports progress (a worker is running it).
    pub async fn wait_until_running(&self, url: &str) {
        self.poll(url, |v| v.get("progress").is_some()).await;
    }

    /// Polls until the task is no longer pending.
    pub async fn finish(&self, url: &str) -> Value {
        self.poll(url, |v| v["status"] != "pending").await
    }
}
