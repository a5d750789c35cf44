//! Conformance checks of [`Tasks`](crate::Tasks), the client's side of the queue:
//! idempotency and caps on enqueue, cancel in every state, reading tasks back with their
//! queue position, results read alone, expiry (and the idempotency keys it frees), usage,
//! and what survives reopening the database.

use super::*;
use crate::domain::{IdempotencyKey, UtcDay};
use crate::error::{QueueScope, StoreError};

pub fn idempotency(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let key = IdempotencyKey::parse("req-1").unwrap();
    let first = s
        .enqueue(&new_task(a, "{\"n\":1}", Some(&key)), CAPS, at(0))
        .unwrap();
    assert!(first.created);
    let again = s
        .enqueue(&new_task(a, "{\"n\":1}", Some(&key)), CAPS, at(1))
        .unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: first.id,
            created: false
        }
    );
    // The same key with another request is refused, and nothing is stored.
    match s.enqueue(&new_task(a, "{\"n\":2}", Some(&key)), CAPS, at(1)) {
        Err(StoreError::IdempotencyKeyReused(k)) => assert_eq!(k, "req-1"),
        other => panic!("expected IdempotencyKeyReused, got {other:?}"),
    }
    // The key belongs to the organization: another may use the same one.
    let other = s
        .enqueue(&new_task(b, "{\"n\":1}", Some(&key)), CAPS, at(2))
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
        s.enqueue(&new_task(a, "{\"n\":1}", Some(&key)), full, at(4))
            .unwrap()
            .id,
        first.id
    );
    // The first request body is what runs.
    let l = lease(s, at(5)).unwrap();
    assert_eq!(l.id, first.id);
    assert_eq!(l.request_json, "{\"n\":1}");
}

pub fn idempotency_key_is_forgotten_when_its_result_expires(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let key = IdempotencyKey::parse("retry-me").unwrap();
    let ttl = Duration::from_secs(100);
    let task = |body| NewTask {
        org: a,
        request_json: body,
        needs: txt2img(),
        idempotency: Some(Idempotency {
            key: &key,
            request: body,
            result_ttl: ttl,
        }),
        webhook_url: None,
    };
    let first = s.enqueue(&task("{\"n\":1}"), CAPS, secs(0)).unwrap();
    let repeat = Enqueued {
        id: first.id,
        created: false,
    };
    // An unfinished task keeps its key however long it waits.
    assert_eq!(
        s.enqueue(&task("{\"n\":1}"), CAPS, secs(10_000)).unwrap(),
        repeat
    );
    let l = lease(s, secs(10_000)).unwrap();
    assert!(s
        .complete(&l.fence(W), "\"done\"", TaskUsage::default(), secs(10_010))
        .unwrap());
    // Until one TTL after its finish, the key is the finished task's.
    assert_eq!(
        s.enqueue(&task("{\"n\":1}"), CAPS, secs(10_109)).unwrap(),
        repeat
    );
    assert!(matches!(
        s.enqueue(&task("{\"n\":2}"), CAPS, secs(10_109)),
        Err(StoreError::IdempotencyKeyReused(_))
    ));
    // Then it is forgotten, though no sweep has deleted the task: a new request under it
    // makes a new task, which the key names from now on.
    let second = s.enqueue(&task("{\"n\":2}"), CAPS, secs(10_110)).unwrap();
    assert!(second.created);
    assert_ne!(second.id, first.id);
    assert_eq!(
        s.enqueue(&task("{\"n\":2}"), CAPS, secs(10_111)).unwrap(),
        Enqueued {
            id: second.id,
            created: false
        }
    );
    // The old task itself is left to the sweep.
    assert_eq!(s.result(a, first.id).unwrap().as_deref(), Some("\"done\""));
    assert_eq!(s.expire(ttl, secs(10_110)).unwrap(), 1);
    assert_eq!(s.get(a, first.id, secs(10_110)).unwrap(), None);
    assert_eq!(view(s, a, second.id).state, TaskState::Queued);
}

pub fn results_are_read_alone(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let done = enqueue(s, a, "{}", secs(0));
    let failed = enqueue(s, a, "{}", secs(1));
    let queued = enqueue(s, a, "{}", secs(2));
    let l = lease(s, secs(3)).unwrap();
    assert_eq!(l.id, done);
    assert_eq!(s.result(a, done).unwrap(), None, "running: no result yet");
    let outputs = "{\"images\":[\"aGk=\"],\"seed\":7}";
    assert!(s
        .complete(&l.fence(W), outputs, TaskUsage::default(), secs(4))
        .unwrap());
    let l = lease(s, secs(5)).unwrap();
    assert_eq!(l.id, failed);
    let failure = Failure::new(code("engine_error"), "it broke", false);
    assert!(s.fail(&l.fence(W), &failure, secs(6)).unwrap());

    assert_eq!(s.result(a, done).unwrap().as_deref(), Some(outputs));
    assert_eq!(view(s, a, done).state, TaskState::Succeeded);
    assert_eq!(
        s.result(b, done).unwrap(),
        None,
        "another organization's result is hidden"
    );
    assert_eq!(s.result(a, failed).unwrap(), None);
    assert_eq!(s.result(a, queued).unwrap(), None);
    assert_eq!(s.result(a, TaskId::random()).unwrap(), None);
    // The request is read the same way, for any state, and only by its organization.
    assert_eq!(s.request(a, queued).unwrap().as_deref(), Some("{}"));
    assert_eq!(s.request(a, done).unwrap().as_deref(), Some("{}"));
    assert_eq!(s.request(b, done).unwrap(), None);
    assert_eq!(s.request(a, TaskId::random()).unwrap(), None);
}

pub fn queue_caps_and_retry_after(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let caps = QueueCaps {
        per_org: 2,
        global: 3,
    };
    s.enqueue(&new_task(a, "{}", None), caps, at(0)).unwrap();
    s.enqueue(&new_task(a, "{}", None), caps, at(0)).unwrap();
    match s.enqueue(&new_task(a, "{}", None), caps, at(0)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Org,
            retry_after_seconds,
        }) => assert_eq!(retry_after_seconds, 30, "nothing finished yet: the default"),
        other => panic!("expected the organization's queue to be full, got {other:?}"),
    }
    s.enqueue(&new_task(b, "{}", None), caps, at(0)).unwrap();
    match s.enqueue(&new_task(b, "{}", None), caps, at(0)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Global,
            ..
        }) => {}
        other => panic!("expected the global queue to be full, got {other:?}"),
    }
    // Running tasks do not count: leasing one makes room.
    let l = lease(s, secs(1)).unwrap();
    assert_eq!(l.org, a);
    s.enqueue(&new_task(a, "{}", None), caps, secs(1)).unwrap();

    // With 6 tasks finished in the last minute, one slot frees every 10 s.
    let big = QueueCaps {
        per_org: 100,
        global: 100,
    };
    assert!(s
        .complete(
            &Fence::new(W, l.id, l.attempt),
            "{}",
            TaskUsage::default(),
            secs(2)
        )
        .unwrap());
    for i in 0..5 {
        enqueue(s, b, "{}", secs(3));
        let l = lease(s, secs(3)).unwrap();
        assert!(s
            .complete(
                &Fence::new(W, l.id, l.attempt),
                "{}",
                TaskUsage::default(),
                secs(4 + i)
            )
            .unwrap());
    }
    let tight = QueueCaps {
        per_org: 100,
        global: 0,
    };
    match s.enqueue(&new_task(a, "{}", None), tight, secs(10)) {
        Err(StoreError::QueueFull {
            scope: QueueScope::Global,
            retry_after_seconds,
        }) => assert_eq!(retry_after_seconds, 10),
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert!(s.enqueue(&new_task(a, "{}", None), big, secs(10)).is_ok());
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
        s.heartbeat(&Fence::new(W, running, l.attempt), None, LEASE, secs(5))
            .unwrap(),
        Heartbeat::Cancelled
    );
    assert!(s
        .fail(
            &Fence::new(W, running, l.attempt),
            &Failure::new(code(codes::CANCELLED), "stopped at step 3", false),
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
        .complete(
            &Fence::new(W, done, l.attempt),
            "\"ok\"",
            TaskUsage::default(),
            secs(9)
        )
        .unwrap());
    assert_eq!(
        s.cancel(a, done, secs(10)).unwrap(),
        CancelOutcome::AlreadyFinished(TaskState::Succeeded)
    );
    assert_eq!(s.result(a, done).unwrap().as_deref(), Some("\"ok\""));

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
    assert!(s
        .release(&Fence::new(W, released, l.attempt), secs(202))
        .unwrap());
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
            &Fence::new(W, l.id, l.attempt),
            Some(Progress { step: 2, steps: 25 }),
            LEASE,
            secs(11)
        )
        .unwrap(),
        Heartbeat::Continue
    );
    // A heartbeat without progress keeps the last progress.
    s.heartbeat(&Fence::new(W, l.id, l.attempt), None, LEASE, secs(12))
        .unwrap();
    let v = view(s, a, ids[0]);
    assert_eq!(
        v.queue_position, None,
        "running tasks have no queue position"
    );
    assert_eq!(v.progress, Some(Progress { step: 2, steps: 25 }));
    assert_eq!(view(s, a, ids[3]).queue_position, Some(3));

    let listed = s.list(a, page(1, 2), secs(0)).unwrap();
    assert_eq!(listed.total, 5);
    assert_eq!(
        listed.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let listed = s.list(a, page(3, 2), secs(0)).unwrap();
    assert_eq!(
        listed.tasks.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert_eq!(listed.tasks[0].state, TaskState::Running);
    assert!(s.list(a, page(4, 2), secs(0)).unwrap().tasks.is_empty());
    assert_eq!(s.list(b, page(1, 10), secs(0)).unwrap().total, 0);
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
            .complete(
                &Fence::new(W, l.id, l.attempt),
                "{}",
                TaskUsage::default(),
                secs(100)
            )
            .unwrap());
    }
}

pub fn expiry(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let ttl = Duration::from_secs(3600);
    let key = IdempotencyKey::parse("once").unwrap();
    let old = s
        .enqueue(&new_task(a, "{}", Some(&key)), CAPS, secs(0))
        .unwrap()
        .id;
    let l = lease(s, secs(0)).unwrap();
    let usage = TaskUsage {
        images: 1,
        steps: 10,
        gpu_ms: 100,
    };
    assert!(s
        .complete(&Fence::new(W, old, l.attempt), "\"old\"", usage, secs(10))
        .unwrap());
    let cancelled = enqueue(s, a, "{}", secs(20));
    s.cancel(a, cancelled, secs(20)).unwrap();
    let recent = enqueue(s, a, "{}", secs(30));
    let l = lease(s, secs(30)).unwrap();
    assert!(s
        .complete(
            &Fence::new(W, recent, l.attempt),
            "\"recent\"",
            usage,
            secs(2000)
        )
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
    assert_eq!(s.list(a, page(1, 10), secs(0)).unwrap().total, 2);
    // The expired task's idempotency key is free again.
    assert!(
        s.enqueue(&new_task(a, "{}", Some(&key)), CAPS, secs(1_000_001))
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
            Some(u) => assert!(s
                .complete(&Fence::new(W, id, l.attempt), "{}", u, finish)
                .unwrap()),
            None => assert!(s
                .fail(
                    &Fence::new(W, id, l.attempt),
                    &Failure::new(code("inference_failed"), "x", false),
                    finish
                )
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
                &Fence::new(W, done, l.attempt),
                "\"result\"",
                TaskUsage::default(),
                secs(3)
            )
            .unwrap());
        (key.expose_key().to_owned(), org, queued, done)
    };
    let s = &*h.open();
    let alice = s
        .authenticate(&key, at(0))
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
    assert_eq!(s.result(org, done).unwrap().as_deref(), Some("\"result\""));
    assert_eq!(view(s, org, queued).state, TaskState::Queued);
    let l = lease(s, secs(4)).unwrap();
    assert_eq!(
        (l.id, l.request_json.as_str()),
        (queued, "{\"second\":true}")
    );
}
