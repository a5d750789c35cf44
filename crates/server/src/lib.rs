//! The SIE HTTP API (SPEC 1): routes, authentication and problem answers, in front of a
//! [`Store`].
//!
//! # Layout
//! - [`error`]: [`ApiError`], the only way a handler answers with a failure.
//! - `auth.rs`: the `Salad-Api-Key` header and the organization in the path, checked once.
//! - `routes/`: one file per route: `tasks/post.rs`, `tasks/get.rs`, `tasks/delete.rs`,
//!   `tasks/list.rs`, `usage.rs`, `health.rs`; `worker.rs` is the worker protocol
//!   (`/worker/v1`) that remote GPU nodes speak with a worker token.
//! - `settings.rs`: [`Settings`] and its [`Limits`], what the operator's flags set.
//! - `connection.rs`: [`serve`], the accept loop (connection cap, header timeout, graceful
//!   drain); `problem_io.rs` turns hyper's own refusals into problem documents;
//!   `stall.rs` ends a connection whose client stops reading its answer.
//! - `layers.rs`: request and body timeouts, the URL length limit, `nosniff`, `no-store`
//!   and CORS, around the routes.
//! - `body.rs`: the byte budget for bodies being read, reading one, discarding a refused
//!   one; `slots.rs`: store calls and image decodes, a fixed number at a time.
//! - `results.rs`: finished results served from a shared cache without a copy per GET.
//! - `public_url.rs`: the URLs handed out, and which headers they may come from.
//! - [`metrics`]: `/metrics`, each event counted once by its one owner; `rate_limit.rs`:
//!   requests per key and per organization; `request_id.rs`: `X-Request-Id` and the log
//!   span of every request.
//! - [`webhooks`]: the outbox's deliveries (signed, retried, never to private addresses).
//!
//! The server holds no tensors and runs no model: tasks go into the store and come out
//! of it; workers (in this process or elsewhere) do the rest. The store is synchronous, so
//! every call goes through `spawn_blocking` and never stalls the async runtime.

mod auth;
mod body;
mod connection;
pub mod error;
mod layers;
pub mod metrics;
mod portal;
mod problem_io;
mod public_url;
mod rate_limit;
mod request_id;
mod results;
mod routes;
mod settings;
mod slots;
mod stall;
pub mod webhooks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use sie_api::RequestError;
use sie_store::Store;
use sie_vocab::{Capabilities, Pipeline, TaskNeeds};

pub use body::MAX_BODY;
pub use connection::{serve, MAX_HEADERS, MAX_HEAD_BYTES};
pub use error::ApiError;
pub use layers::MAX_URI_BYTES;
pub use metrics::Metrics;
pub use portal::{reset_password, PortalSettings};
pub use public_url::{PublicUrl, PublicUrls};
pub use request_id::REQUEST_ID_HEADER;
pub use settings::{default_decodes, CorsOrigin, Limits, Rate, Settings};
pub use settings::{DEFAULT_PER_KEY, DEFAULT_PER_ORG};
pub use webhooks::WebhookSettings;

/// What the routes share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// What the workers behind this API can run: a request none of them could run is
    /// refused at POST.
    pub workers: Workers,
    pub settings: Arc<Settings>,
    /// The bytes that create-task bodies being read may take together.
    bodies: body::BodyBudget,
    /// Input images decoded at once.
    decodes: slots::Slots,
    /// Finished results, shared by every GET of them.
    results: Arc<results::ResultCache>,
    /// Turns for store calls ([`STORE_CALLS_AT_ONCE`]).
    store_calls: slots::Slots,
    /// The store's work signal, relayed to async tasks: long-polling lease calls wait on
    /// this without holding a thread.
    wake: tokio::sync::watch::Receiver<u64>,
    /// Raised at shutdown: long-polling lease calls answer 204 at once instead of leasing.
    stopping: Arc<AtomicBool>,
    /// The portal's failed log-ins, per email and per address, in this process.
    portal_throttle: Arc<portal::Throttle>,
    /// What `/metrics` shows of this node.
    pub metrics: Arc<Metrics>,
    /// The store's queue with this node's counts: every worker report goes through it.
    queue: Arc<dyn sie_store::Queue>,
    /// Requests per key and per organization on this node.
    rate_limits: Arc<rate_limit::RateLimits>,
}

/// The address of the connection a request came on (the peer: a proxy's, behind one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub std::net::IpAddr);

impl AppState {
    pub fn new(store: Arc<dyn Store>, workers: Workers, settings: Settings) -> Self {
        let limits = &settings.limits;
        let metrics = Arc::new(Metrics::new());
        let queue = Arc::new(metrics::CountedQueue {
            store: store.clone(),
            metrics: metrics.clone(),
        });
        AppState {
            rate_limits: Arc::new(rate_limit::RateLimits::new(limits.per_key, limits.per_org)),
            metrics,
            queue,
            wake: relay_work_signal(store.clone()),
            bodies: body::BodyBudget::new(limits.max_inflight_body_bytes),
            decodes: slots::Slots::new(limits.max_concurrent_decodes, "decoding an image"),
            results: Arc::new(results::ResultCache::new(limits.result_cache_bytes)),
            store_calls: slots::Slots::new(STORE_CALLS_AT_ONCE, "a store call"),
            store,
            workers,
            settings: Arc::new(settings),
            stopping: Arc::new(AtomicBool::new(false)),
            portal_throttle: Arc::new(portal::Throttle::default()),
        }
    }

    /// The queue for this process's own workers (`sie serve`'s `StoreSource`s): the store,
    /// with every report they make counted in `/metrics` as remote workers' are.
    pub fn worker_queue(&self) -> Arc<dyn sie_store::Queue> {
        self.queue.clone()
    }

    /// Shutdown has begun: waiting lease calls answer `204` now and no new lease is handed
    /// out over HTTP (a worker would get it after this node stopped answering its calls).
    pub fn stop_long_polls(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.store.work_signal().notify();
    }
}

/// A thread that waits on the store's (blocking) work signal and republishes its
/// generation on a `watch` channel, so async handlers can wait for work. It ends when every
/// receiver is gone.
fn relay_work_signal(store: Arc<dyn Store>) -> tokio::sync::watch::Receiver<u64> {
    let mut seen = store.work_signal().generation();
    let (tx, rx) = tokio::sync::watch::channel(seen);
    let spawned = std::thread::Builder::new()
        .name("wake-relay".into())
        .spawn(move || {
            while !tx.is_closed() {
                let now = store.work_signal().wait_past(seen, Duration::from_secs(1));
                if now != seen {
                    seen = now;
                    tx.send_replace(now);
                }
            }
        });
    if let Err(e) = spawned {
        // Without the relay, lease calls still look every RECHECK; slower, not wrong.
        tracing::error!(error = %e, "could not start the work-signal relay");
    }
    rx
}

/// What the API knows of the workers behind it. This is the one place a request is refused
/// for asking what no worker can do; past it, the store's matching hands each task only to
/// a worker that can run it, and the worker and the engine do not check again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workers {
    /// `sie serve`: the workers of this process, whose capabilities are known.
    Local(Capabilities),
    /// `sie api`: remote workers come and go and announce their own; a task waits for one
    /// that can run it. Only pipelines that no worker build runs are refused.
    Remote { pipelines: Vec<Pipeline> },
}

impl Workers {
    /// Why no worker could run a task with `needs`, naming the field; `None` when one can.
    pub fn refusal(&self, needs: &TaskNeeds) -> Option<RequestError> {
        if let Workers::Local(can) = self {
            if can.can_run(needs) {
                return None;
            }
        }
        let pipelines = match self {
            Workers::Local(can) => can.pipelines(),
            Workers::Remote { pipelines } => pipelines,
        };
        if !pipelines.contains(&needs.pipeline) {
            let have: Vec<&str> = pipelines.iter().map(|p| p.as_str()).collect();
            return Some(unavailable(
                "pipeline_unavailable",
                "callInputs.PIPELINE",
                format!(
                    "{} is not available on this endpoint; available: {}",
                    needs.pipeline,
                    have.join(", ")
                ),
            ));
        }
        let Workers::Local(can) = self else {
            return None;
        };
        if needs.safety_checker && !can.safety_checker() {
            return Some(unavailable(
                "safety_checker_unavailable",
                "callInputs.safety_checker",
                "this endpoint has no safety checker installed (the operator starts it with \
                 --safety-checker DIR); send \"false\" or leave it out"
                    .into(),
            ));
        }
        match needs.scheduler {
            Some(s) if !can.schedulers().contains(&s) => {
                let have: Vec<&str> = can.schedulers().iter().map(|s| s.as_str()).collect();
                Some(unavailable(
                    "scheduler_unavailable",
                    "callInputs.SCHEDULER",
                    format!(
                        "{s} is not available on this endpoint; available: {}",
                        have.join(", ")
                    ),
                ))
            }
            _ => None,
        }
    }
}

fn unavailable(code: &'static str, field: &str, message: String) -> RequestError {
    RequestError {
        code,
        field: Some(field.to_owned()),
        message: format!("{field}: {message}"),
    }
}

/// Store calls that the API's requests make at once. Each runs on a thread of the
/// blocking pool with a database connection of its own (a SQLite connection keeps its own
/// page cache), a few megabytes apiece; unbounded, a flood of requests (even keyless ones:
/// a key is looked up in the store) would open hundreds. Calls are short, so the rest wait
/// their turn, within the request timeout.
pub const STORE_CALLS_AT_ONCE: usize = 16;

impl AppState {
    /// Runs a store call on the blocking pool, at most [`STORE_CALLS_AT_ONCE`] at a time.
    pub(crate) async fn store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, sie_store::StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        self.store_calls
            .run(move || f(store.as_ref()))
            .await?
            .map_err(ApiError::from)
    }
}

/// The base path of the SIE routes, `{orgName}` being the organization.
pub const BASE: &str = "/api/beta/organizations/{org}/inference-endpoints/stable-diffusion-2-1";

/// The whole API.
pub fn router(state: AppState) -> Router {
    routes::router(state)
}

pub(crate) fn method_not_allowed() -> ApiError {
    ApiError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
        "this route does not accept that method; the Allow header lists those it does",
    )
}
