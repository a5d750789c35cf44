//! `sie serve`: the API, in-process workers and the embedded SQLite store, in one process.
//!
//! On an empty data directory it creates an account, an approved organization `default`
//! and an API key, and prints the key once with a ready `curl` line. `--model tiny` writes
//! (once, into the data directory) the tiny model with a tiny safety checker that flags
//! nothing, so everything can be tried without weights.
//!
//! Workers are OS threads (the engine is CPU- or GPU-bound, not async); the HTTP server
//! runs on tokio. A new task rings a doorbell so an idle worker starts at once; otherwise
//! idle workers look again every second. On SIGTERM or Ctrl-C workers stop taking tasks,
//! the server stops accepting connections and drains the requests in flight, and each
//! worker stops its running task at the next step and gives it back to the queue (another
//! start, or another worker, runs it from the beginning with the same seed).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sie_engine::model::{LoadOptions, SafetyCheckerSource, StableDiffusion};
use sie_engine::tiny::{
    write_tiny_model, write_tiny_safety_checker, TinyCheckerOptions, TinyOptions,
};
use sie_store::{AccountName, OrgName, QueueCaps, SqliteStore, Store, Timestamp};
use sie_worker::{Ran, Worker};

#[derive(Args)]
pub struct ServeArgs {
    /// A diffusers-layout SD 2.x directory, or `tiny` for the built-in tiny test model.
    #[arg(long)]
    model: String,
    /// A safety-checker directory to use instead of the model's own `safety_checker/`.
    #[arg(long)]
    safety_checker: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    #[arg(long, default_value = "./sie-data")]
    data_dir: PathBuf,
    /// In-process worker threads; 0 serves the API alone (tasks wait in the queue).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// How long results are kept, e.g. `24h`, `30m`, `90s`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    result_ttl: Duration,
    /// A worker's lease on a task, renewed while it runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    lease: Duration,
    /// Queued tasks one organization may have before POST answers 429.
    #[arg(long, default_value_t = 100)]
    org_queue_cap: u32,
    /// Queued tasks in all before POST answers 429.
    #[arg(long, default_value_t = 1000)]
    global_queue_cap: u32,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a duration; use a number with s, m, h or d, e.g. 24h")
    })?;
    let seconds = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "unit {unit:?} in {text:?} is not one of s, m, h, d"
            ))
        }
    };
    if seconds == 0 {
        return Err(format!("{text:?} must be longer than zero"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Wakes idle workers when a task arrives.
#[derive(Default)]
struct Doorbell {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.bell.notify_all();
    }

    /// Waits until rung or `timeout`, and clears the bell.
    fn wait(&self, timeout: Duration) {
        let guard = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        let (mut rung, _) = self
            .bell
            .wait_timeout_while(guard, timeout, |rung| !*rung)
            .unwrap_or_else(|p| p.into_inner());
        *rung = false;
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(args.data_dir.join("sie.db"))?);
    let model_dir = model_dir(&args)?;
    let options = LoadOptions {
        safety_checker: match &args.safety_checker {
            Some(dir) => SafetyCheckerSource::Dir(dir.clone()),
            None => SafetyCheckerSource::ModelDefault,
        },
        ..LoadOptions::default()
    };
    let model = Arc::new(
        StableDiffusion::load(&model_dir, &options)
            .with_context(|| format!("loading {}", model_dir.display()))?,
    );
    let safety_checker_installed = model.safety_checker.is_some();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Bind before creating the first key: if the port is taken, nothing is created unseen.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("listening on {}", args.listen))?;
    let first_key = bootstrap(store.as_ref())?;

    let doorbell = Arc::new(Doorbell::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..args.workers {
        let worker = Worker::new(
            store.clone(),
            model.clone(),
            format!("local-{i}"),
            args.lease,
        )
        .with_stop(stop.clone());
        let (doorbell, stop) = (doorbell.clone(), stop.clone());
        threads.push(std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                // The engine has its own panic boundary; this one keeps the thread alive
                // through anything else (the task's lease then lapses and it is retried).
                match catch_unwind(AssertUnwindSafe(|| worker.run_one())) {
                    Ok(Ok(Ran::Idle)) => doorbell.wait(Duration::from_secs(1)),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "worker: store error; retrying in a second");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(_) => {
                        tracing::error!("worker: panicked outside the engine; going on in a second");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        })?);
    }
    {
        let (store, stop, ttl) = (store.clone(), stop.clone(), args.result_ttl);
        threads.push(
            std::thread::Builder::new()
                .name("expiry".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match store.expire(ttl, Timestamp::now()) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(expired = n, "expired results deleted"),
                            Err(e) => tracing::error!(error = %e, "expiry failed"),
                        }
                        // Every minute, or as often as the TTL when it is shorter.
                        for _ in 0..ttl.as_secs().clamp(1, 60) {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                })?,
        );
    }

    let state = sie_server::AppState {
        store,
        caps: QueueCaps {
            per_org: args.org_queue_cap,
            global: args.global_queue_cap,
        },
        safety_checker_installed,
        // img2img and inpainting are not in the engine yet.
        pipelines: vec![sie_api::request::Pipeline::Text2Image],
        on_enqueue: {
            let doorbell = doorbell.clone();
            Arc::new(move || doorbell.ring())
        },
    };
    // Stop leasing the moment shutdown begins, not after the HTTP drain.
    let shutdown = {
        let (stop, doorbell) = (stop.clone(), doorbell.clone());
        async move {
            shutdown_signal().await;
            eprintln!("shutting down: no new tasks; running tasks go back to the queue");
            stop.store(true, Ordering::SeqCst);
            doorbell.ring();
        }
    };
    runtime.block_on(async {
        let address = listener.local_addr()?;
        println!("listening on http://{address}");
        if let Some(key) = &first_key {
            print_welcome(&address.to_string(), key);
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        sie_server::serve(listener, state, shutdown).await?;
        anyhow::Ok(())
    })?;
    stop.store(true, Ordering::SeqCst);
    doorbell.ring();
    for t in threads {
        let _ = t.join();
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
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
    store.approve_org(&org, "created by sie serve on an empty data directory", now)?;
    let key = store.create_api_key(account, now)?;
    Ok(Some(key.expose_key().to_owned()))
}

fn print_welcome(address: &str, key: &str) {
    println!("created organization `default` and the API key below (shown once; keep it)");
    println!("api key: {key}");
    println!("try the seed document's example:");
    println!(
        "curl -s -X POST http://{address}/api/beta/organizations/default/inference-endpoints/stable-diffusion-2-1 \\\n  \
         -H 'Salad-Api-Key: {key}' -H 'Content-Type: application/json' \\\n  \
         -d '{{\"modelInputs\": {{\"prompt\": \"An oil painting of a salad\", \"num_inference_steps\": 50, \"guidance_scale\": 20, \"width\": 512, \"height\": 512}}, \
         \"callInputs\": {{\"PIPELINE\": \"StableDiffusionPipeline\", \"SCHEDULER\": \"LMSDiscreteScheduler\", \"safety_checker\": \"true\"}}}}'"
    );
    println!("then GET the resultUrl it answers with the same Salad-Api-Key header until status is success.");
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
