//! The worker protocol, `/worker/v1` (`docs/worker-protocol.md`): remote GPU nodes lease
//! tasks, renew their leases with progress, and report results, over HTTP with a worker
//! token, never with database credentials.
//!
//! Every call names the worker by its token alone; the store fences each report on that
//! worker *and* the attempt it was given, so a node cannot report for a task it does not
//! hold, and a node whose lease passed to another attempt is told `409 lease_lost` and its
//! late result is dropped. A lease call long-polls: it waits on the store's work signal
//! (which PostgreSQL's `LISTEN/NOTIFY` rings across API nodes) up to `wait_seconds`.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use sie_api::worker::{
    Accepted, Action, Announcement, CompleteRequest, FailRequest, HeartbeatRequest,
    HeartbeatResponse, LeaseRequest, LeaseResponse, ReleaseRequest, LEASE_LOST, MAX_WAIT_SECONDS,
    UNAUTHORIZED,
};
use sie_api::{CreateTask, RequestError};
use sie_store::{
    Failure, FailureCode, Fence, Heartbeat, Leased, Progress, Queue, Store, StoreError, TaskId,
    TaskUsage, Timestamp, WorkerName, WorkerOffer, RECHECK,
};

use crate::{ApiError, AppState};

/// A lease call's wait when the worker does not say.
const DEFAULT_WAIT_SECONDS: u32 = 20;
/// Longest failure message a worker may store; clients read it. (Its code follows
/// `FailureCode`'s rule.)
const MAX_MESSAGE_LEN: usize = 4096;
/// What a task whose stored request no longer loads fails with.
const INVALID_REQUEST: FailureCode = FailureCode::from_static("invalid_request");
/// The longest model name an announcement may carry: it is logged.
const MAX_MODEL_NAME: usize = 128;
/// Most a completion may claim: a day of GPU time, 150 steps, the images it carries.
const MAX_GPU_MS: u64 = 24 * 3600 * 1000;
const MAX_STEPS: u32 = 150;

/// The worker a request comes from, established before its body is read.
#[derive(Clone)]
pub struct Worker {
    pub name: WorkerName,
    /// Kept for the long-poll, which checks at every look that it was not revoked meanwhile.
    token: String,
}

/// Middleware on every `/worker/v1` route: the `Authorization: Bearer` token must belong to
/// a live worker (401 otherwise), checked before the body is read, so nobody without a
/// token can make the server buffer a large body.
pub async fn require_worker(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = crate::auth::one_header(request.headers(), "Authorization")?
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized("send the worker token as `Authorization: Bearer siew_…` (`sie admin worker-token create NAME` makes one)")
        })?
        .to_owned();
    let presented = token.clone();
    let name = state
        .store(move |s| s.authenticate_worker(&presented))
        .await?
        .ok_or_else(revoked)?;
    state.metrics.worker_seen(name.as_str());
    request.extensions_mut().insert(Worker { name, token });
    Ok(next.run(request).await)
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError::client(
        StatusCode::UNAUTHORIZED,
        UNAUTHORIZED,
        "Invalid worker token",
        detail.to_owned(),
    )
}

fn revoked() -> ApiError {
    unauthorized("this worker token is unknown or revoked; ask the operator for a new one")
}

/// Parses a body off the async runtime (a completion can be hundreds of megabytes).
async fn body_json<T: DeserializeOwned + Send + 'static>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| match e.status() {
        // The route's own limit (`DefaultBodyLimit`), which the rejection states.
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "Body too large",
            e.body_text(),
        ),
        _ => crate::body::unreadable(&e),
    })?;
    tokio::task::spawn_blocking(move || {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Invalid(RequestError {
                code: "invalid_json",
                field: None,
                // serde_json's message already ends "at line L column C".
                message: format!(
                    "the body does not match the worker protocol: {e}; see docs/worker-protocol.md"
                ),
            })
        })
    })
    .await
    .map_err(|e| ApiError::Internal(format!("parsing a worker body panicked: {e}")))?
}

fn invalid(code: &'static str, field: &str, message: String) -> ApiError {
    ApiError::Invalid(RequestError {
        code,
        field: Some(field.to_owned()),
        message,
    })
}

fn task_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| ApiError::not_found(e.to_string()))
}

/// The requests a worker makes about a task it leased; each names its attempt.
trait Attempted {
    fn attempt(&self) -> u32;
}

macro_rules! attempted {
    ($($t:ty),*) => {$(
        impl Attempted for $t {
            fn attempt(&self) -> u32 {
                self.attempt
            }
        }
    )*};
}
attempted!(
    HeartbeatRequest,
    CompleteRequest,
    FailRequest,
    ReleaseRequest
);

/// A worker's report on one task: the fence it is for (the worker from its token, the task
/// from the path, the attempt from the body) and the parsed body. The id is checked before
/// the body is read, and the body under the route's size limit.
pub struct Report<T>(Fence, T);

impl<T> FromRequest<AppState> for Report<T>
where
    T: DeserializeOwned + Attempted + Send + 'static,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = request.into_parts();
        let Path(id) = Path::<String>::from_request_parts(&mut parts, state).await?;
        let id = task_id(&id)?;
        let worker = parts
            .extensions
            .get::<Worker>()
            .map(|w| w.name.clone())
            .ok_or_else(|| {
                ApiError::Internal("a worker route ran without its token check".into())
            })?;
        let body = Bytes::from_request(Request::from_parts(parts, body), state).await;
        let body: T = body_json(body).await?;
        Ok(Report(
            Fence::new(worker.as_str(), id, body.attempt()),
            body,
        ))
    }
}

/// Runs the write `write`, fenced on `fence`, on the store's thread; whether the fence held.
/// It goes through the node's counted queue, so `/metrics` counts the report once.
async fn fenced(
    state: &AppState,
    fence: &Fence,
    write: impl FnOnce(&dyn Queue, &Fence) -> Result<bool, StoreError> + Send + 'static,
) -> Result<bool, ApiError> {
    let (fence, queue) = (fence.clone(), state.worker_queue());
    state.store(move |_| write(queue.as_ref(), &fence)).await
}

fn lease_lost(fence: &Fence) -> ApiError {
    let Fence { id, attempt, .. } = fence;
    ApiError::client(
        StatusCode::CONFLICT,
        LEASE_LOST,
        "Lease lost",
        format!(
            "task {id} attempt {attempt} is not leased to this worker (its lease passed to another \
             attempt, it finished, or this worker never held it); drop the work"
        ),
    )
}

fn accepted(taken: bool, fence: &Fence) -> Result<Json<Accepted>, ApiError> {
    if taken {
        Ok(Json(Accepted { accepted: true }))
    } else {
        Err(lease_lost(fence))
    }
}

/// The store's offer for an announcement, refusing a model name too long or odd to log.
fn offer(worker: &WorkerName, announced: &Announcement) -> Result<WorkerOffer, ApiError> {
    if announced.model.len() > MAX_MODEL_NAME
        || announced.model.is_empty()
        || !announced.model.bytes().all(|b| (0x21..0x7f).contains(&b))
    {
        return Err(invalid(
            "invalid_value",
            "worker.model",
            format!(
                "worker.model: use 1 to {MAX_MODEL_NAME} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(WorkerOffer::new(worker.as_str(), announced.capabilities()))
}

/// What one look at the queue found.
enum Look {
    Leased(Box<(Leased, CreateTask)>),
    Empty,
    /// The token was revoked while the call waited.
    Revoked,
}

/// One look: the token is still live, then one lease attempt (a stored request that does
/// not load is failed here, not handed out, and the look goes on).
fn look(
    s: &dyn Store,
    queue: &dyn Queue,
    token: &str,
    offer: &WorkerOffer,
    lease: Duration,
) -> Result<Look, StoreError> {
    if s.authenticate_worker(token)?.is_none() {
        return Ok(Look::Revoked);
    }
    loop {
        let Some(l) = queue.lease(offer, lease, Timestamp::now())? else {
            return Ok(Look::Empty);
        };
        match serde_json::from_str::<CreateTask>(&l.request_json) {
            Ok(request) => return Ok(Look::Leased(Box::new((l, request)))),
            Err(e) => {
                let message = format!("the stored request does not load: {e}");
                let failure = Failure::new(INVALID_REQUEST, message, false);
                queue.fail(&l.fence(&offer.worker_id), &failure, Timestamp::now())?;
            }
        }
    }
}

/// `POST /worker/v1/lease`: long-polls for a task the worker can run.
///
/// The wait is async (on the relayed work signal, and at least every [`RECHECK`]); only
/// each short look runs on the blocking pool. A look that leases a task after the worker
/// hung up (its call dropped) gives the task straight back, so a vanished node does not
/// cost the task an attempt.
/// Lease a task
///
/// Waits up to `wait_seconds` for a task this worker can run; the task is its own until
/// `lease_seconds` pass without a heartbeat.
#[utoipa::path(
    post,
    path = "/lease",
    context_path = sie_api::worker::PREFIX,
    operation_id = "lease",
    security(("worker_token" = [])),
    request_body(content = LeaseRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A task, leased to this worker.", body = LeaseResponse<CreateTask>),
        (status = 204, description = "No task came within `wait_seconds`, or the node is shutting down."),
        (status = 401, response = crate::routes::openapi::WorkerUnauthorized),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
    ),
)]
pub async fn lease(
    State(state): State<AppState>,
    Extension(worker): Extension<Worker>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: LeaseRequest = body_json(body).await?;
    let wait_seconds = request.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if wait_seconds > MAX_WAIT_SECONDS {
        return Err(invalid(
            "out_of_range",
            "wait_seconds",
            format!("wait_seconds: {wait_seconds} is out of range; use 0 to {MAX_WAIT_SECONDS}"),
        ));
    }
    let announced = request.worker;
    let offer = offer(&worker.name, &announced)?;
    let lease = state.settings.lease;
    // Answered before the request timeout would cut the call off with a 408: an empty
    // answer a second early tells the worker to ask again, which it does anyway.
    let wait = Duration::from_secs(wait_seconds.into()).min(
        state
            .settings
            .limits
            .request_timeout
            .saturating_sub(Duration::from_secs(1)),
    );
    let deadline = Instant::now() + wait;
    let mut wake = state.wake.clone();
    let found = loop {
        // Marked seen before looking, so a ring during the look is not slept through.
        wake.borrow_and_update();
        if state.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (store, token, offer) = (state.store.clone(), worker.token.clone(), offer.clone());
        let queue = state.worker_queue();
        tokio::task::spawn_blocking(move || {
            let outcome = look(store.as_ref(), queue.as_ref(), &token, &offer, lease);
            if let Err(Ok(Look::Leased(leased))) = answer.send(outcome) {
                let (l, _) = *leased;
                match store.release(&l.fence(&offer.worker_id), Timestamp::now()) {
                    Ok(_) => tracing::info!(request_id = %l.id, worker = %offer.worker_id,
                        "the worker hung up during its lease call; task given back"),
                    Err(e) => tracing::error!(request_id = %l.id, error = %e,
                        "could not give back a task leased to a worker that hung up"),
                }
            }
        });
        match answered
            .await
            .map_err(|_| ApiError::Internal("a lease look panicked".into()))?
            .map_err(ApiError::from)?
        {
            Look::Leased(leased) => break *leased,
            Look::Revoked => return Err(revoked()),
            Look::Empty => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        let _ = tokio::time::timeout(left.min(RECHECK), wake.changed()).await;
    };
    let (l, request) = found;
    let runs_on = announced
        .runs_on
        .as_ref()
        .map(|r| format!("{} ({})", r.device, r.dtype))
        .unwrap_or_else(|| "unannounced".into());
    tracing::info!(
        request_id = %l.id,
        attempt = l.attempt,
        worker = %worker.name,
        model = %announced.model,
        runs_on,
        "task leased to a remote worker"
    );
    Ok(Json(LeaseResponse {
        id: l.id.to_string(),
        attempt: l.attempt,
        request,
        created_at_ms: l.created_at.as_millis(),
        lease_seconds: lease.as_secs().max(1),
    })
    .into_response())
}

/// Renew the lease, with progress
#[utoipa::path(
    post,
    path = "/tasks/{id}/heartbeat",
    context_path = sie_api::worker::PREFIX,
    operation_id = "heartbeat",
    security(("worker_token" = [])),
    params(("id" = String, Path, description = "The task's id, as the lease gave it.")),
    request_body(content = HeartbeatRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Renewed: continue, or stop because the client cancelled.", body = HeartbeatResponse),
        (status = 401, response = crate::routes::openapi::WorkerUnauthorized),
        (status = 404, response = crate::routes::openapi::WorkerNotFound),
        (status = 409, response = crate::routes::openapi::LeaseLost),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    Report(fence, HeartbeatRequest { progress, .. }): Report<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let progress = progress.map(|p| Progress {
        step: p.step,
        steps: p.steps,
    });
    let (lease, fenced) = (state.settings.lease, fence.clone());
    let beat = state
        .store(move |s| s.heartbeat(&fenced, progress, lease, Timestamp::now()))
        .await?;
    let action = match beat {
        Heartbeat::Continue => Action::Continue,
        Heartbeat::Cancelled => Action::Cancel,
        Heartbeat::Lost => return Err(lease_lost(&fence)),
    };
    Ok(Json(HeartbeatResponse { action }))
}

/// Report the result
#[utoipa::path(
    post,
    path = "/tasks/{id}/complete",
    context_path = sie_api::worker::PREFIX,
    operation_id = "complete",
    security(("worker_token" = [])),
    params(("id" = String, Path, description = "The task's id, as the lease gave it.")),
    request_body(content = CompleteRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The result is stored and the task succeeded.", body = Accepted),
        (status = 401, response = crate::routes::openapi::WorkerUnauthorized),
        (status = 404, response = crate::routes::openapi::WorkerNotFound),
        (status = 409, response = crate::routes::openapi::LeaseLost),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
    ),
)]
pub async fn complete(
    State(state): State<AppState>,
    Report(fence, done): Report<CompleteRequest>,
) -> Result<Json<Accepted>, ApiError> {
    let (model_outputs, usage) = (done.model_outputs, done.usage);
    if model_outputs.images.is_empty() {
        return Err(invalid(
            "invalid_value",
            "model_outputs.images",
            "model_outputs.images is empty; a finished task has at least one image".into(),
        ));
    }
    // Usage is billed and summed: a buggy or hostile node must not overflow the totals.
    if usage.images as usize != model_outputs.images.len() {
        return Err(invalid(
            "invalid_value",
            "usage.images",
            format!(
                "usage.images is {} but model_outputs.images holds {}; they must agree",
                usage.images,
                model_outputs.images.len()
            ),
        ));
    }
    if usage.steps > MAX_STEPS || usage.gpu_ms > MAX_GPU_MS {
        return Err(invalid(
            "out_of_range",
            "usage",
            format!("usage: steps at most {MAX_STEPS} and gpu_ms at most {MAX_GPU_MS}"),
        ));
    }
    let result = tokio::task::spawn_blocking(move || serde_json::to_string(&model_outputs))
        .await
        .map_err(|e| ApiError::Internal(format!("serialising modelOutputs panicked: {e}")))?
        .map_err(|e| ApiError::Internal(format!("serialising modelOutputs: {e}")))?;
    let usage = TaskUsage {
        images: usage.images,
        steps: usage.steps,
        gpu_ms: usage.gpu_ms,
    };
    let taken = fenced(&state, &fence, move |s, f| {
        s.complete(f, &result, usage, Timestamp::now())
    })
    .await?;
    let (id, attempt, worker) = (fence.id, fence.attempt, &fence.worker_id);
    if taken {
        tracing::info!(request_id = %id, attempt, worker, "task succeeded on a remote worker");
    } else {
        tracing::warn!(request_id = %id, attempt, worker, "late result dropped: the lease had passed on");
    }
    accepted(taken, &fence)
}

/// Report a failure
#[utoipa::path(
    post,
    path = "/tasks/{id}/fail",
    context_path = sie_api::worker::PREFIX,
    operation_id = "fail",
    security(("worker_token" = [])),
    params(("id" = String, Path, description = "The task's id, as the lease gave it.")),
    request_body(content = FailRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The failure is recorded (a retryable one queues the task again while attempts are left).", body = Accepted),
        (status = 401, response = crate::routes::openapi::WorkerUnauthorized),
        (status = 404, response = crate::routes::openapi::WorkerNotFound),
        (status = 409, response = crate::routes::openapi::LeaseLost),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
    ),
)]
pub async fn fail(
    State(state): State<AppState>,
    Report(fence, failed): Report<FailRequest>,
) -> Result<Json<Accepted>, ApiError> {
    let FailRequest {
        code,
        message,
        retryable,
        ..
    } = failed;
    let code = FailureCode::parse(&code).map_err(|e| {
        invalid(
            "invalid_value",
            "code",
            format!("code {:?} is not valid; {}", e.value, e.accepted),
        )
    })?;
    if message.len() > MAX_MESSAGE_LEN {
        return Err(invalid(
            "invalid_value",
            "message",
            format!(
                "message is {} bytes; keep it under {MAX_MESSAGE_LEN}",
                message.len()
            ),
        ));
    }
    let failure = Failure::new(code, message, retryable);
    let reported = failure.clone();
    let taken = fenced(&state, &fence, move |s, f| {
        s.fail(f, &reported, Timestamp::now())
    })
    .await?;
    if taken {
        let (id, attempt, worker) = (fence.id, fence.attempt, &fence.worker_id);
        let (code, message) = (failure.code.as_str(), &failure.message);
        tracing::info!(request_id = %id, attempt, worker, code, message, retryable,
            "a remote worker reported a failure");
    }
    accepted(taken, &fence)
}

/// Give the task back
#[utoipa::path(
    post,
    path = "/tasks/{id}/release",
    context_path = sie_api::worker::PREFIX,
    operation_id = "release",
    security(("worker_token" = [])),
    params(("id" = String, Path, description = "The task's id, as the lease gave it.")),
    request_body(content = ReleaseRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The task is queued again; the attempt does not count.", body = Accepted),
        (status = 401, response = crate::routes::openapi::WorkerUnauthorized),
        (status = 404, response = crate::routes::openapi::WorkerNotFound),
        (status = 409, response = crate::routes::openapi::LeaseLost),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
    ),
)]
pub async fn release(
    State(state): State<AppState>,
    Report(fence, _): Report<ReleaseRequest>,
) -> Result<Json<Accepted>, ApiError> {
    let taken = fenced(&state, &fence, |s, f| s.release(f, Timestamp::now())).await?;
    if taken {
        let (id, attempt, worker) = (fence.id, fence.attempt, &fence.worker_id);
        tracing::info!(request_id = %id, attempt, worker, "a remote worker gave its task back");
    }
    accepted(taken, &fence)
}
