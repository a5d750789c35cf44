//! Log-in attempts, throttled per account and per address, in this process's memory (so
//! per node: behind a load balancer each `sie api` node counts its own).
//!
//! Each key (an email, a client address) may fail [`FAILURES`] times within [`WINDOW`];
//! after that, attempts are refused with 429 until the oldest failure leaves the window.
//! A success clears the email's count. The table is bounded: past [`MAX_KEYS`] keys the
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

    /// Counts a failed attempt against each of `keys`.
    pub fn failed(&self, keys: &[&str], now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_KEYS {
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
            if map.len() >= MAX_KEYS {
                map.clear();
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

    /// Clears `key` after a successful log-in.
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
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
        t.succeeded("a@b.c");
        assert_eq!(t.wait(&["a@b.c"], start), None);
    }
}
