//! What several commands share: opening a store from `--data-dir` or `--database-url`,
//! the server's flags, loading a model, the worker threads, the expiry sweep, durations,
//! sizes and signals.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clap::ValueEnum;
use sie_engine::scheduler::PredictionType;
use sie_engine::{
    DeviceSpec, LoadOptions, Precision, SafetyCheckerSource, SingleFileOptions, StableDiffusion,
};
use sie_store::{PostgresStore, Store, Timestamp};
use sie_worker::{Ran, SourceError, Worker};

/// What `sie serve` and `sie api` both take: where to listen, the queue's settings, the
/// limits on what clients can make the server hold, and whose word the URLs it hands out
/// take (`docs/security.md` explains each).
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
    /// Connections served at once; more wait to be accepted.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Time a client has to send a request's head (on a new or idle kept-alive connection)
    /// before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest pause while a request body is sent (408 after it), or while an answer
    /// waits for the client to read it (the connection is closed after it).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// A whole request, its body included, until its answer is ready: 408 after it. Not
    /// for worker calls (their uploads are bounded by --body-timeout); a worker's lease
    /// long-poll ends a second before it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Bytes that all create-task bodies being read at once may take (e.g. `256MiB`); a
    /// POST that does not fit answers 503. At least 20MiB, the largest body.
    #[arg(long, default_value = "256MiB", value_parser = parse_body_budget)]
    pub max_inflight_body_bytes: u64,
    /// Input images decoded at once; by default one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_decodes: Option<u32>,
    /// Bytes of finished results kept in memory for clients polling them (e.g. `512MiB`;
    /// 0 keeps none).
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub result_cache_bytes: u64,
    /// Requests a second one API key may make, on average, on this server (kept in this
    /// process's memory: behind a load balancer, each `sie api` node counts its own); past
    /// it and --key-burst, 429 with Retry-After. 0 turns the limit off.
    #[arg(long, default_value_t = sie_server::DEFAULT_PER_KEY.per_second)]
    pub key_rate_limit: u32,
    /// Requests one API key may make at once before --key-rate-limit applies.
    #[arg(long, default_value_t = sie_server::DEFAULT_PER_KEY.burst, value_parser = clap::value_parser!(u32).range(1..))]
    pub key_burst: u32,
    /// Requests a second one organization may make, all its keys together, on this server
    /// (per node, in memory, as --key-rate-limit). 0 turns the limit off.
    #[arg(long, default_value_t = sie_server::DEFAULT_PER_ORG.per_second)]
    pub org_rate_limit: u32,
    /// Requests one organization may make at once before --org-rate-limit applies.
    #[arg(long, default_value_t = sie_server::DEFAULT_PER_ORG.burst, value_parser = clap::value_parser!(u32).range(1..))]
    pub org_burst: u32,
    /// Build `resultUrl` and `Location` from the `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` headers: only behind a proxy that sets them (and drops the
    /// client's own).
    #[arg(long)]
    pub trust_proxy: bool,
    /// The URL clients reach this server at (e.g. `https://sie.example.com`): `resultUrl`
    /// and `Location` start with it, whatever the request's headers say.
    #[arg(long, value_parser = sie_server::PublicUrl::parse, conflicts_with = "trust_proxy")]
    pub public_url: Option<sie_server::PublicUrl>,
    /// A browser origin (`https://app.example.com`) allowed to call the API with CORS;
    /// repeat for more. None by default.
    #[arg(long = "cors-origin", value_parser = sie_server::CorsOrigin::parse)]
    pub cors_origins: Vec<sie_server::CorsOrigin>,
    /// Whether anyone may sign up on the portal (/portal): open or closed.
    #[arg(long, value_enum, default_value = "open")]
    pub signup: Signup,
    /// Whether an organization's billing information approves it at once (auto), or waits
    /// for `sie admin org approve` (manual).
    #[arg(long, value_enum, default_value = "auto")]
    pub approval: Approval,
    /// Let webhooks go to loopback, private, link-local and cloud-metadata addresses (a
    /// receiver on this machine or its network). Off by default: a client could otherwise
    /// make the server call into the network it runs in.
    #[arg(long)]
    pub allow_private_webhooks: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Signup {
    Open,
    Closed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Approval {
    Auto,
    Manual,
}

impl ServerArgs {
    /// The API's shared state over `store`.
    pub fn app_state(
        &self,
        store: Arc<dyn Store>,
        workers: sie_server::Workers,
    ) -> sie_server::AppState {
        let urls = match (&self.public_url, self.trust_proxy) {
            (Some(url), _) => sie_server::PublicUrls::Fixed(url.clone()),
            (None, true) => sie_server::PublicUrls::TrustProxy,
            (None, false) => sie_server::PublicUrls::FromHost,
        };
        let limits = sie_server::Limits {
            max_connections: self.max_connections as usize,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            request_timeout: self.request_timeout,
            max_inflight_body_bytes: self.max_inflight_body_bytes,
            max_concurrent_decodes: self
                .max_concurrent_decodes
                .map_or_else(sie_server::default_decodes, |n| n as usize),
            result_cache_bytes: self.result_cache_bytes,
            per_key: sie_server::Rate {
                per_second: self.key_rate_limit,
                burst: self.key_burst,
            },
            per_org: sie_server::Rate {
                per_second: self.org_rate_limit,
                burst: self.org_burst,
            },
        };
        let settings = sie_server::Settings {
            caps: sie_store::QueueCaps {
                per_org: self.org_queue_cap,
                global: self.global_queue_cap,
            },
            lease: self.lease,
            result_ttl: self.result_ttl,
            limits,
            urls,
            cors_origins: self.cors_origins.clone(),
            portal: sie_server::PortalSettings {
                signup_open: matches!(self.signup, Signup::Open),
                auto_approval: matches!(self.approval, Approval::Auto),
            },
            webhooks: sie_server::WebhookSettings {
                allow_private: self.allow_private_webhooks,
            },
        };
        sie_server::AppState::new(store, workers, settings)
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
    /// Opens the store; SQLite only if its file already exists, so a typo in `--data-dir` is
    /// an error rather than a fresh empty database. The data directory is made its owner's
    /// alone (`data_dir.rs`); it is not locked (`sie admin` runs beside `sie serve`).
    pub fn open(&self) -> anyhow::Result<Arc<dyn Store>> {
        if let Some(url) = &self.database_url {
            return Ok(Arc::new(PostgresStore::connect(url)?));
        }
        super::data_dir::DataDir::prepare(&self.data_dir, false)?.open_store()
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

/// `--max-batch`: how many text-to-image tasks of one size a worker thread runs as one UNet
/// batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxBatch {
    /// As many as fit the GPU's free memory after loading, at the model's native size (one
    /// on the CPU).
    Auto,
    Fixed(u32),
}

/// The largest batch either way.
const MAX_BATCH: u32 = 64;

impl std::str::FromStr for MaxBatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(MaxBatch::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) if (1..=MAX_BATCH).contains(&n) => Ok(MaxBatch::Fixed(n)),
            _ => Err(format!(
                "expected `auto` or a number of tasks in 1..={MAX_BATCH}"
            )),
        }
    }
}

impl MaxBatch {
    /// The batch size for `model`, as loaded; says how `auto` chose it.
    pub fn resolve(self, model: &StableDiffusion) -> anyhow::Result<usize> {
        match self {
            MaxBatch::Fixed(n) => Ok(n as usize),
            MaxBatch::Auto => {
                let size = model.files.native_size();
                let fit = model.batch_fit(size, size, MAX_BATCH as usize)?;
                match fit.free_bytes {
                    Some(free) => eprintln!(
                        "max batch: {} ({:.1} GB free; about {:.2} GB per {size}x{size} image)",
                        fit.images,
                        free as f64 / 1e9,
                        fit.per_image_bytes as f64 / 1e9
                    ),
                    None => eprintln!("max batch: 1 (on the CPU; --max-batch N to batch)"),
                }
                Ok(fit.images)
            }
        }
    }
}

/// What a UNet predicts, as the command line spells it.
#[derive(Clone, Copy, ValueEnum)]
pub enum Prediction {
    Epsilon,
    // diffusers' `prediction_type` spells it `v_prediction`.
    #[value(alias = "v_prediction")]
    VPrediction,
}

impl Prediction {
    pub fn engine(self) -> PredictionType {
        match self {
            Prediction::Epsilon => PredictionType::Epsilon,
            Prediction::VPrediction => PredictionType::VPrediction,
        }
    }
}

/// What a single-file checkpoint (`--model FILE.safetensors`, the original SD 2.x layout)
/// cannot say of itself; refused with a model directory, which says both in its files.
#[derive(Args, Clone, Default)]
pub struct SingleFileArgs {
    /// For a single-file checkpoint: what its UNet predicts, `v-prediction` (SD 2.1, 768) or
    /// `epsilon` (SD 2.1-base, 512). Needed unless --config gives a scheduler that says it.
    #[arg(long, value_enum)]
    pub prediction_type: Option<Prediction>,
    /// For a single-file checkpoint: a diffusers-layout directory whose configs, scheduler
    /// and tokenizer describe it (its weights are not read), instead of SD 2.x's defaults.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
}

impl SingleFileArgs {
    pub fn options(&self) -> SingleFileOptions {
        SingleFileOptions {
            prediction_type: self.prediction_type.map(Prediction::engine),
            config: self.config.clone(),
        }
    }
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
            single_file: SingleFileOptions::default(),
        })
    }

    /// The device opened, with the safety checker at `safety_checker` or the model's own.
    /// Called before anything else is touched, so a device this build or machine cannot use
    /// is refused before a data directory or a model is written.
    pub fn model_options(&self, safety_checker: Option<&PathBuf>) -> anyhow::Result<LoadOptions> {
        self.load_options(match safety_checker {
            Some(dir) => SafetyCheckerSource::Dir(dir.clone()),
            None => SafetyCheckerSource::ModelDefault,
        })
    }
}

/// Loads a model directory or single-file checkpoint with `options` (from
/// [`DeviceArgs::model_options`]).
pub fn load_model(
    dir: &std::path::Path,
    options: &LoadOptions,
) -> anyhow::Result<Arc<StableDiffusion>> {
    let model = StableDiffusion::load(dir, options)
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
                        let pause = match catch_unwind(AssertUnwindSafe(|| worker.run_some(wait))) {
                            Ok(Ok(ran)) => {
                                for ran in ran.iter().filter(|r| !matches!(r, Ran::Idle)) {
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
/// (`queue`'s sweep, the API's counted queue, so they end even while no worker polls, and
/// /metrics counts them), every minute (or every `ttl`
/// when shorter) until `stop`. Several API nodes may each run one: both are idempotent.
pub fn spawn_expiry(
    store: Arc<dyn Store>,
    queue: Arc<dyn sie_store::Queue>,
    stop: Arc<AtomicBool>,
    ttl: Duration,
) -> anyhow::Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("expiry".into())
        .spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match queue.sweep(Timestamp::now()) {
                    Ok(swept) if swept.is_empty() => {}
                    Ok(swept) => tracing::info!(
                        finished = swept.len(),
                        "lapsed tasks out of attempts finished"
                    ),
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

/// A size in bytes: a number, optionally followed by `KiB`, `MiB` or `GiB` (`512MiB`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("{text:?} is not a size; use a number of bytes, or one with KiB, MiB or GiB, e.g. 256MiB")
    })?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(format!(
                "unit {unit:?} in {text:?} is not one of KiB, MiB, GiB"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `--max-inflight-body-bytes`: a size that holds at least one largest body.
fn parse_body_budget(text: &str) -> Result<u64, String> {
    let n = parse_size(text)?;
    let least = sie_server::MAX_BODY as u64;
    if n < least {
        return Err(format!(
            "{text:?} is below {}MiB, the largest body a client may send; use at least that",
            least >> 20
        ));
    }
    Ok(n)
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
