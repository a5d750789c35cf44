//! Connections and time (issue 13, items 3 and 9): the header, body and request timeouts,
//! the connection limit, the HTTP layer's own refusals as problem documents, and a
//! shutdown that still answers what it is reading.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{closed_within, eventually, open_fds, raw, read_head, read_response};
use super::{post_head, problem_code, serve};

/// Generous room for a loaded machine on top of a timeout that should have fired.
const SLACK: Duration = Duration::from_secs(6);

/// A client that sends its request head a byte at a time is answered 408 `header_timeout`
/// and disconnected once the header timeout passes; one that keeps a connection open
/// without sending anything more is disconnected then, unanswered (it asked nothing).
#[test]
fn a_connection_that_drips_its_head_or_idles_is_closed_within_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--header-timeout", "2s"]);
    let timeout = Duration::from_secs(2);

    let mut dripping = raw(server.addr(), Duration::from_secs(30));
    dripping
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    drip(&dripping, b'z', Duration::from_millis(200));
    answered_408(&mut dripping, "header_timeout", timeout);
    assert_eq!(
        closed_within(&mut dripping, Duration::from_secs(5)),
        Ok(true),
        "the connection stayed open after its 408"
    );

    // A kept-alive connection, idle after its first request.
    let mut idle = raw(server.addr(), Duration::from_secs(30));
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    closed_within_the_timeout(&mut idle, timeout, "an idle connection");
}

/// The server closes `stream` within `timeout` (and the slack a loaded machine needs) from
/// now.
fn closed_within_the_timeout(stream: &mut std::net::TcpStream, timeout: Duration, what: &str) {
    let started = Instant::now();
    assert_eq!(
        closed_within(stream, Duration::from_secs(30)),
        Ok(true),
        "{what} held its connection for 30 s"
    );
    let took = started.elapsed();
    assert!(took < timeout + SLACK, "{what}: closed after {took:?}");
}

/// A POST whose body stops arriving is answered 408 `body_timeout` once it has been silent
/// for the body timeout.
#[test]
fn a_body_that_stops_arriving_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0", "--body-timeout", "2s"]);
    let mut stream = raw(server.addr(), Duration::from_secs(30));
    post_head(&mut stream, &server, None, 1000, false);
    stream.write_all(b"{\"modelInputs\": ").unwrap();
    answered_408(&mut stream, "body_timeout", Duration::from_secs(2));
}

/// The next answer on `stream` is 408 with the problem `code`, within `timeout` (and the
/// slack a loaded machine needs) from now.
fn answered_408(stream: &mut std::net::TcpStream, code: &str, timeout: Duration) {
    let started = Instant::now();
    let r = read_response(stream).expect("an answer before the read gives up");
    assert_eq!((r.status, problem_code(&r).as_str()), (408, code));
    let took = started.elapsed();
    assert!(took < timeout + SLACK, "answered after {took:?}");
}

/// A POST refused from its head (no key) whose client goes on dripping its 19 MiB body is
/// answered 401 and then closed within the ten seconds its body is drained for, however long
/// it would drip: a keyless client cannot keep a connection slot that way.
#[test]
fn a_refused_post_that_drips_its_body_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--workers", "0"]);
    let mut stream = raw(server.addr(), Duration::from_secs(60));
    post_head(&mut stream, &server, Some(""), 19 << 20, false);
    drip(&stream, b' ', Duration::from_millis(500));
    let r = read_response(&mut stream).expect("the refusal");
    assert_eq!(
        (r.status, problem_code(&r).as_str()),
        (401, "missing_api_key")
    );
    closed_within_the_timeout(
        &mut stream,
        Duration::from_secs(10),
        "a dripped refused body",
    );
}

/// A body sent a byte every quarter second never trips the body timeout, but the whole
/// request is answered 408 `request_timeout` once the request timeout passes.
#[test]
fn a_request_dripped_past_the_request_timeout_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--workers",
        "0",
        "--body-timeout",
        "2s",
        "--request-timeout",
        "4s",
    ];
    let server = serve(dir.path(), &flags);
    let mut stream = raw(server.addr(), Duration::from_secs(30));
    post_head(&mut stream, &server, None, 1000, false);
    drip(&stream, b' ', Duration::from_millis(250));
    answered_408(&mut stream, "request_timeout", Duration::from_secs(4));
}

/// With room for four connections, four idle ones hold the server: forty more wait in the
/// kernel's backlog, costing the server no descriptor, and a request on the first of them
/// is answered once one of the four closes.
#[test]
fn connections_past_the_limit_wait_unaccepted_until_one_closes() {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--max-connections", "4", "--header-timeout", "60s"];
    let server = serve(dir.path(), &flags);
    let pid = server.pid();
    let before = open_fds(pid);
    let mut held: Vec<_> = (0..4)
        .map(|_| raw(server.addr(), Duration::from_secs(30)))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), Duration::from_millis(20), || {
            open_fds(pid) >= before + 4
        }),
        "the four connections were not accepted"
    );
    let mut waiting: Vec<_> = (0..40)
        .map(|_| raw(server.addr(), Duration::from_secs(30)))
        .collect();
    waiting[0]
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Not answered while the four are held: nothing arrives for two seconds.
    waiting[0]
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut byte = [0u8];
    let early = waiting[0].read(&mut byte);
    assert!(
        early.is_err(),
        "a connection past the limit was served: {early:?}"
    );
    let fds = open_fds(pid);
    assert!(
        fds <= before + 4 + 2,
        "44 connections cost the server {} descriptors",
        fds - before
    );
    drop(held.remove(0));
    waiting[0]
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = read_head(&mut waiting[0]).expect("served once a slot is free");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// What hyper refuses before any route runs (a malformed head: 400; a head over 64 KiB:
/// 431), and a URL over the limit (414), are problem documents with stable codes.
#[test]
fn the_http_layers_own_refusals_are_problem_documents() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]);
    let big_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let long_url = format!(
        "GET /healthz?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(9000)
    );
    let cases = [
        (
            "GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_owned(),
            400,
            "invalid_request",
        ),
        (
            "\x01\x02 / HTTP/1.1\r\n\r\n".to_owned(),
            400,
            "invalid_request",
        ),
        (big_header, 431, "headers_too_large"),
        (long_url, 414, "uri_too_long"),
    ];
    for (request, status, code) in cases {
        let mut stream = raw(server.addr(), Duration::from_secs(30));
        stream.write_all(request.as_bytes()).unwrap();
        let r = read_response(&mut stream).unwrap();
        let what = &request[..request.len().min(40)];
        assert_eq!(r.status, status, "{what:?}: {r:?}");
        assert_eq!(problem_code(&r), code, "{what:?}");
        assert!(!r.json()["detail"].as_str().unwrap().is_empty());
    }
}

/// SIGTERM while a POST's body is still being sent: the server stops accepting, answers
/// that request once its body is in (202: it was queued), and exits cleanly.
#[test]
fn sigterm_answers_a_request_whose_body_is_still_arriving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--workers", "0"]);
    let body = json!({"modelInputs": {"prompt": "x", "width": 64, "height": 64}}).to_string();
    let mut stream = raw(server.addr(), Duration::from_secs(30));
    post_head(&mut stream, &server, None, body.len(), true);
    let head = read_head(&mut stream).unwrap();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(&body.as_bytes()[..10]).unwrap();
    server.proc.sigterm();
    server
        .proc
        .wait_for_log("shutting down", Duration::from_secs(30));
    stream.write_all(&body.as_bytes()[10..]).unwrap();
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 202, "{r:?}");
    server.proc.expect_clean_exit(Duration::from_secs(30));
}

/// Writes `byte` to `stream` once every `every`, on a thread of its own, for a minute or
/// until the server closes the connection.
fn drip(stream: &std::net::TcpStream, byte: u8, every: Duration) {
    let mut writer = stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && writer.write_all(&[byte]).is_ok() {
            std::thread::sleep(every);
        }
    });
}
