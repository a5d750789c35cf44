//! `sie serve` as a hostile or careless client meets it (issue 13, SPEC 1.4 and 2.1): the
//! real binary on the tiny model, spoken to over real HTTP, raw where a client library
//! would not send what the test needs. The resource tests measure the server process
//! (/proc: resident memory, open descriptors); times appear only as generous bounds on
//! "closed within the timeout", never as assertions on speed.
//!
//! # Layout
//! - `memory.rs`: keyless and budgeted bodies, images refused before decoding, pollers of
//!   a large result;
//! - `connections.rs`: header, body and request timeouts, the connection limit, the HTTP
//!   layer's own refusals as problem documents, draining at SIGTERM;
//! - `contract.rs`: idempotency keys (reused, expired), forwarded headers, duplicate keys,
//!   `no-store`, `nosniff` and CORS, `strength`, task id spellings, JSON positions, PNDM's
//!   step count;
//! - `data_dir.rs`: owner-only permissions, the data directory's lock, leases released
//!   after `kill -9`.

#[path = "../common/mod.rs"]
mod common;

mod connections;
mod contract;
mod data_dir;
mod memory;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use common::Server;

/// `sie serve --model tiny` on a fresh data directory under `dir`, with `extra` flags.
fn serve(dir: &Path, extra: &[&str]) -> Server {
    Server::start(dir, extra, None)
}

/// Writes a POST head to the server's base path, with the server's key unless `key` says
/// otherwise, announcing `length` body bytes; `expect_continue` adds `Expect: 100-continue`.
fn post_head(
    stream: &mut TcpStream,
    server: &Server,
    key: Option<&str>,
    length: usize,
    expect_continue: bool,
) {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n",
        server.path(),
        server.addr()
    );
    if let Some(key) = key.or(Some(&server.key)).filter(|k| !k.is_empty()) {
        head.push_str(&format!("Salad-Api-Key: {key}\r\n"));
    }
    if expect_continue {
        head.push_str("Expect: 100-continue\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
}

/// `method target` with `headers` (`Name: value` lines, `Host` among them or else the
/// server's address) and `body`, over a raw connection: its answer.
fn raw_request(
    server: &Server,
    method: &str,
    target: &str,
    headers: &[&str],
    body: &str,
) -> common::RawResponse {
    let mut stream = common::raw(server.addr(), std::time::Duration::from_secs(30));
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("Host: {}\r\n", server.addr()));
    }
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(head.as_bytes()).unwrap();
    common::read_response(&mut stream).unwrap()
}

/// The `Salad-Api-Key` header line of `server`'s key.
fn key_header(server: &Server) -> String {
    format!("Salad-Api-Key: {}", server.key)
}

/// The code of a problem document, checking that it is one (content type, status, and
/// `nosniff` and `no-store`, which every answer carries).
fn problem_code(r: &common::RawResponse) -> String {
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{r:?}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"), "{r:?}");
    let v = r.json();
    assert_eq!(v["status"], r.status, "{v}");
    v["code"].as_str().unwrap().to_owned()
}
