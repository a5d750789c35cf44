//! The portal at `/portal`: the seed's "Getting ready" in a browser. A person signs up
//! with an email and a password, creates API keys, creates organizations and adds billing
//! information (approved at once unless the operator chose manual approval).
//!
//! Pages are rendered on the server from the templates in `crates/server/templates/`
//! (minijinja, HTML-escaped by default, so what a user typed is shown as text). Every
//! state-changing form carries the session's CSRF token (`session.rs`); log-in attempts
//! are throttled (`throttle.rs`); passwords are hashed with argon2id (`password.rs`), off
//! the async runtime. No page says whether an email is registered: a sign-up with a taken
//! email ends like one that worked (the person is asked to log in), and a wrong password
//! is answered exactly as an unknown email.

mod chart;
mod password;
pub(crate) mod session;
mod throttle;

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use sie_store::{BillingInfo, Email, KeyPrefix, OrgAccess, OrgName, StoreError, Timestamp};

use crate::{ApiError, AppState, ClientAddress, BASE};
use session::{MaybeUser, User};
pub use throttle::Throttle;

/// What an operator decides about the portal (`--signup`, `--approval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortalSettings {
    /// Whether anyone may sign up.
    pub signup_open: bool,
    /// Whether billing information approves an organization at once (else `sie admin org
    /// approve` does).
    pub auto_approval: bool,
}

impl Default for PortalSettings {
    fn default() -> Self {
        PortalSettings {
            signup_open: true,
            auto_approval: true,
        }
    }
}

/// A new random password for `sie admin account reset-password`, and its hash: 20
/// characters of base64url (120 bits).
pub fn reset_password() -> Result<(String, String), String> {
    let token = session::random_token().map_err(|e| format!("{e:?}"))?;
    let password: String = token.chars().take(20).collect();
    let hash = password::hash(&password)?;
    Ok((password, hash))
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/portal") }))
        .route("/portal", get(home))
        .route("/portal/signup", get(signup_page).post(signup))
        .route("/portal/login", get(login_page).post(login))
        .route("/portal/logout", post(logout))
        .route("/portal/password", get(password_page).post(change_password))
        .route("/portal/keys", get(keys_page).post(create_key))
        .route("/portal/keys/{prefix}/revoke", post(revoke_key))
        .route("/portal/orgs", get(orgs_page).post(create_org))
        .route("/portal/orgs/{org}", get(org_page))
        .route("/portal/orgs/{org}/billing", post(add_billing))
        .route("/portal/orgs/{org}/playground", get(playground_page))
        .route("/portal/orgs/{org}/usage", get(usage_page))
}

fn templates() -> &'static minijinja::Environment<'static> {
    static ENV: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = minijinja::Environment::new();
        for (name, source) in [
            ("base.html", include_str!("../../templates/base.html")),
            ("home.html", include_str!("../../templates/home.html")),
            ("signup.html", include_str!("../../templates/signup.html")),
            ("login.html", include_str!("../../templates/login.html")),
            (
                "password.html",
                include_str!("../../templates/password.html"),
            ),
            ("keys.html", include_str!("../../templates/keys.html")),
            ("orgs.html", include_str!("../../templates/orgs.html")),
            ("org.html", include_str!("../../templates/org.html")),
            (
                "playground.html",
                include_str!("../../templates/playground.html"),
            ),
            ("usage.html", include_str!("../../templates/usage.html")),
        ] {
            env.add_template(name, source)
                .expect("the portal's templates parse");
        }
        env
    })
}

/// A page: `template` rendered with `context` (plus the signed-in user), with `status`.
fn page(status: StatusCode, template: &str, user: Option<&User>, mut context: Value) -> Response {
    if let (Some(u), Value::Object(map)) = (user, &mut context) {
        map.insert(
            "user".into(),
            json!({"email": u.email.as_str(), "csrf": u.csrf}),
        );
    }
    let rendered = templates()
        .get_template(template)
        .and_then(|t| t.render(&context));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, template, "a portal page failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<p>internal error</p>".to_owned()),
            )
                .into_response()
        }
    }
}

/// Signed-in pages send everyone else to the log-in page.
fn to_login() -> Response {
    Redirect::to("/portal/login").into_response()
}

/// The signed-in user of a page; anyone else is sent to the log-in page.
struct SignedIn(User);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match session::user_of(state, &parts.headers).await {
            Ok(Some(user)) => Ok(SignedIn(user)),
            Ok(None) => Err(to_login()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A form a signed-in user posted with the session's CSRF token (field `csrf`): what every
/// state-changing page takes. Without a session, the log-in page; without the token, 403.
struct Posted<T> {
    user: User,
    form: T,
}

#[derive(Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    fields: T,
}

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for Posted<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        let SignedIn(user) = SignedIn::from_request_parts(&mut parts, state).await?;
        let req = Request::from_parts(parts, body);
        let Form(posted) = Form::<WithCsrf<T>>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        if !session::same_token(&user.csrf, &posted.csrf) {
            return Err(forbidden(&user));
        }
        Ok(Posted {
            user,
            form: posted.fields,
        })
    }
}

/// A form without this session's CSRF token.
fn forbidden(user: &User) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "home.html",
        Some(user),
        json!({"error": "This form has expired or did not come from this site; reload the page and try again."}),
    )
}

/// Whether a form post came from this site. Log-in and sign-up have no session to carry a
/// CSRF token, so a browser's `Sec-Fetch-Site` (or, without it, `Origin`) must not say
/// another site: otherwise a page elsewhere could log a visitor into its own account.
/// Clients that send neither (scripts, old browsers) are let through.
fn same_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match (text("origin"), text("host")) {
        (Some("null"), _) => false,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        _ => true,
    }
}

fn cross_site() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "home.html",
        None,
        json!({"error": "This form was sent from another site; open the portal and try again."}),
    )
}

/// The client a log-in is throttled by: behind `--trust-proxy`, the address the proxy
/// appended last to `X-Forwarded-For`; otherwise the connection's peer.
fn client_address(
    state: &AppState,
    headers: &HeaderMap,
    peer: Option<ClientAddress>,
) -> Option<IpAddr> {
    if matches!(state.settings.urls, crate::PublicUrls::TrustProxy) {
        // The last entry only: the ones before it are whatever the client sent.
        let last = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if last.is_some() {
            return last;
        }
    }
    peer.map(|ClientAddress(ip)| ip)
}

/// The absolute URL of `org`'s SIE endpoint, as this request reaches the server.
fn endpoint(state: &AppState, headers: &HeaderMap, org: &str) -> String {
    let root = state
        .settings
        .urls
        .absolute(headers, "/")
        .unwrap_or_default();
    format!(
        "{}{}",
        root.trim_end_matches('/'),
        BASE.replace("{org}", org)
    )
}

/// A redirect to the portal's home that sets (or, with `None`, clears) the session cookie.
fn home_with_cookie(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> Response {
    let mut response = Redirect::to("/portal").into_response();
    let cookie = session::set_cookie(token, secure(state, headers));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Whether cookies must be `Secure`: the portal is reached over https.
fn secure(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .settings
        .urls
        .absolute(headers, "/")
        .is_ok_and(|url| url.starts_with("https://"))
}

/// Runs password hashing or checking (argon2id: tens of milliseconds and 19 MiB each) off
/// the async runtime, as many at once as the machine has cores, so a flood of sign-ups or
/// log-ins queues instead of taking every thread and gigabytes.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    static SLOTS: OnceLock<std::sync::Arc<tokio::sync::Semaphore>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        std::sync::Arc::new(tokio::sync::Semaphore::new(cores))
    });
    let _permit = slots
        .acquire()
        .await
        .map_err(|e| ApiError::Internal(format!("the password slots closed: {e}")))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("a blocking task failed: {e}")))
}
fn when(t: Option<Timestamp>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let secs = t.as_millis() / 1000;
            let days = secs.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            let rem = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
                rem / 3600,
                rem % 3600 / 60
            )
        }
    }
}

/// Days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

async fn home(MaybeUser(user): MaybeUser) -> Response {
    page(StatusCode::OK, "home.html", user.as_ref(), json!({}))
}

#[derive(Deserialize)]
struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

async fn signup_page(State(state): State<AppState>, MaybeUser(user): MaybeUser) -> Response {
    let closed = !state.settings.portal.signup_open;
    page(
        StatusCode::OK,
        "signup.html",
        user.as_ref(),
        json!({"closed": closed}),
    )
}

async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<Credentials>,
) -> Result<Response, ApiError> {
    if !state.settings.portal.signup_open {
        return Ok(page(
            StatusCode::FORBIDDEN,
            "signup.html",
            None,
            json!({"closed": true}),
        ));
    }
    if !same_site(&headers) {
        return Ok(cross_site());
    }
    let again = |error: String| {
        page(
            StatusCode::BAD_REQUEST,
            "signup.html",
            None,
            json!({"error": error, "email": form.email}),
        )
    };
    let email = match Email::parse(&form.email) {
        Ok(e) => e,
        Err(e) => return Ok(again(format!("Email: {}.", e.accepted))),
    };
    if let Some(why) = password::weakness(&form.password, email.as_str()) {
        return Ok(again(why));
    }
    let plain = form.password.clone();
    let hash = blocking(move || password::hash(&plain))
        .await?
        .map_err(ApiError::Internal)?;
    let created = state
        .store(move |s| match s.sign_up(&email, &hash, Timestamp::now()) {
            Ok(_) | Err(StoreError::EmailTaken(_)) => Ok(()),
            Err(e) => Err(e),
        })
        .await;
    created?;
    // The same answer whether the email was new or taken: no page says which.
    Ok(page(
        StatusCode::OK,
        "login.html",
        None,
        json!({"notice": "Your account is ready: log in with your email and password.", "email": form.email}),
    ))
}

async fn login_page(MaybeUser(user): MaybeUser) -> Response {
    page(StatusCode::OK, "login.html", user.as_ref(), json!({}))
}

async fn login(
    State(state): State<AppState>,
    client: Option<Extension<ClientAddress>>,
    headers: HeaderMap,
    Form(form): Form<Credentials>,
) -> Result<Response, ApiError> {
    if !same_site(&headers) {
        return Ok(cross_site());
    }
    let email_key = throttle::email_key(&form.email);
    let address_key = client_address(&state, &headers, client.map(|Extension(c)| c))
        .and_then(throttle::address_key);
    let keys: Vec<&str> = std::iter::once(email_key.as_str())
        .chain(address_key.as_deref())
        .collect();
    if let Some(wait) = state.portal_throttle.wait(&keys, Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut response = page(
            StatusCode::TOO_MANY_REQUESTS,
            "login.html",
            None,
            json!({"error": format!("Too many log-in attempts; try again in {} minutes.", secs.div_ceil(60))}),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Ok(response);
    }
    // Counted before the (slow) check, so attempts made in parallel count too; a success
    // takes its count back.
    state.portal_throttle.failed(&keys, Instant::now());
    let login = match Email::parse(&form.email) {
        Ok(email) => state.store(move |s| s.login(&email)).await?,
        Err(_) => None,
    };
    let plain = form.password.clone();
    let account = blocking(move || match login {
        Some(l) if password::verify(&plain, &l.password_hash) => Some(l.account),
        // An unknown email costs the same time as a wrong password.
        Some(_) => None,
        None => {
            password::verify(&plain, password::decoy());
            None
        }
    })
    .await?;
    let Some(account) = account else {
        // Not even the typed email is echoed: the page is the same whichever was wrong.
        return Ok(page(
            StatusCode::UNAUTHORIZED,
            "login.html",
            None,
            json!({"error": "Wrong email or password."}),
        ));
    };
    state
        .portal_throttle
        .succeeded(&email_key, address_key.as_deref());
    let token = session::random_token()?;
    let csrf = session::random_token()?;
    let hash = session::token_hash(&token);
    state
        .store(move |s| s.create_session(account, &hash, &csrf, Timestamp::now()))
        .await?;
    Ok(home_with_cookie(&state, &headers, Some(&token)))
}

/// A form with nothing but its CSRF token (log out, create a key, revoke one).
#[derive(Deserialize)]
struct NoFields {}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Posted { user, form: _ }: Posted<NoFields>,
) -> Result<Response, ApiError> {
    let hash = user.token_hash.clone();
    state.store(move |s| s.end_session(&hash)).await?;
    Ok(home_with_cookie(&state, &headers, None))
}

async fn password_page(SignedIn(user): SignedIn) -> Response {
    page(StatusCode::OK, "password.html", Some(&user), json!({}))
}

#[derive(Deserialize)]
struct NewPassword {
    #[serde(default)]
    current: String,
    #[serde(default)]
    password: String,
}

async fn change_password(
    State(state): State<AppState>,
    Posted { user, form }: Posted<NewPassword>,
) -> Result<Response, ApiError> {
    let again = |status, error: String| {
        page(
            status,
            "password.html",
            Some(&user),
            json!({"error": error}),
        )
    };
    if let Some(why) = password::weakness(&form.password, user.email.as_str()) {
        return Ok(again(StatusCode::BAD_REQUEST, why));
    }
    // Guessing the current password here is throttled as log-ins are.
    let email_key = throttle::email_key(user.email.as_str());
    if state
        .portal_throttle
        .wait(&[email_key.as_str()], Instant::now())
        .is_some()
    {
        return Ok(again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many wrong passwords; try again later.".into(),
        ));
    }
    state
        .portal_throttle
        .failed(&[email_key.as_str()], Instant::now());
    let email = user.email.clone();
    let stored = state.store(move |s| s.login(&email)).await?;
    let (current, new) = (form.current.clone(), form.password.clone());
    let hashed = blocking(move || {
        let ok = stored.is_some_and(|l| password::verify(&current, &l.password_hash));
        ok.then(|| password::hash(&new))
    })
    .await?;
    let Some(hash) = hashed else {
        return Ok(again(
            StatusCode::UNAUTHORIZED,
            "Current password: wrong password.".into(),
        ));
    };
    let hash = hash.map_err(ApiError::Internal)?;
    let account = user.account;
    // A new password ends every session, this one included: log in again.
    state.store(move |s| s.set_password(account, &hash)).await?;
    Ok(page(
        StatusCode::OK,
        "login.html",
        None,
        json!({"notice": "Your password is changed: log in with the new one.", "email": user.email.as_str()}),
    ))
}

async fn keys_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
) -> Result<Response, ApiError> {
    keys_view(&state, &user, json!({})).await
}

async fn keys_view(state: &AppState, user: &User, mut extra: Value) -> Result<Response, ApiError> {
    let account = user.account;
    let keys = state.store(move |s| s.list_api_keys(account)).await?;
    let keys: Vec<Value> = keys
        .iter()
        .rev()
        .map(|k| {
            json!({
                "prefix": k.prefix.as_str(),
                "created": when(Some(k.created_at)),
                "last_used": when(k.last_used_at),
                "state": if k.revoked_at.is_some() { "revoked" } else { "live" },
                "live": k.revoked_at.is_none(),
            })
        })
        .collect();
    if let Value::Object(map) = &mut extra {
        map.insert("keys".into(), Value::Array(keys));
    }
    Ok(page(StatusCode::OK, "keys.html", Some(user), extra))
}

async fn create_key(
    State(state): State<AppState>,
    headers: HeaderMap,
    Posted { user, form: _ }: Posted<NoFields>,
) -> Result<Response, ApiError> {
    let account = user.account;
    let key = state
        .store(move |s| s.create_api_key(account, Timestamp::now()))
        .await?;
    let orgs = state.store(move |s| s.orgs_of(account)).await?;
    let org = orgs
        .iter()
        .find(|o| o.approved_at.is_some())
        .or(orgs.first())
        .map(|o| o.name.as_str().to_owned())
        .unwrap_or_else(|| "YOUR_ORG".into());
    let url = endpoint(&state, &headers, &org);
    let curl = format!(
        "curl -s -X POST {url} \\\n  -H 'Salad-Api-Key: {}' -H 'Content-Type: application/json' \\\n  -d '{}'",
        key.expose_key(),
        sie_api::SEED_EXAMPLE.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    keys_view(
        &state,
        &user,
        json!({"new_key": key.expose_key(), "curl": curl, "notice": "API key created."}),
    )
    .await
}

async fn revoke_key(
    State(state): State<AppState>,
    Path(prefix): Path<String>,
    Posted { user, form: _ }: Posted<NoFields>,
) -> Result<Response, ApiError> {
    let Ok(prefix) = KeyPrefix::parse(&prefix) else {
        return Ok(not_found(&user));
    };
    let account = user.account;
    let revoked = state
        .store(move |s| {
            // Only the account's own keys.
            let own = s.list_api_keys(account)?.iter().any(|k| k.prefix == prefix);
            if own {
                s.revoke_api_key(&prefix, Timestamp::now())
            } else {
                Ok(false)
            }
        })
        .await?;
    if !revoked {
        return Ok(not_found(&user));
    }
    keys_view(&state, &user, json!({"notice": "API key revoked."})).await
}

fn not_found(user: &User) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "home.html",
        Some(user),
        json!({"error": "Not found."}),
    )
}

fn org_state(approved: bool, billed: bool) -> &'static str {
    match (approved, billed) {
        (true, _) => "approved",
        (false, true) => "waiting for the operator's approval",
        (false, false) => "waiting for billing information",
    }
}

async fn orgs_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
) -> Result<Response, ApiError> {
    orgs_view(&state, &user, StatusCode::OK, json!({})).await
}

async fn orgs_view(
    state: &AppState,
    user: &User,
    status: StatusCode,
    mut extra: Value,
) -> Result<Response, ApiError> {
    let account = user.account;
    let orgs = state.store(move |s| s.orgs_of(account)).await?;
    let orgs: Vec<Value> = orgs
        .iter()
        .map(|o| json!({"name": o.name.as_str(), "members": o.members, "state": org_state(o.approved_at.is_some(), o.billing_note.is_some())}))
        .collect();
    if let Value::Object(map) = &mut extra {
        map.insert("orgs".into(), Value::Array(orgs));
    }
    Ok(page(status, "orgs.html", Some(user), extra))
}

#[derive(Deserialize)]
struct NewOrg {
    #[serde(default)]
    name: String,
}

async fn create_org(
    State(state): State<AppState>,
    Posted { user, form }: Posted<NewOrg>,
) -> Result<Response, ApiError> {
    let name = match OrgName::parse(form.name.trim()) {
        Ok(n) => n,
        Err(e) => {
            let error = format!(
                "Organization name: {:?} is not accepted; {}.",
                e.value, e.accepted
            );
            return orgs_view(
                &state,
                &user,
                StatusCode::BAD_REQUEST,
                json!({"error": error, "name": form.name}),
            )
            .await;
        }
    };
    let account = user.account;
    let created = {
        let name = name.clone();
        state
            .store(
                move |s| match s.create_org(&name, account, Timestamp::now()) {
                    Ok(_) => Ok(true),
                    Err(StoreError::OrgExists(_)) => Ok(false),
                    Err(e) => Err(e),
                },
            )
            .await?
    };
    if !created {
        let error = format!(
            "Organization name: {:?} is taken; pick another.",
            name.as_str()
        );
        return orgs_view(
            &state,
            &user,
            StatusCode::BAD_REQUEST,
            json!({"error": error, "name": form.name}),
        )
        .await;
    }
    Ok(Redirect::to(&format!("/portal/orgs/{}", name.as_str())).into_response())
}

/// The organization named in the path, if the user is a member (else `None`: 404, whether
/// it exists or not).
async fn member_org(
    state: &AppState,
    user: &User,
    org: &str,
) -> Result<Option<(OrgName, bool)>, ApiError> {
    let Ok(name) = OrgName::parse(org) else {
        return Ok(None);
    };
    let account = user.account;
    let lookup = name.clone();
    let access = state.store(move |s| s.org_access(account, &lookup)).await?;
    Ok(match access {
        OrgAccess::UnknownOrg | OrgAccess::NotMember => None,
        OrgAccess::NotApproved => Some((name, false)),
        OrgAccess::Allowed(_) => Some((name, true)),
    })
}

async fn org_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let Some((name, approved)) = member_org(&state, &user, &org).await? else {
        return Ok(not_found(&user));
    };
    org_view(
        &state,
        &user,
        &headers,
        &name,
        approved,
        StatusCode::OK,
        json!({"form": {}}),
    )
    .await
}

async fn org_view(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    name: &OrgName,
    approved: bool,
    status: StatusCode,
    mut extra: Value,
) -> Result<Response, ApiError> {
    let (lookup, lookup2) = (name.clone(), name.clone());
    let members = state.store(move |s| s.members(&lookup)).await?;
    let billing = state.store(move |s| s.billing(&lookup2)).await?;
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            let label = m.email.as_ref().map_or(m.name.as_str(), |e| e.as_str());
            json!({"label": label, "owner": m.owner})
        })
        .collect();
    let endpoint = endpoint(state, headers, name.as_str());
    if let Value::Object(map) = &mut extra {
        map.insert(
            "org".into(),
            json!({"name": name.as_str(), "state": org_state(approved, billing.is_some())}),
        );
        map.insert("members".into(), Value::Array(members));
        map.insert("endpoint".into(), json!(endpoint));
        map.insert(
            "billing".into(),
            billing.map_or(Value::Null, |b| {
                json!({"name": b.name(), "email": b.email().as_str(), "country": b.country(), "tax_id": b.tax_id()})
            }),
        );
    }
    Ok(page(status, "org.html", Some(user), extra))
}

#[derive(Deserialize, serde::Serialize)]
struct BillingForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    country: String,
    #[serde(default)]
    tax_id: String,
}

async fn add_billing(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Posted { user, form }: Posted<BillingForm>,
) -> Result<Response, ApiError> {
    let Some((name, approved)) = member_org(&state, &user, &org).await? else {
        return Ok(not_found(&user));
    };
    let billing = match BillingInfo::parse(
        &form.name,
        &form.email,
        &form.address,
        &form.country,
        Some(&form.tax_id),
    ) {
        Ok(b) => b,
        Err(e) => {
            let error = format!(
                "{}: {:?} is not accepted; {}.",
                capitalised(e.what),
                e.value,
                e.accepted
            );
            let extra = json!({"error": error, "form": form});
            return org_view(
                &state,
                &user,
                &headers,
                &name,
                approved,
                StatusCode::BAD_REQUEST,
                extra,
            )
            .await;
        }
    };
    let auto = state.settings.portal.auto_approval;
    let lookup = name.clone();
    state
        .store(move |s| s.set_billing(&lookup, &billing, auto, Timestamp::now()))
        .await?;
    let notice = if auto {
        "Billing information added: the organization is approved."
    } else {
        "Billing information added: the organization waits for the operator's approval."
    };
    org_view(
        &state,
        &user,
        &headers,
        &name,
        approved || auto,
        StatusCode::OK,
        json!({"notice": notice, "form": {}}),
    )
    .await
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

async fn playground_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let Some((name, approved)) = member_org(&state, &user, &org).await? else {
        return Ok(not_found(&user));
    };
    let api_url = endpoint(&state, &headers, name.as_str());
    let schedulers: Vec<&str> = sie_vocab::SchedulerKind::ALL
        .iter()
        .map(|s| s.as_str())
        .collect();
    Ok(page(
        StatusCode::OK,
        "playground.html",
        Some(&user),
        json!({"org": name.as_str(), "approved": approved, "api_url": api_url,
               "schedulers": schedulers, "size": 512}),
    ))
}

/// How many days the usage charts show.
const USAGE_DAYS: i64 = 14;
/// How many recent tasks the usage page lists.
const RECENT_TASKS: u32 = 10;

async fn usage_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(org): Path<String>,
) -> Result<Response, ApiError> {
    let Some((name, _)) = member_org(&state, &user, &org).await? else {
        return Ok(not_found(&user));
    };
    let now = Timestamp::now();
    let today = now.as_millis().div_euclid(86_400_000);
    let days: Vec<i64> = (today - USAGE_DAYS + 1..=today).collect();
    let (lookup, account) = (name.clone(), user.account);
    let (usage, recent) = state
        .store(move |s| {
            let id = s
                .orgs_of(account)?
                .into_iter()
                .find(|o| o.name == lookup)
                .map(|o| o.id)
                .ok_or_else(|| StoreError::UnknownOrg(lookup.as_str().to_owned()))?;
            let from = sie_store::UtcDay::from_days_since_epoch(today - USAGE_DAYS + 1);
            let to = sie_store::UtcDay::from_days_since_epoch(today);
            let usage = s.usage(id, from, to)?;
            let page = sie_store::PageRequest::new(1, RECENT_TASKS)?;
            let mut recent = Vec::new();
            for t in s.list(id, page, now)?.tasks {
                let request = s.request(id, t.id)?;
                let result = s.result(id, t.id)?;
                recent.push((t, request, result));
            }
            Ok((usage, recent))
        })
        .await?;
    let per_day = |f: &dyn Fn(&sie_store::DailyUsage) -> f64| -> Vec<(String, f64)> {
        days.iter()
            .map(|d| {
                let day = sie_store::UtcDay::from_days_since_epoch(*d);
                let v = usage.iter().find(|u| u.day == day).map_or(0.0, f);
                (day.to_string(), v)
            })
            .collect()
    };
    let images = per_day(&|u| u.images as f64);
    let gpu = per_day(&|u| u.gpu_seconds);
    let tasks: Vec<Value> = recent
        .into_iter()
        .map(|(t, request, result)| task_row(&t, request.as_deref(), result.as_deref()))
        .collect();
    Ok(page(
        StatusCode::OK,
        "usage.html",
        Some(&user),
        json!({
            "org": name.as_str(),
            "days": USAGE_DAYS,
            "images_chart": chart::bars("Images per day", &images, "images"),
            "gpu_chart": chart::bars("GPU-seconds per day", &gpu, "GPU-seconds"),
            "total_images": images.iter().map(|(_, v)| v).sum::<f64>(),
            "total_gpu": format!("{:.1}", gpu.iter().map(|(_, v)| v).sum::<f64>()),
            "tasks": tasks,
        }),
    ))
}

/// A recent task as the usage page lists it: status, the prompt and settings it asked
/// for, and its images as thumbnails (data URLs, shown small).
fn task_row(t: &sie_store::TaskSummary, request: Option<&str>, result: Option<&str>) -> Value {
    let request: Value = request
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let m = &request["modelInputs"];
    let c = &request["callInputs"];
    let details = format!(
        "{} · {} steps · {}x{} · seed {}",
        c["pipeline"]
            .as_str()
            .or(c["PIPELINE"].as_str())
            .unwrap_or("StableDiffusionPipeline"),
        m["num_inference_steps"],
        m["width"]
            .as_u64()
            .map_or("native".into(), |w| w.to_string()),
        m["height"]
            .as_u64()
            .map_or("native".into(), |h| h.to_string()),
        m["seed"],
    );
    let result: Value = result
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let mime = result["$meta"]["image_format"]
        .as_str()
        .unwrap_or("image/png")
        .to_owned();
    let thumbnails: Vec<String> = result["images"]
        .as_array()
        .map(|images| {
            images
                .iter()
                .filter_map(|i| i.as_str())
                // The first image only: a task's images can be several megabytes each.
                .take(1)
                .map(|b64| format!("data:{mime};base64,{b64}"))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "created": when(Some(t.created_at)),
        "status": t.state.as_str(),
        "error": t.error.as_ref().map(|e| e.message.clone()),
        "prompt": m["prompt"].as_str().unwrap_or_default(),
        "details": details,
        "thumbnails": thumbnails,
    })
}
