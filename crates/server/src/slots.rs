//! Blocking work that the API's requests start, a fixed number at a time.
//!
//! Store calls and image decodes both run on tokio's blocking pool, and both cost far more
//! than the request that starts them (a database connection; a hundred megabytes of
//! pixels): unbounded, a crowd of requests would start a crowd of them. [`Slots`] runs
//! each once one of its slots is free; the rest wait their turn without a thread, within
//! the request timeout, which drops a waiting future and its place in line.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ApiError;

/// A bound on blocking work of one kind running at once.
#[derive(Clone)]
pub(crate) struct Slots {
    slots: Arc<Semaphore>,
    /// What the work is, for the error if it panics ("decoding an image").
    what: &'static str,
}

impl Slots {
    pub fn new(at_once: usize, what: &'static str) -> Self {
        Slots {
            slots: Arc::new(Semaphore::new(at_once.max(1))),
            what,
        }
    }

    /// Runs `work` on the blocking pool once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let what = self.what;
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the slots are never closed");
        // The caller's span (its request id) goes with the work, so what it logs says
        // which request it served.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            span.in_scope(work)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("{what} panicked: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_more_run_at_once_than_allowed() {
        let slots = Slots::new(2, "test work");
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let runs = (0..8).map(|_| {
            let (slots, now, most) = (slots.clone(), now.clone(), most.clone());
            tokio::spawn(async move {
                slots
                    .run(move || {
                        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(running, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(30));
                        now.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
            })
        });
        for run in runs.collect::<Vec<_>>() {
            run.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_is_an_internal_error_naming_the_work() {
        let slots = Slots::new(1, "decoding an image");
        let err = slots.run(|| panic!("boom")).await.unwrap_err();
        assert!(
            matches!(&err, ApiError::Internal(m) if m.starts_with("decoding an image panicked")),
            "{err:?}"
        );
        // The slot came back.
        assert_eq!(slots.run(|| 7).await.unwrap(), 7);
    }
}
