//! [`Tasks`] on any [`Backend`]: the client's side of the queue — enqueue, cancel, get,
//! list — and the housekeeping on the same rows (usage, stats, expiry).
//!
//! An enqueue first makes concurrent enqueues take turns
//! ([`Backend::serialize_enqueues`]), since the caps count what is queued and the
//! idempotency lookup must see a key another caller is storing. A cancel locks its task
//! as a worker's report does. `get` and `list` read one snapshot, so a task's queue
//! position agrees with the state read beside it.

use std::time::Duration;

use super::queue::apply;
use super::rows::{self, to_u64, TaskRecord};
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{OrgId, PageRequest, TaskId, Timestamp, UtcDay};
use crate::error::{QueueScope, Result, StoreError};
use crate::keys::hash_key;
use crate::rules;
use crate::store::Tasks;
use crate::types::*;

/// How far back `retry_after` looks for the rate tasks finish at.
const FINISH_RATE_WINDOW_MS: i64 = 60_000;

impl<B: Backend> Tasks for B {
    fn enqueue(&self, task: &NewTask<'_>, caps: QueueCaps, now: Timestamp) -> Result<Enqueued> {
        let op = "enqueue";
        let NewTask {
            org,
            request_json,
            needs,
            idempotency,
            webhook_url,
        } = *task;
        let digest = idempotency.map(|i| hash_key(i.request));
        let enqueued = self.write(op, |tx| {
            B::serialize_enqueues(tx)?;
            let known = tx.first(op, sql::ORG_EXISTS, &[&org.get()], |_| Ok(()))?;
            if known.is_none() {
                return Err(StoreError::BadArgument(format!(
                    "no organization with id {org}"
                )));
            }
            if let Some(Idempotency {
                key, result_ttl, ..
            }) = idempotency
            {
                let params: Params<'_> = &[&org.get(), &key.as_str()];
                let earlier = tx.first(op, sql::FIND_IDEMPOTENT, params, |r| {
                    let finished_at = r.opt_int(3)?.map(Timestamp::from_millis);
                    Ok((r.int(0)?, rows::task_id(r, 1)?, r.opt_text(2)?, finished_at))
                })?;
                if let Some((seq, id, first, finished_at)) = earlier {
                    if rules::result_expired(finished_at, result_ttl, now) {
                        // SPEC 1.1: the key is forgotten with its task's result, even
                        // before the sweep deletes the task (which then answers 404).
                        tx.exec(op, sql::FORGET_IDEMPOTENCY_KEY, &[&seq])?;
                    } else {
                        match first {
                            Some(first) if Some(&first) != digest.as_ref() => {
                                return Err(StoreError::IdempotencyKeyReused(
                                    key.as_str().to_owned(),
                                ))
                            }
                            _ => return Ok(Enqueued { id, created: false }),
                        }
                    }
                }
            }
            let (org_queued, all_queued) = tx.one(op, sql::QUEUED_COUNTS, &[&org.get()], |r| {
                Ok((r.int(0)?, r.int(1)?))
            })?;
            if let Some(scope) = rules::full_queue(caps, org_queued, all_queued) {
                let since = now.as_millis() - FINISH_RATE_WINDOW_MS;
                let of_org = (scope == QueueScope::Org).then_some(org.get());
                let finished = tx.one(op, sql::FINISHED_SINCE, &[&since, &of_org], |r| r.int(0))?;
                return Err(StoreError::QueueFull {
                    scope,
                    retry_after_seconds: rules::retry_after(finished),
                });
            }
            let id = TaskId::random();
            let params: Params<'_> = &[
                &id.to_string(),
                &org.get(),
                &request_json,
                &idempotency.map(|i| i.key.as_str()),
                &now.as_millis(),
                &needs.pipeline.as_str(),
                &needs.scheduler.map(|s| s.as_str()),
                &needs.safety_checker,
                &digest,
                &webhook_url,
            ];
            tx.exec(op, sql::INSERT_TASK, params)?;
            B::announce_work(tx, op)?;
            Ok(Enqueued { id, created: true })
        })?;
        if enqueued.created {
            self.signal().notify();
        }
        Ok(enqueued)
    }

    fn cancel(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        self.write("cancel", |tx| {
            let target = format!("{}{}", sql::CANCEL_TARGET, B::LOCK_ROWS);
            let params: Params<'_> = &[&org.get(), &id.to_string()];
            let task = tx.first("cancel", &target, params, |r| Ok((r.int(0)?, r.text(1)?)))?;
            let Some((seq, state)) = task else {
                return Ok(CancelOutcome::NotFound);
            };
            let (outcome, effect) = rules::cancel(rows::task_state(&state)?);
            if let Some(effect) = effect {
                apply::<B>(tx, seq, effect, now)?;
            }
            Ok(outcome)
        })
    }

    fn get(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<Option<TaskView>> {
        self.read("get task", |tx| {
            let params: Params<'_> = &[&org.get(), &id.to_string(), &now.as_millis()];
            let task = tx.first("get task", &sql::get_task(), params, TaskRecord::read)?;
            task.map(|task| {
                task.view_placed(|seq| {
                    let params: Params<'_> = &[&seq, &now.as_millis()];
                    tx.one("get task", &sql::tasks_ahead(), params, |r| r.int(0))
                })
            })
            .transpose()
        })
    }

    fn result(&self, org: OrgId, id: TaskId) -> Result<Option<String>> {
        self.read("read result", |tx| {
            let params: Params<'_> = &[&org.get(), &id.to_string()];
            tx.first("read result", sql::RESULT, params, |r| r.opt_text(0))
                .map(Option::flatten)
        })
    }

    fn request(&self, org: OrgId, id: TaskId) -> Result<Option<String>> {
        self.read("read request", |tx| {
            let params: Params<'_> = &[&org.get(), &id.to_string()];
            tx.first("read request", sql::REQUEST, params, |r| r.text(0))
        })
    }

    fn list(&self, org: OrgId, page: PageRequest, now: Timestamp) -> Result<TaskPage> {
        self.read("list tasks", |tx| {
            let total = tx.one("list tasks", sql::COUNT_TASKS, &[&org.get()], |r| r.int(0))?;
            let params: Params<'_> = &[
                &org.get(),
                &i64::from(page.size()),
                &page.offset(),
                &now.as_millis(),
            ];
            let tasks = tx.all("list tasks", &sql::list_tasks(), params, rows::task_summary)?;
            Ok(TaskPage {
                tasks,
                total: to_u64("count", total)?,
            })
        })
    }

    fn usage(&self, org: OrgId, from: UtcDay, to: UtcDay) -> Result<Vec<DailyUsage>> {
        self.read("usage", |tx| {
            let params: Params<'_> =
                &[&org.get(), &from.days_since_epoch(), &to.days_since_epoch()];
            tx.all("usage", sql::USAGE, params, rows::daily_usage)
        })
    }

    fn queue_stats(&self, now: Timestamp) -> Result<QueueStats> {
        self.read("queue stats", |tx| {
            tx.one(
                "queue stats",
                &sql::queue_stats(),
                &[&now.as_millis()],
                rows::queue_stats,
            )
        })
    }

    fn task_outcome(&self, id: TaskId) -> Result<Option<TaskOutcome>> {
        self.read("task outcome", |tx| {
            let params: Params<'_> = &[&id.to_string()];
            tx.first(
                "task outcome",
                sql::TASK_OUTCOME,
                params,
                rows::task_outcome,
            )
        })
    }

    fn expire(&self, result_ttl: Duration, now: Timestamp) -> Result<u64> {
        let cutoff = rules::expiry_cutoff(result_ttl, now);
        self.write("expire results", |tx| {
            tx.exec("expire results", sql::EXPIRE, &[&cutoff])
        })
    }
}
