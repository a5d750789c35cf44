//! The role traits: what the API, the worker and `sie admin` each ask of persistent state.
//!
//! One store serves four callers that never need each other's methods: the portal and
//! `sie admin` manage [`Accounts`] and [`WorkerTokens`], a client's request reaches
//! [`Tasks`], and a worker holds a lease through [`Queue`]. A caller names the role it
//! uses (`StoreSource` holds only an `Arc<dyn Queue>`), so what it can touch is visible in
//! its types; [`Store`] is all four, for the server and the CLI that wire everything.
//!
//! They are synchronous and object-safe: the async server holds an `Arc<dyn Store>` and
//! calls it through `spawn_blocking`, and [`SqliteStore`](crate::SqliteStore) and
//! [`PostgresStore`](crate::PostgresStore) sit behind them without callers changing. Time
//! is always an argument (`now`), never read from a clock inside, so tests drive leases
//! and expiry deterministically. Every implementation must pass the conformance suite
//! (`conformance`, behind the crate's `conformance` feature).

use std::time::{Duration, Instant};

use crate::domain::WorkerName;
use crate::domain::{AccountId, AccountName, BillingInfo, BillingNote, Email};
use crate::domain::{KeyPrefix, OrgId, OrgName, PageRequest, TaskId, Timestamp, UtcDay};
use crate::error::Result;
use crate::keys::{NewApiKey, NewWorkerToken};
use crate::signal::WorkSignal;
use crate::types::*;

/// How often a waiting [`Queue::lease_within`] looks at the queue even without a ring.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Accounts, organizations and API keys (SPEC 2): the portal's and `sie admin`'s role,
/// and the API's, which authenticates every request through it.
pub trait Accounts: Send + Sync {
    /// Creates an account; [`StoreError::AccountExists`](crate::StoreError) if the name is taken.
    fn create_account(&self, name: &AccountName, now: Timestamp) -> Result<AccountId>;

    /// Looks an account up by name (for `sie admin`, which speaks in names).
    fn find_account(&self, name: &AccountName) -> Result<Option<AccountId>>;

    /// All accounts, by name.
    fn list_accounts(&self) -> Result<Vec<AccountInfo>>;

    /// Creates an organization owned by `owner`, who becomes its first member.
    /// It starts unapproved: its tasks are refused until [`Accounts::approve_org`].
    fn create_org(&self, name: &OrgName, owner: AccountId, now: Timestamp) -> Result<OrgId>;

    /// Makes `account` a member; `false` if it already was.
    fn add_member(&self, org: &OrgName, account: AccountId, now: Timestamp) -> Result<bool>;

    /// Records billing information and approves the organization. Approving
    /// again replaces the note and keeps the first approval time.
    fn approve_org(&self, org: &OrgName, billing_note: &BillingNote, now: Timestamp) -> Result<()>;

    /// All organizations, by name.
    fn list_orgs(&self) -> Result<Vec<OrgInfo>>;

    /// Makes a key for `account`. The returned value is the only place the
    /// key's secret ever exists; the store keeps its SHA-256 and prefix.
    fn create_api_key(&self, account: AccountId, now: Timestamp) -> Result<NewApiKey>;

    /// Revokes a key; `false` if no such key or it was already revoked.
    fn revoke_api_key(&self, prefix: &KeyPrefix, now: Timestamp) -> Result<bool>;

    /// The account's keys, oldest first.
    fn list_api_keys(&self, account: AccountId) -> Result<Vec<ApiKeyInfo>>;

    /// The account a presented `Salad-Api-Key` belongs to, if it is a live key; its last
    /// use is recorded (to the minute).
    fn authenticate(&self, presented_key: &str, now: Timestamp) -> Result<Option<AccountId>>;

    /// Whether `account` may use the organization named `org`.
    fn org_access(&self, account: AccountId, org: &OrgName) -> Result<OrgAccess>;
}

/// What the portal keeps beside [`Accounts`]: accounts that sign in with an email and a
/// password (hashed by the caller; the store never sees a password), server-side sessions
/// (stored by the SHA-256 of their token), and billing information.
pub trait Portal: Send + Sync {
    /// A new account that signs in with `email`. Its name (for `sie admin`) is made from
    /// the email. `StoreError::EmailTaken` when an account has it.
    fn sign_up(&self, email: &Email, password_hash: &str, now: Timestamp) -> Result<AccountId>;

    /// The sign-in record for `email`, if an account has it.
    fn login(&self, email: &Email) -> Result<Option<Login>>;

    /// Replaces the password hash and ends every session of the account.
    fn set_password(&self, account: AccountId, password_hash: &str) -> Result<()>;

    /// Starts a session for `account`, stored under `token_hash`.
    fn create_session(
        &self,
        account: AccountId,
        token_hash: &str,
        csrf: &str,
        now: Timestamp,
    ) -> Result<()>;

    /// The session stored under `token_hash`, marked as seen now; `None` (and the session
    /// deleted) when it was last seen more than `idle` ago.
    fn session(&self, token_hash: &str, idle: Duration, now: Timestamp) -> Result<Option<Session>>;

    /// Ends a session; whether there was one.
    fn end_session(&self, token_hash: &str) -> Result<bool>;

    /// The organizations `account` is a member of, by name.
    fn orgs_of(&self, account: AccountId) -> Result<Vec<OrgInfo>>;

    /// The members of `org`, by name.
    fn members(&self, org: &OrgName) -> Result<Vec<Member>>;

    /// Records `billing` for `org` (replacing what was there), and approves it when
    /// `approve` (the first approval time is kept).
    fn set_billing(
        &self,
        org: &OrgName,
        billing: &BillingInfo,
        approve: bool,
        now: Timestamp,
    ) -> Result<()>;

    /// The billing information `org` added, if any.
    fn billing(&self, org: &OrgName) -> Result<Option<BillingInfo>>;
}

/// Worker tokens: how remote workers (`/worker/v1`) prove who they are.
pub trait WorkerTokens: Send + Sync {
    /// Makes a token for the worker `name`; [`StoreError::WorkerExists`](crate::StoreError)
    /// if a token of that name was ever made. Only the token's SHA-256 is kept.
    fn create_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<NewWorkerToken>;

    /// Revokes the worker's token; `false` if no such token or it was already
    /// revoked. Tasks it holds go back to the queue at once (their leases lapse
    /// now), so a revoked node costs a retry, not a wait for the lease.
    fn revoke_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<bool>;

    /// All worker tokens, by name.
    fn list_worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>>;

    /// The worker a presented token belongs to, if it is live.
    fn authenticate_worker(&self, presented_token: &str) -> Result<Option<WorkerName>>;
}

/// The client's side of the queue (SPEC 3): submit, cancel, read back, and the
/// housekeeping that reads the same rows (stats, expiry, usage).
pub trait Tasks: Send + Sync {
    /// Queues a task, durably: it is committed when this returns.
    ///
    /// With an idempotency key already used in this organization for the same request,
    /// returns the first task (`created: false`) and stores nothing; used for another
    /// request, fails with `StoreError::IdempotencyKeyReused`. A key whose task finished
    /// at least `result_ttl` (of its [`Idempotency`]) before `now` is forgotten, whether or
    /// not the expiry sweep has deleted the task yet: the call goes on as without it and
    /// binds the key to the new task. Otherwise, when the
    /// organization already has `caps.per_org` queued tasks, or the server
    /// `caps.global`, fails with `StoreError::QueueFull`; its
    /// `retry_after_seconds` is the time one queued task takes to start at the
    /// rate tasks finished over the last minute, clamped to 1..=60 (30 when
    /// nothing finished).
    fn enqueue(&self, task: &NewTask<'_>, caps: QueueCaps, now: Timestamp) -> Result<Enqueued>;

    /// Cancels a task of `org`; see [`CancelOutcome`] for the cases.
    fn cancel(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<CancelOutcome>;

    /// A task of `org`; `None` for unknown, deleted by expiry, or another organization's.
    /// A task whose result expired but that the sweep has not deleted yet is still
    /// returned: [`TaskView::result_expired`] says so, and the API answers 404 for it.
    ///
    /// A running task whose lease lapsed by `now` (and may run again) is
    /// shown as queued, without progress: it waits for its next attempt.
    ///
    /// **Queue position rule** (1-based, queued tasks only): the task's place
    /// if leasing went round-robin from now on. With `r` its place in its own
    /// organization's queue, the tasks ahead of it are the queued tasks that
    /// are placed before `r` in their own organization, and those placed
    /// exactly `r` in organizations whose turn comes earlier (served less
    /// recently, then older oldest task). It ignores running tasks, so it is
    /// an estimate; it is exact for a single worker.
    fn get(&self, org: OrgId, id: TaskId, now: Timestamp) -> Result<Option<TaskView>>;

    /// The stored result (the worker's `modelOutputs`, as JSON text) of a task of `org`
    /// that succeeded; `None` for any other task. Read alone, since it can be tens of
    /// megabytes: [`Tasks::get`] and [`Tasks::list`] never read it.
    fn result(&self, org: OrgId, id: TaskId) -> Result<Option<String>>;

    /// The stored request (the parsed create-task body, as JSON text) of a task of `org`;
    /// read alone, like [`Tasks::result`], since input images make it large.
    fn request(&self, org: OrgId, id: TaskId) -> Result<Option<String>>;

    /// The organization's tasks, newest first. States read as in [`Tasks::get`].
    fn list(&self, org: OrgId, page: PageRequest, now: Timestamp) -> Result<TaskPage>;

    /// The organization's usage per UTC day, `from..=to`, days without any
    /// finished task left out, oldest first.
    fn usage(&self, org: OrgId, from: UtcDay, to: UtcDay) -> Result<Vec<DailyUsage>>;

    /// How many tasks wait and run at `now`, across all organizations, how long the
    /// oldest has waited, and how many leases lapsed unreported (what `/metrics` shows).
    fn queue_stats(&self, now: Timestamp) -> Result<QueueStats>;

    /// Where the task `id` stands, whatever its organization: for whoever accepted a
    /// worker's report and counts how tasks end. `None` for an unknown or deleted task.
    fn task_outcome(&self, id: TaskId) -> Result<Option<TaskOutcome>>;

    /// Deletes tasks that finished at least `result_ttl` before `now`, results
    /// and idempotency keys with them; returns how many. Usage totals stay.
    fn expire(&self, result_ttl: Duration, now: Timestamp) -> Result<u64>;
}

/// The worker's side of the queue: take a task, keep its lease, report how it ended.
///
/// **Fencing:** `attempt` (from [`Leased`]) and the worker's id together are the fencing
/// token. Every write after the lease is made only where the task is still `running`
/// under that attempt and that worker, so a worker whose lease passed on (or that never
/// held it) changes nothing and is told so.
pub trait Queue: Send + Sync {
    /// Rung whenever a task may have become leasable (enqueued, given back),
    /// including by other processes where the database can tell (PostgreSQL's
    /// `LISTEN/NOTIFY`). Waiting workers sleep on it between leases.
    fn work_signal(&self) -> &WorkSignal;

    /// Claims one task that `offer` can run (see [`WorkerOffer::can_run`]) for
    /// `offer.worker_id` until `now + lease`, or `None` when no such task is waiting.
    ///
    /// Waiting means queued, or running with a lease that lapsed by `now`
    /// (its worker is presumed gone; taking it is a new attempt). First, lapsed
    /// tasks that cannot run again are finished: after [`MAX_ATTEMPTS`] with
    /// `worker_lost`, and those whose cancel was requested with `cancelled`.
    ///
    /// **Fairness rule:** the organization with the fewest running tasks
    /// (live leases) goes first; ties go to the organization served least
    /// recently (each lease moves its organization to the back of the turn
    /// order; never-served organizations come first), then to the one whose
    /// oldest waiting task is oldest. Within the organization, its oldest
    /// waiting task (FIFO, by enqueue order). With one worker this is plain
    /// round-robin between organizations; with many, the organization using
    /// fewest workers is served next, so one backlog never starves another.
    /// Tasks the worker cannot run are invisible to this rule.
    fn lease(&self, offer: &WorkerOffer, lease: Duration, now: Timestamp)
        -> Result<Option<Leased>>;

    /// [`Queue::lease`], waiting up to `wait` for a task: between looks it sleeps on
    /// [`Queue::work_signal`], and looks again at least every [`RECHECK`] (a lease that
    /// lapses, or a task queued by a process this one cannot hear, rings nothing).
    fn lease_within(
        &self,
        offer: &WorkerOffer,
        lease: Duration,
        wait: Duration,
    ) -> Result<Option<Leased>> {
        let deadline = Instant::now() + wait;
        loop {
            // Read before looking, so a ring between the look and the sleep is not lost.
            let seen = self.work_signal().generation();
            if let Some(leased) = self.lease(offer, lease, Timestamp::now())? {
                return Ok(Some(leased));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.work_signal().wait_past(seen, left.min(RECHECK));
        }
    }

    /// Finishes the tasks whose lease lapsed and that may not run again (out
    /// of attempts: `worker_lost`; cancel requested: `cancelled`); returns them.
    /// [`Queue::lease`] does this first; the expiry sweep calls it too,
    /// so such tasks end even while no worker asks for work.
    fn sweep(&self, now: Timestamp) -> Result<Vec<TaskId>>;

    /// Renews the lease of `fence`'s attempt and records progress. Answers `Lost` when
    /// that attempt of that worker no longer owns the task (fenced on `state = running
    /// AND attempt = ? AND lease_owner = ?`), which is also the answer to a worker that
    /// never leased it.
    fn heartbeat(
        &self,
        fence: &Fence,
        progress: Option<Progress>,
        lease: Duration,
        now: Timestamp,
    ) -> Result<Heartbeat>;

    /// Stores the result of `fence`'s attempt; `false` (and nothing written) if that
    /// attempt no longer owns the task. The first completion wins.
    fn complete(
        &self,
        fence: &Fence,
        result_json: &str,
        usage: TaskUsage,
        now: Timestamp,
    ) -> Result<bool>;

    /// Fails the task from `fence`'s attempt, fenced as [`Queue::complete`].
    ///
    /// A retryable failure puts the task back in the queue instead, and the attempt
    /// counts: on the last of [`MAX_ATTEMPTS`] the task fails with the failure's code and
    /// message.
    fn fail(&self, fence: &Fence, failure: &Failure, now: Timestamp) -> Result<bool>;

    /// Lets lapse at `now` the live leases of every worker whose id starts with
    /// `owner_prefix`; returns how many. For a process that restarts after a crash and
    /// whose workers' ids it alone uses (`sie serve`'s `local:N`, under its data
    /// directory's lock): nothing else can hold those leases, so their tasks are waiting
    /// again at once instead of after the lease. Each lapsed lease counts as an attempt, as
    /// any lost lease does.
    fn lapse_leases(&self, owner_prefix: &str, now: Timestamp) -> Result<u64>;

    /// Gives a running task back to the queue (graceful shutdown) without
    /// counting the attempt. A task whose cancel was requested fails with
    /// `cancelled` instead. Fenced as [`Queue::complete`].
    fn release(&self, fence: &Fence, now: Timestamp) -> Result<bool>;
}

/// Webhooks (SPEC 1.1 `callInputs.webhook_url`): each organization's signing secret and
/// the outbox of deliveries, which the queue fills in the transaction that ends a task
/// with a webhook URL. The API process delivers them; the worker never does.
pub trait Webhooks: Send + Sync {
    /// Sets (or replaces) the organization's signing secret; `UnknownOrg` if none has the
    /// name. The secret is kept as given: signing needs it.
    fn set_webhook_secret(&self, org: &OrgName, secret: &str) -> Result<()>;

    /// The organization's signing secret, if one was set.
    fn webhook_secret(&self, org: OrgId) -> Result<Option<String>>;

    /// Claims up to `limit` deliveries that are due at `now` for one attempt each, held
    /// until `now + hold` (after which, unreported, they are due again: the node that
    /// claimed them is presumed gone). Each claim counts an attempt. Oldest due first;
    /// deliveries another caller is claiming at the same moment are passed over.
    fn claim_deliveries(&self, limit: u32, hold: Duration, now: Timestamp)
        -> Result<Vec<Delivery>>;

    /// Records how the attempt `delivery` was claimed for ended; `false` (nothing written)
    /// when the delivery already ended, or, for a failure, when that is no longer its latest
    /// attempt. A success is recorded from any attempt.
    fn finish_delivery(
        &self,
        delivery: &Delivery,
        outcome: &DeliveryOutcome,
        now: Timestamp,
    ) -> Result<bool>;
}

/// Every role at once, for the callers that wire them all (the server's state, `sie`'s
/// commands). Any type with the four roles is a `Store`, and an `Arc<dyn Store>` upcasts
/// to the one role a component needs (`Arc<dyn Queue>`).
pub trait Store: Accounts + Portal + WorkerTokens + Tasks + Queue + Webhooks {}

impl<T: Accounts + Portal + WorkerTokens + Tasks + Queue + Webhooks + ?Sized> Store for T {}
