//! What several commands share: opening a store from `--data-dir` or `--database-url`,
//! loading a model, the worker threads, the expiry sweep, durations and signals.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sie_engine::{DeviceSpec, LoadOptions, Precision, SafetyCheckerSource, StableDiffusion};
use sie_store::{PostgresStore, SqliteStore, Store, Timestamp};
use sie_worker::{Ran, SourceError, Worker};

/// What `sie serve` and `sie api` both take: where to listen, and the queue's settings.
#[derive(Args, Clone)]
pub struct ServerArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// How long results are kept, e.g. `24h`, `30m`, `90s`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub result_ttl: Duration,
    /// A worker's lease on a task, renewed by its heartbeats while it runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Queued tasks one organization may have before POST answers 429.
    #[arg(long, default_value_t = 100)]
    pub org_queue_cap: u32,
    /// Queued tasks in all before POST answers 429.
    #[arg(long, default_value_t = 1000)]
    pub global_queue_cap: u32,
}

impl ServerArgs {
    /// The API's shared state over `store`.
    pub fn app_state(
        &self,
        store: Arc<dyn Store>,
        workers: sie_server::Workers,
    ) -> sie_server::AppState {
        sie_server::AppState::new(
            store,
            sie_store::QueueCaps {
                per_org: self.org_queue_cap,
                global: self.global_queue_cap,
            },
            workers,
            self.lease,
        )
    }
}

/// Where the state lives: the embedded SQLite file, or a PostgreSQL database.
#[derive(Args, Clone)]
pub struct StoreArgs {
    /// The data directory of `sie serve` (holds sie.db).
    #[arg(long, default_value = "./sie-data")]
    pub data_dir: PathBuf,
    /// A PostgreSQL database (`postgres://user:password@host:port/db`) instead of the
    /// data directory, as `sie api` uses.
    #[arg(long, env = "SIE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StoreArgs {
    /// Opens the store; SQLite only if its file already exists (`create` false), so a typo in
    /// `--data-dir` is an error rather than a fresh empty database.
    pub fn open(&self, create: bool) -> anyhow::Result<Arc<dyn Store>> {
        if let Some(url) = &self.database_url {
            return Ok(Arc::new(PostgresStore::connect(url)?));
        }
        let db = self.data_dir.join("sie.db");
        if !create && !db.is_file() {
            anyhow::bail!(
                "{} does not exist; start `sie serve --data-dir {}` once, pass the right --data-dir, \
                 or use --database-url for a PostgreSQL store",
                db.display(),
                self.data_dir.display()
            );
        }
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating the data directory {}", self.data_dir.display()))?;
        Ok(Arc::new(SqliteStore::open(db)?))
    }
}

/// The runtime the HTTP server runs on, and its listener on `listen`, bound before anything
/// else starts so that a taken port is refused at once.
pub fn bind(listen: &str) -> anyhow::Result<(tokio::runtime::Runtime, tokio::net::TcpListener)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen))
        .with_context(|| format!("listening on {listen}"))?;
    Ok((runtime, listener))
}

/// Where the networks run: every command that generates takes these.
#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// `cpu`, `cuda` (the first GPU) or `cuda:N`. A device this build or machine cannot use
    /// is refused at start, never replaced by the CPU.
    #[arg(long, env = "SIE_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
    /// `float32`, `float16` or `bfloat16`; by default float16 on a GPU, float32 on the CPU.
    #[arg(long)]
    pub dtype: Option<Precision>,
}

impl DeviceArgs {
    /// The device opened in its precision, with the safety checker `safety_checker` names.
    pub fn load_options(&self, safety_checker: SafetyCheckerSource) -> anyhow::Result<LoadOptions> {
        let precision = self.dtype.unwrap_or(self.device.default_precision());
        let device = self
            .device
            .open(precision)
            .with_context(|| format!("--device {}", self.device))?;
        Ok(LoadOptions {
            device,
            dtype: precision.dtype(),
            safety_checker,
        })
    }
}

/// Loads a model directory on `device`, with the safety checker from `safety_checker` or
/// the model's own.
pub fn load_model(
    dir: &std::path::Path,
    safety_checker: Option<&PathBuf>,
    device: &DeviceArgs,
) -> anyhow::Result<Arc<StableDiffusion>> {
    let options = device.load_options(match safety_checker {
        Some(dir) => SafetyCheckerSource::Dir(dir.clone()),
        None => SafetyCheckerSource::ModelDefault,
    })?;
    let model = StableDiffusion::load(dir, &options)
        .with_context(|| format!("loading {}", dir.display()))?;
    let runs_on = model.runs_on();
    eprintln!(
        "loaded {} on {} in {}{}",
        dir.display(),
        runs_on.device,
        runs_on.precision,
        runs_on
            .memory_bytes
            .map(|m| format!(" ({:.1} GB)", m as f64 / 1e9))
            .unwrap_or_default()
    );
    Ok(Arc::new(model))
}

/// Starts `workers` threads running `worker` tasks until `stop` is raised. Each waits up to
/// `wait` per lease call; a failing source (database or server unreachable) is retried with
/// backoff from half a second up to `max_backoff`.
pub fn spawn_workers(
    workers: Vec<Worker>,
    stop: Arc<AtomicBool>,
    wait: Duration,
    max_backoff: Duration,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    for (i, worker) in workers.into_iter().enumerate() {
        let stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || {
                    let mut backoff = Duration::from_millis(500);
                    while !stop.load(Ordering::SeqCst) {
                        // The engine has its own panic boundary; this one keeps the thread
                        // alive through anything else (the task's lease then lapses and it
                        // is retried).
                        let pause = match catch_unwind(AssertUnwindSafe(|| worker.run_one(wait))) {
                            Ok(Ok(ran)) => {
                                if !matches!(ran, Ran::Idle) {
                                    tracing::debug!(?ran, "worker: task done");
                                }
                                backoff = Duration::from_millis(500);
                                continue;
                            }
                            Ok(Err(SourceError::Unauthorized(e))) => {
                                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                                    "worker: the API node refused this worker's token (revoked?); \
                                     ask the operator for a new one (`sie admin worker-token create NAME`)");
                                backoff
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "worker: cannot reach the queue");
                                backoff
                            }
                            Err(_) => {
                                tracing::error!("worker: panicked outside the engine; going on");
                                backoff
                            }
                        };
                        sleep_unless(&stop, pause);
                        backoff = (backoff * 2).min(max_backoff);
                    }
                })?,
        );
    }
    Ok(threads)
}

/// Sleeps for `d`, waking early once `stop` is raised.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::SeqCst) {
        let nap = left.min(step);
        std::thread::sleep(nap);
        left -= nap;
    }
}

/// Deletes results older than `ttl`, and finishes lapsed tasks that may not run again
/// ([`Store::sweep`], so they end even while no worker polls), every minute (or every `ttl`
/// when shorter) until `stop`. Several API nodes may each run one: both are idempotent.
pub fn spawn_expiry(
    store: Arc<dyn Store>,
    stop: Arc<AtomicBool>,
    ttl: Duration,
) -> anyhow::Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("expiry".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match store.sweep(Timestamp::now()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(finished = n, "lapsed tasks out of attempts finished"),
                    Err(e) => tracing::error!(error = %e, "sweep failed"),
                }
                match store.expire(ttl, Timestamp::now()) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "expired results deleted"),
                    Err(e) => tracing::error!(error = %e, "expiry failed"),
                }
                sleep_unless(&stop, Duration::from_secs(ttl.as_secs().clamp(1, 60)));
            }
        })?)
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// Serves the API on `listener` until SIGTERM or Ctrl-C, then drains the requests in flight.
///
/// Prints `listening on http://ADDRESS` (what scripts and tests wait for) and then whatever
/// `welcome` prints for that address. When the signal comes it prints `farewell`, raises
/// `stop` and ends waiting lease calls at once (`AppState::stop_long_polls`), so workers,
/// local and remote, stop leasing the moment shutdown begins, not after the drain.
pub fn serve_until_signal(
    runtime: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    state: sie_server::AppState,
    stop: &Arc<AtomicBool>,
    farewell: &'static str,
    welcome: impl FnOnce(&str),
) -> anyhow::Result<()> {
    let stopping = {
        let (stop, state) = (stop.clone(), state.clone());
        move || {
            stop.store(true, Ordering::SeqCst);
            state.stop_long_polls();
        }
    };
    let shutdown = {
        let stopping = stopping.clone();
        async move {
            shutdown_signal().await;
            eprintln!("shutting down: {farewell}");
            stopping();
        }
    };
    runtime.block_on(async {
        let address = listener.local_addr()?;
        println!("listening on http://{address}");
        welcome(&address.to_string());
        use std::io::Write;
        std::io::stdout().flush()?;
        sie_server::serve(listener, state, shutdown).await?;
        anyhow::Ok(())
    })?;
    // Also when the server ended for another reason than the signal.
    stopping();
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
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
