//! Requests per second per API key and per organization (SPEC 1.4: 429 "over a rate limit",
//! with `Retry-After`).
//!
//! Each limit is a GCRA bucket (`governor`): `per_second` requests a second on average,
//! `burst` at once. The `Authorized` extractor asks [`RateLimits::admit`] once the caller is
//! known (a live key, or a portal session's account) and the organization allowed, before
//! any byte of the body is read; past either limit the answer is 429 `rate_limited` with
//! `Retry-After`. The [`headers`] layer, around the routes that take a key, puts
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds) on every answer
//! the check ran for, successes included: of the two limits, the one nearer its end.
//!
//! **Per node, in memory.** Each `sie api` node keeps its own buckets, so behind a load
//! balancer over N nodes a key may make up to N times the rate. What it protects is each
//! node's work past the caller's check (bodies, decodes, the queue's store calls), which
//! needs no shared state; the check itself (the key's lookup) is still made per request.
//!
//! **Bounded memory.** A bucket is made only for a caller whose key or session the store
//! accepted and an organization it may use, so there are never more than the live keys,
//! accounts and organizations; and once a minute the buckets that are full again (a caller
//! idle for a burst's worth of time) are dropped, so what is held is the recently active.
//! The caller's key is held as its SHA-256, never as the secret.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};
use sha2::{Digest, Sha256};
use sie_store::{AccountId, OrgId};

use crate::ApiError;

/// One limit: requests a second on average, and how many may come at once. A rate of 0
/// turns the limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const OFF: Rate = Rate {
        per_second: 0,
        burst: 0,
    };

    fn quota(self) -> Option<Quota> {
        let per_second = NonZeroU32::new(self.per_second)?;
        let burst = NonZeroU32::new(self.burst.max(1))?;
        Some(Quota::per_second(per_second).allow_burst(burst))
    }
}

/// Who a per-caller bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Caller {
    /// An API key, by its SHA-256.
    Key([u8; 32]),
    /// A portal session (the playground), by its account.
    Session(AccountId),
}

impl Caller {
    pub(crate) fn key(presented: &str) -> Self {
        Caller::Key(Sha256::digest(presented.as_bytes()).into())
    }
}

type Buckets<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// One limit's buckets, one per caller or organization.
struct Limit<K: std::hash::Hash + Eq + Clone> {
    buckets: Buckets<K>,
    quota: Quota,
}

/// What a check says about a limit, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Standing {
    limit: u32,
    remaining: u32,
    /// Seconds until the bucket is full again (allowed) or the next request may pass.
    reset: u64,
}

enum Checked {
    Allowed(Standing),
    /// Refused: the standing, and how long until a request passes.
    Refused(Standing, Duration),
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    fn new(quota: Quota) -> Self {
        Limit {
            buckets: RateLimiter::hashmap(quota).with_middleware::<StateInformationMiddleware>(),
            quota,
        }
    }

    fn check(&self, key: &K) -> Checked {
        let limit = self.quota.burst_size().get();
        match self.buckets.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = self.quota.replenish_interval() * (limit - remaining);
                Checked::Allowed(Standing {
                    limit,
                    remaining,
                    reset: whole_seconds(refill),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.buckets.clock().now());
                let standing = Standing {
                    limit,
                    remaining: 0,
                    reset: whole_seconds(wait).max(1),
                };
                Checked::Refused(standing, wait)
            }
        }
    }

    fn prune(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
    }
}

fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The per-key and per-organization limits of this node.
pub(crate) struct RateLimits {
    per_caller: Option<Limit<Caller>>,
    per_org: Option<Limit<OrgId>>,
    pruned: Mutex<Instant>,
}

/// How often buckets that are full again are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl RateLimits {
    pub(crate) fn new(per_key: Rate, per_org: Rate) -> Self {
        Self::with_quotas(per_key.quota(), per_org.quota())
    }

    fn with_quotas(per_key: Option<Quota>, per_org: Option<Quota>) -> Self {
        RateLimits {
            per_caller: per_key.map(Limit::new),
            per_org: per_org.map(Limit::new),
            pruned: Mutex::new(Instant::now()),
        }
    }

    /// Takes one request from `caller`'s and `org`'s buckets (the organization's only if
    /// the caller's had room); 429 when either is empty. What it found goes in `slot`, for
    /// the headers.
    pub(crate) fn admit(
        &self,
        caller: &Caller,
        org: OrgId,
        slot: Option<&Slot>,
    ) -> Result<(), ApiError> {
        self.prune_now_and_then();
        let mut nearest: Option<Standing> = None;
        let mut note = |s: Standing| {
            if nearest.is_none_or(|n| s.remaining < n.remaining) {
                nearest = Some(s);
            }
        };
        let mut refused = None;
        if let Some(limit) = &self.per_caller {
            match limit.check(caller) {
                Checked::Allowed(s) => note(s),
                Checked::Refused(s, wait) => {
                    note(s);
                    refused = Some(("API key", s, wait));
                }
            }
        }
        if refused.is_none() {
            if let Some(limit) = &self.per_org {
                match limit.check(&org) {
                    Checked::Allowed(s) => note(s),
                    Checked::Refused(s, wait) => {
                        note(s);
                        refused = Some(("organization", s, wait));
                    }
                }
            }
        }
        if let (Some(slot), Some(standing)) = (slot, nearest) {
            *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(standing);
        }
        let Some((whose, standing, wait)) = refused else {
            return Ok(());
        };
        let retry_after = whole_seconds(wait).max(1);
        Err(ApiError::Busy {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            title: "Rate limited",
            detail: format!(
                "this {whose} may make {} requests at once on this server; slow down and \
                 retry after {retry_after} s",
                standing.limit
            ),
            retry_after,
        })
    }

    fn prune_now_and_then(&self) {
        let mut pruned = self.pruned.lock().unwrap_or_else(|e| e.into_inner());
        if pruned.elapsed() < PRUNE_EVERY {
            return;
        }
        *pruned = Instant::now();
        drop(pruned);
        if let Some(limit) = &self.per_caller {
            limit.prune();
        }
        if let Some(limit) = &self.per_org {
            limit.prune();
        }
    }
}

/// Where the extractor leaves what the check found, for [`headers`] to put on the answer
/// (the extractor cannot reach the answer; the layer cannot see the caller).
#[derive(Clone, Default)]
pub(crate) struct Slot(Arc<Mutex<Option<Standing>>>);

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The `RateLimit-*` headers (IETF httpapi draft) on the answers of the routes that take a
/// key, whenever a limit was checked.
pub(crate) async fn headers(mut request: Request, next: Next) -> Response {
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    let standing = *slot.0.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = standing {
        let headers = response.headers_mut();
        headers.insert(LIMIT, HeaderValue::from(s.limit));
        headers.insert(REMAINING, HeaderValue::from(s.remaining));
        headers.insert(RESET, HeaderValue::from(s.reset));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: i64) -> OrgId {
        OrgId::parse(&n.to_string()).unwrap()
    }

    /// `burst` at once, then one an hour: nothing refills while a test runs.
    fn hourly(burst: u32) -> Option<Quota> {
        let quota = Quota::with_period(Duration::from_secs(3600)).unwrap();
        Some(quota.allow_burst(NonZeroU32::new(burst).unwrap()))
    }

    #[test]
    fn past_the_burst_the_caller_is_refused_and_another_is_not() {
        let limits = RateLimits::with_quotas(hourly(3), None);
        let (a, b) = (Caller::key("a"), Caller::key("b"));
        for left in (0..3).rev() {
            let slot = Slot::default();
            limits.admit(&a, org(1), Some(&slot)).unwrap();
            let s = slot.0.lock().unwrap().unwrap();
            assert_eq!((s.limit, s.remaining), (3, left));
        }
        let slot = Slot::default();
        match limits.admit(&a, org(1), Some(&slot)) {
            Err(ApiError::Busy {
                status,
                code,
                retry_after,
                ..
            }) => {
                assert_eq!((status.as_u16(), code), (429, "rate_limited"));
                assert!((3599..=3600).contains(&retry_after), "{retry_after}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(slot.0.lock().unwrap().unwrap().remaining, 0);
        limits.admit(&b, org(1), None).unwrap();
    }

    #[test]
    fn the_organization_limit_holds_across_its_keys() {
        let limits = RateLimits::with_quotas(None, hourly(2));
        limits.admit(&Caller::key("a"), org(1), None).unwrap();
        limits.admit(&Caller::key("b"), org(1), None).unwrap();
        assert!(limits.admit(&Caller::key("c"), org(1), None).is_err());
        limits.admit(&Caller::key("c"), org(2), None).unwrap();
    }

    #[test]
    fn a_rate_of_zero_turns_the_limit_off() {
        let limits = RateLimits::new(Rate::OFF, Rate::OFF);
        let slot = Slot::default();
        for _ in 0..1000 {
            limits
                .admit(&Caller::key("a"), org(1), Some(&slot))
                .unwrap();
        }
        assert!(slot.0.lock().unwrap().is_none());
    }
}
