//! [`Queue`] on any [`Backend`]: the worker's side — lease, heartbeat, complete, fail,
//! release — and the sweep of lapsed tasks, with [`apply`], the one place a task's
//! [`Effect`] is written.
//!
//! A lease finishes the lapsed tasks that may not run again, lets the backend pick a
//! task by the fairness rule ([`Backend::pick`]), and claims it with a compare-and-set
//! on the `state` and `attempt` it was picked in, so the fence is in the statement and
//! not only in the backend's locking. Every later write by a worker is fenced on its
//! attempt and its name; a report (fail, release) locks its task before deciding what
//! becomes of it, with [`rules`].

use std::time::Duration;

use super::rows::{self, Fenced};
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{TaskId, Timestamp};
use crate::error::{Result, StoreError};
use crate::rules::{self, Effect};
use crate::signal::WorkSignal;
use crate::store::Queue;
use crate::types::{
    Failure, Fence, Heartbeat, Leased, Progress, TaskUsage, WorkerOffer, MAX_ATTEMPTS,
};

/// Adds a finished task to its organization's daily usage row.
fn record_usage(
    tx: &mut impl Db,
    org: i64,
    now: Timestamp,
    usage: TaskUsage,
    succeeded: bool,
) -> Result<()> {
    let params: Params<'_> = &[
        &org,
        &now.day().days_since_epoch(),
        &i64::from(usage.images),
        &i64::from(usage.steps),
        &usage.gpu_ms_stored(),
        &i64::from(succeeded),
        &i64::from(!succeeded),
    ];
    tx.exec("record usage", sql::RECORD_USAGE, params)?;
    Ok(())
}

/// Queues the webhook delivery of the task `seq`, which ended in `tx`, if it asked for one:
/// in the same transaction, so an ended task's webhook is never lost.
fn queue_webhook(tx: &mut impl Db, seq: i64, now: Timestamp) -> Result<()> {
    tx.exec(
        "queue webhook",
        sql::QUEUE_WEBHOOK,
        &[&seq, &now.as_millis()],
    )?;
    Ok(())
}

/// Writes `effect` to the unfinished task `seq`, which `tx` holds.
pub(super) fn apply<B: Backend>(
    tx: &mut B::Tx<'_>,
    seq: i64,
    effect: Effect<'_>,
    now: Timestamp,
) -> Result<()> {
    match effect {
        Effect::Requeue { released } => {
            let op = "requeue task";
            tx.exec(op, sql::REQUEUE, &[&seq, &i64::from(released)])?;
            B::announce_work(tx, op)?;
        }
        Effect::Fail { code, message } => {
            let params: Params<'_> = &[&seq, &code, &message, &now.as_millis()];
            let org = tx.first("fail task", sql::FINISH_FAILED, params, |r| r.int(0))?;
            if let Some(org) = org {
                record_usage(tx, org, now, TaskUsage::default(), false)?;
                queue_webhook(tx, seq, now)?;
            }
        }
        Effect::RequestCancel => {
            tx.exec("cancel", sql::REQUEST_CANCEL, &[&seq])?;
        }
    }
    Ok(())
}

/// Finishes lapsed tasks that must not run again; returns them. Rows another
/// transaction holds are left to it (or to the next sweep).
fn sweep_lapsed<B: Backend>(tx: &mut B::Tx<'_>, now: Timestamp) -> Result<Vec<TaskId>> {
    let lapsed_sql = format!("{}{}", sql::LAPSED, B::SKIP_LOCKED_ROWS);
    let params: Params<'_> = &[&now.as_millis(), &i64::from(MAX_ATTEMPTS)];
    let lapsed = tx.all("sweep lapsed tasks", &lapsed_sql, params, |r| {
        Ok((r.int(0)?, r.flag(1)?, rows::task_id(r, 2)?))
    })?;
    for &(seq, cancel_requested, _) in &lapsed {
        apply::<B>(tx, seq, rules::after_lapse(cancel_requested), now)?;
    }
    Ok(lapsed.into_iter().map(|(_, _, id)| id).collect())
}

/// A worker's report on attempt `attempt` of task `id`: locks the task if the fence
/// holds, lets `decide` choose what becomes of it, and writes that. `false` when the
/// fence refuses; rings the signal when the task went back to the queue.
fn report<'e, B: Backend>(
    store: &B,
    op: &'static str,
    fence: &Fence,
    now: Timestamp,
    decide: impl Fn(&Fenced) -> Effect<'e>,
) -> Result<bool> {
    // `None` when the fence refused; else whether the task went back to the queue.
    let requeued = store.write(op, |tx| {
        let fenced = format!("{}{}", sql::FENCED_TASK, B::LOCK_ROWS);
        let params: Params<'_> = &[
            &fence.id.to_string(),
            &i64::from(fence.attempt),
            &fence.worker_id,
        ];
        let Some(task) = tx.first(op, &fenced, params, Fenced::read)? else {
            return Ok(None);
        };
        let effect = decide(&task);
        apply::<B>(tx, task.seq, effect, now)?;
        Ok(Some(effect.requeues()))
    })?;
    if requeued == Some(true) {
        store.signal().notify();
    }
    Ok(requeued.is_some())
}

impl<B: Backend> Queue for B {
    fn work_signal(&self) -> &WorkSignal {
        self.signal()
    }

    fn lease(
        &self,
        offer: &WorkerOffer,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Option<Leased>> {
        self.write("lease", |tx| {
            // Lapsed tasks that must not run again are finished first, so the
            // pick only sees tasks that may run.
            sweep_lapsed::<B>(tx, now)?;
            let Some(task) = B::pick(tx, offer, now)? else {
                return Ok(None);
            };
            let params: Params<'_> = &[
                &offer.worker_id,
                &now.plus(lease).as_millis(),
                &now.as_millis(),
                &task.seq,
                &task.state,
                &task.attempt,
            ];
            if tx.exec("lease", sql::CLAIM, params)? != 1 {
                // Cannot happen while the backend holds the row; if it ever does,
                // the worker simply polls again.
                return Ok(None);
            }
            tx.exec("lease", B::TAKE_TURN, &[&task.org_id])?;
            task.leased().map(Some)
        })
    }

    fn sweep(&self, now: Timestamp) -> Result<Vec<TaskId>> {
        self.write("sweep lapsed tasks", |tx| sweep_lapsed::<B>(tx, now))
    }

    fn heartbeat(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Heartbeat> {
        // One statement, fenced in its WHERE clause.
        self.write("heartbeat", |tx| {
            let params: Params<'_> = &[
                &now.plus(lease).as_millis(),
                &progress.map(|p| i64::from(p.step)),
                &progress.map(|p| i64::from(p.steps)),
                &fence.id.to_string(),
                &i64::from(fence.attempt),
                &fence.worker_id,
            ];
            let cancel_requested = tx.first("heartbeat", sql::HEARTBEAT, params, |r| r.flag(0))?;
            Ok(rules::heartbeat(cancel_requested))
        })
    }

    fn complete(
        &self,
        fence: &Fence,
        result_json: &str,
        usage: TaskUsage,
        now: Timestamp,
    ) -> Result<bool> {
        self.write("complete", |tx| {
            let params: Params<'_> = &[
                &result_json,
                &now.as_millis(),
                &i64::from(usage.images),
                &i64::from(usage.steps),
                &usage.gpu_ms_stored(),
                &fence.id.to_string(),
                &i64::from(fence.attempt),
                &fence.worker_id,
            ];
            let returned = tx.first("complete", sql::COMPLETE, params, |r| {
                Ok((r.int(0)?, r.int(1)?))
            })?;
            let Some((org, seq)) = returned else {
                return Ok(false);
            };
            record_usage(tx, org, now, usage, true)?;
            queue_webhook(tx, seq, now)?;
            Ok(true)
        })
    }

    fn fail(&self, fence: &Fence, failure: &Failure, now: Timestamp) -> Result<bool> {
        report(self, "fail", fence, now, |task| {
            rules::after_failure(task, &failure.code, &failure.message, failure.retryable)
        })
    }

    fn lapse_leases(&self, owner_prefix: &str, now: Timestamp) -> Result<u64> {
        if owner_prefix.is_empty() {
            // Every worker's leases: never what a caller means.
            return Err(StoreError::BadArgument(
                "lapse_leases needs a non-empty worker id prefix".into(),
            ));
        }
        let op = "lapse leases";
        let lapsed = self.write(op, |tx| {
            let params: Params<'_> = &[&owner_prefix, &now.as_millis()];
            tx.exec(op, sql::LAPSE_LEASES_WITH_PREFIX, params)
        })?;
        if lapsed > 0 {
            self.signal().notify();
        }
        Ok(lapsed)
    }

    fn release(&self, fence: &Fence, now: Timestamp) -> Result<bool> {
        report(self, "release", fence, now, rules::after_release)
    }
}
