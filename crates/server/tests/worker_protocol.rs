//! The worker protocol (`/worker/v1`, docs/worker-protocol.md) on the in-process app with
//! its SQLite store: a node speaking it by hand, as a well-behaved, a strange or a stale
//! worker would, and every refusal it can meet.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::{read, small, spawn_app, Options, TestApp};
use serde_json::{json, Value};
use sie_store::{Timestamp, WorkerName, WorkerTokens};

/// A worker token for `name` in the app's store.
fn token(app: &TestApp, name: &str) -> String {
    app.store
        .create_worker_token(&WorkerName::parse(name).unwrap(), Timestamp::now())
        .unwrap()
        .expose_token()
        .to_owned()
}

/// What `small` tasks name: a worker announcing this can run them.
const ANY: &[&str] = &["EulerAncestralDiscreteScheduler", "DDIMScheduler"];

fn announcement(schedulers: &[&str]) -> Value {
    json!({"model": "raw", "native_width": 64, "native_height": 64,
           "pipelines": ["StableDiffusionPipeline"], "schedulers": schedulers,
           "safety_checker": false})
}

/// A complete `modelOutputs` for one image whose base64 is `image`.
fn outputs(image: &str) -> Value {
    json!({"images": [image], "nsfw_content_detected": null, "seed": 1,
        "$meta": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "DDIMScheduler",
            "width": 64, "height": 64, "num_inference_steps": 1, "num_images_per_prompt": 1,
            "image_format": "image/png", "prompt_truncated": false,
            "negative_prompt_truncated": false, "model": "raw",
            "runs_on": {"device": "cpu", "dtype": "float32", "memory_bytes": null}},
        "$timings": {"queue": 0, "inference": 1, "total": 1, "first_step": 1}})
}

/// A worker named `name` with a fresh token, speaking the protocol by hand.
fn raw<'a>(app: &'a TestApp, name: &str) -> Raw<'a> {
    Raw {
        app,
        token: token(app, name),
    }
}

struct Raw<'a> {
    app: &'a TestApp,
    token: String,
}

impl Raw<'_> {
    async fn call(&self, path: &str, body: Value) -> (u16, Value) {
        read(
            self.app
                .client
                .post(format!("{}/worker/v1{path}", self.app.root))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn lease(&self, wait: u32, schedulers: &[&str]) -> (u16, Value) {
        self.call(
            "/lease",
            json!({"worker": announcement(schedulers), "wait_seconds": wait}),
        )
        .await
    }

    async fn complete(&self, id: &str, attempt: u64, image: &str) -> (u16, Value) {
        self.call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": attempt, "model_outputs": outputs(image),
                   "usage": {"images": 1, "steps": 1, "gpu_ms": 1}}),
        )
        .await
    }
}

/// Sends only a request's head, announcing a body of `length` bytes and sending none; the
/// status code of the answer, which must come without the body.
fn head_only_status(root: &str, path: &str, token: Option<&str>, length: usize) -> u16 {
    let address = root.trim_start_matches("http://");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_a_live_token_is_refused_before_its_body_is_read() {
    let app = spawn_app(Options::idle()).await;
    for bad in [
        "",
        "siew_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        app.key.as_str(),
    ] {
        let (status, body) = Raw {
            app: &app,
            token: bad.to_owned(),
        }
        .lease(0, ANY)
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("invalid_worker_token")),
            "{bad:?}: {body}"
        );
    }
    let root = app.root.clone();
    let statuses = tokio::task::spawn_blocking(move || {
        [
            head_only_status(&root, "/worker/v1/lease", None, 256 << 20),
            head_only_status(
                &root,
                "/worker/v1/tasks/x/complete",
                Some("siew_nope"),
                256 << 20,
            ),
        ]
    })
    .await
    .unwrap();
    assert_eq!(statuses, [401, 401]);
    // A revoked token stops working at once.
    let w = raw(&app, "w2");
    assert_eq!(w.lease(0, ANY).await.0, 204);
    app.store
        .revoke_worker_token(&WorkerName::parse("w2").unwrap(), Timestamp::now())
        .unwrap();
    assert_eq!(w.lease(0, ANY).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_announcements_and_waits_are_refused_naming_what_is_wrong() {
    let app = spawn_app(Options::idle()).await;
    let w = raw(&app, "w");
    let cases = [
        (json!({"worker": {"model": "x"}}), "invalid_json"),
        (
            json!({"worker": announcement(&[]), "wait_seconds": 31}),
            "out_of_range",
        ),
        (json!({"worker": announcement(&["Karras"])}), "invalid_json"),
        (
            json!({"worker": announcement(&[]), "gpu": "H200"}),
            "invalid_json",
        ),
    ];
    for (body, code) in cases {
        let (status, v) = w.call("/lease", body.clone()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
    }
    let mut spaced = announcement(&[]);
    spaced["model"] = json!("my model");
    let (status, v) = w.call("/lease", json!({"worker": spaced})).await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("worker.model")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leased_task_is_renewed_reported_and_completed_by_its_worker_only() {
    let app = spawn_app(Options::idle().lease(Duration::from_secs(2))).await;
    let (w1, w2) = (raw(&app, "w1"), raw(&app, "w2"));
    assert_eq!(
        w1.lease(0, &["DDIMScheduler"]).await.0,
        204,
        "nothing queued"
    );

    // A task naming a scheduler the worker did not announce is not handed to it.
    let mut pndm = small(1, 1, 1);
    pndm["callInputs"]["SCHEDULER"] = json!("PNDMScheduler");
    app.submit(pndm).await;
    assert_eq!(w1.lease(0, &["DDIMScheduler"]).await.0, 204);

    let url = app
        .submit(json!({"modelInputs": {"prompt": "task 1"}, "callInputs": {"SCHEDULER": "DDIM"}}))
        .await;
    let id = url.rsplit('/').next().unwrap();
    let (status, leased) = w1.lease(5, &["DDIMScheduler"]).await;
    assert_eq!(status, 200, "{leased}");
    assert_eq!(
        (leased["id"].as_str(), leased["attempt"].as_u64()),
        (Some(id), Some(1))
    );
    assert_eq!(leased["request"]["modelInputs"]["prompt"], "task 1");
    assert!(
        leased["request"]["modelInputs"]["seed"].as_u64().is_some(),
        "the API fixed the seed"
    );
    assert_eq!(leased["lease_seconds"], 2);

    // Another worker cannot speak for it.
    for (path, body) in [
        ("heartbeat", json!({"attempt": 1})),
        (
            "fail",
            json!({"attempt": 1, "code": "engine_error", "message": "x", "retryable": false}),
        ),
        ("release", json!({"attempt": 1})),
    ] {
        let (status, b) = w2.call(&format!("/tasks/{id}/{path}"), body).await;
        assert_eq!(
            (status, b["code"].as_str()),
            (409, Some("lease_lost")),
            "{path}: {b}"
        );
    }
    assert_eq!(w2.complete(id, 1, "bm9wZQ==").await.0, 409);

    // Progress shows to the client.
    let (status, beat) = w1
        .call(
            &format!("/tasks/{id}/heartbeat"),
            json!({"attempt": 1, "progress": {"step": 3, "steps": 50}}),
        )
        .await;
    assert_eq!(
        (status, beat["action"].as_str()),
        (200, Some("continue")),
        "{beat}"
    );
    assert_eq!(
        app.get(&url).await["progress"],
        json!({"step": 3, "steps": 50})
    );

    // A completion whose usage disagrees with its images, or that has none, is refused.
    let (status, v) = w1
        .call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": 1, "model_outputs": outputs("aQ=="),
            "usage": {"images": 2, "steps": 1, "gpu_ms": 1}}),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("usage.images")),
        "{v}"
    );
    let mut empty = outputs("aQ==");
    empty["images"] = json!([]);
    let (status, v) = w1
        .call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": 1, "model_outputs": empty,
            "usage": {"images": 0, "steps": 1, "gpu_ms": 1}}),
        )
        .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("model_outputs.images")),
        "{v}"
    );
    let mut no_meta = outputs("aQ==");
    no_meta["$meta"] = json!({});
    let (status, _) = w1
        .call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": 1, "model_outputs": no_meta,
            "usage": {"images": 1, "steps": 1, "gpu_ms": 1}}),
        )
        .await;
    assert_eq!(status, 400, "modelOutputs are checked for shape");

    assert_eq!(
        w1.complete(id, 1, "d2lubmVy").await,
        (200, json!({"accepted": true}))
    );
    let done = app.get(&url).await;
    assert_eq!(done["status"], "success");
    assert_eq!(
        done["modelOutputs"],
        outputs("d2lubmVy"),
        "served as the worker sent it"
    );
    assert_eq!(
        w1.complete(id, 1, "YWdhaW4=").await.0,
        409,
        "the first completion wins"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_attempts_late_result_is_dropped_and_the_live_one_stands() {
    let app = spawn_app(Options::idle().lease(Duration::from_secs(1))).await;
    let (w1, w2) = (raw(&app, "w1"), raw(&app, "w2"));
    let url = app.submit(small(1, 1, 1)).await;
    let id = url.rsplit('/').next().unwrap();
    assert_eq!(w1.lease(5, ANY).await.0, 200);
    // w1 goes quiet; w2's long-poll takes the task once w1's lease lapses, as attempt 2.
    let (status, again) = w2.lease(10, ANY).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["id"].as_str(), again["attempt"].as_u64()),
        (Some(id), Some(2))
    );
    let (status, late) = w1.complete(id, 1, "bGF0ZQ==").await;
    assert_eq!(
        (status, late["code"].as_str()),
        (409, Some("lease_lost")),
        "{late}"
    );
    assert_eq!(
        w1.call(&format!("/tasks/{id}/heartbeat"), json!({"attempt": 1}))
            .await
            .0,
        409
    );
    assert_eq!(w2.complete(id, 2, "d2lubmVy").await.0, 200);
    assert_eq!(app.get(&url).await["modelOutputs"]["images"][0], "d2lubmVy");
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_releases_and_cancels_reach_the_queue_and_the_client() {
    let app = spawn_app(Options::idle()).await;
    let w = raw(&app, "w");

    // A bad failure report is refused, naming the field.
    let url = app.submit(small(1, 1, 1)).await;
    let id = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(w.lease(5, ANY).await.0, 200);
    for (body, field) in [
        (
            json!({"attempt": 1, "code": "", "message": "x", "retryable": false}),
            "code",
        ),
        (
            json!({"attempt": 1, "code": "Not A Code", "message": "x", "retryable": false}),
            "code",
        ),
        (
            json!({"attempt": 1, "code": "engine_error", "message": "x".repeat(5000), "retryable": false}),
            "message",
        ),
    ] {
        let (status, v) = w.call(&format!("/tasks/{id}/fail"), body).await;
        assert_eq!((status, v["field"].as_str()), (400, Some(field)), "{v}");
    }
    // Retryable: back in the queue, and the next lease is attempt 2.
    let (status, _) = w.call(&format!("/tasks/{id}/fail"), json!({"attempt": 1, "code": "out_of_memory", "message": "the GPU ran out", "retryable": true})).await;
    assert_eq!(status, 200);
    assert_eq!(app.get(&url).await["status"], "pending");
    let (_, again) = w.lease(5, ANY).await;
    assert_eq!(again["attempt"], 2);
    // Released (shutdown): back in the queue without progress; then a final failure.
    assert_eq!(
        w.call(&format!("/tasks/{id}/release"), json!({"attempt": 2}))
            .await
            .0,
        200
    );
    let v = app.get(&url).await;
    assert_eq!(
        (v["status"].as_str(), v["queuePosition"].as_u64()),
        (Some("pending"), Some(1)),
        "{v}"
    );
    let (_, again) = w.lease(5, ANY).await;
    let attempt = again["attempt"].as_u64().unwrap();
    let (status, _) = w
        .call(&format!("/tasks/{id}/fail"), json!({"attempt": attempt, "code": "engine_error", "message": "the prompt broke it", "retryable": false}))
        .await;
    assert_eq!(status, 200);
    let v = app.get(&url).await;
    assert_eq!(
        v["error"],
        json!({"code": "engine_error", "message": "the prompt broke it"})
    );

    // A client's cancel reaches the worker at its next heartbeat.
    let url = app.submit(small(2, 1, 1)).await;
    let id = url.rsplit('/').next().unwrap();
    assert_eq!(w.lease(5, ANY).await.0, 200);
    app.delete(&url).await;
    let (status, beat) = w
        .call(&format!("/tasks/{id}/heartbeat"), json!({"attempt": 1}))
        .await;
    assert_eq!(
        (status, beat["action"].as_str()),
        (200, Some("cancel")),
        "{beat}"
    );
    let (status, _) = w
        .call(
            &format!("/tasks/{id}/fail"),
            json!({"attempt": 1, "code": "cancelled", "message": "stopped", "retryable": false}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.get(&url).await["error"]["code"], "cancelled");
}

/// The worker protocol's calls are outside the request timeout: a GPU node uploads at its
/// link's speed, bounded by the body timeout alone. A call whose body takes twice the
/// request timeout to arrive is answered by its route, not 408.
#[tokio::test]
async fn worker_calls_are_not_cut_by_the_request_timeout() {
    let app = spawn_app(Options::idle().request_timeout(Duration::from_secs(1))).await;
    let token = token(&app, "slow");
    let address = app.root.trim_start_matches("http://").to_owned();
    let line = tokio::task::spawn_blocking(move || {
        let body = br#"{"attempt": 1, "error": {"code": "x", "message": "y"}}"#;
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "POST /worker/v1/tasks/00000000-0000-4000-8000-000000000000/fail HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        for chunk in body.chunks(body.len() / 4 + 1) {
            std::thread::sleep(Duration::from_millis(500));
            stream.write_all(chunk).unwrap();
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert!(line.starts_with("HTTP/1.1 4"), "{line}");
    assert!(
        !line.contains(" 408 "),
        "cut by the request timeout: {line}"
    );
}
