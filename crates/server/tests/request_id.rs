//! Request ids: every answer carries `X-Request-Id` (successes, problems, and routes that do
//! not exist), a fresh one per request, or the client's own when it is short and plain.

mod common;

use common::{spawn_app, Options};

fn id_of(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .expect("an X-Request-Id header")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn every_answer_carries_its_own_request_id() {
    let app = spawn_app(Options::idle()).await;
    let ok = app.get_raw(&app.base).await;
    assert_eq!(ok.status(), 200);
    let missing = app
        .client
        .get(format!("{}/no/such/route", app.root))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let unauthorized = app.client.get(&app.base).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    let ids = [id_of(&ok), id_of(&missing), id_of(&unauthorized)];
    for id in &ids {
        let parsed = uuid_like(id);
        assert!(parsed, "{id} is not a UUID");
    }
    assert_ne!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
    assert_ne!(ids[0], ids[2]);
}

#[tokio::test]
async fn a_plain_incoming_id_is_kept_and_a_strange_one_replaced() {
    let app = spawn_app(Options::idle()).await;
    let send = |id: &'static str| {
        app.client
            .get(format!("{}/healthz", app.root))
            .header("X-Request-Id", id)
            .send()
    };
    let kept = send("trace-42.abc").await.unwrap();
    assert_eq!(id_of(&kept), "trace-42.abc");
    let replaced = send("two words").await.unwrap();
    assert!(uuid_like(&id_of(&replaced)), "{}", id_of(&replaced));
}

/// 8-4-4-4-12 hexadecimal digits, version 4.
fn uuid_like(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        && groups[2].starts_with('4')
}
