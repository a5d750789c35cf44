//! `sie serve`: the API, in-process workers and the embedded SQLite store, in one process.
//!
//! On an empty data directory it creates an account, an approved organization `default`
//! and an API key, and prints the key once with a ready `curl` line. `--model tiny` writes
//! (once, into the data directory) the tiny model with a tiny safety checker that flags
//! nothing, so everything can be tried without weights.
//!
//! The data directory is its owner's alone and locked while it runs (`data_dir.rs`); at
//! start, tasks that the previous run's workers were running when it died are released.
//!
//! Workers are OS threads (the engine is CPU- or GPU-bound, not async); the HTTP server
//! runs on tokio. A new task rings the store's work signal so an idle worker starts at
//! once. Remote workers (`sie worker`) may join over `/worker/v1` with a worker token. On SIGTERM or Ctrl-C workers stop taking tasks,
//! the server stops accepting connections and drains the requests in flight, and each
//! worker stops its running task at the next step and gives it back to the queue (another
//! start, or another worker, runs it from the beginning with the same seed).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_store::{AccountName, BillingNote, OrgName, Store, Timestamp};
use sie_worker::{StoreSource, Worker};

use super::common::{
    serve_until_signal, spawn_expiry, spawn_workers, DeviceArgs, MaxBatch, ServerArgs,
    SingleFileArgs,
};
use super::data_dir::{DataDir, LOCAL_WORKERS};

#[derive(Args)]
pub struct ServeArgs {
    /// A diffusers-layout SD 2.x directory, a `.safetensors` checkpoint in the original SD 2.x
    /// layout, or `tiny` for the built-in tiny test model.
    #[arg(long)]
    model: String,
    /// A safety-checker directory to use instead of the model's own `safety_checker/`.
    #[arg(long)]
    safety_checker: Option<PathBuf>,
    #[arg(long, default_value = "./sie-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    model_file: SingleFileArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// In-process worker threads; 0 serves the API alone (tasks wait in the queue).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Text-to-image tasks of one size a worker thread runs as one batch, sharing each UNet
    /// evaluation, each joining and leaving at a step boundary (1: each task alone). `auto`:
    /// as many as fit the GPU's free memory at the model's native size; 1 on the CPU.
    #[arg(long, default_value = "auto")]
    max_batch: MaxBatch,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut options = args.device.model_options(args.safety_checker.as_ref())?;
    options.single_file = args.model_file.options();
    let data_dir = DataDir::prepare(&args.data_dir, true)?;
    // Held until the process ends; taken before the store opens, so a second server on
    // this directory changes nothing.
    let _lock = data_dir.lock()?;
    let store = data_dir.open_store()?;
    // This directory's last server is gone (the lock says so): what its workers held runs
    // again now, not after the lease (a kill -9 leaves no time to give tasks back).
    let released = store.lapse_leases(LOCAL_WORKERS, Timestamp::now())?;
    if released > 0 {
        eprintln!("{released} task(s) the previous run of this data directory was running go back to the queue");
    }
    let model_dir = model_dir(&args)?;
    let model = super::common::load_model(&model_dir, &options)?;
    let max_batch = args.max_batch.resolve(&model)?;
    let announcement = sie_worker::task::announcement(&model, &model_name(&model_dir));
    // Bind before creating the first key: if the port is taken, nothing is created unseen.
    let (runtime, listener) = super::common::bind(&args.server.listen)?;
    let first_key = bootstrap(store.as_ref())?;

    let state = args.server.app_state(
        store.clone(),
        sie_server::Workers::Local(sie_worker::task::capabilities(&model)),
    );
    state.metrics.set_local_workers(args.workers);
    state.metrics.leases_lapsed(released);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..args.workers)
        .map(|i| {
            // See LOCAL_WORKERS: no remote worker can pass for a local one in the fence.
            let offer = sie_worker::task::offer(&announcement, &format!("{LOCAL_WORKERS}{i}"));
            // Through the API's counted queue, so /metrics counts their reports.
            let queue = state.worker_queue();
            let source = Arc::new(StoreSource::new(queue, offer, args.server.lease));
            Worker::new(source, model.clone())
                .with_stop(stop.clone())
                .with_max_batch(max_batch)
        })
        .collect();
    // Idle workers wait a second per lease call, so a shutdown is noticed within one.
    let mut threads = spawn_workers(
        workers,
        stop.clone(),
        Duration::from_secs(1),
        Duration::from_secs(5),
    )?;
    threads.push(spawn_expiry(
        store.clone(),
        state.worker_queue(),
        stop.clone(),
        args.server.result_ttl,
    )?);

    serve_until_signal(
        &runtime,
        listener,
        state,
        &stop,
        "no new tasks; running tasks go back to the queue",
        |address| {
            println!("the portal: open http://{address}/portal to sign up, create keys and organizations, and try prompts");
            if let Some(key) = &first_key {
                print_welcome(address, key);
            }
        },
    )?;
    for t in threads {
        let _ = t.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// The model's name for `$meta` and the worker announcement: its directory's name, or a
/// single file's without the extension.
pub fn model_name(dir: &std::path::Path) -> String {
    dir.canonicalize()
        .ok()
        .and_then(|d| {
            let name = if d.is_file() {
                d.file_stem()
            } else {
                d.file_name()
            };
            name.map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".into())
}

/// `--model tiny` means the tiny model in the data directory, written on first use.
fn model_dir(args: &ServeArgs) -> anyhow::Result<PathBuf> {
    if args.model != "tiny" {
        return Ok(PathBuf::from(&args.model));
    }
    let dir = args.data_dir.join("tiny-model");
    if !dir.join("model_index.json").is_file() {
        write_tiny_model(&dir, TinyOptions::default())?;
        // Threshold 1 (cosine similarities never exceed it): the demo checker flags nothing.
        write_tiny_safety_checker(
            &dir,
            TinyCheckerOptions {
                threshold: 1.0,
                ..Default::default()
            },
        )?;
        eprintln!(
            "wrote the tiny model (random weights: images are coloured noise) to {}",
            dir.display()
        );
    }
    Ok(dir)
}

/// On a store with no organization: an `admin` account, the approved `default`
/// organization, and a key, which is returned to be shown once.
fn bootstrap(store: &dyn Store) -> anyhow::Result<Option<String>> {
    if !store.list_orgs()?.is_empty() {
        return Ok(None);
    }
    let now = Timestamp::now();
    let account = store.create_account(&AccountName::parse("admin")?, now)?;
    let org = OrgName::parse("default")?;
    store.create_org(&org, account, now)?;
    let billing = BillingNote::parse("created by sie serve on an empty data directory")?;
    store.approve_org(&org, &billing, now)?;
    let key = store.create_api_key(account, now)?;
    Ok(Some(key.expose_key().to_owned()))
}

fn print_welcome(address: &str, key: &str) {
    println!(
        "for scripts: created organization `default` and the API key below (shown once; keep it)"
    );
    println!("api key: {key}");
    println!("try the seed document's example:");
    let example: Vec<&str> = sie_api::SEED_EXAMPLE.lines().map(str::trim).collect();
    println!(
        "curl -s -X POST http://{address}/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1 \\\n  \
         -H 'Salad-Api-Key: {key}' -H 'Content-Type: application/json' \\\n  \
         -d '{}'",
        example.join(" ")
    );
    println!("then GET the resultUrl it answers with the same Salad-Api-Key header until status is success.");
}
