//! `sie bench queue`: tasks per second through the queue alone (create → lease → complete),
//! no engine, on SQLite or PostgreSQL.
//!
//! Producer threads enqueue tasks the size of a real stored request while worker threads
//! lease and complete them with a result the size of a small image, all through the
//! [`Store`] trait the servers use; the figure is the whole run's tasks per second. It
//! writes into a fresh organization (SQLite: a fresh temporary file unless `--data-dir`),
//! so point `--database-url` at a scratch database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sie_store::{
    AccountName, BillingNote, NewTask, OrgName, PostgresStore, QueueCaps, SqliteStore, Store,
    TaskNeeds, TaskUsage, Timestamp, WorkerOffer,
};
use sie_vocab::{Capabilities, Pipeline, SchedulerKind};

pub struct QueueBench {
    pub database_url: Option<String>,
    pub data_dir: Option<std::path::PathBuf>,
    pub tasks: u64,
    pub producers: u32,
    pub workers: u32,
    pub json: bool,
}

pub fn run(b: QueueBench) -> anyhow::Result<()> {
    let _scratch;
    let (store, backend): (Arc<dyn Store>, &str) = match (&b.database_url, &b.data_dir) {
        (Some(url), _) => (Arc::new(PostgresStore::connect(url)?), "postgresql"),
        (None, Some(dir)) => {
            std::fs::create_dir_all(dir)?;
            (Arc::new(SqliteStore::open(dir.join("sie.db"))?), "sqlite")
        }
        (None, None) => {
            _scratch = tempfile::tempdir().context("making a scratch directory")?;
            (
                Arc::new(SqliteStore::open(_scratch.path().join("sie.db"))?),
                "sqlite",
            )
        }
    };
    let now = Timestamp::now();
    let suffix = format!("{:x}", now.as_millis());
    let account = store.create_account(&AccountName::parse(&format!("bench-{suffix}"))?, now)?;
    let name = OrgName::parse(&format!("bench-{suffix}"))?;
    let org = store.create_org(&name, account, now)?;
    store.approve_org(&name, &BillingNote::parse("sie bench queue")?, now)?;

    // A stored text-to-image request as the API writes it, and a result of about 8 KiB.
    let request = serde_json::json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "negative_prompt": "",
            "num_inference_steps": 50, "guidance_scale": 20.0, "width": 512, "height": 512,
            "num_images_per_prompt": 1, "seed": 42, "eta": 0.0, "guidance_rescale": 0.0,
            "image": null, "mask_image": null, "strength": 0.8},
        "callInputs": {"PIPELINE": "StableDiffusionPipeline", "SCHEDULER": "LMSDiscreteScheduler",
            "safety_checker": true, "image_format": "PNG"}
    })
    .to_string();
    let result = serde_json::json!({"images": ["A".repeat(8192)], "seed": 42}).to_string();
    let needs = TaskNeeds {
        pipeline: Pipeline::Text2Image,
        scheduler: Some(SchedulerKind::LmsDiscrete),
        safety_checker: false,
    };
    let caps = QueueCaps {
        per_org: u32::MAX,
        global: u32::MAX,
    };
    let (created, completed) = (AtomicU64::new(0), AtomicU64::new(0));
    // Raised when any thread fails, so the others stop instead of waiting for tasks that
    // will never be created.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..b.producers {
            handles.push(scope.spawn(|| -> anyhow::Result<()> {
                while created.fetch_add(1, Ordering::SeqCst) < b.tasks
                    && !failed.load(Ordering::SeqCst)
                {
                    let task = NewTask {
                        org,
                        request_json: &request,
                        needs,
                        idempotency: None,
                        webhook_url: None,
                    };
                    if let Err(e) = store.enqueue(&task, caps, Timestamp::now()) {
                        failed.store(true, Ordering::SeqCst);
                        return Err(e.into());
                    }
                }
                Ok(())
            }));
        }
        for w in 0..b.workers {
            let offer = WorkerOffer::new(
                &format!("bench:{w}"),
                Capabilities::new([Pipeline::Text2Image], [SchedulerKind::LmsDiscrete], false),
            );
            let (store, result, completed, failed) = (&store, &result, &completed, &failed);
            handles.push(scope.spawn(move || -> anyhow::Result<()> {
                let run = || -> anyhow::Result<()> {
                    while completed.load(Ordering::SeqCst) < b.tasks
                        && !failed.load(Ordering::SeqCst)
                    {
                        let Some(l) = store.lease_within(
                            &offer,
                            Duration::from_secs(60),
                            Duration::from_millis(200),
                        )?
                        else {
                            continue;
                        };
                        let usage = TaskUsage {
                            images: 1,
                            steps: 50,
                            gpu_ms: 1,
                        };
                        if store.complete(
                            &l.fence(&offer.worker_id),
                            result,
                            usage,
                            Timestamp::now(),
                        )? {
                            completed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(())
                };
                let outcome = run();
                if outcome.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                outcome
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(())
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let rate = b.tasks as f64 / seconds;
    if b.json {
        println!(
            "{}",
            serde_json::json!({"backend": backend, "tasks": b.tasks, "producers": b.producers,
                "workers": b.workers, "seconds": seconds, "tasks_per_second": rate})
        );
    } else {
        println!(
            "{backend}: {} tasks created, leased and completed in {seconds:.2} s by {} producers and {} workers: {rate:.0} tasks/s",
            b.tasks, b.producers, b.workers
        );
    }
    Ok(())
}
