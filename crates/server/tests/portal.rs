//! The portal over HTTP, as a browser speaks to it (forms, a session cookie, redirects not
//! followed so the cookie is seen): a new user's way from nothing to a working API key,
//! and the refusals that keep one user out of another's things.

mod common;

use common::{small, spawn_app, Options, TestApp};
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER, SET_COOKIE};
use serde_json::Value;

/// A browser: the app, a client that does not follow redirects, and its session cookie.
struct Browser<'a> {
    app: &'a TestApp,
    client: reqwest::Client,
    cookie: Option<String>,
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        Browser {
            app,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let mut r = self.client.get(format!("{}{path}", self.app.root));
        if let Some(c) = &self.cookie {
            r = r.header(COOKIE, c);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Posts a form; keeps a session cookie it sets.
    async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String, reqwest::header::HeaderMap) {
        let mut r = self
            .client
            .post(format!("{}{path}", self.app.root))
            .form(form);
        if let Some(c) = &self.cookie {
            r = r.header(COOKIE, c);
        }
        let r = r.send().await.unwrap();
        let headers = r.headers().clone();
        if let Some(set) = headers.get(SET_COOKIE) {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        (r.status().as_u16(), r.text().await.unwrap(), headers)
    }

    async fn sign_up_and_log_in(&mut self, email: &str, password: &str) {
        let (s, body, _) = self
            .post(
                "/portal/signup",
                &[("email", email), ("password", password)],
            )
            .await;
        assert_eq!(s, 200, "{body}");
        let (s, body, headers) = self
            .post("/portal/login", &[("email", email), ("password", password)])
            .await;
        assert_eq!(s, 303, "{body}");
        assert_eq!(headers[LOCATION], "/portal");
        let set = headers[SET_COOKIE].to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax"),
            "{set}"
        );
        assert!(self.cookie.is_some());
    }

    /// The CSRF token of the page at `path`.
    async fn csrf(&self, path: &str) -> String {
        let (_, body) = self.get(path).await;
        let at = body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// Polls a task's result URL with `auth` (a header) until it is no longer pending.
async fn finished(url: &str, auth: (&str, &str)) -> Value {
    loop {
        let v: Value = reqwest::Client::new()
            .get(url)
            .header(auth.0, auth.1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["status"] != "pending" {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

const PASSWORD: &str = "correct horse battery staple";

#[tokio::test(flavor = "multi_thread")]
async fn a_new_user_signs_up_makes_a_key_and_an_organization_and_the_key_works() {
    let app = spawn_app(Options::default().without_checker()).await;
    let mut b = Browser::new(&app);
    let (s, body) = b.get("/portal").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("Sign up") && body.contains("Log in"),
        "{body}"
    );
    b.sign_up_and_log_in("ada@example.com", PASSWORD).await;

    let csrf = b.csrf("/portal/orgs").await;
    let (s, _, headers) = b
        .post("/portal/orgs", &[("csrf", &csrf), ("name", "ada-labs")])
        .await;
    assert_eq!(s, 303);
    assert_eq!(headers[LOCATION], "/portal/orgs/ada-labs");
    let (s, page) = b.get("/portal/orgs/ada-labs").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("Add billing information") && page.contains("waiting"),
        "{page}"
    );

    let csrf = b.csrf("/portal/keys").await;
    let (s, page, _) = b.post("/portal/keys", &[("csrf", &csrf)]).await;
    assert_eq!(s, 200);
    let needle = "id=\"key-value\" type=\"text\" readonly value=\"";
    let at = page.find(needle).unwrap();
    let rest = &page[at + needle.len()..];
    let key = rest[..rest.find('"').unwrap()].to_owned();
    assert!(key.starts_with("sie_"), "{key}");
    assert!(page.contains("curl -s -X POST"), "{page}");

    // Not approved yet: the API answers 403.
    let org_base = app.base.replace("/acme/", "/ada-labs/");
    let post = |key: String| {
        let url = org_base.clone();
        async move {
            reqwest::Client::new()
                .post(&url)
                .header("Salad-Api-Key", key)
                .json(&small(1, 1, 2))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(post(key.clone()).await.status(), 403);

    let csrf = b.csrf("/portal/orgs/ada-labs").await;
    let (s, page, _) = b
        .post(
            "/portal/orgs/ada-labs/billing",
            &[
                ("csrf", &csrf),
                ("name", "Ada Labs"),
                ("email", "billing@ada.example"),
                ("address", "1 Analytical Way\nLondon"),
                ("country", "gb"),
                ("tax_id", ""),
            ],
        )
        .await;
    assert_eq!(s, 200, "{page}");
    assert!(page.contains("approved"), "{page}");

    let r = post(key.clone()).await;
    assert_eq!(r.status(), 202);
    let url = r.json::<Value>().await.unwrap()["resultUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = finished(&url, ("Salad-Api-Key", &key)).await;
    assert_eq!(done["status"], "success", "{done}");

    // The key shows its last use; logging out ends the session.
    let (_, keys) = b.get("/portal/keys").await;
    assert!(!keys.contains(">never<"), "{keys}");
    let csrf = b.csrf("/portal/keys").await;
    let (s, _, _) = b.post("/portal/logout", &[("csrf", &csrf)]).await;
    assert_eq!(s, 303);
    assert_eq!(b.cookie, None);
    let (s, _) = b.get("/portal/keys").await;
    assert_eq!(s, 303, "signed-out pages send to the log-in page");
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_without_their_csrf_token_and_other_accounts_things_are_refused() {
    let app = spawn_app(Options::idle()).await;
    let mut ada = Browser::new(&app);
    ada.sign_up_and_log_in("ada@example.com", PASSWORD).await;
    let mut bob = Browser::new(&app);
    bob.sign_up_and_log_in("bob@example.com", PASSWORD).await;
    let csrf = bob.csrf("/portal/orgs").await;
    bob.post("/portal/orgs", &[("csrf", &csrf), ("name", "bobs")])
        .await;

    for (path, form) in [
        ("/portal/keys", vec![]),
        ("/portal/keys", vec![("csrf", "forged")]),
        ("/portal/orgs", vec![("name", "x")]),
    ] {
        let (s, _, _) = ada.post(path, &form).await;
        assert_eq!(s, 403, "{path} {form:?}");
    }
    // Bob's organization does not exist, as far as Ada can tell.
    let (s, _) = ada.get("/portal/orgs/bobs").await;
    assert_eq!(s, 404);
    let (s, _) = ada.get("/portal/orgs/nobody-has-this").await;
    assert_eq!(s, 404);
    let csrf = ada.csrf("/portal/orgs").await;
    let (s, _, _) = ada
        .post(
            "/portal/orgs/bobs/billing",
            &[
                ("csrf", &csrf),
                ("name", "x"),
                ("email", "x@y.zz"),
                ("address", "x"),
                ("country", "DE"),
            ],
        )
        .await;
    assert_eq!(s, 404);
    // Nor may she revoke his keys.
    let csrf_bob = bob.csrf("/portal/keys").await;
    let (_, page, _) = bob.post("/portal/keys", &[("csrf", &csrf_bob)]).await;
    let prefix = page
        .split("<code>")
        .nth(1)
        .unwrap()
        .split("</code>")
        .next()
        .unwrap()
        .to_owned();
    let (s, _, _) = ada
        .post(&format!("/portal/keys/{prefix}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_refusals_reveal_nothing_and_are_throttled() {
    let app = spawn_app(Options::idle()).await;
    let mut b = Browser::new(&app);
    b.sign_up_and_log_in("ada@example.com", PASSWORD).await;
    let mut stranger = Browser::new(&app);

    // A wrong password and an unknown email get the same answer, to the byte.
    let (s1, wrong, _) = stranger
        .post(
            "/portal/login",
            &[
                ("email", "ada@example.com"),
                ("password", "not the password"),
            ],
        )
        .await;
    let (s2, unknown, _) = stranger
        .post(
            "/portal/login",
            &[
                ("email", "eve@example.com"),
                ("password", "not the password"),
            ],
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong, unknown);
    assert!(wrong.contains("Wrong email or password"), "{wrong}");
    // Signing up with a taken email looks like signing up.
    let (s, taken, _) = stranger
        .post(
            "/portal/signup",
            &[("email", "ada@example.com"), ("password", PASSWORD)],
        )
        .await;
    let (s_new, fresh, _) = stranger
        .post(
            "/portal/signup",
            &[("email", "new@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!((s, s_new), (200, 200));
    assert_eq!(
        taken.replace("ada@example.com", "E"),
        fresh.replace("new@example.com", "E")
    );

    // A weak password is refused with the reason.
    let (s, page, _) = stranger
        .post(
            "/portal/signup",
            &[("email", "weak@example.com"), ("password", "password1234")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(page.contains("most common passwords"), "{page}");
    let (s, page, _) = stranger
        .post(
            "/portal/signup",
            &[("email", "weak@example.com"), ("password", "short")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(page.contains("too short"), "{page}");

    // Five failures for an account, then 429 with Retry-After, even with the right password.
    for _ in 0..4 {
        stranger
            .post(
                "/portal/login",
                &[("email", "ada@example.com"), ("password", "nope nope nope")],
            )
            .await;
    }
    let (s, _, headers) = stranger
        .post(
            "/portal/login",
            &[("email", "ada@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(s, 429);
    let wait: u64 = headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(wait > 0);

    // A log-in or sign-up a browser marks as sent from another site is refused (login CSRF).
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        for path in ["/portal/login", "/portal/signup"] {
            let r = reqwest::Client::new()
                .post(format!("{}{path}", app.root))
                .header(name, value)
                .form(&[("email", "new2@example.com"), ("password", PASSWORD)])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{path} with {name}: {value}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn markup_a_user_types_is_shown_as_text() {
    let app = spawn_app(Options::idle()).await;
    let mut b = Browser::new(&app);
    b.sign_up_and_log_in("ada@example.com", PASSWORD).await;
    let csrf = b.csrf("/portal/orgs").await;
    let (s, page, _) = b
        .post(
            "/portal/orgs",
            &[("csrf", &csrf), ("name", "<script>alert(1)</script>")],
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
            || page.contains("&lt;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    // A billing name with markup is stored and shown escaped.
    let (_, _, _) = b
        .post("/portal/orgs", &[("csrf", &csrf), ("name", "ada")])
        .await;
    let (s, page, _) = b
        .post(
            "/portal/orgs/ada/billing",
            &[
                ("csrf", &csrf),
                ("name", "<b>Ada</b>"),
                ("email", "b@ada.example"),
                ("address", "x"),
                ("country", "DE"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains("&lt;b&gt;Ada&lt;&#x2f;b&gt;") && !page.contains("<b>Ada</b>"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_password_ends_the_session() {
    let app = spawn_app(Options::idle()).await;
    let mut b = Browser::new(&app);
    b.sign_up_and_log_in("ada@example.com", PASSWORD).await;
    let csrf = b.csrf("/portal/password").await;
    let (s, page, _) = b
        .post(
            "/portal/password",
            &[
                ("csrf", &csrf),
                ("current", "wrong"),
                ("password", "another long passphrase"),
            ],
        )
        .await;
    assert_eq!(s, 401, "{page}");
    let (s, page, _) = b
        .post(
            "/portal/password",
            &[
                ("csrf", &csrf),
                ("current", PASSWORD),
                ("password", "another long passphrase"),
            ],
        )
        .await;
    assert_eq!(s, 200, "{page}");
    let (s, _) = b.get("/portal/keys").await;
    assert_eq!(s, 303, "the session ended with the old password");
    b.cookie = None;
    let (s, _, _) = b
        .post(
            "/portal/login",
            &[
                ("email", "ada@example.com"),
                ("password", "another long passphrase"),
            ],
        )
        .await;
    assert_eq!(s, 303);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_playground_runs_through_the_api_with_the_session_and_usage_shows_it() {
    let app = spawn_app(Options::default().without_checker()).await;
    let mut b = Browser::new(&app);
    b.sign_up_and_log_in("ada@example.com", PASSWORD).await;
    let csrf = b.csrf("/portal/orgs").await;
    b.post("/portal/orgs", &[("csrf", &csrf), ("name", "ada")])
        .await;
    b.post(
        "/portal/orgs/ada/billing",
        &[
            ("csrf", &csrf),
            ("name", "Ada"),
            ("email", "b@ada.example"),
            ("address", "x"),
            ("country", "DE"),
        ],
    )
    .await;
    let (s, page) = b.get("/portal/orgs/ada/playground").await;
    assert_eq!(s, 200);
    assert!(
        page.contains("Generate") && page.contains("<label for=\"prompt\">Prompt</label>"),
        "{page}"
    );

    let api = app.base.replace("/acme/", "/ada/");
    let prompt = "<img src=x onerror=alert(1)> a salad";
    let mut body = small(3, 1, 2);
    body["modelInputs"]["prompt"] = serde_json::json!(prompt);
    let cookie = b.cookie.clone().unwrap();
    let client = reqwest::Client::new();
    // The session alone is not enough to POST: the CSRF header must come with it.
    let r = client
        .post(&api)
        .header(COOKIE, &cookie)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(&api)
        .header(COOKIE, &cookie)
        .header("X-CSRF-Token", &csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let url = r.json::<Value>().await.unwrap()["resultUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = finished(&url, ("cookie", &cookie)).await;
    assert_eq!(done["status"], "success", "{done}");
    // Another organization is not reachable with the session either.
    let r = client
        .get(&app.base)
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let (s, usage) = b.get("/portal/orgs/ada/usage").await;
    assert_eq!(s, 200);
    assert!(
        usage.contains("<svg") && usage.contains("succeeded"),
        "{usage}"
    );
    assert!(usage.contains("src=\"data:image"), "a thumbnail");
    assert!(
        usage.contains("&lt;img src=x onerror=alert(1)&gt; a salad"),
        "{usage}"
    );
    assert!(!usage.contains("<img src=x"), "the prompt is shown as text");
}
