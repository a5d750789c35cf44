//! The conformance suite: what every [`Store`] implementation must do alike.
//!
//! pict-rs ran its sled and Postgres repositories through different tests and
//! they drifted apart; here each check is a public function over a
//! [`Harness`] (which opens the same backing database as often as asked), and
//! [`conformance_tests!`](crate::conformance_tests) turns the whole list into
//! `#[test]`s for one implementation, so a new backend gets every check by
//! writing one harness. Time is passed explicitly, so lease expiry and result
//! TTLs are tested without sleeping.
//!
//! The checks are grouped by role: [`accounts`] (accounts, organizations, keys and
//! worker tokens), [`portal`] (sign-in, sessions, members, billing), [`tasks`] (the client's side of the queue), [`queue`] (the
//! worker's side: leasing, fairness, fencing) and [`webhooks`] (secrets, the outbox). Behind the crate's `conformance`
//! feature, so the library does not carry them.

mod accounts;
mod portal;
mod queue;
mod tasks;
mod webhooks;

pub use accounts::*;
pub use portal::*;
pub use queue::*;
pub use tasks::*;
pub use webhooks::*;

use std::time::Duration;

use crate::domain::{
    AccountName, BillingNote, FailureCode, IdempotencyKey, OrgId, OrgName, PageRequest,
};
use crate::domain::{TaskId, Timestamp};
use crate::store::Store;
use crate::types::*;
use sie_vocab::{Capabilities, Pipeline, SchedulerKind};

/// Opens the database under test. Every call to `open` must reach the same
/// data (same file, same PostgreSQL database); a fresh harness starts empty.
pub trait Harness: Sync {
    fn open(&self) -> Box<dyn Store>;
}

/// Generates one `#[test]` per conformance check. `$harness` is an expression
/// building a fresh, empty [`Harness`] (evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            accounts_and_orgs,
            auth_and_org_access,
            key_revoke,
            idempotency,
            idempotency_key_is_forgotten_when_its_result_expires,
            results_are_read_alone,
            queue_caps_and_retry_after,
            fifo_within_org,
            fairness_between_orgs,
            round_robin_with_one_worker,
            lease_expiry_requeues,
            worker_lost_after_three_attempts,
            fencing_refuses_stale_attempts,
            first_completion_wins,
            release_returns_task,
            cancel_cases,
            get_and_list,
            queue_position_follows_lease_order,
            expiry,
            usage_totals,
            persistence_across_reopen,
            concurrent_leasing_never_double_leases,
            lease_matches_worker_offer,
            lease_agrees_with_can_run_for_every_offer,
            retryable_failure_requeues_then_fails,
            worker_tokens,
            work_signal_rings_on_enqueue_and_requeue,
            sweep_finishes_lapsed_tasks_without_a_lease,
            lapse_leases_frees_what_one_process_held,
            queue_stats_and_task_outcomes,
            portal_sign_up_and_sessions,
            portal_orgs_members_and_billing,
            api_keys_remember_their_last_use,
            webhook_secrets,
            webhook_deliveries_are_queued_as_tasks_end,
            webhook_attempts_are_claimed_fenced_and_retried,
            webhook_deliveries_expire_with_their_task
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness);
            }
        )*
    };
}

/// Midnight UTC on 2024-10-04: a day boundary, so usage days are predictable.
const T0: i64 = 20_000 * 86_400_000;
const LEASE: Duration = Duration::from_secs(60);
/// How long results are kept, unless a check says otherwise.
const RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
const CAPS: QueueCaps = QueueCaps {
    per_org: 1000,
    global: 10_000,
};

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn secs(s: i64) -> Timestamp {
    at(s * 1000)
}

fn account(s: &dyn Store, name: &str) -> crate::AccountId {
    s.create_account(&AccountName::parse(name).unwrap(), at(0))
        .unwrap()
}

fn note(text: &str) -> BillingNote {
    BillingNote::parse(text).unwrap()
}

/// An approved organization owned by a fresh account.
fn approved_org(s: &dyn Store, name: &str) -> OrgId {
    let owner = account(s, &format!("{name}-owner"));
    let org_name = OrgName::parse(name).unwrap();
    let id = s.create_org(&org_name, owner, at(0)).unwrap();
    s.approve_org(&org_name, &note("invoice to test"), at(0))
        .unwrap();
    id
}

/// A text-to-image task of `org` with `body`, under the idempotency key `key` if any.
fn new_task<'a>(org: OrgId, body: &'a str, key: Option<&'a IdempotencyKey>) -> NewTask<'a> {
    NewTask {
        org,
        request_json: body,
        needs: txt2img(),
        idempotency: key.map(|key| Idempotency {
            key,
            request: body,
            result_ttl: RESULT_TTL,
        }),
        webhook_url: None,
    }
}

fn enqueue(s: &dyn Store, org: OrgId, body: &str, now: Timestamp) -> TaskId {
    let e = s.enqueue(&new_task(org, body, None), CAPS, now).unwrap();
    assert!(e.created);
    e.id
}

fn view(s: &dyn Store, org: OrgId, id: TaskId) -> TaskView {
    s.get(org, id, secs(0)).unwrap().expect("task exists")
}

fn lease(s: &dyn Store, now: Timestamp) -> Option<Leased> {
    s.lease(&offer(W), LEASE, now).unwrap()
}

fn code(code: &str) -> FailureCode {
    FailureCode::parse(code).unwrap()
}

fn page(page: u32, size: u32) -> PageRequest {
    PageRequest::new(page, size).unwrap()
}

/// The worker most checks lease as; every later write names it.
const W: &str = "worker-a";

/// A plain text-to-image task with the model's defaults: any worker runs it.
fn txt2img() -> TaskNeeds {
    TaskNeeds {
        pipeline: Pipeline::Text2Image,
        scheduler: None,
        safety_checker: false,
    }
}

/// A worker that runs text-to-image with two schedulers and no safety checker.
fn offer(worker_id: &str) -> WorkerOffer {
    WorkerOffer::new(
        worker_id,
        Capabilities::new(
            [Pipeline::Text2Image],
            [SchedulerKind::Ddim, SchedulerKind::LmsDiscrete],
            false,
        ),
    )
}
