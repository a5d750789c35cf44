//! The worker end to end on a real SQLite store and the tiny model: a task goes from the
//! queue to `succeeded` with decodable images, seeds reproduce, refusals fail the task with
//! a code, and a cancel reaches a running task between steps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sie_api::CreateTask;
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_engine::{LoadOptions, StableDiffusion};
use sie_store::{
    AccountName, BillingNote, NewTask, OrgId, OrgName, QueueCaps, SqliteStore, Store, TaskId,
    TaskState, Timestamp,
};
use sie_worker::{Ran, StoreSource, Worker};

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    org: OrgId,
    worker: Worker,
    model: Arc<StableDiffusion>,
    lease: Duration,
}

/// Another worker on the same store and model, running up to `max_batch` tasks at once.
fn batching_worker(s: &Setup, max_batch: usize) -> Worker {
    let announcement = sie_worker::task::announcement(&s.model, "tiny");
    let offer = sie_worker::task::offer(&announcement, "batching-worker");
    Worker::new(
        Arc::new(StoreSource::new(s.store.clone(), offer, s.lease)),
        s.model.clone(),
    )
    .with_max_batch(max_batch)
}

fn setup(lease: Duration) -> Setup {
    setup_with(lease, TinyOptions::default())
}

fn setup_with(lease: Duration, tiny: TinyOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    write_tiny_model(&model_dir, tiny).unwrap();
    let checker = TinyCheckerOptions {
        threshold: 1.0,
        ..Default::default()
    };
    write_tiny_safety_checker(&model_dir, checker).unwrap();
    let model = Arc::new(StableDiffusion::load(&model_dir, &LoadOptions::default()).unwrap());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("sie.db")).unwrap());
    let now = Timestamp::now();
    let account = store
        .create_account(&AccountName::parse("alice").unwrap(), now)
        .unwrap();
    let name = OrgName::parse("default").unwrap();
    let org = store.create_org(&name, account, now).unwrap();
    store
        .approve_org(&name, &BillingNote::parse("test").unwrap(), now)
        .unwrap();
    let announcement = sie_worker::task::announcement(&model, "tiny");
    let offer = sie_worker::task::offer(&announcement, "test-worker");
    let worker = Worker::new(
        Arc::new(StoreSource::new(store.clone(), offer, lease)),
        model.clone(),
    );
    Setup {
        _dir: dir,
        store,
        org,
        worker,
        model,
        lease,
    }
}

fn enqueue(s: &Setup, body: Value) -> TaskId {
    let task = CreateTask::parse(body.to_string().as_bytes()).unwrap();
    let stored = serde_json::to_string(&task).unwrap();
    let new = NewTask {
        org: s.org,
        request_json: &stored,
        needs: task.needs(),
        idempotency: None,
        webhook_url: None,
    };
    let now = Timestamp::now();
    s.store.enqueue(&new, QueueCaps::default(), now).unwrap().id
}

fn outputs(s: &Setup, id: TaskId) -> Value {
    let view = s.store.get(s.org, id, Timestamp::now()).unwrap().unwrap();
    assert_eq!(view.state, TaskState::Succeeded, "{view:?}");
    let result = s.store.result(s.org, id).unwrap().unwrap();
    serde_json::from_str(&result).unwrap()
}

fn decode(b64: &Value) -> image::DynamicImage {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().unwrap())
        .unwrap();
    image::load_from_memory(&bytes).unwrap()
}

#[test]
fn a_task_runs_to_success_with_images_seed_meta_and_timings() {
    let s = setup(Duration::from_secs(60));
    assert_eq!(s.worker.run_one(Duration::ZERO).unwrap(), Ran::Idle);
    let body = json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": 3, "guidance_scale": 20,
                        "width": 72, "height": 64, "num_images_per_prompt": 3, "seed": 11},
        "callInputs": {"SCHEDULER": "LMS", "safety_checker": "true"}
    });
    let id = enqueue(&s, body.clone());
    assert_eq!(
        s.worker.run_one(Duration::ZERO).unwrap(),
        Ran::Succeeded(id)
    );
    let out = outputs(&s, id);
    let images = out["images"].as_array().unwrap();
    assert_eq!(images.len(), 3);
    for img in images {
        let img = decode(img);
        assert_eq!((img.width(), img.height()), (72, 64));
    }
    assert_eq!(out["nsfw_content_detected"], json!([false, false, false]));
    assert_eq!(out["seed"], json!(11));
    assert_eq!(out["$meta"]["SCHEDULER"], json!("LMSDiscreteScheduler"));
    assert_eq!(out["$meta"]["PIPELINE"], json!("StableDiffusionPipeline"));
    assert_eq!(out["$meta"]["num_inference_steps"], json!(3));
    let t = &out["$timings"];
    assert_eq!(
        t["total"].as_u64().unwrap(),
        t["queue"].as_u64().unwrap() + t["inference"].as_u64().unwrap()
    );

    // The same seed again gives the same images, byte for byte.
    let again = enqueue(&s, body);
    assert_eq!(
        s.worker.run_one(Duration::ZERO).unwrap(),
        Ran::Succeeded(again)
    );
    assert_eq!(outputs(&s, again)["images"], out["images"]);
}

#[test]
fn formats_and_the_checker_switch() {
    let s = setup(Duration::from_secs(60));
    let id = enqueue(
        &s,
        json!({
            "modelInputs": {"prompt": "x", "num_inference_steps": 1, "width": 64, "height": 64},
            "callInputs": {"image_format": "JPEG", "safety_checker": false}
        }),
    );
    assert_eq!(
        s.worker.run_one(Duration::ZERO).unwrap(),
        Ran::Succeeded(id)
    );
    let out = outputs(&s, id);
    assert_eq!(out["nsfw_content_detected"], Value::Null);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(out["images"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(
        image::guess_format(&bytes).unwrap(),
        image::ImageFormat::Jpeg
    );
}

/// A 64x64 PNG of one colour, base64.
fn png_64() -> String {
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 120, 40]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_task_this_worker_cannot_run_is_left_for_another() {
    // A worker serving a 9-channel inpainting model announces inpainting only: an older
    // text-to-image task is passed over, not failed, and the inpainting task behind it runs.
    let inpainting = TinyOptions {
        inpainting: true,
        ..TinyOptions::default()
    };
    let s = setup_with(Duration::from_secs(60), inpainting);
    let plain = enqueue(
        &s,
        json!({"modelInputs": {"prompt": "x", "num_inference_steps": 2, "width": 64, "height": 64}}),
    );
    let inpaint = enqueue(
        &s,
        json!({
            "modelInputs": {"prompt": "x", "image": png_64(), "mask_image": png_64(),
                            "num_inference_steps": 2, "width": 64, "height": 64},
            "callInputs": {"PIPELINE": "StableDiffusionInpaintPipeline"}
        }),
    );
    assert_eq!(
        s.worker.run_one(Duration::ZERO).unwrap(),
        Ran::Succeeded(inpaint)
    );
    assert_eq!(
        outputs(&s, inpaint)["$meta"]["PIPELINE"],
        "StableDiffusionInpaintPipeline"
    );
    assert_eq!(s.worker.run_one(Duration::ZERO).unwrap(), Ran::Idle);
    let view = s
        .store
        .get(s.org, plain, Timestamp::now())
        .unwrap()
        .unwrap();
    assert_eq!(view.state, TaskState::Queued);
    assert_eq!(view.attempt, 0, "never leased");
}

#[test]
fn image_to_image_and_inpainting_run_on_an_ordinary_model() {
    let s = setup(Duration::from_secs(60));
    for (pipeline, extra) in [
        ("StableDiffusionImg2ImgPipeline", json!({})),
        (
            "StableDiffusionInpaintPipeline",
            json!({"mask_image": png_64()}),
        ),
    ] {
        let mut body = json!({
            "modelInputs": {"prompt": "x", "image": png_64(), "num_inference_steps": 3,
                            "strength": 0.7, "width": 72, "height": 64},
            "callInputs": {"PIPELINE": pipeline, "safety_checker": false}
        });
        for (k, v) in extra.as_object().unwrap() {
            body["modelInputs"][k] = v.clone();
        }
        let id = enqueue(&s, body);
        assert_eq!(
            s.worker.run_one(Duration::ZERO).unwrap(),
            Ran::Succeeded(id)
        );
        let meta = &outputs(&s, id)["$meta"];
        assert_eq!(meta["PIPELINE"], pipeline);
        assert_eq!(
            (meta["width"].as_u64(), meta["height"].as_u64()),
            (Some(72), Some(64))
        );
    }
}

/// The one vocabulary holds end to end: every scheduler spelling the API accepts parses
/// into a request this worker announces it can run, and the engine builds and runs it.
#[test]
fn every_scheduler_the_api_accepts_is_one_the_engine_runs() {
    let s = setup(Duration::from_secs(60));
    for spelling in sie_api::request::SchedulerKind::SPELLINGS {
        let id = enqueue(
            &s,
            json!({"modelInputs": {"prompt": "x", "num_inference_steps": 2, "width": 64, "height": 64},
                   "callInputs": {"SCHEDULER": spelling}}),
        );
        assert_eq!(
            s.worker.run_one(Duration::ZERO).unwrap(),
            Ran::Succeeded(id),
            "{spelling}"
        );
        let meta = &outputs(&s, id)["$meta"];
        let canonical = sie_api::request::SchedulerKind::parse(spelling).unwrap();
        assert_eq!(meta["SCHEDULER"], canonical.as_str(), "{spelling}");
    }
}

#[test]
fn a_cancel_stops_a_running_task_and_progress_is_reported() {
    // A short lease makes heartbeats frequent (a third of it).
    let s = setup(Duration::from_millis(300));
    let id = enqueue(
        &s,
        json!({
            "modelInputs": {"prompt": "x", "num_inference_steps": 150, "width": 256, "height": 256}
        }),
    );
    std::thread::scope(|scope| {
        let run = scope.spawn(|| s.worker.run_one(Duration::ZERO).unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let view = s.store.get(s.org, id, Timestamp::now()).unwrap().unwrap();
            if let Some(p) = view.progress {
                // Progress counts the steps asked for, though PNDM calls the UNet 151 times.
                assert_eq!(p.steps, 150, "{p:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no progress was reported: {view:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s.store.cancel(s.org, id, Timestamp::now()).unwrap();
        assert_eq!(run.join().unwrap(), Ran::Failed(id, "cancelled".into()));
    });
    let view = s.store.get(s.org, id, Timestamp::now()).unwrap().unwrap();
    assert_eq!(view.state, TaskState::Failed);
    assert_eq!(view.error.unwrap().code, "cancelled");
    let p = view.progress.unwrap();
    assert!(
        p.step < p.steps,
        "the task ran to the end despite the cancel: {p:?}"
    );
}

/// Four tasks as unlike as one batch allows: one size, different prompts, seeds, guidance,
/// image counts and schedulers.
fn unlike_four(steps: u32, side: u32) -> Vec<Value> {
    vec![
        json!({"modelInputs": {"prompt": "An oil painting of a salad", "seed": 1,
            "num_inference_steps": steps, "width": side, "height": side},
            "callInputs": {"SCHEDULER": "DDIM"}}),
        json!({"modelInputs": {"prompt": "A lighthouse", "negative_prompt": "blurry", "seed": 2,
            "guidance_scale": 12, "num_inference_steps": steps, "width": side, "height": side},
            "callInputs": {"SCHEDULER": "EulerAncestralDiscreteScheduler"}}),
        json!({"modelInputs": {"prompt": "A bowl of soup", "seed": 3, "guidance_scale": 1,
            "num_images_per_prompt": 2, "num_inference_steps": steps, "width": side, "height": side},
            "callInputs": {"SCHEDULER": "DPMSolverMultistepScheduler"}}),
        json!({"modelInputs": {"prompt": "A cat", "seed": 4, "guidance_rescale": 0.7,
            "num_inference_steps": steps, "width": side, "height": side},
            "callInputs": {"SCHEDULER": "LMS"}}),
    ]
}

/// The images of a task, as RGB bytes.
fn pixels(s: &Setup, id: TaskId) -> Vec<Vec<u8>> {
    outputs(s, id)["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b64| decode(b64).to_rgb8().into_raw())
        .collect()
}

/// Within 1/255 on at least 99.9% of values.
fn assert_close(name: &str, got: &[Vec<u8>], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "{name}");
    let (mut close, mut all) = (0, 0);
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{name}");
        all += g.len();
        close += g
            .iter()
            .zip(w)
            .filter(|(a, b)| a.abs_diff(**b) <= 1)
            .count();
    }
    assert!(
        close as f64 >= 0.999 * all as f64,
        "{name}: {close} of {all} values within 1/255 of the task run alone"
    );
}

#[test]
fn four_tasks_run_as_one_batch_give_the_images_they_give_alone() {
    let s = setup(Duration::from_secs(60));
    let bodies = unlike_four(5, 64);
    let alone: Vec<Vec<Vec<u8>>> = bodies
        .iter()
        .map(|body| {
            let id = enqueue(&s, body.clone());
            assert_eq!(
                s.worker.run_one(Duration::ZERO).unwrap(),
                Ran::Succeeded(id)
            );
            pixels(&s, id)
        })
        .collect();

    let ids: Vec<TaskId> = bodies.iter().map(|b| enqueue(&s, b.clone())).collect();
    let batching = batching_worker(&s, 4);
    // All four waiting: one call runs them together.
    let ran = batching.run_some(Duration::ZERO).unwrap();
    let mut succeeded: Vec<TaskId> = ran
        .iter()
        .map(|r| match r {
            Ran::Succeeded(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    succeeded.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(succeeded, want);
    for (k, id) in ids.iter().enumerate() {
        assert_close(&format!("task {k}"), &pixels(&s, *id), &alone[k]);
    }
    assert_eq!(batching.run_some(Duration::ZERO).unwrap(), [Ran::Idle]);
}

#[test]
fn a_task_cancelled_mid_batch_stops_and_the_others_finish_unchanged() {
    // A short lease makes heartbeats (which relay the cancel) frequent.
    let s = setup(Duration::from_millis(300));
    let bodies = unlike_four(150, 128);
    let keep = [0usize, 2];
    let alone: Vec<Vec<Vec<u8>>> = keep
        .iter()
        .map(|&k| {
            let id = enqueue(&s, bodies[k].clone());
            assert_eq!(
                s.worker.run_one(Duration::ZERO).unwrap(),
                Ran::Succeeded(id)
            );
            pixels(&s, id)
        })
        .collect();

    let ids: Vec<TaskId> = bodies[..3].iter().map(|b| enqueue(&s, b.clone())).collect();
    let batching = batching_worker(&s, 4);
    let ran = std::thread::scope(|scope| {
        let run = scope.spawn(|| batching.run_some(Duration::ZERO).unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let view = s
                .store
                .get(s.org, ids[1], Timestamp::now())
                .unwrap()
                .unwrap();
            if view.progress.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "no progress: {view:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        s.store.cancel(s.org, ids[1], Timestamp::now()).unwrap();
        run.join().unwrap()
    });
    assert!(
        ran.contains(&Ran::Failed(ids[1], "cancelled".into())),
        "{ran:?}"
    );
    let view = s
        .store
        .get(s.org, ids[1], Timestamp::now())
        .unwrap()
        .unwrap();
    let p = view.progress.unwrap();
    assert!(p.step < p.steps, "the cancelled task ran to the end: {p:?}");
    for (i, &k) in keep.iter().enumerate() {
        assert!(ran.contains(&Ran::Succeeded(ids[k])), "{ran:?}");
        assert_close(&format!("task {k}"), &pixels(&s, ids[k]), &alone[i]);
    }
}

#[test]
fn a_task_that_cannot_join_is_given_back_and_runs_after_the_batch() {
    let s = setup(Duration::from_secs(60));
    let mut bodies = unlike_four(3, 64);
    // Another size: it cannot share the batch of the first.
    bodies[1]["modelInputs"]["width"] = json!(128);
    let ids: Vec<TaskId> = bodies[..2].iter().map(|b| enqueue(&s, b.clone())).collect();
    let batching = batching_worker(&s, 4);
    let first = batching.run_some(Duration::ZERO).unwrap();
    assert!(first.contains(&Ran::Succeeded(ids[0])), "{first:?}");
    assert!(first.contains(&Ran::Released(ids[1])), "{first:?}");
    // Given back without an attempt counted, it is the next batch's.
    let second = batching.run_some(Duration::ZERO).unwrap();
    assert_eq!(second, [Ran::Succeeded(ids[1])]);
    let out = outputs(&s, ids[1]);
    assert_eq!(decode(&out["images"][0]).width(), 128);
}

#[test]
fn a_worker_stopping_mid_batch_gives_every_member_back() {
    let s = setup(Duration::from_millis(300));
    let bodies = unlike_four(150, 128);
    let ids: Vec<TaskId> = bodies[..3].iter().map(|b| enqueue(&s, b.clone())).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batching = batching_worker(&s, 4).with_stop(stop.clone());
    let ran = std::thread::scope(|scope| {
        let run = scope.spawn(|| batching.run_some(Duration::ZERO).unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        while s
            .store
            .get(s.org, ids[2], Timestamp::now())
            .unwrap()
            .unwrap()
            .progress
            .is_none()
        {
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        run.join().unwrap()
    });
    let mut released: Vec<TaskId> = ran
        .iter()
        .map(|r| match r {
            Ran::Released(id) => *id,
            other => panic!("{other:?} in {ran:?}"),
        })
        .collect();
    released.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(released, want);
    // Back in the queue, each runs again from the start on the next lease.
    for id in &ids {
        let view = s.store.get(s.org, *id, Timestamp::now()).unwrap().unwrap();
        assert_eq!(view.state, TaskState::Queued, "{view:?}");
    }
}
