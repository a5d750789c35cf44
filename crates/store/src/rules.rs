//! The queue's decisions, as plain functions both stores call.
//!
//! A store reads a row, asks here what to do with it, and writes the answer in its own
//! SQL. Kept apart from the SQL so each decision exists once (the two stores used to
//! carry a copy each) and can be tested without a database: what a failure, a release, a
//! cancel or a lapsed lease does to a task ([`Effect`]), when a queue is full and how
//! long its client should wait, and when a result has expired.

use std::time::Duration;

use crate::domain::{FailureCode, Timestamp};
use crate::error::QueueScope;
use crate::sql::rows::Fenced;
use crate::types::messages::{
    CANCELLED_LAPSED_MESSAGE, CANCELLED_QUEUED_MESSAGE, WORKER_LOST_MESSAGE,
};
use crate::types::{codes, CancelOutcome, Heartbeat, QueueCaps, TaskState, MAX_ATTEMPTS};

/// What a store writes to a task that is not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect<'a> {
    /// Back to the queue, keeping its place. `released` attempts were given back, not
    /// lost, and do not count towards [`MAX_ATTEMPTS`]; either way `attempt` (the fence)
    /// stays.
    Requeue { released: bool },
    /// Finished as failed, and counted in the day's usage.
    Fail { code: &'a str, message: &'a str },
    /// Still running; its worker hears of the cancel at its next heartbeat.
    RequestCancel,
}

impl Effect<'_> {
    /// The task may be leased again: waiting workers should look.
    pub fn requeues(&self) -> bool {
        matches!(self, Effect::Requeue { .. })
    }
}

/// A running task whose cancel was requested ends as cancelled, whoever gives it up.
const CANCELLED_WHILE_RUNNING: Effect<'static> = Effect::Fail {
    code: codes::CANCELLED,
    message: CANCELLED_LAPSED_MESSAGE,
};

/// Its worker failed it. Retryable failures are retried while attempts are left.
pub(crate) fn after_failure<'a>(
    task: &Fenced,
    code: &'a FailureCode,
    message: &'a str,
    retryable: bool,
) -> Effect<'a> {
    if retryable && task.cancel_requested {
        CANCELLED_WHILE_RUNNING
    } else if retryable && task.counted_attempts < i64::from(MAX_ATTEMPTS) {
        Effect::Requeue { released: false }
    } else {
        Effect::Fail {
            code: code.as_str(),
            message,
        }
    }
}

/// Its worker gave it back (shutting down).
pub(crate) fn after_release(task: &Fenced) -> Effect<'static> {
    if task.cancel_requested {
        CANCELLED_WHILE_RUNNING
    } else {
        Effect::Requeue { released: true }
    }
}

/// Its lease lapsed and it may not run again ([`LAPSED`](crate::sql::statements::LAPSED)): out
/// of attempts, or cancelled.
pub(crate) fn after_lapse(cancel_requested: bool) -> Effect<'static> {
    if cancel_requested {
        CANCELLED_WHILE_RUNNING
    } else {
        Effect::Fail {
            code: codes::WORKER_LOST,
            message: WORKER_LOST_MESSAGE,
        }
    }
}

/// A client cancelled a task in `state`: what it is told, and what changes.
pub(crate) fn cancel(state: TaskState) -> (CancelOutcome, Option<Effect<'static>>) {
    match state {
        TaskState::Queued => (
            CancelOutcome::Cancelled,
            Some(Effect::Fail {
                code: codes::CANCELLED,
                message: CANCELLED_QUEUED_MESSAGE,
            }),
        ),
        TaskState::Running => (CancelOutcome::CancelRequested, Some(Effect::RequestCancel)),
        finished => (CancelOutcome::AlreadyFinished(finished), None),
    }
}

/// The answer to a heartbeat, from the fenced update's `cancel_requested` (`None`: no
/// row matched the fence).
pub(crate) fn heartbeat(cancel_requested: Option<bool>) -> Heartbeat {
    match cancel_requested {
        None => Heartbeat::Lost,
        Some(true) => Heartbeat::Cancelled,
        Some(false) => Heartbeat::Continue,
    }
}

/// Which cap an enqueue runs into, if any, given the tasks queued now.
pub(crate) fn full_queue(caps: QueueCaps, org_queued: i64, all_queued: i64) -> Option<QueueScope> {
    if org_queued >= i64::from(caps.per_org) {
        Some(QueueScope::Org)
    } else if all_queued >= i64::from(caps.global) {
        Some(QueueScope::Global)
    } else {
        None
    }
}

/// `retry_after_seconds` for a full queue: the time for one queued task to start at the
/// rate `finished` tasks of that scope finished over the last minute.
pub(crate) fn retry_after(finished: i64) -> u32 {
    match finished {
        n if n <= 0 => 30,
        n => u32::try_from((60 + n - 1) / n).unwrap_or(60).clamp(1, 60),
    }
}

/// The latest finish time a result may have and be expired at `now`: results are kept
/// `result_ttl`, and a task finished exactly that long ago is gone.
pub(crate) fn expiry_cutoff(result_ttl: Duration, now: Timestamp) -> i64 {
    now.minus(result_ttl).as_millis()
}

/// Whether a task that finished at `finished_at` (`None`: not finished) has outlived its
/// result at `now`. The expiry sweep deletes such tasks; until it runs, they are treated as
/// gone: their idempotency key is free and the API answers 404 (SPEC 1.1, 1.2).
pub(crate) fn result_expired(
    finished_at: Option<Timestamp>,
    result_ttl: Duration,
    now: Timestamp,
) -> bool {
    finished_at.is_some_and(|f| f.as_millis() <= expiry_cutoff(result_ttl, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(counted_attempts: i64, cancel_requested: bool) -> Fenced {
        Fenced {
            seq: 1,
            counted_attempts,
            cancel_requested,
        }
    }

    #[test]
    fn a_retryable_failure_requeues_until_the_last_attempt() {
        let oom = FailureCode::parse("out_of_memory").unwrap();
        let fail = |t: &Fenced, retryable| after_failure(t, &oom, "CUDA OOM", retryable);
        let failed = Effect::Fail {
            code: "out_of_memory",
            message: "CUDA OOM",
        };
        assert_eq!(
            fail(&task(1, false), true),
            Effect::Requeue { released: false }
        );
        assert_eq!(
            fail(&task(2, false), true),
            Effect::Requeue { released: false }
        );
        assert_eq!(fail(&task(3, false), true), failed);
        assert_eq!(fail(&task(1, false), false), failed);
        assert_eq!(fail(&task(1, true), true), CANCELLED_WHILE_RUNNING);
        // A fatal failure keeps the worker's words even when a cancel was pending.
        assert_eq!(fail(&task(1, true), false), failed);
    }

    #[test]
    fn a_release_requeues_unless_cancelled() {
        assert_eq!(
            after_release(&task(3, false)),
            Effect::Requeue { released: true }
        );
        assert_eq!(after_release(&task(1, true)), CANCELLED_WHILE_RUNNING);
        assert!(after_release(&task(1, false)).requeues());
    }

    #[test]
    fn a_lapsed_task_is_lost_or_cancelled() {
        assert!(
            matches!(after_lapse(false), Effect::Fail { code, .. } if code == codes::WORKER_LOST)
        );
        assert_eq!(after_lapse(true), CANCELLED_WHILE_RUNNING);
    }

    #[test]
    fn cancel_by_state() {
        assert!(matches!(
            cancel(TaskState::Queued),
            (
                CancelOutcome::Cancelled,
                Some(Effect::Fail {
                    code: codes::CANCELLED,
                    ..
                })
            )
        ));
        assert_eq!(
            cancel(TaskState::Running),
            (CancelOutcome::CancelRequested, Some(Effect::RequestCancel))
        );
        assert_eq!(
            cancel(TaskState::Succeeded),
            (CancelOutcome::AlreadyFinished(TaskState::Succeeded), None)
        );
    }

    #[test]
    fn a_result_expires_exactly_one_ttl_after_its_finish() {
        let ttl = Duration::from_secs(10);
        let at = Timestamp::from_millis;
        assert!(!result_expired(None, ttl, at(1_000_000)));
        assert!(!result_expired(Some(at(5_000)), ttl, at(14_999)));
        assert!(result_expired(Some(at(5_000)), ttl, at(15_000)));
        assert_eq!(expiry_cutoff(ttl, at(15_000)), 5_000);
    }

    #[test]
    fn caps_and_retry_after() {
        let caps = QueueCaps {
            per_org: 2,
            global: 3,
        };
        assert_eq!(full_queue(caps, 1, 2), None);
        assert_eq!(full_queue(caps, 2, 2), Some(QueueScope::Org));
        assert_eq!(full_queue(caps, 1, 3), Some(QueueScope::Global));
        assert_eq!(retry_after(0), 30);
        assert_eq!(retry_after(1), 60);
        assert_eq!(retry_after(6), 10);
        assert_eq!(retry_after(7), 9);
        assert_eq!(retry_after(10_000), 1);
    }
}
