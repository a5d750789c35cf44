//! The absolute URLs the API hands out (`resultUrl`, `Location`), and whose word they take.
//!
//! A client's own headers must not choose where another party is sent: a `Host` or
//! `X-Forwarded-Host` of `evil.example` or `javascript:alert(1)//` would otherwise be
//! reflected into the `resultUrl` a dashboard renders as a link. So there are three
//! policies, chosen by the operator: the `Host` header alone, validated as `host[:port]`
//! (the default); the `X-Forwarded-Proto`/`X-Forwarded-Host` a trusted proxy sets, validated
//! alike (`--trust-proxy`); or one fixed URL that ignores every header (`--public-url`).

use axum::http::{header, HeaderMap, StatusCode};

use crate::ApiError;

/// How the base of the URLs handed out is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicUrls {
    /// `http://` and the request's `Host`, which must be `host[:port]`.
    FromHost,
    /// Behind a proxy the operator trusts: its `X-Forwarded-Proto` (`http` or `https`) and
    /// `X-Forwarded-Host` (`host[:port]`) when present, else as [`PublicUrls::FromHost`].
    TrustProxy,
    /// Always this URL, whatever the request's headers say.
    Fixed(PublicUrl),
}

/// The URL clients reach the API at, as the operator gives it: `http(s)://host[:port]`,
/// optionally with a path prefix the proxy strips (`https://example.com/sie`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(String);

impl PublicUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let refuse = |why: &str| {
            format!("{text:?} is not a public URL ({why}); use http(s)://host[:port][/prefix], such as https://sie.example.com")
        };
        let (scheme, rest) = http_scheme(text).map_err(refuse)?;
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !is_authority(authority) {
            return Err(refuse(
                "the host must be a name or an IP address, with an optional port",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.bytes().all(is_path_byte) || prefix.contains("//") {
            return Err(refuse(
                "the path may hold only letters, digits and -._~/ and no query",
            ));
        }
        Ok(PublicUrl(format!("{scheme}://{authority}{prefix}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `text` split after its `scheme://` when the scheme is http or https; else why not.
pub(crate) fn http_scheme(text: &str) -> Result<(&str, &str), &'static str> {
    match text.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => Ok((scheme, rest)),
        Some(_) => Err("the scheme must be http or https"),
        None => Err("no scheme"),
    }
}

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/".contains(&b)
}

impl PublicUrls {
    /// The absolute URL of `path` (the request's own path) for a request with `headers`;
    /// 400 when the headers this policy reads are not what they must be.
    pub(crate) fn absolute(&self, headers: &HeaderMap, path: &str) -> Result<String, ApiError> {
        let path = path.trim_end_matches('/');
        if let PublicUrls::Fixed(base) = self {
            return Ok(format!("{}{path}", base.as_str()));
        }
        let text = |name: &str| -> Result<Option<&str>, ApiError> {
            headers
                .get(name)
                .map(|v| v.to_str().map_err(|_| bad_header(name, "is not ASCII")))
                .transpose()
        };
        let (mut scheme, mut host) = ("http", None);
        if *self == PublicUrls::TrustProxy {
            if let Some(proto) = text("x-forwarded-proto")? {
                // Proxies in a chain append; the first is the one the client reached.
                scheme = match first(proto).to_ascii_lowercase().as_str() {
                    "http" => "http",
                    "https" => "https",
                    _ => return Err(bad_header("X-Forwarded-Proto", "must be http or https")),
                };
            }
            host = text("x-forwarded-host")?.map(first);
            if let Some(h) = host {
                if !is_authority(h) {
                    return Err(bad_header("X-Forwarded-Host", "must be host[:port]"));
                }
            }
        }
        let host = match host {
            Some(h) => h,
            None => {
                // One Host only: `layers::one_host` refused the rest.
                let h = text(header::HOST.as_str())?
                    .ok_or_else(|| bad_header("Host", "is missing; HTTP/1.1 requires it"))?;
                if !is_authority(h) {
                    return Err(bad_header("Host", "must be host[:port]"));
                }
                h
            }
        };
        Ok(format!("{scheme}://{host}{path}"))
    }
}

fn first(list: &str) -> &str {
    list.split(',').next().unwrap_or_default().trim()
}

fn bad_header(name: &str, what: &str) -> ApiError {
    ApiError::client(
        StatusCode::BAD_REQUEST,
        "invalid_header",
        "Invalid header",
        format!("the {name} header {what}; the result URL is built from it"),
    )
}

/// Whether `text` is `host[:port]`: a DNS name or IPv4 address (letters, digits, `-` and
/// `.`), or an IPv6 address in brackets, and an optional port of at most 65535. Nothing
/// else (no scheme, user, path, space or `%`) can pass, so it is safe to put in a URL.
pub(crate) fn is_authority(text: &str) -> bool {
    let (host_ok, port) = match text.strip_prefix('[') {
        Some(bracketed) => {
            let Some((v6, after)) = bracketed.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            (v6.parse::<std::net::Ipv6Addr>().is_ok(), port)
        }
        None => match text.rsplit_once(':') {
            Some((host, port)) => (is_host_name(host), Some(port)),
            None => (is_host_name(text), None),
        },
    };
    host_ok && port.is_none_or(is_port)
}

/// A DNS name or an IPv4 address.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['-', '.'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn is_port(port: &str) -> bool {
    (1..=5).contains(&port.len())
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|n| n <= 65535)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn authorities() {
        for ok in [
            "localhost",
            "127.0.0.1:8080",
            "sie.example.com",
            "[::1]:80",
            "[::1]",
            "a-b.c:65535",
        ] {
            assert!(is_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "javascript:alert(1)//",
            "evil.com/x",
            "user@host",
            "host:99999",
            "host:",
            "-host",
            "[::1",
            "[nope]:1",
            "a b",
            "host:80:80",
        ] {
            assert!(!is_authority(bad), "{bad}");
        }
    }

    #[test]
    fn forwarded_headers_count_only_behind_a_trusted_proxy() {
        let h = headers(&[
            ("host", "127.0.0.1:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com, inner"),
        ]);
        let url = |p: &PublicUrls| p.absolute(&h, "/x/").unwrap();
        assert_eq!(url(&PublicUrls::FromHost), "http://127.0.0.1:8080/x");
        assert_eq!(url(&PublicUrls::TrustProxy), "https://api.example.com/x");
        let fixed = PublicUrls::Fixed(PublicUrl::parse("https://sie.example.com/api/").unwrap());
        assert_eq!(url(&fixed), "https://sie.example.com/api/x");
        let evil = headers(&[("host", "h"), ("x-forwarded-proto", "javascript")]);
        assert!(PublicUrls::TrustProxy.absolute(&evil, "/x").is_err());
        assert_eq!(
            PublicUrls::FromHost.absolute(&evil, "/x").unwrap(),
            "http://h/x"
        );
        assert!(PublicUrls::FromHost
            .absolute(&headers(&[("host", "javascript:alert(1)//")]), "/x")
            .is_err());
    }

    #[test]
    fn public_urls_are_checked() {
        assert_eq!(
            PublicUrl::parse("https://sie.example.com:8443/")
                .unwrap()
                .as_str(),
            "https://sie.example.com:8443"
        );
        for bad in [
            "sie.example.com",
            "javascript:alert(1)",
            "https://a b",
            "https://h/x?y",
            "ftp://h",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
