//! The accept loop: connections, and what bounds each one before a request reaches the
//! router (SPEC 2.1).
//!
//! - At most `max_connections` are served at once. A slot is taken *before* `accept`, so
//!   past the limit connections wait in the kernel's backlog, costing the process neither
//!   a descriptor nor a task, and are accepted as slots free.
//! - hyper's `header_read_timeout` runs from the moment it waits for a request head, on a
//!   new connection or an idle kept-alive one, so a client that sends its head slowly, or
//!   sends nothing, is disconnected after `header_timeout`.
//! - A head over [`MAX_HEAD_BYTES`] (or with more than [`MAX_HEADERS`] headers) is hyper's
//!   431; each socket is wrapped in `ProblemIo` so that it, and hyper's other refusals,
//!   are problem documents.
//! - A write the client leaves untaken for the body timeout fails and ends the
//!   connection (`WriteStall`), so a client that stops reading its answer does not keep
//!   its slot.
//! - A request head still arriving at the header timeout is answered 408 `header_timeout`
//!   (a problem document) before the connection closes.
//! - On shutdown the loop stops accepting, and each connection finishes the request it is
//!   serving (idle ones close at once), for at most the request timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::problem_io::ProblemIo;
use crate::stall::WriteStall;
use crate::AppState;

/// The largest request head (request line and headers) accepted: 431 beyond.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most headers a request may carry: 431 beyond (hyper's own default).
pub const MAX_HEADERS: usize = 100;

/// What each connection runs on: the socket, under our two wrappers.
type Socket = TokioIo<ProblemIo<WriteStall<TcpStream>>>;
type Service = TowerToHyperService<
    tower_http::add_extension::AddExtension<axum::Router, crate::ClientAddress>,
>;

/// Serves `router(state)` on `listener` until `shutdown` completes and the requests in
/// flight have been answered, or the request timeout has passed since.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.settings.limits.clone();
    let (stop, stopping) = watch::channel(false);
    // The webhook outbox is delivered by every process that serves the API.
    tokio::spawn(crate::webhooks::deliver(state.clone(), stopping.clone()));
    let router = crate::router(state);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let max_connections = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max_connections as usize));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the slots are never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // pause rather than spin, then go on.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let socket = TokioIo::new(ProblemIo::new(WriteStall::new(stream, limits.body_timeout)));
        // Each request knows its connection's peer (the portal throttles log-ins by it).
        let service = TowerToHyperService::new(tower_http::add_extension::AddExtension::new(
            router.clone(),
            crate::ClientAddress(peer.ip()),
        ));
        let connection = http.serve_connection(socket, service);
        let (stopping, header_timeout) = (stopping.clone(), limits.header_timeout);
        tokio::spawn(async move {
            if let Err(e) = run(connection, stopping, header_timeout).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // Refuse new connections from now on; let the open ones finish what they serve, for as
    // long as a request may take (a client reading its answer slowly is not waited for).
    // Each connection gives its slot back when it ends, so all of them back means all ended.
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(limits.request_timeout, slots.acquire_many(max_connections))
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after shutdown began; closing them",
            limits.request_timeout.as_secs()
        );
    }
    Ok(())
}

/// Runs one connection until it ends. When shutdown begins it finishes the request it is
/// serving and closes (idle ones close at once). A request head still arriving when the
/// header timeout passes is answered `408 header_timeout` before the connection closes
/// (SPEC 1.4: the HTTP layer's refusals are problem documents too); hyper would close it
/// without a word, so the socket is taken back from it to write the answer. A connection
/// that sent nothing is closed silently, as there is no request to answer.
async fn run(
    mut connection: http1::Connection<Socket, Service>,
    mut stopping: watch::Receiver<bool>,
    header_timeout: Duration,
) -> Result<(), hyper::Error> {
    let mut shutting_down = false;
    let ended = loop {
        tokio::select! {
            ended = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx)) => break ended,
            _ = stopping.wait_for(|stop| *stop), if !shutting_down => {
                shutting_down = true;
                std::pin::Pin::new(&mut connection).graceful_shutdown();
            }
        }
    };
    let timed_out = matches!(&ended, Err(e) if e.is_timeout());
    if let Err(e) = ended {
        if !timed_out {
            return Err(e);
        }
    }
    let parts = connection.into_parts();
    let mut socket = parts.io.into_inner();
    if timed_out && !parts.read_buf.is_empty() {
        let _ = socket
            .write_all(&crate::problem_io::header_timeout(header_timeout))
            .await;
    }
    // Bounded by `WriteStall`, like every write.
    let _ = socket.shutdown().await;
    Ok(())
}
