//! Request bodies: what all of them together may hold in memory, and how one is read
//! (SPEC 2.1).
//!
//! A create-task body is buffered whole (it is one JSON document of up to 20 MiB), so
//! each POST first reserves its size from one byte budget shared by every body being read
//! ([`BodyBudget`]); when the budget is spent the POST answers 503 at once instead of
//! reading, so a crowd of large uploads costs the server the budget and no more. The key
//! and organization were checked before (the `Authorized` extractor), so a caller without
//! a key never reaches the budget. Decoding an image can cost a hundred megabytes,
//! however small its file; `crate::slots` lets a fixed number run at once.

use std::error::Error as StdError;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ApiError;

/// SPEC 1.1: a create-task body is at most 20 MiB.
pub const MAX_BODY: usize = 20 * 1024 * 1024;

/// The bytes that all create-task bodies being read at once may take.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `total` bytes (at least [`MAX_BODY`], so any one body fits).
    pub fn new(total: u64) -> Self {
        let total = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .clamp(MAX_BODY, Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
        }
    }

    /// Reserves room for a body of the announced `length` (the whole [`MAX_BODY`] when it
    /// is not announced, as a chunked upload may be that long), or answers 503
    /// `server_busy`. The room is the caller's until it drops the permit.
    pub fn reserve(&self, length: Option<u64>) -> Result<OwnedSemaphorePermit, ApiError> {
        let wanted = length.map_or(MAX_BODY as u64, |n| n.min(MAX_BODY as u64)) as u32;
        self.bytes
            .clone()
            .try_acquire_many_owned(wanted.max(1))
            .map_err(|_| ApiError::Busy {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "server_busy",
                title: "Server busy",
                detail: "the server is reading as many request bodies as it holds at once \
                         (--max-inflight-body-bytes); retry shortly"
                    .into(),
                retry_after: 1,
            })
    }
}

/// The `Content-Length` a request announces, if any.
pub(crate) fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// 413 for a create-task body over [`MAX_BODY`] (the only body whose limit a client meets:
/// the worker protocol's calls answer their own).
pub(crate) fn too_large() -> ApiError {
    ApiError::client(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "Body too large",
        format!(
            "the body is over {} MiB; send smaller images",
            MAX_BODY >> 20
        ),
    )
}

/// Reads a whole body of at most [`MAX_BODY`] bytes: 413 past the limit, 408 when the
/// client went silent for the body timeout (the router wraps every body in one), 400 when
/// the connection failed.
pub(crate) async fn read(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| unreadable(&e))
}

/// What a failed body read answers, whichever extractor or reader met it.
pub(crate) fn unreadable(e: &(dyn StdError + 'static)) -> ApiError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<LengthLimitError>() {
            return too_large();
        }
        if c.is::<tower_http::timeout::TimeoutError>() {
            return crate::layers::body_timed_out();
        }
        cause = c.source();
    }
    ApiError::client(
        StatusCode::BAD_REQUEST,
        "unreadable_body",
        "Unreadable body",
        format!("the body could not be read: {e}"),
    )
}

/// The most a refused request's body is read (and thrown away) so its client hears the
/// refusal; see [`discard`].
pub const DISCARD_LIMIT: usize = 2 * MAX_BODY;

/// The longest a refused request's body is read; see [`discard`]. Long enough for any
/// client on a working link to finish sending 20 MiB, short enough that a dripped body
/// costs a connection slot for seconds, not for as long as it drips.
pub const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Lets the client of a request refused before its body was read hear the refusal.
///
/// A client that did not ask `Expect: 100-continue` is already sending its body. Were the
/// connection closed with that body unread, the kernel would reset it, and the client would
/// see "connection reset" while still writing instead of its 401 or 413. So the body is
/// read in the background and dropped as it comes, holding no memory, until it ends, goes
/// silent for the body timeout, passes [`DISCARD_LIMIT`], or has taken [`DISCARD_TIME`]:
/// then the body is dropped and hyper closes the connection, so a refused client cannot
/// keep its connection (and its slot under `--max-connections`) by dripping a body. A
/// client that asked for `100-continue` has sent nothing and is told nothing more: the
/// body is not touched, so hyper never invites it.
pub(crate) fn discard(headers: &HeaderMap, body: Body) {
    let waits_for_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits_for_continue {
        return;
    }
    tokio::spawn(async move {
        let mut body = Limited::new(body, DISCARD_LIMIT);
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_frees_what_is_dropped() {
        let budget = BodyBudget::new(50 << 20);
        let a = budget.reserve(Some(19 << 20)).unwrap();
        let _b = budget.reserve(Some(19 << 20)).unwrap();
        // 12 MiB left: an unannounced length counts as the whole 20 MiB.
        assert!(budget.reserve(None).is_err());
        assert!(budget.reserve(Some(12 << 20)).is_ok());
        assert!(matches!(
            budget.reserve(Some(19 << 20)),
            Err(ApiError::Busy { status, .. }) if status == StatusCode::SERVICE_UNAVAILABLE
        ));
        drop(a);
        assert!(budget.reserve(Some(19 << 20)).is_ok());
        // An announced length past the largest body reserves only that much.
        assert!(BodyBudget::new(0).reserve(Some(u64::MAX)).is_ok());
    }
}
