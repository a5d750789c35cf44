//! `GET /metrics`: what this API node has seen, in Prometheus' text format (version 0.0.4),
//! encoded by Prometheus' own Rust client (`prometheus-client`), never formatted by hand.
//!
//! **Every event is counted once, by one owner:**
//! - a task created: the POST route, when the store says it created one (a retry under the
//!   same `Idempotency-Key` creates none);
//! - a queued task cancelled: the DELETE route, when the store cancelled it there and then
//!   (a running one is counted when its worker reports the cancel);
//! - a task's end reported by a worker: [`CountedQueue`], the store's [`Queue`] as every
//!   worker of this node reaches it: `sie serve`'s threads through `StoreSource`
//!   ([`AppState::worker_queue`](crate::AppState::worker_queue)), remote `sie worker`s
//!   through `/worker/v1`'s complete and fail routes. A report counts only when the store's
//!   fence took it and it ended the task (a retryable failure with attempts left did not);
//! - an HTTP answer: [`count_requests`], around every route, by the route's template
//!   (`/api/.../{id}`, never the path itself, so ids cannot grow the label set) and status.
//!
//! **Across several `sie api` nodes** every counter and histogram is this node's own: the
//! events that happened on it (its POSTs, its cancels, the reports its workers sent to it).
//! Sum them over nodes in PromQL for the service's totals. Gauges read from the store at
//! scrape time (queue depth, the oldest waiting task, lapsed leases) are the shared
//! database's and read the same on every node: take one node's, not the sum. Workers
//! connected are those this node heard from.
//!
//! - a task the store ends itself (a lease lapsed on the last attempt: `worker_lost`; a
//!   lapsed cancelled one: `cancelled`): [`CountedQueue`]'s sweep, which every lease through
//!   this node and the expiry thread run first, as the one transaction that ends them;
//! - a lapsed lease: when a lease takes over a lapsed one, when the sweep ends one, and the
//!   leases `sie serve` lets lapse at start.
//!
//! Organizations are label values: past [`MAX_ORG_LABELS`] of them, the rest are counted
//! under `other`, so sign-ups cannot grow the label set without bound.
//!
//! `/metrics` takes no API key: it says how busy the service is, never what anyone asked
//! for (organizations appear by name, with counts). Operators keep it from the internet
//! (a firewall, or a proxy that does not forward the path); `docs/security.md` says so.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sie_store::{
    codes, Failure, Fence, Heartbeat, Leased, OrgName, Progress, Queue, QueueStats, Store,
    TaskState, TaskUsage, Timestamp, WorkSignal, WorkerOffer,
};

use sie_api::worker::MAX_WAIT_SECONDS;

use crate::{ApiError, AppState};

/// The failure codes kept as label values: the worker's, the store's and the API's own. A
/// remote worker may report any well-formed code; others are counted as `other`, so a
/// worker cannot grow the label set without bound.
const KNOWN_CODES: &[&str] = &[
    codes::CANCELLED,
    codes::WORKER_LOST,
    "engine_error",
    "internal_error",
    "invalid_image",
    "invalid_request",
    "result_rejected",
    "worker_incompatible",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OrgLabels {
    organization: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    organization: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The matched route's template, or `unmatched` (a 404 from the fallback).
    route: String,
    method: String,
    status: u16,
}

/// How long the queue counts read for one scrape serve the next.
const STATS_FRESH_FOR: Duration = Duration::from_secs(1);

/// Distinct organizations kept as label values; the rest count as `other`.
pub const MAX_ORG_LABELS: usize = 1000;

/// This node's metrics: the registry and a handle on each metric in it.
pub struct Metrics {
    registry: Registry,
    created: Family<OrgLabels, Counter>,
    succeeded: Family<OrgLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    cancelled: Family<OrgLabels, Counter>,
    queue_wait: Histogram,
    inference: Histogram,
    steps_per_second: Histogram,
    http: Family<HttpLabels, Counter>,
    queued: Gauge,
    running: Gauge,
    oldest_waiting: Gauge<f64, AtomicU64>,
    lapsed: Gauge,
    leases_lapsed: Counter,
    workers: Gauge,
    /// The last queue counts read from the store, and when.
    stats: tokio::sync::Mutex<Option<(Instant, QueueStats)>>,
    /// The organizations seen as label values so far (at most [`MAX_ORG_LABELS`]).
    orgs: Mutex<std::collections::HashSet<String>>,
    /// `sie serve`'s worker threads.
    local_workers: AtomicI64,
    /// Remote workers by name, when each last called `/worker/v1`. Only workers whose token
    /// checked out are recorded, and entries older than a long-poll and a lease go at each
    /// scrape, so it holds at most the live worker tokens.
    remote_seen: Mutex<HashMap<String, Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sie");
        let created = Family::<OrgLabels, Counter>::default();
        let succeeded = Family::<OrgLabels, Counter>::default();
        let failed = Family::<FailedLabels, Counter>::default();
        let cancelled = Family::<OrgLabels, Counter>::default();
        let http = Family::<HttpLabels, Counter>::default();
        // From a task's creation to its first lease: seconds to half an hour.
        let queue_wait = Histogram::new([
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        ]);
        // A generation on the GPU takes seconds; on the CPU, minutes.
        let inference = Histogram::new([
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]);
        // Denoising steps per second of inference: an H100 does tens, a CPU under one.
        let steps_per_second =
            Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0]);
        let (queued, running, lapsed, workers) = (
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
            Gauge::default(),
        );
        let oldest_waiting = Gauge::<f64, AtomicU64>::default();
        let leases_lapsed = Counter::default();
        registry.register(
            "tasks_created",
            "Tasks this node queued, by organization",
            created.clone(),
        );
        registry.register(
            "tasks_succeeded",
            "Tasks that succeeded, reported through this node, by organization",
            succeeded.clone(),
        );
        registry.register(
            "tasks_failed",
            "Tasks that failed (cancels apart), reported through this node, by organization and code",
            failed.clone(),
        );
        registry.register(
            "tasks_cancelled",
            "Tasks cancelled: queued ones by a DELETE on this node, running ones when their \
             worker reported the stop through it; by organization",
            cancelled.clone(),
        );
        registry.register_with_unit(
            "queue_wait",
            "From a task's creation to its first lease, leased through this node",
            Unit::Seconds,
            queue_wait.clone(),
        );
        registry.register_with_unit(
            "inference_duration",
            "Inference time of the tasks that succeeded through this node",
            Unit::Seconds,
            inference.clone(),
        );
        registry.register(
            "steps_per_second",
            "Denoising steps per second of inference, per task that succeeded through this node",
            steps_per_second.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP answers of this node, by route template, method and status",
            http.clone(),
        );
        registry.register(
            "queue_depth",
            "Tasks waiting to be leased (the shared store's, read at scrape)",
            queued.clone(),
        );
        registry.register(
            "tasks_running",
            "Tasks running under a live lease (the shared store's, read at scrape)",
            running.clone(),
        );
        registry.register_with_unit(
            "oldest_waiting_age",
            "Age of the oldest waiting task, 0 when none waits (read at scrape)",
            Unit::Seconds,
            oldest_waiting.clone(),
        );
        registry.register(
            "tasks_lapsed",
            "Running tasks whose lease lapsed without a report, not yet taken up again; they \
             count in queue_depth too when they may run again (read at scrape)",
            lapsed.clone(),
        );
        registry.register(
            "leases_lapsed",
            "Leases that lapsed without a report (their worker presumed gone), as this node \
             found them: taken over by a new lease, or ending their task",
            leases_lapsed.clone(),
        );
        registry.register(
            "workers_connected",
            "This process's worker threads, and the remote workers that called this node within the lease",
            workers.clone(),
        );
        Metrics {
            registry,
            created,
            succeeded,
            failed,
            cancelled,
            queue_wait,
            inference,
            steps_per_second,
            http,
            queued,
            running,
            oldest_waiting,
            lapsed,
            leases_lapsed,
            workers,
            orgs: Mutex::new(std::collections::HashSet::new()),
            stats: tokio::sync::Mutex::new(None),
            local_workers: AtomicI64::new(0),
            remote_seen: Mutex::new(HashMap::new()),
        }
    }

    /// The POST route created a task for the organization `org` (as the path spells it).
    pub(crate) fn task_created(&self, org: &str) {
        self.created.get_or_create(&self.org_labels(org)).inc();
    }

    /// The DELETE route cancelled a queued task of `org`.
    pub(crate) fn queued_task_cancelled(&self, org: &str) {
        self.cancelled.get_or_create(&self.org_labels(org)).inc();
    }

    /// `n` leases lapsed (`sie serve` lets its previous run's lapse at start).
    pub fn leases_lapsed(&self, n: u64) {
        self.leases_lapsed.inc_by(n);
    }

    /// The label value of the organization `org`: its stored spelling (a path may spell it
    /// otherwise), or `other` once [`MAX_ORG_LABELS`] others have been seen.
    fn org_label(&self, org: &str) -> String {
        let name = OrgName::parse(org).map_or_else(|_| org.to_owned(), |n| n.as_str().into());
        let mut seen = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(&name) {
            return name;
        }
        if seen.len() >= MAX_ORG_LABELS {
            return "other".into();
        }
        seen.insert(name.clone());
        name
    }

    fn org_labels(&self, org: &str) -> OrgLabels {
        OrgLabels {
            organization: self.org_label(org),
        }
    }

    /// `sie serve` runs `n` worker threads in this process.
    pub fn set_local_workers(&self, n: usize) {
        self.local_workers
            .store(n as i64, std::sync::atomic::Ordering::Relaxed);
    }

    /// A remote worker whose token checked out called `/worker/v1`.
    pub(crate) fn worker_seen(&self, name: &str) {
        let mut seen = self.remote_seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(name) {
            Some(at) => *at = Instant::now(),
            None => {
                seen.insert(name.to_owned(), Instant::now());
            }
        }
    }

    /// One HTTP answer.
    fn http_answered(&self, route: &str, method: &Method, status: StatusCode) {
        let method = match *method {
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE => {
                method.as_str()
            }
            Method::OPTIONS | Method::PATCH => method.as_str(),
            // Any token is a method; only those above are kept as label values.
            _ => "other",
        };
        let labels = HttpLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status: status.as_u16(),
        };
        self.http.get_or_create(&labels).inc();
    }

    /// A task leased through this node: its wait, on its first attempt only (a retry's
    /// wait would count the earlier attempts' running time).
    fn on_lease(&self, leased: &Leased, now: Timestamp) {
        if leased.after_lapse {
            self.leases_lapsed.inc();
        }
        if leased.attempt == 1 {
            let waited = (now.as_millis() - leased.created_at.as_millis()).max(0);
            self.queue_wait.observe(waited as f64 / 1000.0);
        }
    }

    /// The store took a completion: the task succeeded. `store` says whose it was.
    fn on_complete(&self, store: &dyn Store, fence: &Fence, usage: TaskUsage) {
        let Some(outcome) = outcome(store, fence.id) else {
            return;
        };
        self.succeeded
            .get_or_create(&self.org_labels(outcome.org.as_str()))
            .inc();
        let seconds = usage.gpu_ms as f64 / 1000.0;
        self.inference.observe(seconds);
        if usage.gpu_ms > 0 && usage.steps > 0 {
            self.steps_per_second
                .observe(f64::from(usage.steps) / seconds);
        }
    }

    /// The store took a failure report; it ended the task if the task is now failed on
    /// the reported attempt (a retryable failure with attempts left queued it again, and a
    /// later attempt's end is that attempt's report to count).
    fn on_fail(&self, store: &dyn Store, fence: &Fence) {
        let Some(outcome) = outcome(store, fence.id) else {
            return;
        };
        if outcome.state != TaskState::Failed || outcome.attempt != fence.attempt {
            return;
        }
        self.on_failed(outcome);
    }

    /// The sweep ended these tasks, each after its lease lapsed.
    fn on_swept(&self, store: &dyn Store, swept: &[sie_store::TaskId]) {
        self.leases_lapsed.inc_by(swept.len() as u64);
        for &id in swept {
            if let Some(outcome) = outcome(store, id) {
                self.on_failed(outcome);
            }
        }
    }

    /// A task ended failed (or cancelled) as `outcome` says.
    fn on_failed(&self, outcome: sie_store::TaskOutcome) {
        let org = self.org_label(outcome.org.as_str());
        let code = outcome.code.unwrap_or_default();
        if code == codes::CANCELLED {
            self.cancelled
                .get_or_create(&OrgLabels { organization: org })
                .inc();
        } else {
            let code = if KNOWN_CODES.contains(&code.as_str()) {
                code
            } else {
                "other".to_owned()
            };
            self.failed
                .get_or_create(&FailedLabels {
                    organization: org,
                    code,
                })
                .inc();
        }
    }

    /// The store's queue counts, read at most once a [`STATS_FRESH_FOR`] however often
    /// `/metrics` is scraped (it takes no key, so a flood of scrapes must not become a flood
    /// of store reads competing with the API's): concurrent scrapes wait for one read.
    async fn queue_stats(&self, state: &AppState, now: Timestamp) -> Result<QueueStats, ApiError> {
        let mut cached = self.stats.lock().await;
        if let Some((read_at, stats)) = *cached {
            if read_at.elapsed() < STATS_FRESH_FOR {
                return Ok(stats);
            }
        }
        let stats = state.store(move |s| s.queue_stats(now)).await?;
        *cached = Some((Instant::now(), stats));
        Ok(stats)
    }

    /// The text exposition, with the gauges set from `stats` and `lease` (how long a remote
    /// worker counts as connected after its last call).
    fn encode(
        &self,
        stats: QueueStats,
        lease: Duration,
        now: Timestamp,
    ) -> Result<String, ApiError> {
        self.queued.set(clamp(stats.queued));
        self.running.set(clamp(stats.running));
        self.lapsed.set(clamp(stats.lapsed));
        let age = stats
            .oldest_waiting_since
            .map_or(0, |t| (now.as_millis() - t.as_millis()).max(0));
        self.oldest_waiting.set(age as f64 / 1000.0);
        // An idle worker calls once per long-poll (up to MAX_WAIT_SECONDS) and a busy one
        // once per heartbeat (within the lease): either way it is heard from within this.
        let heard_within =
            lease.max(Duration::from_secs(MAX_WAIT_SECONDS.into())) + Duration::from_secs(5);
        let remote = {
            let mut seen = self.remote_seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.retain(|_, at| at.elapsed() <= heard_within);
            seen.len() as i64
        };
        let local = self
            .local_workers
            .load(std::sync::atomic::Ordering::Relaxed);
        self.workers.set(local + remote);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .map_err(|e| ApiError::Internal(format!("encoding the metrics: {e}")))?;
        Ok(text)
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where the reported task stands now, or `None` (logged) when it cannot be read: the
/// report itself is stored, so a failed count never fails it.
fn outcome(store: &dyn Store, id: sie_store::TaskId) -> Option<sie_store::TaskOutcome> {
    match store.task_outcome(id) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(request_id = %id, error = %e, "could not read a task's end for /metrics");
            None
        }
    }
}

/// The store's [`Queue`] with this node's counts: every worker report that reaches the
/// store through this node goes through here, so each is counted once, whichever kind of
/// worker made it.
pub struct CountedQueue {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) metrics: Arc<Metrics>,
}

impl Queue for CountedQueue {
    fn work_signal(&self) -> &WorkSignal {
        self.store.work_signal()
    }

    fn lease(
        &self,
        offer: &WorkerOffer,
        lease: Duration,
        now: Timestamp,
    ) -> sie_store::Result<Option<Leased>> {
        // The lease would end the same lapsed tasks itself, uncounted: ended here first.
        self.sweep(now)?;
        let leased = self.store.lease(offer, lease, now)?;
        if let Some(l) = &leased {
            self.metrics.on_lease(l, now);
        }
        Ok(leased)
    }

    fn sweep(&self, now: Timestamp) -> sie_store::Result<Vec<sie_store::TaskId>> {
        let swept = self.store.sweep(now)?;
        if !swept.is_empty() {
            self.metrics.on_swept(self.store.as_ref(), &swept);
        }
        Ok(swept)
    }

    fn heartbeat(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        lease: Duration,
        now: Timestamp,
    ) -> sie_store::Result<Heartbeat> {
        self.store.heartbeat(fence, progress, lease, now)
    }

    fn complete(
        &self,
        fence: &Fence,
        result_json: &str,
        usage: TaskUsage,
        now: Timestamp,
    ) -> sie_store::Result<bool> {
        let taken = self.store.complete(fence, result_json, usage, now)?;
        if taken {
            self.metrics.on_complete(self.store.as_ref(), fence, usage);
        }
        Ok(taken)
    }

    fn fail(&self, fence: &Fence, failure: &Failure, now: Timestamp) -> sie_store::Result<bool> {
        let taken = self.store.fail(fence, failure, now)?;
        if taken {
            self.metrics.on_fail(self.store.as_ref(), fence);
        }
        Ok(taken)
    }

    fn lapse_leases(&self, owner_prefix: &str, now: Timestamp) -> sie_store::Result<u64> {
        let lapsed = self.store.lapse_leases(owner_prefix, now)?;
        self.metrics.leases_lapsed(lapsed);
        Ok(lapsed)
    }

    fn release(&self, fence: &Fence, now: Timestamp) -> sie_store::Result<bool> {
        self.store.release(fence, now)
    }
}

/// Counts every answer by the route's template and status. Laid outside the panic catcher,
/// so a panic's 500 counts too.
pub(crate) async fn count_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.http_answered(&route, &method, response.status());
    response
}

/// `GET /metrics`: no API key (see the module's doc).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "What this API node has seen, in Prometheus' text format. No API key: \
        keep it from the internet.",
    tag = "operations",
    responses((status = 200, description = "Prometheus metrics, in its text format.",
        content_type = "text/plain; version=0.0.4; charset=utf-8", body = String)),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = Timestamp::now();
    let stats = state.metrics.queue_stats(&state, now).await?;
    let text = state.metrics.encode(stats, state.settings.lease, now)?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
