//! Where a webhook may be sent: never to this machine, its private network, link-local
//! addresses or a cloud's metadata service, unless the operator allows private webhooks.
//!
//! A URL's host is only a name until it is resolved, and a name can resolve differently
//! from one moment to the next (DNS rebinding), so the addresses are checked where they
//! are used: at POST (so a client hears at once that its URL cannot be called), and on
//! every connection a delivery makes, through the HTTP client's own resolver
//! ([`GuardedResolver`]), which hands the connection exactly the addresses it checked.
//! Hosts written as addresses skip any resolver, so the delivery checks each URL it posts
//! to, the first and every redirect's, with [`refusal`] too.
//!
//! Name lookups run on threads (`getaddrinfo`), which a timeout cannot stop; a client
//! naming hosts whose name servers never answer could otherwise occupy the blocking pool
//! every store call needs. At most [`LOOKUPS_AT_ONCE`] run at a time, each holding its
//! turn until it really ends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::sync::Semaphore;

/// How long a webhook host's name may take to resolve, waiting for a turn included.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Webhook host lookups running at once in this process.
pub const LOOKUPS_AT_ONCE: usize = 16;

/// Why a URL is not called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Never: its host is, or resolves to, an address webhooks are not sent to, or does
    /// not exist.
    Forbidden(String),
    /// Not now: the name did not resolve in time (its name servers, or ours, are slow).
    Unresolved(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::Forbidden(m) | Refusal::Unresolved(m) => m,
        }
    }
}

/// Why `ip` may not be called, or `None` when it is a public address.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        _ if ip.is_private() => "a private address",
        // 169.254.169.254 is the metadata service of most clouds.
        _ if ip.is_link_local() => "a link-local address (where cloud metadata services live)",
        // Carrier-grade NAT, also Alibaba Cloud's metadata service (100.100.100.200).
        (100, 64..=127, _) => "a shared (carrier-grade NAT) address",
        // IETF protocol assignments, among them Oracle Cloud's metadata (192.0.0.192).
        (192, 0, 0) => "a reserved address",
        (198, 18..=19, _) => "a benchmarking address",
        _ if ip.is_multicast() => "a multicast address",
        _ if ip.is_broadcast() || a >= 240 => "a reserved address",
        _ if ip.is_documentation() => "a documentation address",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // An IPv4 address in IPv6 clothing is judged as itself: mapped (::ffff:a.b.c.d),
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        ));
    }
    // Local-use NAT64 (64:ff9b:1::/48, RFC 8215): whatever the operator's translator reaches.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some("a local-use NAT64 address");
    }
    if s[0] == 0x2002 {
        return forbidden_v4(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    Some(match s[0] {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if ip.is_loopback() => "a loopback address",
        // Deprecated IPv4-compatible addresses (::a.b.c.d).
        _ if s[..6] == [0, 0, 0, 0, 0, 0] => "a reserved address",
        // Unique local addresses, among them AWS's metadata service (fd00:ec2::254).
        x if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if s[1] == 0x0db8 => "a documentation address",
        // Teredo tunnels (2001::/32) carry an obfuscated IPv4 address of their own.
        0x2001 if s[1] == 0 => "a Teredo tunnel address",
        // SIIT (::ffff:0:a.b.c.d, RFC 6052's predecessor) and the discard prefix (100::/64).
        0 if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 => "a translated address",
        0x100 if s[1..4] == [0, 0, 0] => "a discard address",
        _ => return None,
    })
}

/// Why the URL `url` may not be called, resolving its host: `None` when every address it
/// resolves to is public (or when `allow_private`, which resolves nothing).
pub async fn refusal(url: &url::Url, allow_private: bool) -> Option<Refusal> {
    if allow_private {
        return None;
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let literal = |ip: IpAddr| {
        forbidden(ip).map(|why| Refusal::Forbidden(format!("points to {ip}, {why}, {NOT_CALLED}")))
    };
    match url.host() {
        None => Some(Refusal::Forbidden("has no host".into())),
        Some(url::Host::Ipv4(ip)) => literal(ip.into()),
        Some(url::Host::Ipv6(ip)) => literal(ip.into()),
        Some(url::Host::Domain(name)) => resolve(name, port).await.err(),
    }
}

const NOT_CALLED: &str = "which webhooks are never sent to (the operator can allow such \
                          addresses with --allow-private-webhooks)";

/// Turns for name lookups, shared by every check in this process.
fn lookups() -> Arc<Semaphore> {
    static LOOKUPS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    LOOKUPS
        .get_or_init(|| Arc::new(Semaphore::new(LOOKUPS_AT_ONCE)))
        .clone()
}

/// `name`'s addresses, all of them public; a refusal naming the first that is not, or why
/// it did not resolve.
async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
    let slow = || {
        Refusal::Unresolved(format!(
            "the host {name} did not resolve within {} s; try again",
            RESOLVE_TIMEOUT.as_secs()
        ))
    };
    let lookup = {
        let name = name.to_owned();
        async move {
            let turn = lookups().acquire_owned().await;
            // Its own task keeps the turn until the lookup ends, even after the caller gave up.
            tokio::spawn(async move {
                let found = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map(|addrs| addrs.collect::<Vec<SocketAddr>>());
                drop(turn);
                found
            })
            .await
        }
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| slow())?
        .map_err(|_| slow())?
        .map_err(|e| Refusal::Forbidden(format!("the host {name} does not resolve ({e})")))?;
    let addrs = found;
    if addrs.is_empty() {
        return Err(Refusal::Forbidden(format!(
            "the host {name} resolves to no address"
        )));
    }
    // One forbidden address refuses the name: a client could not choose which is used.
    for a in &addrs {
        if let Some(why) = forbidden(a.ip()) {
            return Err(Refusal::Forbidden(format!(
                "the host {name} resolves to {}, {why}, {NOT_CALLED}",
                a.ip()
            )));
        }
    }
    Ok(addrs)
}

/// The delivery client's resolver: a name resolving to any address [`forbidden`] refuses
/// fails the connection, whichever URL (the first or a redirect's) it came from.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let addrs = resolve(name.as_str(), 0)
                .await
                .map_err(|r| r.message().to_owned())?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        forbidden(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn private_loopback_link_local_and_metadata_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "192.0.0.192",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "64:ff9b:1::a00:1",
            "2001:0:4136:e378::1",
            "::ffff:0:7f00:1",
            "100::1",
        ] {
            assert!(refused(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(ip), "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_after_resolving_their_host() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        let refused = |r: Option<Refusal>| match r {
            Some(Refusal::Forbidden(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(
            refused(refusal(&url("http://127.0.0.1:9/hook"), false).await).contains("loopback")
        );
        // The url crate reads every spelling of an IPv4 address as one.
        for spelled in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://127.1/",
            "http://017700000001/",
        ] {
            assert!(
                refused(refusal(&url(spelled), false).await).contains("loopback"),
                "{spelled}"
            );
        }
        assert!(refusal(&url("http://[::1]/hook"), false).await.is_some());
        // A name is judged by what it resolves to.
        assert!(
            refused(refusal(&url("http://localhost:8080/hook"), false).await)
                .contains("localhost resolves to")
        );
        // With a trailing dot too, whether this machine's resolver answers it or not.
        refused(refusal(&url("http://localhost./hook"), false).await);
        // The operator's flag lets everything through, unresolved.
        assert_eq!(refusal(&url("http://127.0.0.1:9/hook"), true).await, None);
        assert_eq!(refusal(&url("http://localhost/hook"), true).await, None);
    }
}
