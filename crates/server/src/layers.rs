//! What the router does around every route: time limits, the URL length limit, and the
//! headers every answer carries (SPEC 1.4, 2.1).
//!
//! - [`limit_time`]: a request whose answer is not ready within the request timeout, body
//!   included, is answered 408 (a worker's calls excepted); [`time_bodies`] makes any body
//!   that goes silent for the body timeout fail its reader, who answers 408
//!   (`body::unreadable`).
//! - [`limit_uri`]: a URL over [`MAX_URI_BYTES`] is 414 before routing; [`one_host`]: a
//!   second `Host` is 400.
//! - [`safe_headers`]: `nosniff` and `no-store` on every answer: most carry one
//!   organization's data, and none (a refusal, a health check) is worth keeping in a shared
//!   cache, so one layer at the top covers refusals made before any route runs (405, 408,
//!   414) too. The one route that sets its own `Cache-Control` keeps it: the `/docs`
//!   viewer's script, the same bytes for everyone at a path that names its version.
//! - [`cors`]: only for the origins the operator lists, none by default.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::TimeoutBody;

use crate::settings::{CorsOrigin, Limits};
use crate::ApiError;

/// The longest request target (path and query) accepted. Ours are under 200 bytes; a
/// longer one is a mistake or a probe, and it is logged and parsed on every layer.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Answers 408 when the route's answer is not ready within `limits.request_timeout`,
/// counted from the end of the request's head, so reading the body is included.
///
/// The router lays it on every route but the worker protocol's: their callers hold a worker
/// token, and a GPU node far away uploads a completion of hundreds of megabytes at the
/// speed of its link. Those bodies are bounded by the body timeout alone, and the lease
/// long-poll by its own wait.
pub(crate) async fn limit_time(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::client(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "Request timeout",
            format!(
                "the request took over {} s (--request-timeout), its body included; send it \
                 faster or in one piece",
                limits.request_timeout.as_secs()
            ),
        )
        .into_response(),
    }
}

/// Wraps every request body so that a read waiting over `limits.body_timeout` for the
/// next bytes fails (the timer restarts with each chunk that arrives).
pub(crate) async fn time_bodies(
    State(limits): State<Limits>,
    request: Request,
    next: Next,
) -> Response {
    let timeout = limits.body_timeout;
    next.run(request.map(|body| axum::body::Body::new(TimeoutBody::new(timeout, body))))
        .await
}

/// The 408 of a body that went silent.
pub(crate) fn body_timed_out() -> ApiError {
    ApiError::client(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        "Body timeout",
        "no body bytes arrived for longer than the body timeout (--body-timeout); send the \
         body without pausing",
    )
}

/// 400 for a request with more than one `Host` (RFC 9112 3.2): which one a proxy used and
/// which one we would is anyone's guess.
pub(crate) async fn one_host(request: Request, next: Next) -> Response {
    if let Err(refusal) = crate::auth::one_header(request.headers(), "Host") {
        return refusal.into_response();
    }
    next.run(request).await
}

/// 414 for a request target over [`MAX_URI_BYTES`].
pub(crate) async fn limit_uri(request: Request, next: Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::client(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "URI too long",
            format!("the URL is {length} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The headers every answer carries: `X-Content-Type-Options: nosniff`, so a browser reads
/// a problem document or an image payload as nothing but its declared type, and
/// `Cache-Control: no-store`, so no cache keeps an answer.
pub(crate) async fn safe_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    // A route may say otherwise: the docs viewer's script, immutable at a versioned path.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// CORS for exactly `origins` (preflights included): the API's methods, the headers a
/// client sends, and the headers a browser script may read back.
pub(crate) fn cors(origins: &[CorsOrigin]) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            origins.iter().map(CorsOrigin::header_value),
        ))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            HeaderName::from_static("salad-api-key"),
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            crate::REQUEST_ID_HEADER,
            HeaderName::from_static("ratelimit-limit"),
            HeaderName::from_static("ratelimit-remaining"),
            HeaderName::from_static("ratelimit-reset"),
        ])
        .max_age(Duration::from_secs(600))
}
