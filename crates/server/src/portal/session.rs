//! Portal sessions: a random token in an `HttpOnly`, `SameSite=Lax` cookie (`Secure` when
//! the portal is served over https), stored only as its SHA-256; and the CSRF token every
//! state-changing form of the session carries.
//!
//! `SameSite=Lax` already keeps other sites' forms from carrying the cookie in a POST; the
//! per-session CSRF token is the second lock, for browsers that do not honour it.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use sie_store::{AccountId, Email, Timestamp};

use crate::{ApiError, AppState};

pub const COOKIE: &str = "sie_session";

/// How long a session lives without being used.
pub const IDLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// 32 random bytes, base64url: a session token or a CSRF token.
pub fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a session token.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `Set-Cookie` value that starts a session (or, with `None`, ends it).
pub fn set_cookie(token: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match token {
        // No Max-Age: the server ends an idle session; a fixed lifetime on the cookie would
        // end an active one too.
        Some(t) => format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Lax{secure}"),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    }
}

/// The session token the request's cookies carry, if any.
pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Compares two tokens in time that depends only on their lengths.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in portal user, from the session cookie.
#[derive(Debug, Clone)]
pub struct User {
    pub account: AccountId,
    pub email: Email,
    pub csrf: String,
    pub token_hash: String,
}

/// The signed-in user, if the request carries a live session.
pub async fn user_of(state: &AppState, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let hash = token_hash(&token);
    let found = {
        let hash = hash.clone();
        state
            .store(move |s| s.session(&hash, IDLE, Timestamp::now()))
            .await?
    };
    Ok(found.map(|s| User {
        account: s.account,
        email: s.email,
        csrf: s.csrf,
        token_hash: hash,
    }))
}

/// The signed-in user, or `None`; never a rejection (pages decide what to show).
pub struct MaybeUser(pub Option<User>);

impl FromRequestParts<AppState> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(MaybeUser(user_of(state, &parts.headers).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; sie_session=abc; b=2".parse().unwrap());
        assert_eq!(cookie_token(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, "sie_session=".parse().unwrap());
        assert_eq!(cookie_token(&h), None);
        let c = set_cookie(Some("t"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.ends_with("; Secure"));
        assert!(!set_cookie(Some("t"), false).contains("Secure"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("a", "ab"));
    }
}
