//! The conformance suite: what every [`Store`] implementation must do alike.
//!
//! pict-rs ran its sled and Postgres repositories through different tests and
//! they drifted apart; here each check is a public function over a
//! [`Harness`] (which opens the same backing database as often as asked), and
//! [`conformance_tests!`](crate::conformance_tests) turns the whole list into
//! `#[test]`s for one implementation, so a new backend gets every check by
//! writing one harness. Time is passed explicitly, so lease expiry and result
//! TTLs are tested without sleeping.

use std::collections::HashSet;
use std::time::Duration;

use crate::domain::{
    AccountName, IdempotencyKey, KeyPrefix, OrgId, OrgName, TaskId, Timestamp, UtcDay, WorkerName,
};
use crate::error::{QueueScope, StoreError};
use crate::store::Store;
use crate::types::*;

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
            retryable_failure_requeues_then_fails,
            worker_tokens,
            work_signal_rings_on_enqueue_and_requeue,
            sweep_finishes_lapsed_tasks_without_a_lease
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

/// An approved organization owned by a fresh account.
fn approved_org(s: &dyn Store, name: &str) -> OrgId {
    let owner = account(s, &format!("{name}-owner"));
    let org_name = OrgName::parse(name).unwrap();
    let id = s.create_org(&org_name, owner, at(0)).unwrap();
    s.approve_org(&org_name, "invoice to test", at(0)).unwrap();
    id
}

fn enqueue(s: &dyn Store, org: OrgId, body: &str, now: Timestamp) -> TaskId {
    let e = s.enqueue(org, body, &txt2img(), None, CAPS, now).unwrap();
    assert!(e.created);
    e.id
}

fn view(s: &dyn Store, org: OrgId, id: TaskId) -> TaskView {
    s.get(org, id, secs(0)).unwrap().expect("task exists")
}

fn lease(s: &dyn Store, now: Timestamp) -> Option<Leased> {
    s.lease(&offer(W), LEASE, now).unwrap()
}

/// The worker most checks lease as; every later write names it.
const W: &str = "worker-a";

/// A plain text-to-image task with the model's defaults: any worker runs it.
fn txt2img() -> TaskNeeds {
    TaskNeeds {
        pipeline: "StableDiffusionPipeline".into(),
        scheduler: None,
        safety_checker: false,
    }
}

/// A worker that runs text-to-image with two schedulers and no safety checker.
fn offer(worker_id: &str) -> WorkerOffer {
    WorkerOffer {
        worker_id: worker_id.into(),
        pipelines: vec!["StableDiffusionPipeline".into()],
        schedulers: vec!["DDIMScheduler".into(), "LMSDiscreteScheduler".into()],
        safety_checker: false,
    }
}

pub fn accounts_and_orgs(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    assert!(matches!(
        s.create_account(&AccountName::parse("alice").unwrap(), at(0)),
        Err(StoreError::AccountExists(n)) if n == "alice"
    ));
    assert_eq!(
        s.find_account(&AccountName::parse("alice").unwrap())
            .unwrap(),
        Some(alice)
    );
    assert_eq!(
        s.find_account(&AccountName::parse("nobody").unwrap())
            .unwrap(),
        None
    );
    let accounts = s.list_accounts().unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(
        (accounts[0].id, accounts[0].name.as_str()),
        (alice, "alice")
    );
    assert_eq!(accounts[0].created_at, at(0));

    let acme = OrgName::parse("acme").unwrap();
    let acme_id = s.create_org(&acme, alice, at(1)).unwrap();
    assert!(matches!(
        s.create_org(&acme, alice, at(1)),
        Err(StoreError::OrgExists(_))
    ));
    let ghost = crate::AccountId::parse("999999").unwrap();
    assert!(matches!(
        s.create_org(&OrgName::parse("other").unwrap(), ghost, at(1)),
        Err(StoreError::UnknownAccount(_))
    ));

    let bob = account(s, "bob");
    assert!(s.add_member(&acme, bob, at(2)).unwrap());
    assert!(
        !s.add_member(&acme, bob, at(2)).unwrap(),
        "adding twice reports false"
    );
    assert!(matches!(
        s.add_member(&OrgName::parse("nope").unwrap(), bob, at(2)),
        Err(StoreError::UnknownOrg(_))
    ));

    assert!(matches!(
        s.approve_org(&acme, "  ", at(3)),
        Err(StoreError::BadArgument(_))
    ));
    assert!(matches!(
        s.approve_org(&OrgName::parse("nope").unwrap(), "x", at(3)),
        Err(StoreError::UnknownOrg(_))
    ));
    let orgs = s.list_orgs().unwrap();
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0].id, acme_id);
    assert_eq!(orgs[0].owner, alice);
    assert_eq!(orgs[0].members, 2);
    assert_eq!(orgs[0].approved_at, None);

    s.approve_org(&acme, "PO 1234", at(4)).unwrap();
    s.approve_org(&acme, "PO 5678", at(5)).unwrap();
    let orgs = s.list_orgs().unwrap();
    assert_eq!(orgs[0].billing_note.as_deref(), Some("PO 5678"));
    assert_eq!(
        orgs[0].approved_at,
        Some(at(4)),
        "the first approval time is kept"
    );
}

pub fn auth_and_org_access(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    let mallory = account(s, "mallory");
    let key = s.create_api_key(alice, at(0)).unwrap();
    assert_eq!(s.authenticate(key.expose_key()).unwrap(), Some(alice));
    assert!(
        key.expose_key().len() >= 4 + 8 + 1 + 26,
        "at least 128 random bits"
    );

    // A key with one character changed, junk, and the empty string.
    let mut wrong = key.expose_key().to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(s.authenticate(&wrong).unwrap(), None);
    assert_eq!(s.authenticate("").unwrap(), None);
    assert_eq!(s.authenticate("sie_short").unwrap(), None);
    assert_eq!(s.authenticate(key.prefix().as_str()).unwrap(), None);

    let acme = OrgName::parse("acme").unwrap();
    let acme_id = s.create_org(&acme, alice, at(0)).unwrap();
    assert_eq!(
        s.org_access(alice, &OrgName::parse("nope").unwrap())
            .unwrap(),
        OrgAccess::UnknownOrg
    );
    assert_eq!(s.org_access(mallory, &acme).unwrap(), OrgAccess::NotMember);
    assert_eq!(s.org_access(alice, &acme).unwrap(), OrgAccess::NotApproved);
    s.approve_org(&acme, "card on file", at(1)).unwrap();
    assert_eq!(
        s.org_access(alice, &acme).unwrap(),
        OrgAccess::Allowed(acme_id)
    );
    assert_eq!(s.org_access(mallory, &acme).unwrap(), OrgAccess::NotMember);
    s.add_member(&acme, mallory, at(2)).unwrap();
    assert_eq!(
        s.org_access(mallory, &acme).unwrap(),
        OrgAccess::Allowed(acme_id)
    );
}

pub fn key_revoke(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    let k1 = s.create_api_key(alice, at(0)).unwrap();
    let k2 = s.create_api_key(alice, at(1)).unwrap();
    assert_ne!(k1.prefix(), k2.prefix());
    assert!(s.revoke_api_key(k1.prefix(), at(2)).unwrap());
    assert!(
        !s.revoke_api_key(k1.prefix(), at(3)).unwrap(),
        "revoking twice reports false"
    );
    assert!(!s
        .revoke_api_key(&KeyPrefix::parse("sie_aaaaaaaa").unwrap(), at(3))
        .unwrap());
    assert_eq!(s.authenticate(k1.expose_key()).unwrap(), None);
    assert_eq!(s.authenticate(k2.expose_key()).unwrap(), Some(alice));

    let keys = s.list_api_keys(alice).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(&keys[0].prefix, k1.prefix());
    assert_eq!(keys[0].created_at, at(0));
    assert_eq!(keys[0].revoked_at, Some(at(2)));
    assert_eq!(&keys[1].prefix, k2.prefix());
    assert_eq!(keys[1].revoked_at, None);
    let bob = account(s, "bob");
    assert!(s.list_api_keys(bob).unwrap().is_empty());
}

pub fn idempotency(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let key = IdempotencyKey::parse("req-1").unwrap();
    let first = s
        .enqueue(a, "{\"n\":1}", &txt2img(), Some(&key), CAPS, at(0))
        .unwrap();
    assert!(first.created);
    let again = s
        .enqueue(a, "{\"n\":2}", &txt2img(), Some(&key), CAPS, at(1))
        .unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: first.id,
            created: false
        }
    );
    // The key belongs to the organization: another may use the same one.
    let other = s
        .enqueue(b, "{\"n\":1}", &txt2img(), Some(&key), CAPS, at(2))
        .unwrap();
    assert!(other.created);
    assert_ne!(other.id, first.id);
    // Without a key every call is a new task.
    assert_ne!(enqueue(s, a, "{}", at(3)), enqueue(s, a, "{}", at(3)));
    // A repeat is answered even when the queue is now full: nothing new is queued.
    let full = QueueCaps {
        per_org: 1,
        global: 1,
    };
    assert_eq!(
        s.enqueue(a, "{}", &txt2img(), Some(&key), full, at(4))
            .unwrap()
            .id,
        first.id
    );
    // The first request body is what runs.
    let l = lease(s, at(5)).unwrap();
    assert_eq!(l.id, first.id);
    assert_eq!(l.request_json, "{\"n\":1}");
}

pub fn queue_caps_and_retry_after(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let caps = QueueCaps {
        per_org: 2,
        global: 3,
    };
    s.enqueue(a, "{}", &txt2img(), None, caps, at(0)).unwrap();
    s.enqueue(a, "{}", &txt2img(), None, caps, at(0)).unwrap();
    match s.enqueue(a, "{}", &txt2img(), None, caps, at(0)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Org,
            retry_after_seconds,
        }) => assert_eq!(retry_after_seconds, 30, "nothing finished yet: the default"),
        other => panic!("expected the organization's queue to be full, got {other:?}"),
    }
    s.enqueue(b, "{}", &txt2img(), None, caps, at(0)).unwrap();
    match s.enqueue(b, "{}", &txt2img(), None, caps, at(0)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Global,
            ..
        }) => {}
        other => panic!("expected the global queue to be full, got {other:?}"),
    }
    // Running tasks do not count: leasing one makes room.
    let l = lease(s, secs(1)).unwrap();
    assert_eq!(l.org, a);
    s.enqueue(a, "{}", &txt2img(), None, caps, secs(1)).unwrap();

    // With 6 tasks finished in the last minute, one slot frees every 10 s.
    let big = QueueCaps {
        per_org: 100,
        global: 100,
    };
    assert!(s
        .complete(W, l.id, l.attempt, "{}", TaskUsage::default(), secs(2))
        .unwrap());
    for i in 0..5 {
        enqueue(s, b, "{}", secs(3));
        let l = lease(s, secs(3)).unwrap();
        assert!(s
            .complete(W, l.id, l.attempt, "{}", TaskUsage::default(), secs(4 + i))
            .unwrap());
    }
    let tight = QueueCaps {
        per_org: 100,
        global: 0,
    };
    match s.enqueue(a, "{}", &txt2img(), None, tight, secs(10)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Global,
            retry_after_seconds,
        }) => assert_eq!(retry_after_seconds, 10),
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert!(s.enqueue(a, "{}", &txt2img(), None, big, secs(10)).is_ok());
}

pub fn fifo_within_org(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    // Same timestamp for all: order must come from enqueue order, not the clock.
    let ids: Vec<TaskId> = (0..5)
        .map(|i| enqueue(s, a, &format!("{{\"i\":{i}}}"), at(0)))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let l = lease(s, at(1)).unwrap();
        assert_eq!(l.id, *id, "task {i} leased out of order");
        assert_eq!(l.attempt, 1);
        assert_eq!(l.org, a);
        assert_eq!(l.request_json, format!("{{\"i\":{i}}}"));
    }
    assert!(lease(s, at(2)).is_none());
}

pub fn fairness_between_orgs(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let a_ids: Vec<TaskId> = (0..4).map(|_| enqueue(s, a, "{}", at(0))).collect();
    let b_ids: Vec<TaskId> = (0..2).map(|_| enqueue(s, b, "{}", at(1))).collect();
    // A's backlog came first, but B is not starved: they alternate while both
    // have work, then A's remainder runs in its order.
    let order: Vec<TaskId> = (0..6).map(|_| lease(s, at(2)).unwrap().id).collect();
    assert_eq!(
        order,
        vec![a_ids[0], b_ids[0], a_ids[1], b_ids[1], a_ids[2], a_ids[3]]
    );

    // The organization with fewer running tasks goes first even when its
    // waiting task is younger.
    let s2 = approved_org(s, "c");
    let c_id = enqueue(s, s2, "{}", at(3));
    enqueue(s, a, "{}", at(3));
    assert_eq!(lease(s, at(4)).unwrap().id, c_id);
}

pub fn round_robin_with_one_worker(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let a_ids: Vec<TaskId> = (0..3).map(|_| enqueue(s, a, "{}", at(0))).collect();
    let b_ids: Vec<TaskId> = (0..2).map(|_| enqueue(s, b, "{}", at(1))).collect();
    // One worker finishing each task before the next lease: nothing is ever
    // running at lease time, so turns alone must keep B from waiting behind
    // all of A's backlog.
    let mut order = Vec::new();
    while let Some(l) = lease(s, at(2)) {
        assert!(s
            .complete(W, l.id, l.attempt, "{}", TaskUsage::default(), at(2))
            .unwrap());
        order.push(l.id);
    }
    assert_eq!(
        order,
        vec![a_ids[0], b_ids[0], a_ids[1], b_ids[1], a_ids[2]]
    );
}

pub fn lease_expiry_requeues(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    let first = lease(s, secs(0)).unwrap();
    assert_eq!((first.id, first.attempt), (id, 1));
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Running);
    assert_eq!(v.started_at, Some(secs(0)));
    // Still leased just before expiry.
    assert!(lease(s, secs(59)).is_none());
    // A heartbeat pushes expiry out.
    assert_eq!(
        s.heartbeat(
            W,
            id,
            1,
            Some(Progress { step: 3, steps: 10 }),
            LEASE,
            secs(50)
        )
        .unwrap(),
        Heartbeat::Continue
    );
    assert!(lease(s, secs(109)).is_none());
    // Lapsed and not yet leased again: it reads as queued, first in line,
    // without the lost attempt's progress.
    let v = s.get(a, id, secs(110)).unwrap().unwrap();
    assert_eq!(v.state, TaskState::Queued);
    assert_eq!(v.queue_position, Some(1));
    assert_eq!(v.progress, None);
    assert_eq!(
        s.list(a, 1, 10, secs(110)).unwrap().tasks[0].state,
        TaskState::Queued
    );
    assert_eq!(
        s.queue_stats(secs(110)).unwrap(),
        QueueStats {
            queued: 1,
            running: 0
        }
    );
    assert_eq!(
        s.queue_stats(secs(109)).unwrap(),
        QueueStats {
            queued: 0,
            running: 1
        }
    );
    // Lapsed: the next lease is attempt 2 of the same task.
    let second = s
        .lease(&offer("worker-b"), LEASE, secs(110))
        .unwrap()
        .unwrap();
    assert_eq!((second.id, second.attempt), (id, 2));
    let v = view(s, a, id);
    assert_eq!(v.attempt, 2);
    assert_eq!(
        v.progress, None,
        "a new attempt starts without the old one's progress"
    );
    assert_eq!(v.started_at, Some(secs(110)));
}

pub fn worker_lost_after_three_attempts(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    for attempt in 1..=3 {
        let l = lease(s, secs(100 * attempt)).unwrap();
        assert_eq!((l.id, l.attempt), (id, attempt as u32));
    }
    // The third lease lapses: the task fails instead of running a fourth time.
    assert!(lease(s, secs(400)).is_none());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.as_ref().unwrap().code, codes::WORKER_LOST);
    assert_eq!(v.finished_at, Some(secs(400)));
    // The lost worker cannot resurrect it.
    assert!(!s
        .complete(W, id, 3, "{}", TaskUsage::default(), secs(401))
        .unwrap());
    let u = s.usage(a, secs(0).day(), secs(0).day()).unwrap();
    assert_eq!(u[0].tasks_failed, 1);
}

pub fn fencing_refuses_stale_attempts(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    let stale = lease(s, secs(0)).unwrap();
    let fresh = s
        .lease(&offer("worker-b"), LEASE, secs(61))
        .unwrap()
        .unwrap();
    assert_eq!((fresh.id, fresh.attempt), (id, 2));
    // The stale worker presenting the live attempt's number is still not its owner.
    assert_eq!(
        s.heartbeat(W, id, fresh.attempt, None, LEASE, secs(62))
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(!s
        .complete(
            W,
            id,
            fresh.attempt,
            "\"thief\"",
            TaskUsage::default(),
            secs(62)
        )
        .unwrap());
    assert!(!s
        .fail(W, id, fresh.attempt, "boom", "thief", false, secs(62))
        .unwrap());
    assert!(!s.release(W, id, fresh.attempt, secs(62)).unwrap());
    let p = Some(Progress { step: 9, steps: 9 });
    assert_eq!(
        s.heartbeat(W, id, stale.attempt, p, LEASE, secs(62))
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(!s
        .complete(
            W,
            id,
            stale.attempt,
            "\"stale\"",
            TaskUsage::default(),
            secs(62)
        )
        .unwrap());
    assert!(!s
        .fail(W, id, stale.attempt, "boom", "stale", false, secs(62))
        .unwrap());
    assert!(!s.release(W, id, stale.attempt, secs(62)).unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Running);
    assert_eq!(v.progress, None, "the stale heartbeat wrote nothing");
    // A fence on a task that does not exist is just as refused.
    assert_eq!(
        s.heartbeat(W, TaskId::random(), 1, None, LEASE, secs(62))
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(s
        .complete(
            "worker-b",
            id,
            fresh.attempt,
            "\"fresh\"",
            TaskUsage::default(),
            secs(63)
        )
        .unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Succeeded);
    assert_eq!(v.result_json.as_deref(), Some("\"fresh\""));
}

pub fn first_completion_wins(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    let l = lease(s, secs(0)).unwrap();
    let usage = TaskUsage {
        images: 2,
        steps: 20,
        gpu_ms: 1500,
    };
    assert!(s
        .complete(W, id, l.attempt, "\"one\"", usage, secs(1))
        .unwrap());
    assert!(!s
        .complete(W, id, l.attempt, "\"two\"", usage, secs(2))
        .unwrap());
    assert!(!s
        .fail(W, id, l.attempt, "boom", "late", false, secs(2))
        .unwrap());
    assert_eq!(
        s.heartbeat(W, id, l.attempt, None, LEASE, secs(2)).unwrap(),
        Heartbeat::Lost
    );
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Succeeded);
    assert_eq!(v.result_json.as_deref(), Some("\"one\""));
    assert_eq!(v.usage, Some(usage));
    assert_eq!(v.finished_at, Some(secs(1)));
    assert_eq!(v.error, None);
    // Finished tasks are never leased again, even long after.
    assert!(lease(s, secs(10_000)).is_none());

    // A failure also wins against a later completion.
    let id2 = enqueue(s, a, "{}", secs(3));
    let l2 = lease(s, secs(3)).unwrap();
    assert!(s
        .fail(
            W,
            id2,
            l2.attempt,
            "inference_failed",
            "out of memory",
            false,
            secs(4)
        )
        .unwrap());
    assert!(!s
        .complete(W, id2, l2.attempt, "{}", usage, secs(5))
        .unwrap());
    let v = view(s, a, id2);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(
        v.error,
        Some(TaskError {
            code: "inference_failed".into(),
            message: "out of memory".into()
        })
    );
    assert_eq!(v.result_json, None);
}

pub fn release_returns_task(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    // A second task behind it, so "keeps its place" means something.
    enqueue(s, a, "{}", secs(0));
    let l = lease(s, secs(0)).unwrap();
    assert_eq!(l.id, id);
    assert!(s.release(W, id, l.attempt, secs(1)).unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Queued);
    assert_eq!(v.queue_position, Some(1), "a released task keeps its place");
    // Releases do not count towards worker_lost: release twice, then three
    // lapses are still allowed.
    let mut attempt = l.attempt;
    let l = lease(s, secs(2)).unwrap();
    assert!(l.attempt > attempt, "the fencing token still grows");
    attempt = l.attempt;
    assert!(!s
        .complete(W, id, attempt - 1, "{}", TaskUsage::default(), secs(2))
        .unwrap());
    assert!(s.release(W, id, attempt, secs(3)).unwrap());
    for round in 0..3 {
        let l = lease(s, secs(10 + 100 * round)).unwrap();
        assert_eq!(l.id, id, "round {round}");
    }
    assert_ne!(lease(s, secs(400)).map(|l| l.id), Some(id));
    assert_eq!(view(s, a, id).error.unwrap().code, codes::WORKER_LOST);
}

pub fn cancel_cases(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");

    // Queued: fails at once and never runs.
    let queued = enqueue(s, a, "{}", secs(0));
    assert_eq!(
        s.cancel(b, queued, secs(1)).unwrap(),
        CancelOutcome::NotFound
    );
    assert_eq!(
        s.cancel(a, queued, secs(1)).unwrap(),
        CancelOutcome::Cancelled
    );
    let v = view(s, a, queued);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);
    assert_eq!(v.finished_at, Some(secs(1)));
    assert!(lease(s, secs(2)).is_none());

    // Running: the worker hears it at its next heartbeat and fails the task.
    let running = enqueue(s, a, "{}", secs(3));
    let l = lease(s, secs(3)).unwrap();
    assert_eq!(
        s.cancel(a, running, secs(4)).unwrap(),
        CancelOutcome::CancelRequested
    );
    let v = view(s, a, running);
    assert_eq!(v.state, TaskState::Running);
    assert!(v.cancel_requested);
    assert_eq!(
        s.heartbeat(W, running, l.attempt, None, LEASE, secs(5))
            .unwrap(),
        Heartbeat::Cancelled
    );
    assert!(s
        .fail(
            W,
            running,
            l.attempt,
            codes::CANCELLED,
            "stopped at step 3",
            false,
            secs(6)
        )
        .unwrap());
    assert_eq!(view(s, a, running).error.unwrap().code, codes::CANCELLED);

    // Finished: unchanged.
    assert_eq!(
        s.cancel(a, running, secs(7)).unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Failed)
    );
    let done = enqueue(s, a, "{}", secs(8));
    let l = lease(s, secs(8)).unwrap();
    assert!(s
        .complete(W, done, l.attempt, "\"ok\"", TaskUsage::default(), secs(9))
        .unwrap());
    assert_eq!(
        s.cancel(a, done, secs(10)).unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Succeeded)
    );
    assert_eq!(view(s, a, done).result_json.as_deref(), Some("\"ok\""));

    // Running, cancel requested, and then its worker vanished: it is not run
    // again but fails as cancelled.
    let orphan = enqueue(s, a, "{}", secs(20));
    lease(s, secs(20)).unwrap();
    assert_eq!(
        s.cancel(a, orphan, secs(21)).unwrap(),
        CancelOutcome::CancelRequested
    );
    assert!(lease(s, secs(100)).is_none());
    let v = view(s, a, orphan);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);

    // Released while a cancel was pending: also cancelled, not requeued.
    let released = enqueue(s, a, "{}", secs(200));
    let l = lease(s, secs(200)).unwrap();
    s.cancel(a, released, secs(201)).unwrap();
    assert!(s.release(W, released, l.attempt, secs(202)).unwrap());
    assert_eq!(view(s, a, released).state, TaskState::Failed);
}

pub fn get_and_list(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let ids: Vec<TaskId> = (0..5).map(|i| enqueue(s, a, "{}", secs(i))).collect();
    assert_eq!(
        s.get(b, ids[0], secs(9)).unwrap(),
        None,
        "another organization's task is hidden"
    );
    assert_eq!(s.get(a, TaskId::random(), secs(9)).unwrap(), None);

    let v = view(s, a, ids[0]);
    assert_eq!(v.state, TaskState::Queued);
    assert_eq!(v.queue_position, Some(1));
    assert_eq!(v.attempt, 0);
    assert_eq!(v.created_at, secs(0));
    assert_eq!(v.started_at, None);
    assert_eq!(view(s, a, ids[3]).queue_position, Some(4));

    let l = lease(s, secs(10)).unwrap();
    assert_eq!(
        s.heartbeat(
            W,
            l.id,
            l.attempt,
            Some(Progress { step: 2, steps: 25 }),
            LEASE,
            secs(11)
        )
        .unwrap(),
        Heartbeat::Continue
    );
    // A heartbeat without progress keeps the last progress.
    s.heartbeat(W, l.id, l.attempt, None, LEASE, secs(12))
        .unwrap();
    let v = view(s, a, ids[0]);
    assert_eq!(
        v.queue_position, None,
        "running tasks have no queue position"
    );
    assert_eq!(v.progress, Some(Progress { step: 2, steps: 25 }));
    assert_eq!(view(s, a, ids[3]).queue_position, Some(3));

    let page = s.list(a, 1, 2, secs(0)).unwrap();
    assert_eq!(page.total, 5);
    assert_eq!(
        page.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let page = s.list(a, 3, 2, secs(0)).unwrap();
    assert_eq!(
        page.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert_eq!(page.tasks[0].state, TaskState::Running);
    assert!(s.list(a, 4, 2, secs(0)).unwrap().tasks.is_empty());
    assert_eq!(s.list(b, 1, 10, secs(0)).unwrap().total, 0);
    assert!(matches!(
        s.list(a, 0, 10, secs(0)),
        Err(StoreError::BadArgument(_))
    ));
    assert!(matches!(
        s.list(a, 1, 0, secs(0)),
        Err(StoreError::BadArgument(_))
    ));
}

pub fn queue_position_follows_lease_order(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let c = approved_org(s, "c");
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push((a, enqueue(s, a, "{}", secs(i))));
    }
    tasks.push((b, enqueue(s, b, "{}", secs(5))));
    for i in 0..2 {
        tasks.push((c, enqueue(s, c, "{}", secs(6 + i))));
    }
    let mut by_position: Vec<(u32, TaskId)> = tasks
        .iter()
        .map(|&(org, id)| (view(s, org, id).queue_position.unwrap(), id))
        .collect();
    by_position.sort();
    let positions: Vec<u32> = by_position.iter().map(|p| p.0).collect();
    assert_eq!(
        positions,
        (1..=7).collect::<Vec<u32>>(),
        "positions are 1..=n without gaps"
    );
    // With nothing running, leasing and completing one at a time follows the
    // positions exactly.
    for (pos, expected) in by_position {
        let l = lease(s, secs(100)).unwrap();
        assert_eq!(l.id, expected, "position {pos}");
        assert!(s
            .complete(W, l.id, l.attempt, "{}", TaskUsage::default(), secs(100))
            .unwrap());
    }
}

pub fn expiry(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let ttl = Duration::from_secs(3600);
    let key = IdempotencyKey::parse("once").unwrap();
    let old = s
        .enqueue(a, "{}", &txt2img(), Some(&key), CAPS, secs(0))
        .unwrap()
        .id;
    let l = lease(s, secs(0)).unwrap();
    let usage = TaskUsage {
        images: 1,
        steps: 10,
        gpu_ms: 100,
    };
    assert!(s
        .complete(W, old, l.attempt, "\"old\"", usage, secs(10))
        .unwrap());
    let cancelled = enqueue(s, a, "{}", secs(20));
    s.cancel(a, cancelled, secs(20)).unwrap();
    let recent = enqueue(s, a, "{}", secs(30));
    let l = lease(s, secs(30)).unwrap();
    assert!(s
        .complete(W, recent, l.attempt, "\"recent\"", usage, secs(2000))
        .unwrap());
    let will_run = enqueue(s, a, "{}", secs(40));
    let still_queued = enqueue(s, a, "{}", secs(41));
    let l = lease(s, secs(41)).unwrap();
    assert_eq!(l.id, will_run);

    // Exactly one TTL after the first finish: it goes, the cancelled one is
    // not yet a TTL old.
    assert_eq!(s.expire(ttl, secs(3610)).unwrap(), 1);
    assert_eq!(s.get(a, old, secs(3610)).unwrap(), None);
    assert!(s.get(a, cancelled, secs(3610)).unwrap().is_some());
    assert_eq!(s.expire(ttl, secs(4000)).unwrap(), 1);
    assert_eq!(s.get(a, cancelled, secs(4000)).unwrap(), None);
    assert!(s.get(a, recent, secs(4000)).unwrap().is_some());
    // Unfinished tasks never expire, however old.
    assert_eq!(s.expire(ttl, secs(1_000_000)).unwrap(), 1);
    assert_eq!(view(s, a, will_run).state, TaskState::Running);
    assert_eq!(view(s, a, still_queued).state, TaskState::Queued);
    assert_eq!(s.list(a, 1, 10, secs(0)).unwrap().total, 2);
    // The expired task's idempotency key is free again.
    assert!(
        s.enqueue(a, "{}", &txt2img(), Some(&key), CAPS, secs(1_000_001))
            .unwrap()
            .created
    );
    // Usage outlives expiry.
    let u = s.usage(a, secs(0).day(), secs(0).day()).unwrap();
    assert_eq!(u[0].images, 2);
    assert_eq!(u[0].tasks_failed, 1);
}

pub fn usage_totals(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let day = 86_400;
    let run = |org: OrgId, finish: Timestamp, usage: Option<TaskUsage>| {
        let id = enqueue(s, org, "{}", finish);
        let l = s.lease(&offer(W), LEASE, finish).unwrap().unwrap();
        assert_eq!(l.id, id);
        match usage {
            Some(u) => assert!(s.complete(W, id, l.attempt, "{}", u, finish).unwrap()),
            None => assert!(s
                .fail(W, id, l.attempt, "inference_failed", "x", false, finish)
                .unwrap()),
        }
    };
    let u = |images, steps, gpu_ms| {
        Some(TaskUsage {
            images,
            steps,
            gpu_ms,
        })
    };
    run(a, secs(10), u(1, 50, 1500));
    run(a, secs(day - 1), u(4, 200, 2500));
    run(a, secs(day), u(2, 30, 1000));
    run(a, secs(day + 5), None);
    run(b, secs(20), u(8, 400, 9000));
    // Day 3 has nothing; day 4 one task.
    run(a, secs(3 * day + 1), u(1, 1, 1));

    let d0 = secs(0).day();
    assert_eq!(d0.to_string(), "2024-10-04");
    let to = UtcDay::from_days_since_epoch(d0.days_since_epoch() + 9);
    let usage = s.usage(a, d0, to).unwrap();
    assert_eq!(
        usage.len(),
        3,
        "days without finished tasks are left out: {usage:?}"
    );
    assert_eq!(
        usage[0],
        DailyUsage {
            day: d0,
            images: 5,
            steps: 250,
            gpu_seconds: 4.0,
            tasks_succeeded: 2,
            tasks_failed: 0,
        }
    );
    assert_eq!(usage[1].day, secs(day).day());
    assert_eq!((usage[1].images, usage[1].steps), (2, 30));
    assert_eq!((usage[1].tasks_succeeded, usage[1].tasks_failed), (1, 1));
    assert_eq!(usage[1].gpu_seconds, 1.0);
    assert_eq!(usage[2].day, secs(3 * day).day());
    // The range is inclusive at both ends and excludes other days.
    let only_day1 = s.usage(a, secs(day).day(), secs(day).day()).unwrap();
    assert_eq!(only_day1.len(), 1);
    assert_eq!(only_day1[0].day, secs(day).day());
    // Another organization's use is its own.
    let bu = s.usage(b, d0, to).unwrap();
    assert_eq!(bu.len(), 1);
    assert_eq!(bu[0].images, 8);
}

pub fn persistence_across_reopen(h: &dyn Harness) {
    let (key, org, queued, done) = {
        let s = &*h.open();
        let alice = account(s, "alice");
        let key = s.create_api_key(alice, at(0)).unwrap();
        let org = approved_org(s, "acme");
        let done = enqueue(s, org, "{\"first\":true}", secs(0));
        let queued = enqueue(s, org, "{\"second\":true}", secs(1));
        let l = lease(s, secs(2)).unwrap();
        assert!(s
            .complete(
                W,
                done,
                l.attempt,
                "\"result\"",
                TaskUsage::default(),
                secs(3)
            )
            .unwrap());
        (key.expose_key().to_owned(), org, queued, done)
    };
    let s = &*h.open();
    let alice = s
        .authenticate(&key)
        .unwrap()
        .expect("the key survives a reopen");
    assert_eq!(
        s.find_account(&AccountName::parse("alice").unwrap())
            .unwrap(),
        Some(alice)
    );
    assert_eq!(
        s.org_access(alice, &OrgName::parse("acme").unwrap())
            .unwrap(),
        OrgAccess::NotMember
    );
    assert_eq!(
        view(s, org, done).result_json.as_deref(),
        Some("\"result\"")
    );
    assert_eq!(view(s, org, queued).state, TaskState::Queued);
    let l = lease(s, secs(4)).unwrap();
    assert_eq!(
        (l.id, l.request_json.as_str()),
        (queued, "{\"second\":true}")
    );
}

pub fn concurrent_leasing_never_double_leases(h: &dyn Harness) {
    const THREADS: usize = 4;
    const TASKS: usize = 200;
    let setup = h.open();
    let orgs = [approved_org(&*setup, "a"), approved_org(&*setup, "b")];
    let mut all = HashSet::new();
    for i in 0..TASKS {
        all.insert(enqueue(&*setup, orgs[i % 2], "{}", secs(0)));
    }
    // Half the workers share the setup handle (one pool, several
    // connections); the others open their own, as separate processes would.
    let start = std::sync::Barrier::new(THREADS);
    let leased: Vec<Vec<TaskId>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (shared, start) = (&setup, &start);
                scope.spawn(move || {
                    let own;
                    let s: &dyn Store = if t % 2 == 0 {
                        &**shared
                    } else {
                        own = h.open();
                        &*own
                    };
                    let worker = format!("worker-{t}");
                    start.wait();
                    let mut mine = Vec::new();
                    while let Some(l) = s.lease(&offer(&worker), LEASE, secs(1)).unwrap() {
                        assert_eq!(l.attempt, 1, "{} was leased twice", l.id);
                        assert!(s
                            .complete(
                                &worker,
                                l.id,
                                l.attempt,
                                "{}",
                                TaskUsage::default(),
                                secs(2)
                            )
                            .unwrap());
                        mine.push(l.id);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for id in leased.iter().flatten() {
        assert!(seen.insert(*id), "task {id} was handed to two workers");
    }
    assert_eq!(seen, all, "every task was leased exactly once");
}

pub fn lease_matches_worker_offer(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let needs = |pipeline: &str, scheduler: Option<&str>, safety_checker| TaskNeeds {
        pipeline: pipeline.into(),
        scheduler: scheduler.map(Into::into),
        safety_checker,
    };
    let put = |n: TaskNeeds, t| s.enqueue(a, "{}", &n, None, CAPS, secs(t)).unwrap().id;
    let pndm = put(
        needs("StableDiffusionPipeline", Some("PNDMScheduler"), false),
        0,
    );
    let checker = put(needs("StableDiffusionPipeline", None, true), 1);
    let img2img = put(needs("StableDiffusionImg2ImgPipeline", None, false), 2);
    let ddim = put(
        needs("StableDiffusionPipeline", Some("DDIMScheduler"), false),
        3,
    );
    let plain = put(txt2img(), 4);
    // `offer` runs text-to-image with DDIM and LMS, without a checker: the three
    // older tasks it cannot run are passed over, not blocking the queue.
    let basic = offer("basic");
    assert_eq!(s.lease(&basic, LEASE, secs(5)).unwrap().unwrap().id, ddim);
    assert_eq!(s.lease(&basic, LEASE, secs(5)).unwrap().unwrap().id, plain);
    assert!(s.lease(&basic, LEASE, secs(5)).unwrap().is_none());
    let full = WorkerOffer {
        worker_id: "full".into(),
        pipelines: vec![
            "StableDiffusionPipeline".into(),
            "StableDiffusionImg2ImgPipeline".into(),
        ],
        schedulers: vec!["PNDMScheduler".into()],
        safety_checker: true,
    };
    for want in [pndm, checker, img2img] {
        assert_eq!(s.lease(&full, LEASE, secs(6)).unwrap().unwrap().id, want);
    }
    assert!(s.lease(&full, LEASE, secs(6)).unwrap().is_none());
    assert!(full.can_run(&needs("StableDiffusionPipeline", None, true)));
    assert!(!basic.can_run(&needs("StableDiffusionPipeline", None, true)));
    assert!(!basic.can_run(&needs(
        "StableDiffusionPipeline",
        Some("PNDMScheduler"),
        false
    )));
}

pub fn retryable_failure_requeues_then_fails(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    for attempt in 1..=2u32 {
        let l = lease(s, secs(attempt.into())).unwrap();
        assert_eq!((l.id, l.attempt), (id, attempt));
        assert!(s
            .fail(
                W,
                id,
                attempt,
                "out_of_memory",
                "CUDA OOM",
                true,
                secs(attempt.into())
            )
            .unwrap());
        let v = view(s, a, id);
        assert_eq!(v.state, TaskState::Queued, "attempt {attempt} requeued");
        assert_eq!(v.error, None);
        assert_eq!(v.queue_position, Some(1));
    }
    let l = lease(s, secs(3)).unwrap();
    assert_eq!(l.attempt, 3);
    // The last attempt's retryable failure is final, with the worker's own words.
    assert!(s
        .fail(W, id, 3, "out_of_memory", "CUDA OOM", true, secs(3))
        .unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Failed);
    let e = v.error.unwrap();
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("out_of_memory", "CUDA OOM")
    );
    assert!(lease(s, secs(4)).is_none());

    // A cancelled task is not retried.
    let id = enqueue(s, a, "{}", secs(10));
    let l = lease(s, secs(10)).unwrap();
    assert_eq!(
        s.cancel(a, id, secs(11)).unwrap(),
        CancelOutcome::CancelRequested
    );
    assert!(s
        .fail(W, id, l.attempt, "gpu_fault", "x", true, secs(12))
        .unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);
}

pub fn worker_tokens(h: &dyn Harness) {
    let s = &*h.open();
    let node1 = WorkerName::parse("node-1").unwrap();
    let node2 = WorkerName::parse("node-2").unwrap();
    let t1 = s.create_worker_token(&node1, secs(0)).unwrap();
    let t2 = s.create_worker_token(&node2, secs(1)).unwrap();
    assert_ne!(t1.expose_token(), t2.expose_token());
    assert!(matches!(
        s.create_worker_token(&node1, secs(2)),
        Err(StoreError::WorkerExists(n)) if n == "node-1"
    ));
    assert_eq!(
        s.authenticate_worker(t1.expose_token()).unwrap(),
        Some(node1.clone())
    );
    assert_eq!(
        s.authenticate_worker(t2.expose_token()).unwrap(),
        Some(node2.clone())
    );
    assert_eq!(s.authenticate_worker("siew_nope").unwrap(), None);
    let mut forged = t1.expose_token().to_owned();
    forged.pop();
    forged.push(if t1.expose_token().ends_with('a') {
        'b'
    } else {
        'a'
    });
    assert_eq!(s.authenticate_worker(&forged).unwrap(), None);
    // An API key is not a worker token.
    let acct = account(s, "someone");
    let key = s.create_api_key(acct, secs(0)).unwrap();
    assert_eq!(s.authenticate_worker(key.expose_key()).unwrap(), None);

    // Revoking node-1 while it holds a task: refused at once, and its task is
    // leasable again at once rather than after its lease would have run out.
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(10));
    let l = s.lease(&offer("node-1"), LEASE, secs(10)).unwrap().unwrap();
    assert_eq!(l.id, id);
    assert!(s.revoke_worker_token(&node1, secs(11)).unwrap());
    assert!(!s.revoke_worker_token(&node1, secs(12)).unwrap());
    assert!(!s
        .revoke_worker_token(&WorkerName::parse("never").unwrap(), secs(12))
        .unwrap());
    assert_eq!(s.authenticate_worker(t1.expose_token()).unwrap(), None);
    assert_eq!(
        s.authenticate_worker(t2.expose_token()).unwrap(),
        Some(node2)
    );
    let again = s.lease(&offer("node-2"), LEASE, secs(12)).unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (id, 2));
    assert_eq!(
        s.heartbeat("node-1", id, l.attempt, None, LEASE, secs(13))
            .unwrap(),
        Heartbeat::Lost
    );
    let list = s.list_worker_tokens().unwrap();
    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    assert_eq!(list[0].revoked_at, Some(secs(11)));
    assert_eq!((list[1].created_at, list[1].revoked_at), (secs(1), None));
}

pub fn work_signal_rings_on_enqueue_and_requeue(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    // Where the ring travels through the database it can take a moment.
    let wait = Duration::from_secs(10);
    let seen = s.work_signal().generation();
    let id = enqueue(s, a, "{}", secs(0));
    let seen = {
        let now = s.work_signal().wait_past(seen, wait);
        assert!(now > seen, "enqueue rang the signal");
        now
    };
    let l = lease(s, secs(1)).unwrap();
    assert_eq!(l.id, id);
    // Drain any late duplicate rings, then give the task back.
    let mut seen = seen;
    loop {
        let now = s.work_signal().wait_past(seen, Duration::from_millis(300));
        if now == seen {
            break;
        }
        seen = now;
    }
    assert!(s.release(W, id, l.attempt, secs(2)).unwrap());
    assert!(
        s.work_signal().wait_past(seen, wait) > seen,
        "a task given back rang the signal"
    );
}

pub fn sweep_finishes_lapsed_tasks_without_a_lease(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let lost = enqueue(s, a, "{}", secs(0));
    for attempt in 1..=3 {
        assert_eq!(lease(s, secs(100 * attempt)).unwrap().id, lost);
    }
    let cancelled = enqueue(s, a, "{}", secs(300));
    let l = lease(s, secs(300)).unwrap();
    assert_eq!(l.id, cancelled);
    assert_eq!(
        s.cancel(a, cancelled, secs(301)).unwrap(),
        CancelOutcome::CancelRequested
    );
    let waiting = enqueue(s, a, "{}", secs(302));
    // Nothing has lapsed yet.
    assert_eq!(s.sweep(secs(359)).unwrap(), 0);
    // Both leases lapsed, nobody asks for work: the sweep ends them, and only them.
    assert_eq!(s.sweep(secs(400)).unwrap(), 2);
    assert_eq!(s.sweep(secs(400)).unwrap(), 0);
    let v = view(s, a, lost);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::WORKER_LOST);
    let v = view(s, a, cancelled);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);
    assert_eq!(view(s, a, waiting).state, TaskState::Queued);
}
