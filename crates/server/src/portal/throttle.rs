//! Log-in attempts, throttled per account and per address, in this process's memory (so
//! per node: behind a load balancer each `sie api` node counts its own).
//!
//! Each key (an email, a client address) may fail [`FAILURES`] times within [`WINDOW`];
//! after that, attempts are refused with 429 until the oldest failure leaves the window.
//! Attempts are counted before the password is checked (so attempts made in parallel
//! count), and a success takes its count back. The table is bounded: past [`MAX_KEYS`] keys the
//! stalest are dropped, so a flood of addresses cannot grow it without end.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Throttle {
    /// How long `keys` must wait before another attempt, if any must.
    pub fn wait(&self, keys: &[&str], now: Instant) -> Option<Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|k| {
                let times = map.get_mut(*k)?;
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= WINDOW)
                {
                    times.pop_front();
                }
                (times.len() >= FAILURES)
                    .then(|| WINDOW.saturating_sub(now.duration_since(times[0])))
            })
            .max()
    }

    /// Counts an attempt against each of `keys` (before it is checked; see
    /// [`Throttle::succeeded`]).
    pub fn failed(&self, keys: &[&str], now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            // Full: first what has left the window, then what is not locked; a locked key
            // (someone guessing) is never dropped to make room.
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
            if map.len() >= MAX_KEYS {
                map.retain(|_, times| times.len() >= FAILURES);
            }
        }
        for k in keys {
            let times = map.entry((*k).to_owned()).or_default();
            times.push_back(now);
            while times.len() > FAILURES {
                times.pop_front();
            }
        }
    }

    /// After a successful log-in: clears the email's count, and takes back the attempt
    /// counted against the address.
    pub fn succeeded(&self, email: &str, address: Option<&str>) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(email);
        if let Some(times) = address.and_then(|a| map.get_mut(a)) {
            times.pop_back();
        }
    }
}

/// The throttle's key for a typed email: as the store compares emails (trimmed, lower
/// case), and no longer than an email can be, so the table's keys stay small.
pub fn email_key(typed: &str) -> String {
    let e: String = typed.trim().to_lowercase().chars().take(254).collect();
    format!("email:{e}")
}

/// The throttle's key for a client address: IPv6 by its /64 (one host's usual share), and
/// none for a loopback address (a proxy on the same machine, or the operator: throttling it
/// would lock every user out).
pub fn address_key(ip: std::net::IpAddr) -> Option<String> {
    match ip {
        _ if ip.is_loopback() => None,
        std::net::IpAddr::V4(v4) => Some(format!("address:{v4}")),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(format!(
                "address:{:x}:{:x}:{:x}:{:x}::/64",
                s[0], s[1], s[2], s[3]
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_then_wait_until_the_first_leaves_the_window() {
        let t = Throttle::default();
        let start = Instant::now();
        for i in 0..FAILURES {
            assert_eq!(t.wait(&["a@b.c", "1.2.3.4"], start), None, "attempt {i}");
            t.failed(&["a@b.c", "1.2.3.4"], start);
        }
        let wait = t.wait(&["a@b.c"], start + Duration::from_secs(60)).unwrap();
        assert_eq!(wait, WINDOW - Duration::from_secs(60));
        // The address is throttled for another email too.
        assert!(t.wait(&["x@y.z", "1.2.3.4"], start).is_some());
        assert_eq!(t.wait(&["a@b.c"], start + WINDOW), None);
        t.succeeded("a@b.c", Some("1.2.3.4"));
        assert_eq!(t.wait(&["a@b.c"], start), None);
        assert_eq!(t.wait(&["1.2.3.4"], start), None, "one attempt taken back");
    }

    #[test]
    fn keys_are_bounded_and_loopback_is_not_throttled() {
        assert_eq!(email_key("  Ada@Example.COM "), "email:ada@example.com");
        assert!(email_key(&"x".repeat(10_000)).len() < 270);
        assert_eq!(address_key("127.0.0.1".parse().unwrap()), None);
        assert_eq!(address_key("::1".parse().unwrap()), None);
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()).as_deref(),
            Some("address:2001:db8:1:2::/64")
        );
    }
}
