//! The records that cross the [`Store`](crate::Store) boundary.
//!
//! Request and result bodies are opaque JSON text: the API serializes its typed
//! request and the worker its typed result, and the store never looks inside,
//! so the queue does not change when the request format does.

use std::time::Duration;

use sie_vocab::Capabilities;

use crate::domain::{
    FailureCode, IdempotencyKey, KeyPrefix, OrgId, OrgName, TaskId, Timestamp, UtcDay,
};

/// The default number of attempts before a task whose lease keeps lapsing
/// fails with `worker_lost` (SPEC 3).
pub const MAX_ATTEMPTS: u32 = 3;

/// Error codes the store itself writes into failed tasks.
pub mod codes {
    /// The task was cancelled before or while it ran.
    pub const CANCELLED: &str = "cancelled";
    /// The task's lease lapsed on its last allowed attempt.
    pub const WORKER_LOST: &str = "worker_lost";
}

/// The messages the store itself writes beside those codes: every store says the same.
pub(crate) mod messages {
    pub const WORKER_LOST_MESSAGE: &str =
        "the task's worker stopped renewing its lease on each of its attempts \
         (the node was interrupted or crashed); submit the task again";
    pub const CANCELLED_QUEUED_MESSAGE: &str = "the task was cancelled before it started";
    pub const CANCELLED_LAPSED_MESSAGE: &str = "the task was cancelled while it ran";
}

/// An account as `sie admin account list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    pub id: crate::AccountId,
    pub name: crate::AccountName,
    pub created_at: Timestamp,
}

/// Queue depth, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Waiting to be leased (queued, or running with a lapsed lease).
    pub queued: u64,
    /// Running under a live lease.
    pub running: u64,
    /// When the oldest waiting task was created; `None` when none waits.
    pub oldest_waiting_since: Option<Timestamp>,
    /// Running tasks whose lease lapsed without a report and that no worker took up again
    /// yet (they wait for another attempt, or for the sweep to end them).
    pub lapsed: u64,
}

/// Where a task stands, read by id alone, so that whoever accepted a worker's report can
/// count how the task ended (`/metrics`) without knowing its organization beforehand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub org: OrgName,
    /// The stored state (a lapsed lease still reads `Running`).
    pub state: TaskState,
    /// The latest attempt: a report on an earlier one did not end the task.
    pub attempt: u32,
    /// The failure's code, for a failed task.
    pub code: Option<String>,
}

/// An organization as `sie admin org list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgInfo {
    pub id: OrgId,
    pub name: OrgName,
    pub owner: crate::AccountId,
    pub members: u32,
    pub billing_note: Option<String>,
    pub approved_at: Option<Timestamp>,
    pub created_at: Timestamp,
}

/// What an account may do with an organization; the API answers 404, 404,
/// 403 and goes on, respectively. An unknown organization and one the caller
/// is not a member of look alike from outside, so names cannot be probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrgAccess {
    UnknownOrg,
    NotMember,
    NotApproved,
    Allowed(OrgId),
}

/// An API key as listed: never its secret, which is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub prefix: KeyPrefix,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// When it last authenticated a request (to the minute: a use within a minute of the
    /// last recorded one is not written again).
    pub last_used_at: Option<Timestamp>,
}

/// A portal account's sign-in record: its id and its password hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub account: crate::AccountId,
    pub password_hash: String,
}

/// A live portal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub account: crate::AccountId,
    pub email: crate::Email,
    /// The token every state-changing form of this session carries.
    pub csrf: String,
}

/// A member of an organization, as the portal lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub account: crate::AccountId,
    pub name: crate::AccountName,
    /// `None` for accounts made by `sie admin`.
    pub email: Option<crate::Email>,
    pub owner: bool,
}

/// What a task asks of the worker that runs it, fixed at enqueue and kept in columns
/// beside the opaque request (as the wire names, `StableDiffusionPipeline`,
/// `DDIMScheduler`), so leasing can match tasks to workers without reading request
/// bodies.
pub use sie_vocab::TaskNeeds;

/// What a worker announces when it asks for work: who it is, and what it can run.
/// [`Queue::lease`](crate::Queue::lease) hands it only tasks whose [`TaskNeeds`] its
/// capabilities meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerOffer {
    /// The lease owner: every later write for the task must come from it.
    pub worker_id: String,
    pub capabilities: Capabilities,
}

impl WorkerOffer {
    pub fn new(worker_id: &str, capabilities: Capabilities) -> Self {
        WorkerOffer {
            worker_id: worker_id.to_owned(),
            capabilities,
        }
    }

    /// The matching rule every store applies inside its lease query.
    pub fn can_run(&self, needs: &TaskNeeds) -> bool {
        self.capabilities.can_run(needs)
    }

    /// The pipelines it runs, by wire name, as the lease queries bind them.
    pub(crate) fn pipeline_names(&self) -> Vec<&'static str> {
        self.capabilities
            .pipelines()
            .iter()
            .map(|p| p.as_str())
            .collect()
    }

    /// The schedulers it has, by wire name.
    pub(crate) fn scheduler_names(&self) -> Vec<&'static str> {
        self.capabilities
            .schedulers()
            .iter()
            .map(|s| s.as_str())
            .collect()
    }
}

/// A worker token as `sie admin worker-token list` shows it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerTokenInfo {
    pub name: crate::WorkerName,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// Caps on queued (not running) tasks, checked in the enqueue transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCaps {
    pub per_org: u32,
    pub global: u32,
}

impl Default for QueueCaps {
    fn default() -> Self {
        Self {
            per_org: 100,
            global: 1000,
        }
    }
}

/// A task to queue, as the API parsed it.
#[derive(Debug, Clone, Copy)]
pub struct NewTask<'a> {
    pub org: OrgId,
    /// The typed request, serialized: what the worker will run.
    pub request_json: &'a str,
    pub needs: TaskNeeds,
    pub idempotency: Option<Idempotency<'a>>,
    /// Where the task's final status is posted when it ends (already checked by the API);
    /// the delivery is queued in the transaction that ends the task.
    pub webhook_url: Option<&'a str>,
}

/// A client's `Idempotency-Key` and what identifies the request it came with: a retry
/// of the same request carries the same, another request does not.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    pub key: &'a IdempotencyKey,
    /// The request as the client sent it, in a canonical form (the store keeps its
    /// SHA-256 only).
    pub request: &'a str,
    /// How long results are kept (SPEC 1.1: a key is forgotten when its task's result
    /// expires). A key whose task finished this long ago is free again, even before the
    /// expiry sweep deletes the task.
    pub result_ttl: Duration,
}

/// A successful enqueue: the task's id, and whether this call created it
/// (`false` when an idempotency key matched an earlier task, which is returned
/// whatever its state, even when the queue is now full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: TaskId,
    pub created: bool,
}

/// A task handed to a worker. `attempt` is the fencing token: every later
/// write for this task passes it back and is refused once another attempt
/// has begun.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: TaskId,
    pub org: OrgId,
    pub attempt: u32,
    pub request_json: String,
    pub created_at: Timestamp,
    /// The task was running under a lease that lapsed (its worker presumed gone), not
    /// queued: this attempt takes over from a lost one.
    pub after_lapse: bool,
}

impl Leased {
    /// The fence every later write of `worker_id` for this task carries.
    pub fn fence(&self, worker_id: &str) -> Fence {
        Fence::new(worker_id, self.id, self.attempt)
    }
}

/// Which attempt of which task a worker's write is for. Every write by a worker carries
/// one, and the store refuses the write once that attempt of that worker no longer owns
/// the task (another attempt began, the task finished, or the worker never held it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub worker_id: String,
    pub id: TaskId,
    pub attempt: u32,
}

impl Fence {
    pub fn new(worker_id: &str, id: TaskId, attempt: u32) -> Self {
        Fence {
            worker_id: worker_id.to_owned(),
            id,
            attempt,
        }
    }
}

/// Why an attempt failed, as its worker reports it. A `retryable` failure (the node ran
/// out of memory, its GPU faulted) may succeed elsewhere; see
/// [`Queue::fail`](crate::Queue::fail).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    pub message: String,
    pub retryable: bool,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl Into<String>, retryable: bool) -> Self {
        Failure {
            code,
            message: message.into(),
            retryable,
        }
    }
}

/// Denoising progress reported by the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub step: u32,
    pub steps: u32,
}

/// What a heartbeat tells the worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease is renewed; keep going.
    Continue,
    /// The lease is renewed, but the client cancelled: stop and call
    /// `fail(.., codes::CANCELLED, ..)`.
    Cancelled,
    /// This attempt no longer owns the task (it was leased again, finished or
    /// expired); stop and discard the work.
    Lost,
}

/// What the worker used, for billing and the usage endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskUsage {
    pub images: u32,
    pub steps: u32,
    pub gpu_ms: u64,
}

impl TaskUsage {
    /// The GPU time as the stores keep it (a signed 64-bit column), saturating.
    pub(crate) fn gpu_ms_stored(&self) -> i64 {
        i64::try_from(self.gpu_ms).unwrap_or(i64::MAX)
    }
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such task in this organization.
    NotFound,
    /// It was queued and is now failed with `cancelled`; it never runs.
    Cancelled,
    /// It is running; its worker is told at its next heartbeat.
    CancelRequested,
    /// It had already finished; nothing changed.
    AlreadyFinished(TaskState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl TaskState {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

/// One task as `GET {base}/{requestId}` needs it: its state, never its result, which can
/// be tens of megabytes and is read alone ([`Tasks::result`](crate::Tasks::result)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    pub id: TaskId,
    pub org: OrgId,
    pub state: TaskState,
    /// Attempts begun so far (0 while it has never run).
    pub attempt: u32,
    /// For queued tasks: see [`Tasks::get`](crate::Tasks::get) for the rule.
    pub queue_position: Option<u32>,
    pub progress: Option<Progress>,
    pub cancel_requested: bool,
    pub error: Option<TaskError>,
    pub usage: Option<TaskUsage>,
    pub created_at: Timestamp,
    /// When the latest attempt began.
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl TaskView {
    /// Whether its result has expired at `now`, results being kept `result_ttl`: the
    /// expiry sweep deletes such a task, and until it runs the API shows it as gone.
    pub fn result_expired(&self, result_ttl: Duration, now: Timestamp) -> bool {
        crate::rules::result_expired(self.finished_at, result_ttl, now)
    }
}

/// One task in a listing: no request or result bodies, which can be megabytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    pub id: TaskId,
    pub state: TaskState,
    pub error: Option<TaskError>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// A page of an organization's tasks, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPage {
    pub tasks: Vec<TaskSummary>,
    /// All the organization's tasks (not expired), for page counts.
    pub total: u64,
}

/// One organization's use on one UTC day (by the day a task finished).
#[derive(Debug, Clone, PartialEq)]
pub struct DailyUsage {
    pub day: UtcDay,
    pub images: u64,
    pub steps: u64,
    pub gpu_seconds: f64,
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
}

/// How long a lease lasts unless renewed (SPEC 3's default).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// How long finished tasks and their results are kept (SPEC 3's default).
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// A webhook delivery claimed for one attempt: the outbox row of a task that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message id (`webhook-id`), the same on every attempt.
    pub id: String,
    pub task: TaskId,
    pub org: OrgId,
    pub url: String,
    /// 1 on the first attempt; [`Webhooks::finish_delivery`](crate::Webhooks) is fenced on it.
    pub attempt: u32,
    /// When the task ended and the delivery was queued.
    pub created_at: Timestamp,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx: never sent again.
    Delivered,
    /// Not delivered; try again at `at`.
    Retry { at: Timestamp, error: String },
    /// Not delivered and never tried again (out of time, or the task is gone).
    GiveUp { error: String },
}
