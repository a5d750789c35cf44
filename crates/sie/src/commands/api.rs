//! `sie api --database-url postgres://…`: the SIE API alone, on PostgreSQL, stateless.
//!
//! Any number may run behind a load balancer against one database: every task lives in the
//! database from its 202 on, leases are claimed with `FOR UPDATE SKIP LOCKED`, and a task
//! posted on one node wakes workers long-polling on another through `LISTEN/NOTIFY`. GPU
//! nodes (`sie worker`) pull work over `/worker/v1` with a worker token. Each node also runs
//! the result-expiry sweep (deletes are idempotent, so several at once are harmless).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sie_store::{PostgresStore, Store};

use super::common::{serve_until_signal, spawn_expiry, ServerArgs};

#[derive(Args)]
pub struct ApiArgs {
    /// The PostgreSQL database: `postgres://user:password@host:port/db`.
    #[arg(long, env = "SIE_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: ApiArgs) -> anyhow::Result<()> {
    let store: Arc<dyn Store> = Arc::new(PostgresStore::connect(&args.database_url)?);
    let (runtime, listener) = super::common::bind(&args.server.listen)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Remote workers announce what they run; this build's workers run the engine's pipelines.
    let workers = sie_server::Workers::Remote {
        pipelines: sie_engine::pipeline::PIPELINES.to_vec(),
    };
    let state = args.server.app_state(store.clone(), workers);
    // Its sweep goes through the counted queue, so /metrics counts the tasks it ends.
    let expiry = spawn_expiry(
        store.clone(),
        state.worker_queue(),
        stop.clone(),
        args.server.result_ttl,
    )?;
    serve_until_signal(
        &runtime,
        listener,
        state,
        &stop,
        "draining requests in flight",
        |_| {},
    )?;
    let _ = expiry.join();
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
