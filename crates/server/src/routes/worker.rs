//! The worker protocol, `/worker/v1` (`docs/worker-protocol.md`): remote GPU nodes lease
//! tasks, renew their leases with progress, and report results, over HTTP with a worker
//! token, never with database credentials.
//!
//! Every call names the worker by its token alone; the store fences each report on that
//! worker *and* the attempt it was given, so a node cannot report for a task it does not
//! hold, and a node whose lease passed to another attempt is told `409 lease_lost` and its
//! late result is dropped. A lease call long-polls: it waits on the store's work signal
//! (which PostgreSQL's `LISTEN/NOTIFY` rings across API nodes) up to `wait_seconds`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use sie_api::worker::{
    Accepted, Action, CompleteRequest, FailRequest, HeartbeatRequest, HeartbeatResponse,
    LeaseRequest, LeaseResponse, ReleaseRequest, LEASE_LOST, MAX_WAIT_SECONDS, UNAUTHORIZED,
};
use sie_api::{CreateTask, RequestError};
use sie_store::{Heartbeat, Progress, TaskId, TaskUsage, Timestamp, WorkerName, WorkerOffer};

use crate::{ApiError, AppState};

/// A lease call's wait when the worker does not say.
const DEFAULT_WAIT_SECONDS: u32 = 20;
/// Longest failure code and message a worker may store; clients read them.
const MAX_CODE_LEN: usize = 64;
const MAX_MESSAGE_LEN: usize = 4096;

/// The worker behind the `Authorization: Bearer` token, or 401.
async fn authorize_worker(state: &AppState, headers: &HeaderMap) -> Result<WorkerName, ApiError> {
    let unauthorized = |detail: &str| {
        ApiError::client(
            StatusCode::UNAUTHORIZED,
            UNAUTHORIZED,
            "Invalid worker token",
            detail.to_owned(),
        )
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized("send the worker token as `Authorization: Bearer siew_…` (`sie admin worker-token create NAME` makes one)")
        })?
        .to_owned();
    state
        .store(move |s| s.authenticate_worker(&token))
        .await?
        .ok_or_else(|| {
            unauthorized("this worker token is unknown or revoked; ask the operator for a new one")
        })
}

fn body_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::client(
            e.status(),
            "unreadable_body",
            "Unreadable body",
            e.body_text(),
        )
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::Invalid(RequestError {
            code: "invalid_json",
            field: None,
            message: format!(
                "the body does not match the worker protocol: {e} (line {}, column {}); see docs/worker-protocol.md",
                e.line(),
                e.column()
            ),
        })
    })
}

fn task_id(id: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(id).map_err(|e| ApiError::not_found(e.to_string()))
}

fn lease_lost(id: TaskId, attempt: u32) -> ApiError {
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

fn accepted(taken: bool, id: TaskId, attempt: u32) -> Result<Json<Accepted>, ApiError> {
    if taken {
        Ok(Json(Accepted { accepted: true }))
    } else {
        Err(lease_lost(id, attempt))
    }
}

pub async fn lease(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let worker = authorize_worker(&state, &headers).await?;
    let request: LeaseRequest = body_json(body)?;
    let wait_seconds = request.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS);
    if wait_seconds > MAX_WAIT_SECONDS {
        return Err(ApiError::Invalid(RequestError {
            code: "out_of_range",
            field: Some("wait_seconds".into()),
            message: format!(
                "wait_seconds: {wait_seconds} is out of range; use 0 to {MAX_WAIT_SECONDS}"
            ),
        }));
    }
    let announced = request.worker;
    let offer = WorkerOffer {
        worker_id: worker.to_string(),
        pipelines: announced
            .pipelines
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        schedulers: announced
            .schedulers
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        safety_checker: announced.safety_checker,
    };
    let lease = state.lease;
    let wait = Duration::from_secs(wait_seconds.into());
    let leased = state
        .store(move |s| {
            let deadline = std::time::Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let Some(l) = s.lease_within(&offer, lease, left)? else {
                    return Ok(None);
                };
                match serde_json::from_str::<CreateTask>(&l.request_json) {
                    Ok(request) => return Ok(Some((l, request))),
                    // Not the worker's problem: fail it here and look for another.
                    Err(e) => {
                        s.fail(
                            &offer.worker_id,
                            l.id,
                            l.attempt,
                            "invalid_request",
                            &format!("the stored request does not load: {e}"),
                            false,
                            Timestamp::now(),
                        )?;
                    }
                }
            }
        })
        .await?;
    let Some((l, request)) = leased else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    tracing::info!(
        request_id = %l.id,
        attempt = l.attempt,
        worker = %worker,
        model = %announced.model,
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

pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let worker = authorize_worker(&state, &headers).await?;
    let id = task_id(&id)?;
    let HeartbeatRequest { attempt, progress } = body_json(body)?;
    let progress = progress.map(|p| Progress {
        step: p.step,
        steps: p.steps,
    });
    let lease = state.lease;
    let beat = state
        .store(move |s| {
            s.heartbeat(
                worker.as_str(),
                id,
                attempt,
                progress,
                lease,
                Timestamp::now(),
            )
        })
        .await?;
    match beat {
        Heartbeat::Continue => Ok(Json(HeartbeatResponse {
            action: Action::Continue,
        })),
        Heartbeat::Cancelled => Ok(Json(HeartbeatResponse {
            action: Action::Cancel,
        })),
        Heartbeat::Lost => Err(lease_lost(id, attempt)),
    }
}

pub async fn complete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let worker = authorize_worker(&state, &headers).await?;
    let id = task_id(&id)?;
    let CompleteRequest {
        attempt,
        model_outputs,
        usage,
    } = body_json(body)?;
    if model_outputs.images.is_empty() {
        return Err(ApiError::Invalid(RequestError {
            code: "invalid_value",
            field: Some("model_outputs.images".into()),
            message: "model_outputs.images is empty; a finished task has at least one image".into(),
        }));
    }
    let result = serde_json::to_string(&model_outputs)
        .map_err(|e| ApiError::Internal(format!("serialising modelOutputs: {e}")))?;
    let usage = TaskUsage {
        images: usage.images,
        steps: usage.steps,
        gpu_ms: usage.gpu_ms,
    };
    let worker_name = worker.clone();
    let taken = state
        .store(move |s| {
            s.complete(
                worker.as_str(),
                id,
                attempt,
                &result,
                usage,
                Timestamp::now(),
            )
        })
        .await?;
    if taken {
        tracing::info!(request_id = %id, attempt, worker = %worker_name, "task succeeded on a remote worker");
    } else {
        tracing::warn!(request_id = %id, attempt, worker = %worker_name, "late result dropped: the lease had passed on");
    }
    accepted(taken, id, attempt)
}

pub async fn fail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let worker = authorize_worker(&state, &headers).await?;
    let id = task_id(&id)?;
    let FailRequest {
        attempt,
        code,
        message,
        retryable,
    } = body_json(body)?;
    if code.is_empty()
        || code.len() > MAX_CODE_LEN
        || !code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::Invalid(RequestError {
            code: "invalid_value",
            field: Some("code".into()),
            message: format!(
                "code {:?} is not valid; use 1 to {MAX_CODE_LEN} characters of a-z, 0-9 and '_'",
                code.chars().take(80).collect::<String>()
            ),
        }));
    }
    if message.len() > MAX_MESSAGE_LEN {
        return Err(ApiError::Invalid(RequestError {
            code: "invalid_value",
            field: Some("message".into()),
            message: format!(
                "message is {} bytes; keep it under {MAX_MESSAGE_LEN}",
                message.len()
            ),
        }));
    }
    let worker_name = worker.clone();
    let (log_code, log_message) = (code.clone(), message.clone());
    let taken = state
        .store(move |s| {
            s.fail(
                worker.as_str(),
                id,
                attempt,
                &code,
                &message,
                retryable,
                Timestamp::now(),
            )
        })
        .await?;
    if taken {
        tracing::info!(request_id = %id, attempt, worker = %worker_name, code = %log_code,
            message = %log_message, retryable, "a remote worker reported a failure");
    }
    accepted(taken, id, attempt)
}

pub async fn release(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Accepted>, ApiError> {
    let worker = authorize_worker(&state, &headers).await?;
    let id = task_id(&id)?;
    let ReleaseRequest { attempt } = body_json(body)?;
    let worker_name = worker.clone();
    let taken = state
        .store(move |s| s.release(worker.as_str(), id, attempt, Timestamp::now()))
        .await?;
    if taken {
        tracing::info!(request_id = %id, attempt, worker = %worker_name, "a remote worker gave its task back");
    }
    accepted(taken, id, attempt)
}
