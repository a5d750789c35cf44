//! Request ids (SPEC 1.4: a 500 "is logged with the request id"): every request the router
//! answers gets one, every log line written while it is served carries it, and the answer
//! says it in `X-Request-Id`, so a client quoting the header leads an operator to its lines.
//!
//! [`assign`] is the outermost layer: it runs the rest of the request inside a tracing
//! span `request{id=… method=… route=…}` (the route's template, not its path) and a task-
//! local that the panic handler reads ([`current`]), since a panic's payload says nothing
//! of the request it came from. Being outermost, it also marks the answers no route made:
//! the 404 of an unknown path, 405, 408, 414, and the 500 of a panic.
//!
//! An incoming `X-Request-Id` (a proxy's, or a client's own) is kept when it is short and
//! made of letters, digits and `-_.:` alone, so it cannot forge a log line or a header;
//! otherwise a fresh UUID v4 replaces it. The span field is `id`, not `request_id`: in this
//! code base `request_id` is a task's id (the API's `requestId`).
//!
//! Answers the connection layer writes itself before any request exists (a head cut off by
//! its timeout, a malformed head) carry no id: there is no request to log it with.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header a request id comes in and goes out in.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming id kept.
const MAX_INCOMING: usize = 64;

tokio::task_local! {
    static CURRENT: String;
}

/// The id of the request being served by this task, if any.
pub(crate) fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The client's own id when it is one we may repeat.
fn incoming(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(&REQUEST_ID_HEADER).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    let fits = !text.is_empty()
        && text.len() <= MAX_INCOMING
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    fits.then(|| text.to_owned())
}

/// A fresh UUID v4. Without randomness (never on a working system) the time stands in: the
/// id must still differ between requests, and nothing depends on it being unguessable.
pub(crate) fn fresh() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = nanos.to_le_bytes();
    }
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Gives the request its id, serves it within the id's span, and puts the id on the answer.
pub(crate) async fn assign(request: Request, next: Next) -> Response {
    let id = incoming(request.headers()).unwrap_or_else(fresh);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    // At the error level, so the span (and the id in every line logged within it) is on
    // whatever level the operator logs at: an error logged with `SIE_LOG=error` has it too.
    let span = tracing::error_span!("request", id = %id, method = %request.method(), route);
    let header = HeaderValue::from_str(&id).ok();
    let mut response = CURRENT.scope(id, next.run(request).instrument(span)).await;
    if let Some(header) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, header);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(REQUEST_ID_HEADER, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn a_short_plain_incoming_id_is_kept_and_anything_else_replaced() {
        assert_eq!(
            incoming(&with(&["abc-123_x.y:z"])).as_deref(),
            Some("abc-123_x.y:z")
        );
        for refused in [
            "",
            "has space",
            "quote\"",
            "new\\nline",
            &"x".repeat(MAX_INCOMING + 1),
        ] {
            assert_eq!(incoming(&with(&[refused])), None, "{refused:?}");
        }
        assert_eq!(incoming(&with(&["a", "b"])), None);
        assert_eq!(incoming(&HeaderMap::new()), None);
    }

    #[test]
    fn fresh_ids_are_uuid_v4_and_differ() {
        let (a, b) = (fresh(), fresh());
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }
}
