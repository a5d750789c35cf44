//! `POST {base}`: create a task.
//!
//! Everything is decided in order of cost, so a request that will be refused costs as
//! little as it can: the key and organization (the `Authorized` extractor, before any
//! body byte is read), then what the headers say (content type, size, idempotency key,
//! the result URL's host), then room in the byte budget for bodies being read, then the
//! body itself, parsed with its images still base64 (`sie_api::Undecoded`), then
//! `Workers::refusal`, and only then the images' pixels, under the decode slots. Nothing is
//! queued for a refused request; a 202 means the task is in the store's committed
//! transaction, so no crash after it can lose the task.

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use sie_api::request::Seed;
use sie_api::{RequestError, Undecoded};
use sie_store::{Idempotency, IdempotencyKey, NewTask, OrgId, Timestamp};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::Authorized;
use crate::body::{self, MAX_BODY};
use crate::{ApiError, AppState};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

pub async fn create(
    State(state): State<AppState>,
    auth: Result<Authorized, ApiError>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Admitted {
        org,
        idempotency,
        collection_url,
        room,
    } = match admit(&state, auth, uri.path(), &headers) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            body::discard(&headers, body);
            return Err(refusal);
        }
    };

    // The body's room in the budget is held until the task is stored, by this handler and
    // by each blocking call that holds the body or what it became (a timeout that drops the
    // handler does not stop a blocking call), since until then the request holds about
    // its body's size at least once.
    let room = std::sync::Arc::new(room);
    let body = body::read(body).await?;
    // A 20 MiB document is CPU work that must not stall the async runtime.
    let held = room.clone();
    let undecoded = tokio::task::spawn_blocking(move || {
        let _held = held;
        Undecoded::parse(&body)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("request parsing panicked: {e}")))??;
    let needs = undecoded.needs();
    if let Some(refusal) = state.workers.refusal(&needs) {
        return Err(ApiError::Invalid(refusal));
    }
    let mut task = if undecoded.has_images() {
        let held = room.clone();
        state
            .decodes
            .run(move || {
                let _held = held;
                undecoded.decode()
            })
            .await??
    } else {
        undecoded.decode()?
    };

    // What a retry under the same Idempotency-Key must repeat: the request as the client
    // sent it, in canonical form (before the seed is drawn; formatting does not count).
    let as_sent = serde_json::to_string(&task)
        .map_err(|e| ApiError::Internal(format!("serialising a parsed request: {e}")))?;
    // The seed is fixed now, so the stored task says exactly what will run and a retry after
    // a crash draws the same image.
    if task.model_inputs.seed.is_none() {
        task.model_inputs.seed = Some(Seed::random());
    }
    let stored = serde_json::to_string(&task)
        .map_err(|e| ApiError::Internal(format!("serialising a parsed request: {e}")))?;
    let (caps, result_ttl) = (state.settings.caps, state.settings.result_ttl);
    let enqueued = state
        .store(move |s| {
            let _held = room;
            let task = NewTask {
                org,
                request_json: &stored,
                needs,
                idempotency: idempotency.as_ref().map(|key| Idempotency {
                    key,
                    request: &as_sent,
                    result_ttl,
                }),
            };
            s.enqueue(&task, caps, Timestamp::now())
        })
        .await?;
    if enqueued.created {
        tracing::info!(request_id = %enqueued.id, "task queued");
    }

    let result_url = format!("{collection_url}/{}", enqueued.id);
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

/// What is decided from the request's head, before any body byte is read.
struct Admitted {
    org: OrgId,
    idempotency: Option<IdempotencyKey>,
    /// The absolute URL the client posted to; the task's `resultUrl` is below it.
    collection_url: String,
    /// Room for the body in the budget, held until its images are decoded.
    room: OwnedSemaphorePermit,
}

fn admit(
    state: &AppState,
    auth: Result<Authorized, ApiError>,
    path: &str,
    headers: &HeaderMap,
) -> Result<Admitted, ApiError> {
    let Authorized { org, .. } = auth?;
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
    let length = body::announced_length(headers);
    if length.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(body::too_large());
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
    // Before anything is queued: a host that cannot be put in a URL is the client's error.
    let collection_url = state.settings.urls.absolute(headers, path)?;
    let room = state.bodies.reserve(length)?;
    Ok(Admitted {
        org,
        idempotency,
        collection_url,
        room,
    })
}
