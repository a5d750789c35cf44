//! What an operator sets for a server: the queue's settings, the limits that bound what
//! clients can make it hold (SPEC 2.1), how it names itself in the URLs it hands out, and
//! which browser origins may call it. `sie serve` and `sie api` fill these from their
//! flags; each default is the flag's default, and `docs/security.md` lists them all.

use std::time::Duration;

use axum::http::HeaderValue;
use sie_store::{QueueCaps, DEFAULT_LEASE, DEFAULT_RESULT_TTL};

use crate::public_url::PublicUrls;
pub use crate::rate_limit::Rate;

/// Everything a server is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub caps: QueueCaps,
    /// How long a remote worker's lease lasts without a heartbeat.
    pub lease: Duration,
    /// How long results are kept: older ones answer 404 and free their idempotency key
    /// even before the expiry sweep deletes them.
    pub result_ttl: Duration,
    pub limits: Limits,
    /// Where `resultUrl` and `Location` point.
    pub urls: PublicUrls,
    /// Browser origins answered with CORS headers; none by default.
    pub cors_origins: Vec<CorsOrigin>,
    /// Who may sign up on the portal, and whether billing information approves at once.
    pub portal: crate::PortalSettings,
    /// Where webhooks may be sent.
    pub webhooks: crate::WebhookSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            caps: QueueCaps::default(),
            lease: DEFAULT_LEASE,
            result_ttl: DEFAULT_RESULT_TTL,
            limits: Limits::default(),
            urls: PublicUrls::FromHost,
            cors_origins: Vec::new(),
            portal: crate::PortalSettings::default(),
            webhooks: crate::WebhookSettings::default(),
        }
    }
}

/// The bounds on what clients can make the server hold: connections, time and memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// From the moment the server waits for a request's head (a new connection, or an idle
    /// kept-alive one) to its last header byte; then the connection is closed.
    pub header_timeout: Duration,
    /// Longest silence while a request body is read (408), or while an answer waits for
    /// the client to take it (the connection is closed).
    pub body_timeout: Duration,
    /// A whole request, its body read included, until its answer is ready: 408 (not for
    /// the worker protocol's calls; a worker's lease long-poll ends a second before it).
    pub request_timeout: Duration,
    /// Bytes that all create-task bodies being read at once may take; past it, POST
    /// answers 503 `server_busy`.
    pub max_inflight_body_bytes: u64,
    /// Input images decoded at once.
    pub max_concurrent_decodes: usize,
    /// Bytes of finished results kept in memory for polling clients.
    pub result_cache_bytes: u64,
    /// Requests per API key (or portal session) on this node: past it, 429 `rate_limited`.
    pub per_key: Rate,
    /// Requests per organization on this node, whichever keys make them.
    pub per_org: Rate,
}

/// Per key, 200 a second with 1000 at once. Far above a client that polls its tasks once
/// or twice a second each, or posts a batch: a hundred tasks in flight polled in a loop
/// with a 50 ms pause, as `sie`'s own tests do, stays within it for many seconds. What it
/// stops is a runaway loop with no pause at all, thousands a second: one key then takes
/// at most about a sixth of a two-core node's GETs (3,400 a second measured,
/// `docs/benchmarks.md`). Per organization, twice that, so a team's keys together get
/// more than one but not the node.
pub const DEFAULT_PER_KEY: Rate = Rate {
    per_second: 200,
    burst: 1000,
};
pub const DEFAULT_PER_ORG: Rate = Rate {
    per_second: 400,
    burst: 2000,
};

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_inflight_body_bytes: 256 << 20,
            max_concurrent_decodes: default_decodes(),
            result_cache_bytes: 512 << 20,
            per_key: DEFAULT_PER_KEY,
            per_org: DEFAULT_PER_ORG,
        }
    }
}

/// One decode per CPU: decoding is CPU-bound, so more at once only adds memory.
pub fn default_decodes() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// An origin allowed to call the API from a browser: `scheme://host[:port]`, kept as a
/// browser sends it in `Origin` (scheme and host in lower case, no default port), since
/// the comparison with the header is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsOrigin(HeaderValue);

impl CorsOrigin {
    pub fn parse(text: &str) -> Result<Self, String> {
        let refuse = |why: &str| {
            format!("{text:?} is not an origin ({why}); use scheme://host[:port], such as https://app.example.com")
        };
        let lower = text.to_ascii_lowercase();
        let (scheme, authority) = crate::public_url::http_scheme(&lower).map_err(refuse)?;
        if !crate::public_url::is_authority(authority) {
            return Err(refuse("no path, trailing slash or wildcard"));
        }
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        let authority = authority.strip_suffix(default_port).unwrap_or(authority);
        HeaderValue::from_str(&format!("{scheme}://{authority}"))
            .map(CorsOrigin)
            .map_err(|_| refuse("not a header value"))
    }

    pub(crate) fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_and_authority_only() {
        for (given, sent) in [
            ("https://app.example.com", "https://app.example.com"),
            ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
            ("HTTPS://App.Example.com:443", "https://app.example.com"),
            ("http://localhost:80", "http://localhost"),
            ("http://localhost:443", "http://localhost:443"),
        ] {
            assert_eq!(CorsOrigin::parse(given).unwrap().header_value(), sent);
        }
        for bad in [
            "*",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://example.com",
            "javascript://x",
        ] {
            assert!(CorsOrigin::parse(bad).is_err(), "{bad}");
        }
    }
}
