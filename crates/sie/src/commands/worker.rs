//! `sie worker --server URL --token T --model DIR`: a GPU node that pulls tasks from an API
//! node over HTTP (`/worker/v1`), holding a worker token and no database credentials.
//!
//! It loads the model once, announces what it serves with every lease call, and runs
//! `--concurrency` tasks at a time (one per thread, sharing the model). When the server
//! cannot be reached it retries with backoff (half a second, doubling to 30 s). On SIGTERM
//! or Ctrl-C it stops leasing, stops a running task at its next step and gives it back to
//! the queue (`release`, which does not count as a lost attempt), then exits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sie_worker::remote::HttpSource;
use sie_worker::Worker;

use super::common::{
    load_model, shutdown_signal, spawn_workers, DeviceArgs, MaxBatch, SingleFileArgs,
};

/// How long one lease call waits on the server; also the longest a shutdown waits for an
/// idle thread's call to come back.
const LEASE_WAIT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct WorkerArgs {
    /// An API node (`sie api` or `sie serve`), or the load balancer in front of them:
    /// `http://host:port`.
    #[arg(long)]
    server: String,
    /// The worker token from `sie admin worker-token create NAME` (or SIE_WORKER_TOKEN, which
    /// keeps it out of the process list).
    #[arg(long, env = "SIE_WORKER_TOKEN", hide_env_values = true)]
    token: String,
    /// A diffusers-layout SD 2.x directory, or a `.safetensors` checkpoint in the original
    /// SD 2.x layout.
    #[arg(long)]
    model: PathBuf,
    /// A safety-checker directory to use instead of the model's own `safety_checker/`.
    #[arg(long)]
    safety_checker: Option<PathBuf>,
    #[command(flatten)]
    model_file: SingleFileArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// Tasks run at once, each on its own thread with the one loaded model.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Text-to-image tasks of one size a worker thread runs as one batch, sharing each UNet
    /// evaluation, each joining and leaving at a step boundary (1: each task alone). `auto`:
    /// as many as fit the GPU's free memory at the model's native size; 1 on the CPU.
    #[arg(long, default_value = "auto")]
    max_batch: MaxBatch,
}

pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let mut options = args.device.model_options(args.safety_checker.as_ref())?;
    options.single_file = args.model_file.options();
    if !(args.server.starts_with("http://")) {
        anyhow::bail!(
            "--server {:?}: use an http:// URL of an API node (this build speaks plain HTTP; \
             reach a remote TLS endpoint through a local tunnel or proxy)",
            args.server
        );
    }
    let model = load_model(&args.model, &options)?;
    let max_batch = args.max_batch.resolve(&model)?;
    let announcement =
        sie_worker::task::announcement(&model, &super::serve::model_name(&args.model));
    eprintln!(
        "serving {} ({}x{}, safety checker: {}) for {}",
        announcement.model,
        announcement.native_width,
        announcement.native_height,
        if announcement.safety_checker {
            "yes"
        } else {
            "no"
        },
        args.server
    );
    let source = Arc::new(HttpSource::new(&args.server, &args.token, announcement)?);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..args.concurrency)
        .map(|_| {
            Worker::new(source.clone(), model.clone())
                .with_stop(stop.clone())
                .with_max_batch(max_batch)
        })
        .collect();
    let threads = spawn_workers(workers, stop.clone(), LEASE_WAIT, Duration::from_secs(30))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(shutdown_signal());
    eprintln!("shutting down: a running task goes back to the queue");
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
