//! Who is calling, and may they use this organization (SPEC 2).
//!
//! A missing or unknown key is 401; an organization that does not exist or that the key's
//! account is not a member of is 404 (the two look alike, so names cannot be probed); an
//! organization without billing information is 403.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
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
        let org = authorize(state, &parts.headers, &name).await?;
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

/// Checks the key and the organization; returns the organization to act on.
async fn authorize(state: &AppState, headers: &HeaderMap, org: &str) -> Result<OrgId, ApiError> {
    let key = one_header(headers, API_KEY_HEADER)?
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::client(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "Missing API key",
                format!("send your API key in the {API_KEY_HEADER} header"),
            )
        })?
        .to_owned();
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
            let Some(account) = s.authenticate(&key, Timestamp::now())? else {
                return Ok(None);
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
        Some(OrgAccess::Allowed(id)) => Ok(id),
    }
}
