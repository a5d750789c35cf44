//! `POST {base}`: create a task. The body is parsed once into `sie_api::CreateTask`;
//! nothing is queued for a refused request; a 202 means the task is in the store's
//! committed transaction, so no crash after it can lose the task.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sie_api::request::Seed;
use sie_api::{CreateTask, RequestError};
use sie_store::{Idempotency, IdempotencyKey, NewTask, Timestamp};

use crate::auth::Authorized;
use crate::{ApiError, AppState};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

pub async fn create(
    State(state): State<AppState>,
    Authorized { org, .. }: Authorized,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| {
            let m = m.trim().to_ascii_lowercase();
            m == "application/json" || m.ends_with("+json")
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "send the body as JSON with the header Content-Type: application/json",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::client(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "Body too large",
                format!(
                    "the body is over {} MiB; send smaller images",
                    super::super::MAX_BODY >> 20
                ),
            )
        } else {
            ApiError::client(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "Unreadable body",
                e.body_text(),
            )
        }
    })?;

    // Parsing decodes images: CPU work that must not stall the async runtime.
    let mut task = tokio::task::spawn_blocking(move || CreateTask::parse(&body))
        .await
        .map_err(|e| ApiError::Internal(format!("request parsing panicked: {e}")))??;
    let needs = task.needs();
    if let Some(refusal) = state.workers.refusal(&needs) {
        return Err(ApiError::Invalid(refusal));
    }
    // What a retry under the same Idempotency-Key must repeat: the request as the client
    // sent it, in canonical form (before the seed is drawn; formatting does not count).
    let as_sent = serde_json::to_string(&task)
        .map_err(|e| ApiError::Internal(format!("serialising a parsed request: {e}")))?;
    // The seed is fixed now, so the stored task says exactly what will run and a retry after
    // a crash draws the same image.
    if task.model_inputs.seed.is_none() {
        task.model_inputs.seed = Some(Seed::random());
    }
    let idempotency = headers
        .get(IDEMPOTENCY_HEADER)
        .map(|v| {
            let text = v.to_str().unwrap_or_default();
            IdempotencyKey::parse(text).map_err(|e| {
                ApiError::Invalid(RequestError {
                    code: "invalid_value",
                    field: Some(IDEMPOTENCY_HEADER.into()),
                    message: format!("{IDEMPOTENCY_HEADER}: {e}"),
                })
            })
        })
        .transpose()?;
    let stored = serde_json::to_string(&task)
        .map_err(|e| ApiError::Internal(format!("serialising a parsed request: {e}")))?;
    let caps = state.caps;
    let enqueued = state
        .store(move |s| {
            let task = NewTask {
                org,
                request_json: &stored,
                needs,
                idempotency: idempotency.as_ref().map(|key| Idempotency {
                    key,
                    request: &as_sent,
                }),
            };
            s.enqueue(&task, caps, Timestamp::now())
        })
        .await?;
    if enqueued.created {
        tracing::info!(request_id = %enqueued.id, "task queued");
    }

    let result_url = format!("{}/{}", absolute_url(&headers, uri.path()), enqueued.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({"requestId": enqueued.id.to_string(), "resultUrl": result_url})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&result_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// The absolute URL of `path` as the client reached it (behind a proxy, its
/// `X-Forwarded-Proto` and `X-Forwarded-Host` win).
fn absolute_url(headers: &HeaderMap, path: &str) -> String {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = get("x-forwarded-proto").unwrap_or("http");
    let host = get("x-forwarded-host")
        .or_else(|| get(header::HOST.as_str()))
        .unwrap_or("localhost");
    format!("{scheme}://{host}{}", path.trim_end_matches('/'))
}
