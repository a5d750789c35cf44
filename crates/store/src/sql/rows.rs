//! Rows into records: how both stores decode what they read, written once.
//!
//! The two drivers have their own row types; [`Column`] is all this module asks of
//! them: one column as a plain value, by the driver's own conversion, or `Corrupt`
//! naming the column. Past that, every decision about what a row means is here, so the
//! stores cannot drift apart: a task's
//! columns become a [`TaskRecord`] and then a [`TaskView`] (a lapsed lease reads as
//! queued, progress and usage only when whole), and each listing's columns become its
//! record. Each reader's doc names the statement in [`statements`](super::statements) whose
//! columns it reads, in that order.

use crate::domain::{AccountId, AccountName, BillingInfo, Email, InvalidValue, KeyPrefix};
use crate::domain::{OrgId, OrgName, TaskId};
use crate::domain::{Timestamp, UtcDay, WorkerName};
use crate::error::{Result, StoreError};
use crate::types::*;

/// One row of a result, as either driver returns it.
pub(crate) trait Row {
    fn int(&self, idx: usize) -> Result<i64>;
    fn opt_int(&self, idx: usize) -> Result<Option<i64>>;
    fn text(&self, idx: usize) -> Result<String>;
    fn opt_text(&self, idx: usize) -> Result<Option<String>>;
    /// A boolean (SQLite stores them as 0 and 1).
    fn flag(&self, idx: usize) -> Result<bool>;
}

/// A driver's row, reading one column as a `T` by the driver's own conversion, or
/// failing with `Corrupt` naming the column. Each driver implements this once; the
/// types the store reads are named once, in the [`Row`] every such row is.
pub(crate) trait Column<T> {
    fn column(&self, idx: usize) -> Result<T>;
}

impl<R> Row for R
where
    R: Column<i64> + Column<Option<i64>> + Column<String> + Column<Option<String>> + Column<bool>,
{
    fn int(&self, idx: usize) -> Result<i64> {
        self.column(idx)
    }
    fn opt_int(&self, idx: usize) -> Result<Option<i64>> {
        self.column(idx)
    }
    fn text(&self, idx: usize) -> Result<String> {
        self.column(idx)
    }
    fn opt_text(&self, idx: usize) -> Result<Option<String>> {
        self.column(idx)
    }
    fn flag(&self, idx: usize) -> Result<bool> {
        self.column(idx)
    }
}

/// A column whose value this sie cannot read: the schema is not ours, or a row was
/// edited by hand.
pub(crate) fn corrupt_column(column: &str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {column}: {problem}"))
}

/// A stored value that no longer parses as its domain type.
fn parsed<T>(column: &str, value: Result<T, InvalidValue>) -> Result<T> {
    value.map_err(|e| corrupt_column(column, e))
}

fn to_u32(column: &str, n: i64) -> Result<u32> {
    u32::try_from(n).map_err(|_| corrupt_column(column, format!("{n} is out of range")))
}

pub(crate) fn to_u64(column: &str, n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| corrupt_column(column, format!("{n} is negative")))
}

fn opt_ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_millis)
}

/// A task's columns as stored ([`sql::task_columns`](super::statements::task_columns)), before
/// any rule is applied to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskRecord {
    /// The enqueue order, which the queue position is counted by.
    seq: i64,
    id: String,
    org_id: i64,
    state: String,
    attempt: i64,
    progress_step: Option<i64>,
    progress_steps: Option<i64>,
    cancel_requested: bool,
    error_code: Option<String>,
    error_message: Option<String>,
    usage_images: Option<i64>,
    usage_steps: Option<i64>,
    usage_gpu_ms: Option<i64>,
    created_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    /// The row meets [`sql::waiting`](super::statements::waiting) at the time asked about.
    waiting: bool,
}

impl TaskRecord {
    pub fn read(r: &dyn Row) -> Result<Self> {
        Ok(Self {
            seq: r.int(0)?,
            id: r.text(1)?,
            org_id: r.int(2)?,
            state: r.text(3)?,
            attempt: r.int(4)?,
            progress_step: r.opt_int(5)?,
            progress_steps: r.opt_int(6)?,
            cancel_requested: r.flag(7)?,
            error_code: r.opt_text(8)?,
            error_message: r.opt_text(9)?,
            usage_images: r.opt_int(10)?,
            usage_steps: r.opt_int(11)?,
            usage_gpu_ms: r.opt_int(12)?,
            created_at: r.int(13)?,
            started_at: r.opt_int(14)?,
            finished_at: r.opt_int(15)?,
            waiting: r.flag(16)?,
        })
    }

    /// What `get` shows: the view and, for a queued task, its queue position, 1 more than
    /// what `tasks_ahead` counts for its `seq` ([`sql::tasks_ahead`](super::statements::tasks_ahead)).
    pub fn view_placed(self, tasks_ahead: impl FnOnce(i64) -> Result<i64>) -> Result<TaskView> {
        let seq = self.seq;
        let mut view = self.view()?;
        if view.state == TaskState::Queued {
            view.queue_position = Some(to_u32("queue position", tasks_ahead(seq)? + 1)?);
        }
        Ok(view)
    }

    /// What a client is shown, without the queue position (which needs another query).
    fn view(self) -> Result<TaskView> {
        let state = task_state(&self.state)?;
        // A lapsed lease puts the task back in the queue in all but the row; the lost
        // attempt's progress is not the next one's.
        let state = if self.waiting {
            TaskState::Queued
        } else {
            state
        };
        let progress = match (self.progress_step, self.progress_steps) {
            (Some(step), Some(steps)) if !self.waiting => Some(Progress {
                step: to_u32("progress_step", step)?,
                steps: to_u32("progress_steps", steps)?,
            }),
            _ => None,
        };
        let usage = match (self.usage_images, self.usage_steps, self.usage_gpu_ms) {
            (Some(images), Some(steps), Some(gpu_ms)) => Some(TaskUsage {
                images: to_u32("usage_images", images)?,
                steps: to_u32("usage_steps", steps)?,
                gpu_ms: to_u64("usage_gpu_ms", gpu_ms)?,
            }),
            _ => None,
        };
        let message = self.error_message;
        Ok(TaskView {
            id: parsed("id", TaskId::parse(&self.id))?,
            org: OrgId::from_row(self.org_id),
            state,
            attempt: to_u32("attempt", self.attempt)?,
            queue_position: None,
            progress,
            cancel_requested: self.cancel_requested,
            error: self.error_code.map(|code| TaskError {
                code,
                message: message.unwrap_or_default(),
            }),
            usage,
            created_at: Timestamp::from_millis(self.created_at),
            started_at: opt_ts(self.started_at),
            finished_at: opt_ts(self.finished_at),
        })
    }
}

/// A task as a listing shows it, from a row of [`sql::list_tasks`](super::statements::list_tasks):
/// the view without its bodies.
pub(crate) fn task_summary(r: &dyn Row) -> Result<TaskSummary> {
    let v = TaskRecord::read(r)?.view()?;
    Ok(TaskSummary {
        id: v.id,
        state: v.state,
        error: v.error,
        created_at: v.created_at,
        started_at: v.started_at,
        finished_at: v.finished_at,
    })
}

pub(crate) fn task_state(stored: &str) -> Result<TaskState> {
    TaskState::parse(stored).ok_or_else(|| corrupt_column("state", format!("{stored:?}")))
}

pub(crate) fn task_id(r: &dyn Row, idx: usize) -> Result<TaskId> {
    parsed("id", TaskId::parse(&r.text(idx)?))
}

/// The task a lease picked ([`sql::CLAIM`](super::statements::CLAIM) takes it only if `state`
/// and `attempt` are still these): `seq, id, org_id, state, attempt, request, created_at`.
pub(crate) struct Candidate {
    pub seq: i64,
    pub id: TaskId,
    pub org_id: i64,
    pub state: String,
    pub attempt: i64,
    pub request_json: String,
    pub created_at: Timestamp,
}

impl Candidate {
    pub fn read(r: &dyn Row) -> Result<Self> {
        Ok(Self {
            seq: r.int(0)?,
            id: task_id(r, 1)?,
            org_id: r.int(2)?,
            state: r.text(3)?,
            attempt: r.int(4)?,
            request_json: r.text(5)?,
            created_at: Timestamp::from_millis(r.int(6)?),
        })
    }

    /// What the worker is handed once the claim succeeded: the next attempt.
    pub fn leased(self) -> Result<Leased> {
        Ok(Leased {
            id: self.id,
            org: OrgId::from_row(self.org_id),
            attempt: to_u32("attempt", self.attempt + 1)?,
            after_lapse: self.state == "running",
            request_json: self.request_json,
            created_at: self.created_at,
        })
    }
}

/// A task as its worker's report finds it ([`sql::FENCED_TASK`](super::statements::FENCED_TASK)).
pub(crate) struct Fenced {
    pub seq: i64,
    /// Attempts that count towards [`MAX_ATTEMPTS`]: begun, less those given back.
    pub counted_attempts: i64,
    pub cancel_requested: bool,
}

impl Fenced {
    pub fn read(r: &dyn Row) -> Result<Self> {
        Ok(Self {
            seq: r.int(0)?,
            counted_attempts: r.int(1)?,
            cancel_requested: r.flag(2)?,
        })
    }
}

/// [`sql::LIST_ACCOUNTS`](super::statements::LIST_ACCOUNTS).
pub(crate) fn account(r: &dyn Row) -> Result<AccountInfo> {
    Ok(AccountInfo {
        id: AccountId::from_row(r.int(0)?),
        name: parsed("name", AccountName::parse(&r.text(1)?))?,
        created_at: Timestamp::from_millis(r.int(2)?),
    })
}

/// [`sql::LIST_ORGS`](super::statements::LIST_ORGS).
pub(crate) fn org(r: &dyn Row) -> Result<OrgInfo> {
    Ok(OrgInfo {
        id: OrgId::from_row(r.int(0)?),
        name: parsed("name", OrgName::parse(&r.text(1)?))?,
        owner: AccountId::from_row(r.int(2)?),
        members: to_u32("members", r.int(3)?)?,
        billing_note: r.opt_text(4)?,
        approved_at: opt_ts(r.opt_int(5)?),
        created_at: Timestamp::from_millis(r.int(6)?),
    })
}

/// [`sql::ORG_ACCESS`](super::statements::ORG_ACCESS), for an organization that exists.
pub(crate) fn org_access(r: &dyn Row) -> Result<OrgAccess> {
    Ok(match (r.flag(2)?, r.opt_int(1)?) {
        (false, _) => OrgAccess::NotMember,
        (true, None) => OrgAccess::NotApproved,
        (true, Some(_)) => OrgAccess::Allowed(OrgId::from_row(r.int(0)?)),
    })
}

/// `prefix, created_at, revoked_at` of an API key.
pub(crate) fn api_key(r: &dyn Row) -> Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        prefix: parsed("prefix", KeyPrefix::parse(&r.text(0)?))?,
        created_at: Timestamp::from_millis(r.int(1)?),
        revoked_at: opt_ts(r.opt_int(2)?),
        last_used_at: opt_ts(r.opt_int(3)?),
    })
}

/// [`sql::MEMBERS`](super::statements::MEMBERS).
pub(crate) fn member(r: &dyn Row) -> Result<Member> {
    Ok(Member {
        account: AccountId::from_row(r.int(0)?),
        name: parsed("name", AccountName::parse(&r.text(1)?))?,
        email: r
            .opt_text(2)?
            .map(|e| parsed("email", Email::parse(&e)))
            .transpose()?,
        owner: r.flag(3)?,
    })
}

/// [`sql::BILLING`](super::statements::BILLING).
pub(crate) fn billing(r: &dyn Row) -> Result<BillingInfo> {
    let tax_id = r.opt_text(4)?;
    parsed(
        "billing",
        BillingInfo::parse(
            &r.text(0)?,
            &r.text(1)?,
            &r.text(2)?,
            &r.text(3)?,
            tax_id.as_deref(),
        ),
    )
}

pub(crate) fn worker_name(r: &dyn Row) -> Result<WorkerName> {
    parsed("name", WorkerName::parse(&r.text(0)?))
}

/// [`sql::LIST_WORKER_TOKENS`](super::statements::LIST_WORKER_TOKENS).
pub(crate) fn worker_token(r: &dyn Row) -> Result<WorkerTokenInfo> {
    Ok(WorkerTokenInfo {
        name: worker_name(r)?,
        created_at: Timestamp::from_millis(r.int(1)?),
        revoked_at: opt_ts(r.opt_int(2)?),
    })
}

/// [`sql::USAGE`](super::statements::USAGE).
pub(crate) fn daily_usage(r: &dyn Row) -> Result<DailyUsage> {
    Ok(DailyUsage {
        day: UtcDay::from_days_since_epoch(r.int(0)?),
        images: to_u64("images", r.int(1)?)?,
        steps: to_u64("steps", r.int(2)?)?,
        gpu_seconds: to_u64("gpu_ms", r.int(3)?)? as f64 / 1000.0,
        tasks_succeeded: to_u64("tasks_succeeded", r.int(4)?)?,
        tasks_failed: to_u64("tasks_failed", r.int(5)?)?,
    })
}

/// [`sql::queue_stats`](super::statements::queue_stats).
pub(crate) fn queue_stats(r: &dyn Row) -> Result<QueueStats> {
    Ok(QueueStats {
        queued: to_u64("queued", r.int(0)?)?,
        running: to_u64("running", r.int(1)?)?,
        oldest_waiting_since: r.opt_int(2)?.map(Timestamp::from_millis),
        lapsed: to_u64("lapsed", r.int(3)?)?,
    })
}

/// [`sql::TASK_OUTCOME`](super::statements::TASK_OUTCOME).
pub(crate) fn task_outcome(r: &dyn Row) -> Result<TaskOutcome> {
    Ok(TaskOutcome {
        org: parsed("name", OrgName::parse(&r.text(0)?))?,
        state: task_state(&r.text(1)?)?,
        attempt: to_u32("attempt", r.int(2)?)?,
        code: r.opt_text(3)?,
    })
}

/// A claimed delivery: `id, task_id, org_id, url, attempts, created_at`
/// ([`sql::CLAIM_DELIVERY`](super::statements::CLAIM_DELIVERY)).
pub(crate) fn delivery(r: &dyn Row) -> Result<crate::types::Delivery> {
    Ok(crate::types::Delivery {
        id: r.text(0)?,
        task: task_id(r, 1)?,
        org: OrgId::from_row(r.int(2)?),
        url: r.text(3)?,
        attempt: to_u32("attempts", r.int(4)?)?,
        created_at: crate::domain::Timestamp::from_millis(r.int(5)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A running task whose lease lapsed on its first attempt, halfway through.
    fn lapsed() -> TaskRecord {
        TaskRecord {
            seq: 7,
            id: TaskId::random().to_string(),
            org_id: 3,
            state: "running".into(),
            attempt: 1,
            progress_step: Some(5),
            progress_steps: Some(10),
            cancel_requested: false,
            error_code: None,
            error_message: None,
            usage_images: None,
            usage_steps: None,
            usage_gpu_ms: None,
            created_at: 1_000,
            started_at: Some(2_000),
            finished_at: None,
            waiting: true,
        }
    }

    #[test]
    fn a_lapsed_lease_reads_as_queued_without_progress() {
        let v = lapsed().view().unwrap();
        assert_eq!(
            (v.state, v.progress, v.attempt),
            (TaskState::Queued, None, 1)
        );
        let live = TaskRecord {
            waiting: false,
            ..lapsed()
        };
        let v = live.view().unwrap();
        assert_eq!(v.state, TaskState::Running);
        assert_eq!(v.progress, Some(Progress { step: 5, steps: 10 }));
        assert_eq!(v.started_at, Some(Timestamp::from_millis(2_000)));
    }

    #[test]
    fn usage_and_errors_show_only_when_stored() {
        let partial = TaskRecord {
            usage_images: Some(1),
            usage_steps: Some(20),
            ..lapsed()
        };
        assert_eq!(partial.view().unwrap().usage, None);
        let failed = TaskRecord {
            state: "failed".into(),
            waiting: false,
            error_code: Some("worker_lost".into()),
            usage_images: Some(0),
            usage_steps: Some(0),
            usage_gpu_ms: Some(1500),
            ..lapsed()
        };
        let v = failed.view().unwrap();
        assert_eq!(v.usage.map(|u| u.gpu_ms), Some(1500));
        assert_eq!(
            v.error,
            Some(TaskError {
                code: "worker_lost".into(),
                message: String::new()
            })
        );
    }

    #[test]
    fn an_unreadable_value_names_its_column() {
        let err = |r: TaskRecord| r.view().unwrap_err().to_string();
        let state = err(TaskRecord {
            state: "paused".into(),
            ..lapsed()
        });
        assert!(
            state.contains("column state") && state.contains("paused"),
            "{state}"
        );
        let attempt = err(TaskRecord {
            attempt: -1,
            ..lapsed()
        });
        assert!(attempt.contains("column attempt"), "{attempt}");
        let id = err(TaskRecord {
            id: "nope".into(),
            ..lapsed()
        });
        assert!(id.contains("column id"), "{id}");
    }
}
