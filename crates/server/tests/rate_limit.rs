//! Rate limits per API key and per organization (SPEC 1.4's 429 "over a rate limit"): past
//! the burst a key is answered 429 `rate_limited` with `Retry-After` and the `RateLimit-*`
//! headers, before its body is read; another key is not; after the wait it passes again.

mod common;

use common::{problem, read, spawn_app, tenant, Options, TestApp};
use sie_server::Rate;
use sie_store::Accounts;

/// One request a second per key, three at once; organizations unlimited.
fn strict() -> Options {
    Options::idle().rate_limits(
        Rate {
            per_second: 1,
            burst: 3,
        },
        Rate::OFF,
    )
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

async fn list(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .get(&app.base)
        .header("Salad-Api-Key", key)
        .send()
        .await
        .unwrap()
}

/// Sends `send()` until it is refused (within 50 tries: a burst of 3 refilled at one a
/// second would need 50 requests taking over a second each to never run out); the refusal
/// and how many passed before it.
async fn until_refused<F, Fut>(mut send: F) -> (reqwest::Response, usize)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    for i in 0..50 {
        let r = send(i).await;
        if r.status() == 429 {
            return (r, i);
        }
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "ratelimit-limit"), Some(3));
        assert!(header(&r, "ratelimit-remaining").unwrap() <= 2);
        assert!(header(&r, "ratelimit-reset").is_some());
    }
    panic!("50 requests at once were never refused");
}

#[tokio::test]
async fn past_the_burst_a_key_is_refused_with_retry_after_and_another_key_is_not() {
    let app = spawn_app(strict()).await;
    let (r, passed) = until_refused(|_| list(&app, &app.key)).await;
    assert!(passed >= 3, "only {passed} passed before the refusal");
    let retry_after = header(&r, "retry-after").expect("Retry-After");
    assert!(retry_after >= 1);
    assert_eq!(header(&r, "ratelimit-limit"), Some(3));
    assert_eq!(header(&r, "ratelimit-remaining"), Some(0));
    assert!(header(&r, "ratelimit-reset").unwrap() >= 1);
    let (status, v) = problem(r).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );

    // Refused before the body is looked at: a body that is not even JSON gets the 429, not
    // the 415 it gets whenever a token has come back meanwhile.
    let mut refused = None;
    for _ in 0..50 {
        let r = app.post("not json").await;
        match r.status().as_u16() {
            429 => {
                refused = Some(r);
                break;
            }
            status => assert_eq!(status, 415),
        }
    }
    let r = refused.expect("50 posts in a row were never refused");
    assert!(header(&r, "retry-after").is_some());

    // Another key of another account is not affected.
    let other = tenant(app.store.as_ref(), "globex");
    let r = app
        .client
        .get(app.base.replace("/acme/", "/globex/"))
        .header("Salad-Api-Key", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(2));

    // After the wait the first key passes again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    let r = list(&app, &app.key).await;
    assert_eq!(r.status(), 200, "{:?}", read(r).await);
}

#[tokio::test]
async fn an_organization_limit_holds_across_its_keys() {
    let app = spawn_app(Options::idle().rate_limits(
        Rate::OFF,
        Rate {
            per_second: 1,
            burst: 3,
        },
    ))
    .await;
    // A second key of the same account, for the same organization.
    let account = app
        .store
        .find_account(&sie_store::AccountName::parse("acme-owner").unwrap())
        .unwrap()
        .unwrap();
    let second = app
        .store
        .create_api_key(account, sie_store::Timestamp::now())
        .unwrap()
        .expose_key()
        .to_owned();
    // Taking turns, the two keys run out together: the organization's limit, not a key's
    // (those are off).
    let keys = [app.key.clone(), second];
    let (r, passed) = until_refused(|i| list(&app, &keys[i % 2])).await;
    assert!(passed >= 3, "only {passed} passed before the refusal");
    let (status, v) = problem(r).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    assert!(
        v["detail"].as_str().unwrap().contains("organization"),
        "{v}"
    );
}

#[tokio::test]
async fn refused_callers_and_unlimited_routes_take_no_tokens() {
    let app = spawn_app(strict()).await;
    // Unknown keys are refused before any bucket is touched, and carry no RateLimit header.
    for _ in 0..5 {
        let r = list(&app, "sk_not_a_key").await;
        assert_eq!(r.status(), 401);
        assert_eq!(header(&r, "ratelimit-limit"), None);
    }
    // Health checks take no key and are not limited.
    for _ in 0..5 {
        let r = app
            .client
            .get(format!("{}/healthz", app.root))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = list(&app, &app.key).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-remaining"), Some(2));
}
