//! The route table, the layers around it (`layers.rs`), and the answers for routes and
//! methods that do not exist.

mod docs;
mod health;
mod openapi;
pub(crate) mod tasks;
mod usage;
mod worker;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sie_api::Problem;

use crate::error::problem_response;
use crate::layers;
use crate::{method_not_allowed, ApiError, AppState, BASE};

/// A worker's completion carries every image of a task, base64: up to eight 1024x1024
/// PNGs, several times what a client may send. Every other worker call is small.
const MAX_COMPLETION_BODY: usize = 256 * 1024 * 1024;
const MAX_WORKER_CALL_BODY: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let at = |path: &str| format!("{}{path}", sie_api::worker::PREFIX);
    let small = DefaultBodyLimit::max(MAX_WORKER_CALL_BODY);
    let worker = Router::new()
        .route(&at("/lease"), post(worker::lease).layer(small))
        .route(
            &at("/tasks/{id}/heartbeat"),
            post(worker::heartbeat).layer(small),
        )
        .route(
            &at("/tasks/{id}/complete"),
            post(worker::complete).layer(DefaultBodyLimit::max(MAX_COMPLETION_BODY)),
        )
        .route(&at("/tasks/{id}/fail"), post(worker::fail).layer(small))
        .route(
            &at("/tasks/{id}/release"),
            post(worker::release).layer(small),
        )
        // The token is checked before any body is read.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            worker::require_worker,
        ));
    let authenticated = Router::new()
        .route(BASE, get(tasks::list::list).post(tasks::post::create))
        .route(
            &format!("{BASE}/{{id}}"),
            get(tasks::get::get).delete(tasks::delete::cancel),
        )
        .route("/api/beta/organizations/{org}/usage", get(usage::usage))
        // The RateLimit-* headers of the limits the `Authorized` extractor checks.
        .route_layer(from_fn(crate::rate_limit::headers));
    let limits = state.settings.limits.clone();
    // The request timeout around every route but the worker protocol's (see limit_time):
    // a layer reaches only the routes already in the router it is laid on.
    let timed = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/openapi/worker.json", get(openapi::worker_openapi_json))
        .route("/docs", get(docs::page))
        .route(docs::SCRIPT_PATH, get(docs::script))
        .route(docs::LICENSE_PATH, get(docs::license))
        .merge(authenticated)
        .merge(crate::portal::routes())
        .layer(from_fn_with_state(limits.clone(), layers::limit_time));
    let mut app = timed
        .merge(worker)
        .fallback(not_found)
        .method_not_allowed_fallback(|| async { method_not_allowed() })
        .layer(from_fn_with_state(limits, layers::time_bodies))
        .layer(map_response(problems_only));
    if !state.settings.cors_origins.is_empty() {
        // Outside the routes' own refusals, so a browser may read those too.
        app = app.layer(layers::cors(&state.settings.cors_origins));
    }
    // Outside CORS, which answers every OPTIONS itself: these hold for preflights too.
    let metrics = state.metrics.clone();
    app.layer(from_fn(layers::limit_uri))
        .layer(from_fn(layers::one_host))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        // Outside the panic catcher, so a panic's 500 is counted and carries its id.
        .layer(from_fn_with_state(metrics, crate::metrics::count_requests))
        .layer(map_response(layers::safe_headers))
        .layer(from_fn(crate::request_id::assign))
        .with_state(state)
}

/// axum's own extractor rejections (a malformed query string or path segment) answer in
/// plain text; SPEC 1.4 wants every error as a problem document, so any error response that
/// is not one already is rewritten, its text becoming the detail.
async fn problems_only(response: Response) -> Response {
    let status = response.status();
    let content_type = response.headers().get(axum::http::header::CONTENT_TYPE);
    let is_problem = content_type.is_some_and(|v| v.as_bytes() == Problem::CONTENT_TYPE.as_bytes());
    // The portal's pages answer people, in HTML, with statuses of their own.
    let is_page = content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem || is_page {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).trim().to_owned();
    let (code, title) = if status.is_client_error() {
        ("invalid_request", "Invalid request")
    } else {
        ("internal_error", "Internal error")
    };
    problem_response(&Problem::new(status.as_u16(), code, title, detail), None)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API lives under /api/beta/organizations/{orgName}/inference-endpoints/stable-diffusion-2-1")
}

/// A handler panicked: answer 500 with a code instead of dropping the connection.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    // Within the request's span too; named here so the line stands alone.
    let request = crate::request_id::current().unwrap_or_default();
    tracing::error!(request, panic = %what, "a request handler panicked");
    problem_response(
        &Problem::new(
            500,
            "internal_error",
            "Internal error",
            "the server failed unexpectedly; the failure is logged",
        ),
        None,
    )
    .into_response()
}
