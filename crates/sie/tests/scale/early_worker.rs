//! A worker that starts before its API node.

use std::time::Duration;

use super::*;

#[test]
fn a_worker_started_before_its_api_node_connects_once_it_is_up() {
    let db = Database::fresh(&admin_url());
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let t = tenant(&db.url, &["early"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let worker = start_worker(&format!("http://{address}"), &t.tokens["early"], &model);
    // Nothing listens yet: the worker keeps trying with backoff instead of exiting.
    worker.wait_for_log("cannot reach the queue", Duration::from_secs(120));
    let api = start_api_on(&db.url, "60s", &address);
    let c = client();
    let id = submit(&c, &api.url, &t.key, &small(5, 2, 64));
    let v = &wait_one(&c, &api.url, &t.key, &id, Duration::from_secs(120));
    assert_eq!(v["status"], "success", "{v}");
}
