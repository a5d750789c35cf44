//! `GET /metrics` after a known sequence of tasks, read back with a Prometheus text-format
//! parser: each task's creation and end counted once, by organization and code, whether an
//! in-process worker or a remote one reported it; the queue read from the store; HTTP
//! answers by route template and status.

mod common;

use common::{read, small, spawn_app, Options, TestApp};
use prom_text_format_parser::{Scrape, Type, ValueType};
use serde_json::{json, Value};
use sie_store::{Timestamp, WorkerName, WorkerTokens};

async fn scrape(app: &TestApp) -> Scrape {
    // No key: /metrics is for the operator's scraper.
    let r = app
        .client
        .get(format!("{}/metrics", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    Scrape::parse(&text).unwrap_or_else(|e| panic!("{e:?} in\n{text}"))
}

/// A sample's name (a histogram's with `_bucket`, `_sum`, `_count`), labels and value.
type Sample = (String, Vec<(String, String)>, f64);

fn samples(scrape: &Scrape) -> Vec<Sample> {
    let mut all = Vec::new();
    for metric in &scrape.metrics {
        for sample in &metric.samples {
            let suffix = match (metric.kind, sample.value.value_type) {
                (Type::Histogram, ValueType::Sample) => "_bucket",
                (Type::Histogram | Type::Summary, ValueType::Sum) => "_sum",
                (Type::Histogram | Type::Summary, ValueType::Count) => "_count",
                _ => "",
            };
            let labels = sample
                .labels
                .iter()
                .map(|l| (l.key.clone(), l.value.clone()))
                .collect();
            all.push((
                format!("{}{suffix}", metric.name),
                labels,
                sample.value.value.as_f64(),
            ));
        }
    }
    all
}

/// The value of the sample `name` whose labels are exactly `labels`, if there is one.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(scrape)
        .into_iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| v)
}

fn must(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(scrape, name, labels).unwrap_or_else(|| {
        let all: Vec<_> = samples(scrape)
            .into_iter()
            .map(|(n, l, v)| format!("{n}{l:?} {v}"))
            .collect();
        panic!("no {name} {labels:?} among {all:#?}")
    })
}

const ACME: (&str, &str) = ("organization", "acme");
const TASK_ROUTE: &str =
    "/api/beta/organizations/{org}/inference-endpoints/stable-diffusion-2-1/{id}";
const COLLECTION_ROUTE: &str =
    "/api/beta/organizations/{org}/inference-endpoints/stable-diffusion-2-1";

fn http(
    route: &'static str,
    method: &'static str,
    status: &'static str,
) -> [(&'static str, &'static str); 3] {
    [("route", route), ("method", method), ("status", status)]
}

/// What the hand-made worker says it runs.
fn announcement() -> Value {
    json!({"model": "raw", "native_width": 64, "native_height": 64,
        "pipelines": ["StableDiffusionPipeline"],
        "schedulers": ["EulerAncestralDiscreteScheduler"], "safety_checker": false})
}

/// A worker speaking `/worker/v1` by hand with a fresh token.
struct Remote<'a> {
    app: &'a TestApp,
    token: String,
}

impl<'a> Remote<'a> {
    fn new(app: &'a TestApp, name: &str) -> Self {
        let token = app
            .store
            .create_worker_token(&WorkerName::parse(name).unwrap(), Timestamp::now())
            .unwrap()
            .expose_token()
            .to_owned();
        Remote { app, token }
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let r = self
            .app
            .client
            .post(format!("{}/worker/v1{path}", self.app.root))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, v) = read(r).await;
        assert_eq!(status, 200, "{path}: {v}");
        v
    }

    /// Leases the one queued task; its id.
    async fn lease(&self) -> String {
        let (id, attempt) = self.lease_any().await;
        assert_eq!(attempt, 1);
        id
    }

    /// Leases a waiting task, whatever its attempt; its id and attempt.
    async fn lease_any(&self) -> (String, u64) {
        let v = self
            .call(
                "/lease",
                json!({"worker": announcement(), "wait_seconds": 5}),
            )
            .await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["attempt"].as_u64().unwrap(),
        )
    }

    async fn fail(&self, id: &str, code: &str, retryable: bool) {
        let body = json!({"attempt": 1, "code": code, "message": "x", "retryable": retryable});
        self.call(&format!("/tasks/{id}/fail"), body).await;
    }

    /// Completes attempt 1 of `id`, having run `steps` steps in `gpu_ms`.
    async fn complete(&self, id: &str, steps: u32, gpu_ms: u64) {
        let outputs = json!({"images": [common::png_base64(8, 8)], "nsfw_content_detected": null,
            "seed": 1,
            "$meta": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "DDIMScheduler",
                "width": 64, "height": 64, "num_inference_steps": steps,
                "num_images_per_prompt": 1, "image_format": "image/png",
                "prompt_truncated": false, "negative_prompt_truncated": false, "model": "raw",
                "runs_on": {"device": "cpu", "dtype": "float32", "memory_bytes": null}},
            "$timings": {"queue": 0, "inference": gpu_ms, "total": gpu_ms, "first_step": 1}});
        let body = json!({"attempt": 1, "model_outputs": outputs,
            "usage": {"images": 1, "steps": steps, "gpu_ms": gpu_ms}});
        self.call(&format!("/tasks/{id}/complete"), body).await;
    }
}

#[tokio::test]
async fn remote_reports_cancels_and_answers_are_counted_once_each() {
    let app = spawn_app(Options::idle()).await;
    let worker = Remote::new(&app, "gpu-1");

    // Succeeds: 10 steps in 2 s.
    app.submit(small(1, 1, 10)).await;
    let succeeded = worker.lease().await;
    worker.complete(&succeeded, 10, 2000).await;
    // Fails for good.
    app.submit(small(2, 1, 1)).await;
    let failed = worker.lease().await;
    worker.fail(&failed, "engine_error", false).await;
    // Fails, but may run again: not an end, and it waits in the queue.
    let waiting = app.submit(small(3, 1, 1)).await;
    let retried = worker.lease().await;
    worker.fail(&retried, "out_of_memory", true).await;
    // Cancelled while queued.
    let cancelled = app.submit(small(4, 1, 1)).await;
    let (status, v) = app.delete(&cancelled).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (200, Some("cancelled"))
    );
    // A second cancel of it changes nothing and is not counted again.
    assert_eq!(app.delete(&cancelled).await.0, 200);
    // Unknown paths are counted under one label, whatever the path.
    for path in ["/nope", "/nope/again"] {
        let r = app
            .client
            .get(format!("{}{path}", app.root))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    assert_eq!(app.get(&waiting).await["status"], "pending");

    let m = scrape(&app).await;
    assert_eq!(must(&m, "sie_tasks_created_total", &[ACME]), 4.0);
    assert_eq!(must(&m, "sie_tasks_succeeded_total", &[ACME]), 1.0);
    assert_eq!(
        must(
            &m,
            "sie_tasks_failed_total",
            &[ACME, ("code", "engine_error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "sie_tasks_failed_total",
            &[ACME, ("code", "out_of_memory")]
        ),
        None,
        "a retryable failure with attempts left ends nothing"
    );
    assert_eq!(
        value(&m, "sie_tasks_failed_total", &[ACME, ("code", "other")]),
        None
    );
    assert_eq!(must(&m, "sie_tasks_cancelled_total", &[ACME]), 1.0);

    // The queue, from the store: the retried task waits.
    assert_eq!(must(&m, "sie_queue_depth", &[]), 1.0);
    assert_eq!(must(&m, "sie_tasks_running", &[]), 0.0);
    assert_eq!(must(&m, "sie_tasks_lapsed", &[]), 0.0);
    assert_eq!(must(&m, "sie_leases_lapsed_total", &[]), 0.0);
    assert!(must(&m, "sie_oldest_waiting_age_seconds", &[]) >= 0.0);
    assert_eq!(
        must(&m, "sie_workers_connected", &[]),
        1.0,
        "the remote worker"
    );

    // Three first leases waited; one task ran 10 steps in 2 s.
    assert_eq!(must(&m, "sie_queue_wait_seconds_count", &[]), 3.0);
    assert_eq!(must(&m, "sie_inference_duration_seconds_count", &[]), 1.0);
    assert_eq!(must(&m, "sie_inference_duration_seconds_sum", &[]), 2.0);
    assert_eq!(must(&m, "sie_steps_per_second_count", &[]), 1.0);
    assert_eq!(must(&m, "sie_steps_per_second_sum", &[]), 5.0);

    // HTTP answers by route template (never a task's id) and status.
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http(COLLECTION_ROUTE, "POST", "202")
        ),
        4.0
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http(TASK_ROUTE, "DELETE", "200")
        ),
        2.0
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http(TASK_ROUTE, "GET", "200")
        ),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http("/worker/v1/lease", "POST", "200")
        ),
        3.0
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http("/worker/v1/tasks/{id}/fail", "POST", "200")
        ),
        2.0
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http("unmatched", "GET", "404")
        ),
        2.0
    );
    for (name, labels, _) in samples(&m) {
        for (_, v) in labels {
            for id in [&succeeded, &failed, &retried] {
                assert!(!v.contains(id.as_str()), "{name} has a task id: {v}");
            }
        }
    }
}

#[tokio::test]
async fn in_process_workers_reports_are_counted_through_the_same_queue() {
    let app = spawn_app(Options::default()).await;
    let first = app.submit(small(1, 1, 2)).await;
    let second = app.submit(small(2, 1, 3)).await;
    for url in [&first, &second] {
        assert_eq!(app.finish(url).await["status"], "success");
    }
    // A running task cancelled: its worker reports the stop, counted once as a cancel.
    let running = app.submit_running(common::long()).await;
    assert_eq!(app.delete(&running).await.0, 200);
    let v = app.finish(&running).await;
    assert_eq!(v["error"]["code"], "cancelled", "{v}");

    let m = scrape(&app).await;
    assert_eq!(must(&m, "sie_tasks_created_total", &[ACME]), 3.0);
    assert_eq!(must(&m, "sie_tasks_succeeded_total", &[ACME]), 2.0);
    assert_eq!(must(&m, "sie_tasks_cancelled_total", &[ACME]), 1.0);
    assert_eq!(must(&m, "sie_queue_wait_seconds_count", &[]), 3.0);
    assert_eq!(must(&m, "sie_inference_duration_seconds_count", &[]), 2.0);
    assert_eq!(must(&m, "sie_steps_per_second_count", &[]), 2.0);
    assert_eq!(must(&m, "sie_queue_depth", &[]), 0.0);
    assert_eq!(
        must(&m, "sie_workers_connected", &[]),
        1.0,
        "the one local thread"
    );
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http(COLLECTION_ROUTE, "POST", "202")
        ),
        3.0
    );
}

#[tokio::test]
async fn metrics_need_no_key_and_count_their_own_scrapes() {
    let app = spawn_app(Options::idle()).await;
    scrape(&app).await;
    let m = scrape(&app).await;
    assert_eq!(
        must(
            &m,
            "sie_http_requests_total",
            &http("/metrics", "GET", "200")
        ),
        1.0,
        "the first scrape, counted once its answer was made"
    );
    assert_eq!(must(&m, "sie_queue_depth", &[]), 0.0);
    assert_eq!(must(&m, "sie_workers_connected", &[]), 0.0);
}

#[tokio::test]
async fn lapsed_leases_and_tasks_lost_with_their_workers_are_counted() {
    let app = spawn_app(Options::idle().lease(std::time::Duration::from_secs(1))).await;
    let worker = Remote::new(&app, "gpu-2");
    let url = app.submit(small(5, 1, 1)).await;
    // Leased three times, each lease left to lapse (no heartbeat): the second and third
    // take over a lapsed lease.
    for attempt in 1..=3 {
        let (_, got) = worker.lease_any().await;
        assert_eq!(got, attempt);
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // The next look for work ends it, out of attempts.
    let r = app
        .client
        .post(format!("{}/worker/v1/lease", app.root))
        .bearer_auth(&worker.token)
        .json(&json!({"worker": announcement(), "wait_seconds": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, v) = read(app.get_raw(&url).await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (200, Some("worker_lost"))
    );

    let m = scrape(&app).await;
    assert_eq!(
        must(
            &m,
            "sie_tasks_failed_total",
            &[ACME, ("code", "worker_lost")]
        ),
        1.0
    );
    assert_eq!(must(&m, "sie_leases_lapsed_total", &[]), 3.0);
    assert_eq!(must(&m, "sie_tasks_created_total", &[ACME]), 1.0);
    assert_eq!(must(&m, "sie_queue_depth", &[]), 0.0);
}
