//! The worker protocol across processes on PostgreSQL: what a stale, revoked or impatient
//! node meets when its API node and the store are separate processes. Every refusal of the
//! protocol is tested in-process in `crates/server/tests/worker_protocol.rs`.

use std::time::Duration;

use super::*;

/// Speaks the worker protocol by hand, as a stale or impatient node would.
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
            json!({"worker": announcement(), "wait_seconds": wait}),
        )
    }

    fn complete(&self, id: &str, attempt: u64, image: &str) -> (u16, Value) {
        self.call(
            &format!("/tasks/{id}/complete"),
            json!({"attempt": attempt, "model_outputs": {"images": [image],
                "nsfw_content_detected": null, "seed": 1,
                "$meta": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "DDIMScheduler",
                    "width": 64, "height": 64, "num_inference_steps": 1, "num_images_per_prompt": 1,
                    "image_format": "image/png", "prompt_truncated": false,
                    "negative_prompt_truncated": false, "model": "raw",
            "runs_on": {"device": "cpu", "dtype": "float32", "memory_bytes": null}},
                "$timings": {"queue": 0, "inference": 1, "total": 1, "first_step": 1}},
                "usage": {"images": 1, "steps": 1, "gpu_ms": 1}}),
        )
    }
}

fn announcement() -> Value {
    json!({"model": "raw", "native_width": 64, "native_height": 64,
        "pipelines": ["StableDiffusionPipeline"], "schedulers": ["DDIMScheduler"],
        "safety_checker": false})
}

#[test]
fn stale_revoked_and_impatient_workers_cost_no_task_and_no_extra_attempt() {
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

    // w1 goes quiet past its lease; w2's long-poll takes the task as attempt 2 once it
    // lapses; w1's late result is refused and the live attempt's stands.
    let id = submit(&c, &api.url, &t.key, &small(1, 2, 64));
    let (status, leased) = w1.lease(5);
    assert_eq!(
        (status, leased["id"].as_str()),
        (200, Some(id.as_str())),
        "{leased}"
    );
    let (status, again) = w2.lease(10);
    assert_eq!(status, 200, "{again}");
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
    assert_eq!(w2.complete(&id, 2, "d2lubmVy").0, 200);
    let v = get_task(&c, &api.url, &t.key, &id);
    assert_eq!(
        v["modelOutputs"]["images"][0], "d2lubmVy",
        "the live attempt's result stands"
    );
    assert_eq!(db.attempt(&id), 2);

    // A worker revoked with `sie admin` (another process) is refused at once, and its task
    // is someone else's at once.
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
        .json(&json!({"worker": announcement(), "wait_seconds": 10}))
        .send();
    assert!(gone.is_err(), "the call timed out on the client's side");
    let id = submit(&c, &api.url, &t.key, &small(3, 2, 64));
    // Past the abandoned call's next look (it looks at least every 2 s); nothing tells
    // from outside whether it looked, so this one waits a fixed time.
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
