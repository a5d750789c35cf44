//! Problem documents for the refusals hyper writes itself (SPEC 1.4).
//!
//! When a request's head cannot be parsed, hyper answers before any route runs, with an
//! empty body: 400 for a malformed request line or header, 431 for a head over
//! `max_header_size` (`Server::on_error` in hyper's `proto/h1/role.rs`; its 414 needs a
//! target longer than our whole head may be, so the router's own 414 is the one sent).
//! It offers no hook to change that answer, so each connection's socket is wrapped in
//! [`ProblemIo`], which recognises such an answer in the bytes hyper writes and writes a
//! problem document with the same status in its place. (A head cut off by the header
//! timeout hyper does not answer at all; `connection.rs` writes that one, with
//! [`header_timeout`].)
//!
//! The recognition is exact because none of our own answers can look like it: hyper
//! writes its answer at the start of a response (nothing of an earlier one is in the same
//! write), with status 400 or 431 and `content-length: 0`, while every error the
//! router answers is a problem document with a body (`error.rs`).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use sie_api::Problem;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A socket whose writes pass through, except hyper's own empty refusals, which become
/// problem documents.
pub(crate) struct ProblemIo<S> {
    inner: S,
    /// A replacement answer, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<S> ProblemIo<S> {
    pub fn new(inner: S) -> Self {
        ProblemIo {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncWrite + Unpin> ProblemIo<S> {
    /// Writes what is left of a replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.pending {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == answer.len() {
                self.pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// If `head` is one of hyper's own refusals, takes it as written and queues the
    /// problem document in its place; the length taken.
    fn replace(&mut self, cx: &mut Context<'_>, head: &[u8]) -> Option<io::Result<usize>> {
        let answer = replacement(head)?;
        self.pending = Some((answer, 0));
        // Start writing now; what the socket does not take yet goes out on the next write
        // or flush, which hyper always makes after a head.
        match self.poll_pending(cx) {
            Poll::Ready(Err(e)) => Some(Err(e)),
            _ => Some(Ok(head.len())),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ProblemIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ProblemIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(taken) = self.replace(cx, buf) {
            return Poll::Ready(taken);
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // A head is always whole in one buffer; bytes count from the first non-empty one.
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Some(taken) = self.replace(cx, first) {
                return Poll::Ready(taken);
            }
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The whole answer to write instead of `head`, when `head` is hyper's empty refusal.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let status = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?
        .get(..4)?;
    let (status, code, title, detail) = match status {
        b"400 " => (
            400,
            "invalid_request",
            "Invalid request",
            "the request is not valid HTTP/1.1: its request line or a header could not be parsed"
                .to_owned(),
        ),
        b"431 " => (
            431,
            "headers_too_large",
            "Headers too large",
            format!(
                "the request's headers are over {} KiB or more than {} of them; send fewer or \
                 smaller headers",
                crate::connection::MAX_HEAD_BYTES >> 10,
                crate::connection::MAX_HEADERS
            ),
        ),
        _ => return None,
    };
    let empty = head
        .windows(b"\r\ncontent-length: 0\r\n".len())
        .any(|w| w.eq_ignore_ascii_case(b"\r\ncontent-length: 0\r\n"));
    if !empty || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    Some(answer(&Problem::new(status, code, title, detail)))
}

/// The answer to a request whose head was still arriving when the header timeout passed,
/// written by the accept loop (hyper writes nothing then).
pub(crate) fn header_timeout(timeout: std::time::Duration) -> Vec<u8> {
    let detail = format!(
        "the request's head did not arrive within {} s (--header-timeout); send it in one go",
        timeout.as_secs()
    );
    let problem = Problem::new(408, "header_timeout", "Header timeout", detail);
    answer(&problem)
}

/// A whole HTTP/1.1 answer carrying `problem`, after which the connection closes. No
/// request got as far as the router, so the answer's request id is a fresh one (logged
/// nowhere, but present, as on every answer).
fn answer(problem: &Problem) -> Vec<u8> {
    let status = problem.status;
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default();
    let body = serde_json::to_vec(problem).expect("a problem serialises");
    let mut answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
         x-content-type-options: nosniff\r\ncache-control: no-store\r\n\
         {}: {}\r\nconnection: close\r\n\r\n",
        Problem::CONTENT_TYPE,
        body.len(),
        crate::request_id::REQUEST_ID_HEADER.as_str(),
        crate::request_id::fresh()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_hypers_empty_refusals_are_replaced() {
        let head =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(replacement(head).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        let (_, body) = answer.split_once("\r\n\r\n").unwrap();
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["code"], "headers_too_large");
        assert_eq!(problem["status"], 431);
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
        for kept in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 87\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"{\"status\":400}",
        ] {
            assert!(
                replacement(kept).is_none(),
                "{}",
                String::from_utf8_lossy(kept)
            );
        }
    }

    #[tokio::test]
    async fn the_document_is_written_in_place_of_the_head() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = ProblemIo::new(near);
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            far.read_to_end(&mut all).await.unwrap();
            all
        });
        // The socket takes 64 bytes at a time: the rest goes out on flush and shutdown.
        let slices = [io::IoSlice::new(&[]), io::IoSlice::new(head)];
        assert_eq!(io.write_vectored(&slices).await.unwrap(), head.len());
        io.shutdown().await.unwrap();
        let all = String::from_utf8(reader.await.unwrap()).unwrap();
        assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
        assert!(
            all.ends_with('}') && all.contains("\"code\":\"invalid_request\""),
            "{all}"
        );
    }
}
