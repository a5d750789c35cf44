//! The task routes as a client meets them (SPEC 1.1-1.3): create, poll, cancel, list,
//! usage, health, against the in-process app with workers running the tiny model.

mod common;

use base64::Engine as _;
use common::{long, read, small, spawn_app, Options};
use serde_json::{json, Value};

fn decode(b64: &Value) -> (image::ImageFormat, u32, u32) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    let format = image::guess_format(&bytes).unwrap();
    let img = image::load_from_memory(&bytes).unwrap();
    (format, img.width(), img.height())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_answers_202_then_succeeds_with_its_images_seed_meta_and_timings() {
    let app = spawn_app(Options::default()).await;
    let r = app.post(&small(5, 3, 2).to_string()).await;
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let (_, v) = read(r).await;
    let id = v["requestId"].as_str().unwrap();
    assert_eq!(v["resultUrl"], format!("{}/{id}", app.base));
    assert_eq!(location, format!("{}/{id}", app.base));

    let done = app.finish(&location).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["requestId"], id);
    let out = &done["modelOutputs"];
    let images = out["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for b64 in images {
        assert_eq!(decode(b64), (image::ImageFormat::Png, 64, 64));
    }
    assert_eq!(out["seed"], 5);
    assert_eq!(out["nsfw_content_detected"], json!([false, false, false]));
    let meta = &out["$meta"];
    assert_eq!(meta["PIPELINE"], "StableDiffusionPipeline");
    assert_eq!(meta["SCHEDULER"], "EulerAncestralDiscreteScheduler");
    assert_eq!(
        (meta["width"].as_u64(), meta["height"].as_u64()),
        (Some(64), Some(64))
    );
    assert_eq!(meta["num_inference_steps"], 2);
    assert_eq!(meta["num_images_per_prompt"], 3);
    assert_eq!(meta["image_format"], "image/png");
    assert_eq!(meta["prompt_truncated"], false);
    assert_eq!(
        meta["runs_on"],
        json!({"device": "cpu", "dtype": "float32", "memory_bytes": null})
    );
    let t = &out["$timings"];
    assert_eq!(
        t["total"].as_u64().unwrap(),
        t["queue"].as_u64().unwrap() + t["inference"].as_u64().unwrap()
    );
    assert!(t["first_step"].as_u64().is_some(), "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_seed_gives_the_same_images_and_the_format_is_the_one_asked_for() {
    let app = spawn_app(Options::default()).await;
    let a = app.submit(small(7, 1, 2)).await;
    let b = app.submit(small(7, 1, 2)).await;
    let (a, b) = (app.finish(&a).await, app.finish(&b).await);
    assert_eq!(a["modelOutputs"]["images"], b["modelOutputs"]["images"]);

    let mut webp = small(7, 1, 2);
    webp["callInputs"]["image_format"] = json!("webp");
    let w = app.submit(webp).await;
    let w = app.finish(&w).await;
    assert_eq!(w["modelOutputs"]["$meta"]["image_format"], "image/webp");
    assert_eq!(
        decode(&w["modelOutputs"]["images"][0]),
        (image::ImageFormat::WebP, 64, 64)
    );
    // Left out, the seed is drawn at submission and returned.
    let mut unseeded = small(0, 1, 1);
    unseeded["modelInputs"]
        .as_object_mut()
        .unwrap()
        .remove("seed");
    let u = app.submit(unseeded).await;
    assert!(app.finish(&u).await["modelOutputs"]["seed"]
        .as_u64()
        .is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_makes_a_retried_post_return_the_first_task() {
    let app = spawn_app(Options::idle()).await;
    let post = |key: &'static str, body: String| {
        let app = &app;
        async move {
            let request = app.client.post(&app.base).header("Idempotency-Key", key);
            let request = request.header("Salad-Api-Key", &app.key);
            let request = request.header("Content-Type", "application/json");
            read(request.body(body).send().await.unwrap()).await
        }
    };
    // The same request, even formatted otherwise: the first task. Unseeded, so the seed the
    // API draws does not make two sends differ.
    let body = json!({"modelInputs": {"prompt": "x", "num_inference_steps": 1}});
    let (s1, first) = post("retry-1", body.to_string()).await;
    let (s2, second) = post("retry-1", format!("{body:#}")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["requestId"], second["requestId"]);
    // Another request under the same key is refused; another key is another task.
    let (status, v) = post("retry-1", small(9, 1, 1).to_string()).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{v}"
    );
    let (_, other) = post("retry-2", small(9, 1, 1).to_string()).await;
    assert_ne!(first["requestId"], other["requestId"]);
    let list = app.get(&app.base).await;
    assert_eq!(list["total"], 2, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_task_shows_its_place_and_a_running_one_its_progress() {
    let app = spawn_app(Options::default()).await;
    let running = app.submit_running(long()).await;
    let queued = app.submit(long()).await;
    let behind = app.submit(long()).await;
    let v = app.get(&queued).await;
    assert_eq!(
        (v["status"].as_str(), v["queuePosition"].as_u64()),
        (Some("pending"), Some(1)),
        "{v}"
    );
    assert_eq!(app.get(&behind).await["queuePosition"], 2);
    let v = app.get(&running).await;
    assert_eq!(v["status"], "pending");
    assert_eq!(v["progress"]["steps"], 150, "{v}");
    assert!(v.get("queuePosition").is_none(), "{v}");
    for url in [&running, &queued, &behind] {
        app.delete(url).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_fails_a_queued_task_at_once_and_stops_a_running_one() {
    let app = spawn_app(Options::default()).await;
    let running = app.submit_running(long()).await;
    let queued = app.submit(long()).await;

    let (status, v) = app.delete(&queued).await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["status"].as_str(), v["error"]["code"].as_str()),
        (Some("failed"), Some("cancelled")),
        "{v}"
    );

    let (status, v) = app.delete(&running).await;
    assert_eq!(status, 200);
    assert_eq!(
        v["status"], "pending",
        "a running task stops at its next step: {v}"
    );
    let v = app.finish(&running).await;
    assert_eq!(
        (v["status"].as_str(), v["error"]["code"].as_str()),
        (Some("failed"), Some("cancelled")),
        "{v}"
    );

    // Cancelling a finished task changes nothing.
    let done = app.submit(small(1, 1, 1)).await;
    let before = app.finish(&done).await;
    let (status, after) = app.delete(&done).await;
    assert_eq!(status, 200);
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_list_pages_through_the_organizations_tasks_newest_first() {
    let app = spawn_app(Options::idle()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let url = app.submit(small(i, 1, 1)).await;
        ids.push(url.rsplit('/').next().unwrap().to_owned());
    }
    let page = app.get(&format!("{}?page=1&page_size=2", app.base)).await;
    assert_eq!(
        (
            page["total"].as_u64(),
            page["page"].as_u64(),
            page["page_size"].as_u64()
        ),
        (Some(5), Some(1), Some(2))
    );
    let listed: Vec<&str> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["requestId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[4].as_str(), ids[3].as_str()]);
    assert_eq!(page["tasks"][0]["status"], "pending");
    let last = app.get(&format!("{}?page=3&page_size=2", app.base)).await;
    assert_eq!(last["tasks"].as_array().unwrap().len(), 1);
    assert_eq!(last["tasks"][0]["requestId"], ids[0]);
    // Another organization's key sees none of them.
    let other = common::tenant(app.store.as_ref(), "other");
    let other_base = app.base.replace("/acme/", "/other/");
    let (status, v) = read(
        app.client
            .get(&other_base)
            .header("Salad-Api-Key", other)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, v["total"].as_u64()), (200, Some(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_counts_each_days_images_steps_and_tasks() {
    let app = spawn_app(Options::default()).await;
    let ok = app.submit(small(3, 2, 3)).await;
    assert_eq!(app.finish(&ok).await["status"], "success");
    let running = app.submit_running(long()).await;
    app.delete(&running).await;
    app.finish(&running).await;

    let usage = app
        .get(&format!("{}/api/beta/organizations/acme/usage", app.root))
        .await;
    assert_eq!(usage["organization"], "acme");
    let today = &usage["days"][0];
    assert_eq!(usage["days"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!(
        (today["images"].as_u64(), today["steps"].as_u64()),
        (Some(2), Some(3)),
        "{usage}"
    );
    assert_eq!(
        (
            today["tasksSucceeded"].as_u64(),
            today["tasksFailed"].as_u64()
        ),
        (Some(1), Some(1)),
        "{usage}"
    );
    assert!(today["gpuSeconds"].as_f64().unwrap() > 0.0, "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app(Options::idle()).await;
    for (route, body) in [
        ("healthz", json!({"status": "ok"})),
        ("readyz", json!({"status": "ready"})),
    ] {
        let (status, v) = read(
            app.client
                .get(format!("{}/{route}", app.root))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, v), (200, body), "{route}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_checker_leaving_it_out_gives_null_flags() {
    let app = spawn_app(Options::default().without_checker()).await;
    let url = app.submit(small(2, 2, 1)).await;
    let done = app.finish(&url).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["modelOutputs"]["nsfw_content_detected"], Value::Null);
    let mut off = small(2, 1, 1);
    off["callInputs"]["safety_checker"] = json!("false");
    let url = app.submit(off).await;
    assert_eq!(app.finish(&url).await["status"], "success");
}
