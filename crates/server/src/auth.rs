//! Who is calling, and may they use this organization (SPEC 2).
//!
//! A caller is an API key or, without one, a portal session in the same browser (its
//! POST and DELETE carrying the session's CSRF token), so the playground runs through the
//! very routes the API serves. A missing or unknown key is 401; an organization that does not exist or that the key's
//! account is not a member of is 404 (the two look alike, so names cannot be probed); an
//! organization without billing information is 403.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use sie_store::{OrgAccess, OrgId, OrgName, Timestamp};

use crate::{ApiError, AppState};

/// The organization a request acts on, checked from its headers and path alone, so a
/// route that takes it refuses a caller before reading any byte of the body.
pub struct Authorized {
    pub org: OrgId,
    /// The name as the path spells it.
    pub name: String,
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let name = path_param(parts, state, "org").await?;
        let (org, caller) = authorize(state, &parts.headers, &parts.method, &name).await?;
        // Once the caller and organization are known good (so only they get buckets), and
        // before any body byte is read.
        let slot = parts.extensions.get::<crate::rate_limit::Slot>();
        state.rate_limits.admit(&caller, org, slot)?;
        Ok(Authorized { org, name })
    }
}

/// One parameter of the route's path.
async fn path_param(parts: &mut Parts, state: &AppState, name: &str) -> Result<String, ApiError> {
    let Path(mut params) =
        Path::<HashMap<String, String>>::from_request_parts(parts, state).await?;
    params
        .remove(name)
        .ok_or_else(|| ApiError::Internal(format!("the route has no {{{name}}} in its path")))
}

pub const API_KEY_HEADER: &str = "Salad-Api-Key";

/// The one value of a header that says who is calling or where answers point (the key, a
/// worker token, `Host`). Sent twice it is refused, not resolved by taking one: a proxy
/// and the server could each take a different one, and the client meant neither.
pub(crate) fn one_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a HeaderValue>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    let more = values.count();
    if more > 0 {
        return Err(ApiError::client(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "Invalid header",
            format!("the {name} header is sent {} times; send it once", more + 1),
        ));
    }
    Ok(first)
}

/// Who is calling: an API key, or (for the portal's playground, in the same browser) a
/// portal session.
enum Caller {
    Key(String),
    Session(sie_store::AccountId),
}

/// The header the portal's scripts send with a session's state-changing API calls: the
/// session's CSRF token (a cross-site page cannot read it, nor set a custom header).
pub const CSRF_HEADER: &str = "X-CSRF-Token";

/// The caller from the key header or, without one, the session cookie (whose POST and
/// DELETE must carry the session's CSRF token).
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<Caller, ApiError> {
    let missing = || {
        ApiError::client(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "Missing API key",
            format!("send your API key in the {API_KEY_HEADER} header"),
        )
    };
    if let Some(key) = one_header(headers, API_KEY_HEADER)?
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
    {
        return Ok(Caller::Key(key.to_owned()));
    }
    let Some(user) = crate::portal::session::user_of(state, headers).await? else {
        return Err(missing());
    };
    if method != Method::GET && method != Method::HEAD {
        let sent = one_header(headers, CSRF_HEADER)?
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !crate::portal::session::same_token(&user.csrf, sent) {
            return Err(ApiError::client(
                StatusCode::FORBIDDEN,
                "invalid_csrf_token",
                "Invalid CSRF token",
                format!("a call with the portal's session must carry its {CSRF_HEADER} header"),
            ));
        }
    }
    Ok(Caller::Session(user.account))
}

/// Checks the caller and the organization; returns the organization to act on, and who
/// the caller is for the rate limits.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    org: &str,
) -> Result<(OrgId, crate::rate_limit::Caller), ApiError> {
    let caller = caller(state, headers, method).await?;
    let limited = match &caller {
        Caller::Key(key) => crate::rate_limit::Caller::key(key),
        Caller::Session(account) => crate::rate_limit::Caller::Session(*account),
    };
    // A name that cannot be one is echoed as far as InvalidValue keeps it.
    let unknown_org = |shown: &str| {
        ApiError::client(
            StatusCode::NOT_FOUND,
            "unknown_organization",
            "Unknown organization",
            format!("no organization named {shown:?} is visible to this API key"),
        )
    };
    let name = OrgName::parse(org).map_err(|e| unknown_org(&e.value))?;
    let access = state
        .store(move |s| {
            let account = match caller {
                Caller::Session(account) => account,
                Caller::Key(key) => match s.authenticate(&key, Timestamp::now())? {
                    Some(account) => account,
                    None => return Ok(None),
                },
            };
            s.org_access(account, &name).map(Some)
        })
        .await?;
    match access {
        None => Err(ApiError::client(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "Invalid API key",
            "this API key is unknown or revoked; create one with `sie admin key create`",
        )),
        Some(OrgAccess::UnknownOrg | OrgAccess::NotMember) => Err(unknown_org(org)),
        Some(OrgAccess::NotApproved) => Err(ApiError::client(
            StatusCode::FORBIDDEN,
            "organization_not_approved",
            "Organization not approved",
            format!(
                "organization {org:?} has no billing information yet; add it (`sie admin org approve {org}`) and try again"
            ),
        )),
        Some(OrgAccess::Allowed(id)) => Ok((id, limited)),
    }
}
