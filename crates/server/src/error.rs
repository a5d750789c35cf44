//! The one place where failures become HTTP answers.
//!
//! Every non-2xx answer is an RFC 7807 problem document with a stable `code`
//! (SPEC 1.4). Handlers return [`ApiError`]; nothing else writes an error
//! response, so the mapping from a failure to a status lives here alone.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sie_api::{Problem, RequestError};
use sie_store::StoreError;

/// Why a request was not served.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the body or a parameter is wrong; says which field and what is accepted.
    Invalid(RequestError),
    /// Any other client error with its own status and code (401, 403, 404, 405, 408, 413,
    /// 414, 415, 422).
    Client {
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: String,
    },
    /// 429 (a queue cap was reached) or 503 (the server holds as much as it may): the
    /// client should retry after this many seconds.
    Busy {
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: String,
        retry_after: u64,
    },
    /// 500: our fault; logged with the request's context, the client sees only the code.
    Internal(String),
}

impl ApiError {
    pub fn client(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status,
            code,
            title,
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", "Not found", detail)
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::Invalid(e)
    }
}

/// A path parameter that does not fit the route (axum's own rejection, whose status and
/// text say which): 400 `invalid_request`.
impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::client(
            e.status(),
            "invalid_request",
            "Invalid request",
            e.body_text(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::QueueFull {
                retry_after_seconds,
                ..
            } => ApiError::Busy {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "queue_full",
                title: "Too many queued tasks",
                detail: e.to_string(),
                retry_after: retry_after_seconds.max(1) as u64,
            },
            StoreError::IdempotencyKeyReused(_) => ApiError::client(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency key reused",
                e.to_string(),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (problem, retry_after) = match self {
            ApiError::Invalid(e) => (e.to_problem(), None),
            ApiError::Client {
                status,
                code,
                title,
                detail,
            } => (Problem::new(status.as_u16(), code, title, detail), None),
            ApiError::Busy {
                status,
                code,
                title,
                detail,
                retry_after,
            } => (
                Problem::new(status.as_u16(), code, title, detail),
                Some(retry_after),
            ),
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "internal error");
                (
                    Problem::new(
                        500,
                        "internal_error",
                        "Internal error",
                        "the server failed unexpectedly; the failure is logged",
                    ),
                    None,
                )
            }
        };
        problem_response(&problem, retry_after)
    }
}

/// Serialises a problem with its content type (and `Retry-After` for 429 and 503).
pub fn problem_response(problem: &Problem, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(Problem::CONTENT_TYPE),
    );
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
