//! [`WorkSignal`]: how a waiting worker learns that a task may be waiting.
//!
//! A generation counter behind a condition variable: every enqueue (and every
//! task given back to the queue) bumps it; a waiter remembers the generation
//! it saw *before* it last looked at the queue and sleeps until it moves on,
//! so a task queued between "the queue is empty" and "go to sleep" is never
//! missed. SQLite bumps it in-process; PostgreSQL bumps it from a `LISTEN`
//! connection, so a task posted on one API node wakes a worker long-polling
//! on another. Wake-ups may be spurious; waiters always look again.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct WorkSignal {
    generation: Mutex<u64>,
    changed: Condvar,
}

impl WorkSignal {
    /// The current generation: read it before looking at the queue.
    pub fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something may be waiting: wakes every waiter.
    pub fn notify(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
    }

    /// Blocks until the generation moves past `seen` or `timeout` passes;
    /// returns the generation then.
    pub fn wait_past(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        while *generation == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            generation = self
                .changed
                .wait_timeout(generation, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_notify_after_the_read_is_not_missed() {
        let s = Arc::new(WorkSignal::default());
        let seen = s.generation();
        s.notify();
        assert_eq!(s.wait_past(seen, Duration::from_secs(30)), seen + 1);
        let s2 = s.clone();
        let waiter = std::thread::spawn(move || s2.wait_past(seen + 1, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        s.notify();
        assert_eq!(waiter.join().unwrap(), seen + 2);
        assert_eq!(s.wait_past(seen + 2, Duration::from_millis(10)), seen + 2);
    }
}
