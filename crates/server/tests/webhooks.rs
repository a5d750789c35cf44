//! Webhooks (SPEC 1.1 `callInputs.webhook_url`) against real local HTTP receivers: the
//! final status body, signed the Standard Webhooks way and verified here as a receiver
//! would; retries until the receiver takes it; a receiver that never answers holding up no
//! other delivery; and the refusals at POST (private addresses without the operator's flag,
//! an organization without a signing secret).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{problem, read, small, spawn_app, Options, TestApp};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use sie_store::{Accounts as _, NewTask, OrgName, QueueCaps, Tasks as _, Timestamp, Webhooks as _};

/// What a receiver does with each delivery.
#[derive(Clone)]
enum Behaviour {
    /// 204 from the `n+1`th on, 500 before.
    FailFirst(usize),
    /// Never answers.
    Hang,
    /// 307 to this URL.
    RedirectTo(String),
}

#[derive(Clone)]
struct Delivered {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on 127.0.0.1 that records what it is sent.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivered>>>,
}

async fn receiver(behaviour: Behaviour) -> Receiver {
    let got: Arc<Mutex<Vec<Delivered>>> = Arc::default();
    let handler = |State((got, behaviour)): State<(Arc<Mutex<Vec<Delivered>>>, Behaviour)>,
                   headers: HeaderMap,
                   body: Bytes| async move {
        let n = {
            let mut got = got.lock().unwrap();
            got.push(Delivered { headers, body });
            got.len()
        };
        match behaviour {
            Behaviour::FailFirst(fails) if n <= fails => {
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
            Behaviour::FailFirst(_) => StatusCode::NO_CONTENT.into_response(),
            Behaviour::Hang => std::future::pending::<Response>().await,
            Behaviour::RedirectTo(to) => {
                (StatusCode::TEMPORARY_REDIRECT, [("location", to)]).into_response()
            }
        }
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(handler))
        .with_state((got.clone(), behaviour));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, got }
}

impl Receiver {
    fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Waits (two minutes at most) until `n` deliveries arrived; all of them.
    async fn wait_for(&self, n: usize) -> Vec<Delivered> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} deliveries", got.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Gives the test organization a signing secret; the secret.
fn secret(app: &TestApp) -> String {
    let secret = sie_server::webhooks::Secret::generate().unwrap();
    app.store
        .set_webhook_secret(&OrgName::parse("acme").unwrap(), &secret)
        .unwrap();
    secret
}

/// Verifies a delivery as a Standard Webhooks receiver does (written from the
/// specification, not with the server's code): the base64 key after `whsec_`, HMAC-SHA256
/// over `id.timestamp.body`, one of the space-separated `v1,` signatures matching, and a
/// timestamp within five minutes of now. The body, parsed.
fn verify(secret: &str, d: &Delivered) -> Value {
    let header = |name: &str| {
        d.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&d.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert!(
        signatures.split(' ').any(|s| s == expected),
        "{signatures} does not verify"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - timestamp.parse::<i64>().unwrap()).abs() < 300);
    assert_eq!(header("content-type"), "application/json");
    serde_json::from_slice(&d.body).unwrap()
}

/// The test organization's id.
fn acme(app: &TestApp) -> sie_store::OrgId {
    let account = app.store.authenticate(&app.key, Timestamp::now());
    let name = OrgName::parse("acme").unwrap();
    match app
        .store
        .org_access(account.unwrap().unwrap(), &name)
        .unwrap()
    {
        sie_store::OrgAccess::Allowed(org) => org,
        other => panic!("{other:?}"),
    }
}

fn with_webhook(mut body: Value, url: &str) -> Value {
    body["callInputs"]["webhook_url"] = url.into();
    body
}

#[tokio::test]
async fn the_final_status_arrives_signed_the_standard_webhooks_way() {
    let app = spawn_app(Options::default().allow_private_webhooks()).await;
    let secret = secret(&app);
    let hook = receiver(Behaviour::FailFirst(0)).await;
    let url = app.submit(with_webhook(small(7, 2, 2), &hook.url)).await;
    let got = hook.wait_for(1).await;
    let sent = verify(&secret, &got[0]);
    // The body is the status a GET answers.
    let polled = app.get(&url).await;
    assert_eq!(sent, polled);
    assert_eq!(sent["status"], "success");
    assert_eq!(sent["modelOutputs"]["images"].as_array().unwrap().len(), 2);
    let id = got[0].headers["webhook-id"].to_str().unwrap();
    assert_eq!(id, format!("msg_{}", polled["requestId"].as_str().unwrap()));
    // The URL is kept apart from the request a worker leases.
    let task = sie_store::TaskId::parse(polled["requestId"].as_str().unwrap()).unwrap();
    let stored = app.store.request(acme(&app), task).unwrap().unwrap();
    assert!(
        !stored.contains("webhook_url") && !stored.contains(&hook.url),
        "{stored}"
    );
    // Delivered once: nothing more comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(hook.count(), 1);
}

#[tokio::test]
async fn a_receiver_that_fails_twice_gets_the_body_on_the_third_try() {
    let app = spawn_app(Options::default().allow_private_webhooks()).await;
    let secret = secret(&app);
    let hook = receiver(Behaviour::FailFirst(2)).await;
    let url = app.submit(with_webhook(small(8, 1, 2), &hook.url)).await;
    let got = hook.wait_for(3).await;
    let bodies: Vec<Value> = got.iter().map(|d| verify(&secret, d)).collect();
    // The same message each time, under the same id.
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.headers["webhook-id"].clone())
        .collect();
    assert!(ids.iter().all(|i| *i == ids[0]));
    assert_eq!(bodies[2], app.get(&url).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hook.count(), 3, "delivered, so not sent again");
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_no_other_delivery() {
    let app = spawn_app(Options::default().allow_private_webhooks()).await;
    let secret = secret(&app);
    let hanging = receiver(Behaviour::Hang).await;
    let prompt = receiver(Behaviour::FailFirst(0)).await;
    // Several tasks whose receiver never answers, then one whose receiver does.
    for seed in 0..4 {
        app.submit(with_webhook(small(seed, 1, 2), &hanging.url))
            .await;
    }
    hanging.wait_for(4).await;
    let second = app.submit(with_webhook(small(9, 1, 2), &prompt.url)).await;
    let got = prompt.wait_for(1).await;
    assert_eq!(verify(&secret, &got[0]), app.get(&second).await);
    // The other was delivered while all four hung (an attempt is cut off after 10 s, and
    // a retry would show here as a fifth request).
    assert_eq!(hanging.count(), 4);
}

#[tokio::test]
async fn redirects_are_followed_with_the_same_signed_post() {
    let app = spawn_app(Options::default().allow_private_webhooks()).await;
    let secret = secret(&app);
    let target = receiver(Behaviour::FailFirst(0)).await;
    let redirecting = receiver(Behaviour::RedirectTo(target.url.clone())).await;
    let url = app
        .submit(with_webhook(small(4, 1, 2), &redirecting.url))
        .await;
    let got = target.wait_for(1).await;
    assert_eq!(verify(&secret, &got[0]), app.get(&url).await);
    let first = redirecting.wait_for(1).await;
    assert_eq!(first[0].body, got[0].body);
}

#[tokio::test]
async fn a_delivery_to_a_private_address_is_never_attempted() {
    // Stored by another way than the API (which refuses it): the delivery checks again.
    let app = spawn_app(Options::idle()).await;
    secret(&app);
    let hook = receiver(Behaviour::FailFirst(0)).await;
    let org = acme(&app);
    for url in [hook.url.clone(), hook.url.replace("127.0.0.1", "localhost")] {
        let task = NewTask {
            org,
            request_json: "{}",
            needs: sie_vocab::TaskNeeds {
                pipeline: sie_vocab::Pipeline::Text2Image,
                scheduler: None,
                safety_checker: false,
            },
            idempotency: None,
            webhook_url: Some(&url),
        };
        let id = app
            .store
            .enqueue(&task, QueueCaps::default(), Timestamp::now())
            .unwrap()
            .id;
        app.store.cancel(org, id, Timestamp::now()).unwrap();
    }
    // Given up, not retried: nothing is due even a day from now.
    let deadline = Instant::now() + Duration::from_secs(60);
    let far = Timestamp::now().plus(Duration::from_secs(2 * 86_400));
    loop {
        let due = app
            .store
            .claim_deliveries(10, Duration::from_secs(1), far)
            .unwrap();
        if due.is_empty() {
            break;
        }
        // Claimed here; let the claim lapse for the server's own deliverer.
        for d in &due {
            let retry = sie_store::DeliveryOutcome::Retry {
                at: Timestamp::now(),
                error: "test".into(),
            };
            app.store
                .finish_delivery(d, &retry, Timestamp::now())
                .unwrap();
        }
        assert!(Instant::now() < deadline, "still due: {due:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hook.count(), 0);
}

#[tokio::test]
async fn a_cancelled_task_sends_its_failure() {
    let app = spawn_app(Options::idle().allow_private_webhooks()).await;
    let secret = secret(&app);
    let hook = receiver(Behaviour::FailFirst(0)).await;
    let url = app.submit(with_webhook(small(3, 1, 2), &hook.url)).await;
    let (status, _) = app.delete(&url).await;
    assert_eq!(status, 200);
    let got = hook.wait_for(1).await;
    let sent = verify(&secret, &got[0]);
    assert_eq!(sent["status"], "failed");
    assert_eq!(sent["error"]["code"], "cancelled");
}

#[tokio::test]
async fn private_addresses_are_refused_at_post_without_the_operators_flag() {
    let app = spawn_app(Options::idle()).await;
    secret(&app);
    let hook = receiver(Behaviour::FailFirst(0)).await;
    let port = hook
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    for target in [
        hook.url.clone(),
        format!("http://localhost:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        format!("http://0x7f.1:{port}/hook"),
        format!("http://127.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "http://[::1]/hook".to_owned(),
        "http://[::ffff:127.0.0.1]/hook".to_owned(),
    ] {
        let body = with_webhook(small(1, 1, 2), &target).to_string();
        let (status, v) = problem(app.post(&body).await).await;
        assert_eq!(status, 400, "{target}: {v}");
        assert_eq!(v["field"], "callInputs.webhook_url", "{v}");
        let detail = v["detail"].as_str().unwrap();
        assert!(detail.contains("--allow-private-webhooks"), "{detail}");
    }
    // Nothing was queued, so nothing was sent.
    let list: Value = app.get(&app.base).await;
    assert_eq!(list["total"], 0, "{list}");
    assert_eq!(hook.count(), 0);
}

#[tokio::test]
async fn webhook_urls_are_checked_before_anything_is_queued() {
    let app = spawn_app(Options::idle().allow_private_webhooks()).await;
    // No signing secret yet: refused, saying how to make one.
    let body = with_webhook(small(1, 1, 2), "http://127.0.0.1:9/hook").to_string();
    let (status, v) = problem(app.post(&body).await).await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], "callInputs.webhook_url");
    assert!(v["detail"]
        .as_str()
        .unwrap()
        .contains("sie admin org webhook-secret acme"));
    secret(&app);
    for (url, says) in [
        ("ftp://example.com/hook", "scheme"),
        ("/hook", "not a URL"),
        ("http://example.com/hook#part", "fragment"),
    ] {
        let body = with_webhook(small(1, 1, 2), url).to_string();
        let (status, v) = problem(app.post(&body).await).await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(v["field"], "callInputs.webhook_url");
        assert!(v["detail"].as_str().unwrap().contains(says), "{v}");
    }
    let (status, v) = read(app.post(&body).await).await;
    assert_eq!(status, 202, "{v}");
}
