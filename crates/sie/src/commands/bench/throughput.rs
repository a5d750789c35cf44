//! `sie bench throughput`: images per second and latency of concurrent requests through the
//! real service, beside diffusers running the same requests one after another.
//!
//! The service is the one `sie serve` runs, in this process: a SQLite store in a temporary
//! directory, the API on 127.0.0.1, and one worker thread on the model (`--device`,
//! `--dtype`) batching up to `--max-batch` tasks (`sie_worker`'s step-level batching). The
//! clients post `--concurrency` requests at once over HTTP and poll each to the end; a
//! request's latency is from its POST to the answer that holds its images, the throughput
//! is the images over the time from the first POST to the last image. With `--torch`, the
//! same request is timed in diffusers (`tools/parity/bench_diffusers.py pipeline`, one
//! run), and the figures of running the `--concurrency` requests one after another on it
//! are printed beside ours: the k-th of them would wait k runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Args;
use serde_json::{json, Value};
use sie_engine::{LoadOptions, SafetyCheckerSource, StableDiffusion};
use sie_store::{AccountName, BillingNote, OrgName, SqliteStore, Store, Timestamp};
use sie_worker::{StoreSource, Worker};

use super::{pipeline_flags, CommonArgs};

#[derive(Args, Clone)]
pub struct ThroughputArgs {
    /// A diffusers-layout model directory.
    #[arg(long)]
    model: PathBuf,
    /// Requests posted at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Tasks the worker batches at once; the concurrency when left out.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_batch: Option<u32>,
    /// Image size in pixels.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Inference steps of each request.
    #[arg(long, default_value_t = 50)]
    steps: usize,
    #[arg(long, default_value_t = 7.5)]
    guidance: f64,
    #[command(flatten)]
    common: CommonArgs,
}

pub(super) fn run(args: ThroughputArgs) -> anyhow::Result<()> {
    ensure!(
        args.size % 8 == 0 && args.size >= 64,
        "--size must be a multiple of 8, at least 64"
    );
    let ours = ours(&args)?;
    let Some(python) = &args.common.torch else {
        print(&ours, None, args.common.json);
        return Ok(());
    };
    let mut flags = pipeline_flags(&args.model, args.size, args.steps, 1, args.guidance);
    flags.extend(args.common.flags());
    let run = super::torch::diffusers(python, &flags)?;
    let seconds = run["seconds"]
        .as_f64()
        .context("bench_diffusers.py printed no `seconds`")?;
    let theirs = serially(seconds, args.concurrency as usize);
    print(&ours, Some(&theirs), args.common.json);
    Ok(())
}

/// The requests through the service in this process.
fn ours(args: &ThroughputArgs) -> anyhow::Result<Value> {
    let options = LoadOptions {
        device: args.common.device()?,
        dtype: args.common.dtype(),
        safety_checker: SafetyCheckerSource::Disabled,
        ..LoadOptions::default()
    };
    let model = Arc::new(
        StableDiffusion::load(&args.model, &options)
            .with_context(|| format!("loading {}", args.model.display()))?,
    );
    let dir = tempfile::tempdir().context("making a scratch directory")?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("sie.db"))?);
    let key = tenant(store.as_ref())?;

    let mut settings = sie_server::Settings::default();
    settings.limits.per_key = sie_server::Rate::OFF;
    settings.limits.per_org = sie_server::Rate::OFF;
    let concurrency = args.concurrency as usize;
    settings.caps.per_org = settings.caps.per_org.max(args.concurrency);
    settings.caps.global = settings.caps.global.max(args.concurrency);
    let lease = settings.lease;
    let capabilities = sie_worker::task::capabilities(&model);
    let state = sie_server::AppState::new(
        store.clone(),
        sie_server::Workers::Local(capabilities),
        settings,
    );
    let announcement = sie_worker::task::announcement(&model, "bench");
    let offer = sie_worker::task::offer(&announcement, "local:bench");
    let max_batch = args.max_batch.unwrap_or(args.concurrency) as usize;
    let worker = Worker::new(
        Arc::new(StoreSource::new(state.worker_queue(), offer, lease)),
        model.clone(),
    )
    .with_max_batch(max_batch);
    let stop = Arc::new(AtomicBool::new(false));
    let worker_stop = stop.clone();
    let worker_thread = std::thread::spawn(move || {
        while !worker_stop.load(Ordering::SeqCst) {
            if let Err(e) = worker.run_some(Duration::from_millis(200)) {
                tracing::error!(error = %e, "bench worker");
            }
        }
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let body = json!({
        "modelInputs": {"prompt": "An oil painting of a salad", "num_inference_steps": args.steps,
            "guidance_scale": args.guidance, "width": args.size, "height": args.size},
    })
    .to_string();
    let measured = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let root = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(sie_server::serve(listener, state, async {
            let _ = rx.await;
        }));
        let base =
            format!("{root}/api/beta/organizations/bench/inference-endpoints/stable-diffusion-2-1");
        let client = reqwest::Client::new();
        let start = Instant::now();
        let clients: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, base, key, body) =
                    (client.clone(), base.clone(), key.clone(), body.clone());
                tokio::spawn(async move { one(&client, &base, &key, body).await })
            })
            .collect();
        let mut latencies = Vec::with_capacity(concurrency);
        for c in clients {
            latencies.push(c.await??);
        }
        let wall = start.elapsed().as_secs_f64();
        let _ = tx.send(());
        let _ = server.await;
        anyhow::Ok((wall, latencies))
    });
    stop.store(true, Ordering::SeqCst);
    let _ = worker_thread.join();
    let (wall, latencies) = measured?;
    let (device, dtype) = args.common.names();
    Ok(json!({
        "implementation": "sie (candle), through the queue",
        "device": device,
        "dtype": dtype,
        "model": args.model.display().to_string(),
        "size": args.size,
        "steps": args.steps,
        "concurrency": concurrency,
        "max_batch": max_batch,
        "seconds": wall,
        "images_per_second": concurrency as f64 / wall,
        "latency_p50_seconds": percentile(&latencies, 0.50),
        "latency_p95_seconds": percentile(&latencies, 0.95),
    }))
}

/// One request posted and polled to its images; its latency in seconds.
async fn one(client: &reqwest::Client, base: &str, key: &str, body: String) -> anyhow::Result<f64> {
    let start = Instant::now();
    let posted = client
        .post(base)
        .header("Salad-Api-Key", key)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    ensure!(posted.status() == 202, "POST answered {}", posted.status());
    let url = posted.json::<Value>().await?["resultUrl"]
        .as_str()
        .context("no resultUrl")?
        .to_owned();
    loop {
        let status: Value = client
            .get(&url)
            .header("Salad-Api-Key", key)
            .send()
            .await?
            .json()
            .await?;
        match status["status"].as_str() {
            Some("success") => return Ok(start.elapsed().as_secs_f64()),
            Some("pending") => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => anyhow::bail!("a request ended {status}"),
        }
    }
}

/// The organization `bench`, approved, and a key of its owner.
fn tenant(store: &dyn Store) -> anyhow::Result<String> {
    let now = Timestamp::now();
    let account = store.create_account(&AccountName::parse("bench")?, now)?;
    let org = OrgName::parse("bench")?;
    store.create_org(&org, account, now)?;
    store.approve_org(&org, &BillingNote::parse("sie bench throughput")?, now)?;
    Ok(store.create_api_key(account, now)?.expose_key().to_owned())
}

/// `n` requests run one after another, each taking `seconds`: the k-th waits k runs.
fn serially(seconds: f64, n: usize) -> Value {
    let latencies: Vec<f64> = (1..=n).map(|k| k as f64 * seconds).collect();
    json!({
        "implementation": "diffusers, one request after another",
        "seconds_per_request": seconds,
        "seconds": n as f64 * seconds,
        "images_per_second": 1.0 / seconds,
        "latency_p50_seconds": percentile(&latencies, 0.50),
        "latency_p95_seconds": percentile(&latencies, 0.95),
    })
}

/// The `q` quantile of `values` (nearest rank).
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn print(ours: &Value, theirs: Option<&Value>, json: bool) {
    if json {
        println!("{}", json!({"ours": ours, "pytorch": theirs}));
        return;
    }
    let line = |v: &Value| {
        format!(
            "{}: {:.3} images/s, latency p50 {:.2} s, p95 {:.2} s",
            v["implementation"].as_str().unwrap_or_default(),
            v["images_per_second"].as_f64().unwrap_or(f64::NAN),
            v["latency_p50_seconds"].as_f64().unwrap_or(f64::NAN),
            v["latency_p95_seconds"].as_f64().unwrap_or(f64::NAN),
        )
    };
    println!(
        "{} requests of {}x{}, {} steps, at once (--max-batch {}) on {} {}",
        ours["concurrency"],
        ours["size"],
        ours["size"],
        ours["steps"],
        ours["max_batch"],
        ours["device"].as_str().unwrap_or_default(),
        ours["dtype"].as_str().unwrap_or_default()
    );
    println!("{}", line(ours));
    if let Some(theirs) = theirs {
        println!("{}", line(theirs));
        println!(
            "throughput ours / diffusers serially: {:.2}",
            ours["images_per_second"].as_f64().unwrap_or(f64::NAN)
                / theirs["images_per_second"].as_f64().unwrap_or(f64::NAN)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.5), 2.0);
        assert_eq!(percentile(&v, 0.95), 4.0);
        let serial = serially(2.0, 8);
        assert_eq!(serial["latency_p50_seconds"], json!(8.0));
        assert_eq!(serial["latency_p95_seconds"], json!(16.0));
        assert_eq!(serial["images_per_second"], json!(0.5));
    }
}
