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
use sie_api::answers::Created;
use sie_api::request::{Seed, WebhookUrl};
use sie_api::{RequestError, Undecoded};
use sie_store::{Idempotency, IdempotencyKey, NewTask, OrgId, Timestamp};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::Authorized;
use crate::body::{self, MAX_BODY};
use crate::webhooks::Refusal;
use crate::{ApiError, AppState};

pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Create a task
///
/// Queues a Stable Diffusion task. Every field is checked before anything is queued; a
/// 202 means the task is durably stored. With an `Idempotency-Key`, a retried POST answers
/// the first task again.
#[utoipa::path(
    post,
    path = crate::BASE,
    operation_id = "createTask",
    tag = "tasks",
    security(("api_key" = [])),
    params(
        crate::routes::openapi::OrgParam,
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retried POST \
            answer the first task instead of queuing a second; the same key with another \
            body is 422. Forgotten when the task's result expires."),
    ),
    request_body(content = sie_api::CreateTask, content_type = "application/json",
        description = "At most 20 MiB. Unknown keys, and keys given twice, are refused."),
    responses(
        (status = 202, description = "The task is stored.", body = sie_api::answers::Created,
            headers(("Location" = String, description = "The task's `resultUrl`."))),
        (status = 400, response = crate::routes::openapi::BadRequest),
        (status = 401, response = crate::routes::openapi::Unauthorized),
        (status = 403, response = crate::routes::openapi::Forbidden),
        (status = 404, response = crate::routes::openapi::NotFound),
        (status = 413, response = crate::routes::openapi::PayloadTooLarge),
        (status = 415, response = crate::routes::openapi::UnsupportedMediaType),
        (status = 422, response = crate::routes::openapi::IdempotencyKeyReused),
        (status = 429, response = crate::routes::openapi::TooManyRequests),
        (status = 503, response = crate::routes::openapi::ServiceUnavailable),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    auth: Result<Authorized, ApiError>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Admitted {
        org,
        org_name,
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
    if let Some(url) = undecoded.webhook_url() {
        check_webhook(&state, org, &org_name, url).await?;
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
    // The webhook URL is kept in a column of its own, not in the request a worker leases:
    // such URLs often carry a token, and GPU nodes have no use for it.
    let webhook_url = task
        .call_inputs
        .webhook_url
        .take()
        .map(|u| u.as_str().to_owned());
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
                webhook_url: webhook_url.as_deref(),
            };
            s.enqueue(&task, caps, Timestamp::now())
        })
        .await?;
    if enqueued.created {
        tracing::info!(request_id = %enqueued.id, "task queued");
        state.metrics.task_created(&org_name);
    }

    let result_url = format!("{collection_url}/{}", enqueued.id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(Created {
            request_id: enqueued.id.to_string(),
            result_url: result_url.clone(),
        }),
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
    /// As the path spells it.
    org_name: String,
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
    let Authorized { org, name } = auth?;
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
        org_name: name,
        idempotency,
        collection_url,
        room,
    })
}

/// A webhook is refused (400, naming the field) when the organization has no signing secret
/// to sign it with, or when its host may not be called: checked now, so the client hears
/// it at once; every delivery checks the addresses again as it connects.
async fn check_webhook(
    state: &AppState,
    org: OrgId,
    org_name: &str,
    url: &WebhookUrl,
) -> Result<(), ApiError> {
    const FIELD: &str = "callInputs.webhook_url";
    let refused = |message: String| {
        ApiError::Invalid(RequestError {
            code: "invalid_value",
            field: Some(FIELD.into()),
            message: format!("{FIELD}: {message}"),
        })
    };
    if state.store(move |s| s.webhook_secret(org)).await?.is_none() {
        return Err(refused(format!(
            "the organization {org_name} has no webhook signing secret yet; an operator \
             makes one with `sie admin org webhook-secret {org_name}` (shown once), then \
             webhooks can be asked for"
        )));
    }
    let allow_private = state.settings.webhooks.allow_private;
    match crate::webhooks::refusal(url.url(), allow_private).await {
        Some(Refusal::Forbidden(why)) => Err(refused(why)),
        Some(Refusal::Unresolved(why)) => Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhook_host_unresolved",
            "Webhook host did not resolve",
            format!("{FIELD}: {why}"),
        )),
        None => Ok(()),
    }
}
