//! Conformance checks of [`Queue`](crate::Queue), the worker's side: the order tasks are
//! leased in (FIFO, fairness, round-robin, the worker's offer), leases that lapse, the
//! fence on every report, retries, releases, the work signal, the sweep, and the leases a
//! restarted process lets lapse.

use std::collections::HashSet;

use super::*;

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
            .complete(
                &Fence::new(W, l.id, l.attempt),
                "{}",
                TaskUsage::default(),
                at(2)
            )
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
            &Fence::new(W, id, 1),
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
        s.list(a, page(1, 10), secs(110)).unwrap().tasks[0].state,
        TaskState::Queued
    );
    assert_eq!(
        s.queue_stats(secs(110)).unwrap(),
        QueueStats {
            queued: 1,
            running: 0,
            oldest_waiting_since: Some(secs(0)),
            lapsed: 1,
        }
    );
    assert_eq!(
        s.queue_stats(secs(109)).unwrap(),
        QueueStats {
            queued: 0,
            running: 1,
            oldest_waiting_since: None,
            lapsed: 0,
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
        .complete(&Fence::new(W, id, 3), "{}", TaskUsage::default(), secs(401))
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
    // The stale worker is refused under either number: presenting the live attempt's,
    // it is still not the owner; its own attempt has passed on.
    let p = Some(Progress { step: 9, steps: 9 });
    for (attempt, result) in [(fresh.attempt, "\"thief\""), (stale.attempt, "\"stale\"")] {
        let lost = s
            .heartbeat(&Fence::new(W, id, attempt), p, LEASE, secs(62))
            .unwrap();
        assert_eq!(lost, Heartbeat::Lost);
        let usage = TaskUsage::default();
        assert!(!s
            .complete(&Fence::new(W, id, attempt), result, usage, secs(62))
            .unwrap());
        let failed = s.fail(
            &Fence::new(W, id, attempt),
            &Failure::new(code("boom"), result, false),
            secs(62),
        );
        assert!(!failed.unwrap());
        assert!(!s.release(&Fence::new(W, id, attempt), secs(62)).unwrap());
    }
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Running);
    assert_eq!(v.progress, None, "the stale heartbeat wrote nothing");
    // A fence on a task that does not exist is just as refused.
    assert_eq!(
        s.heartbeat(&Fence::new(W, TaskId::random(), 1), None, LEASE, secs(62))
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(s
        .complete(
            &Fence::new("worker-b", id, fresh.attempt),
            "\"fresh\"",
            TaskUsage::default(),
            secs(63)
        )
        .unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Succeeded);
    assert_eq!(s.result(a, id).unwrap().as_deref(), Some("\"fresh\""));
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
        .complete(&Fence::new(W, id, l.attempt), "\"one\"", usage, secs(1))
        .unwrap());
    assert!(!s
        .complete(&Fence::new(W, id, l.attempt), "\"two\"", usage, secs(2))
        .unwrap());
    assert!(!s
        .fail(
            &Fence::new(W, id, l.attempt),
            &Failure::new(code("boom"), "late", false),
            secs(2)
        )
        .unwrap());
    assert_eq!(
        s.heartbeat(&Fence::new(W, id, l.attempt), None, LEASE, secs(2))
            .unwrap(),
        Heartbeat::Lost
    );
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Succeeded);
    assert_eq!(s.result(a, id).unwrap().as_deref(), Some("\"one\""));
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
            &Fence::new(W, id2, l2.attempt),
            &Failure::new(code("inference_failed"), "out of memory", false),
            secs(4)
        )
        .unwrap());
    assert!(!s
        .complete(&Fence::new(W, id2, l2.attempt), "{}", usage, secs(5))
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
    assert_eq!(s.result(a, id2).unwrap(), None);
}

pub fn release_returns_task(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(0));
    // A second task behind it, so "keeps its place" means something.
    enqueue(s, a, "{}", secs(0));
    let l = lease(s, secs(0)).unwrap();
    assert_eq!(l.id, id);
    assert!(s.release(&Fence::new(W, id, l.attempt), secs(1)).unwrap());
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
        .complete(
            &Fence::new(W, id, attempt - 1),
            "{}",
            TaskUsage::default(),
            secs(2)
        )
        .unwrap());
    assert!(s.release(&Fence::new(W, id, attempt), secs(3)).unwrap());
    for round in 0..3 {
        let l = lease(s, secs(10 + 100 * round)).unwrap();
        assert_eq!(l.id, id, "round {round}");
    }
    assert_ne!(lease(s, secs(400)).map(|l| l.id), Some(id));
    assert_eq!(view(s, a, id).error.unwrap().code, codes::WORKER_LOST);
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
                                &Fence::new(&worker, l.id, l.attempt),
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

/// The matching rule is written twice: in `Capabilities::can_run` (which `sie serve` refuses
/// at POST by) and in each store's lease query. Every combination of what a task needs and
/// what a worker offers must agree: a worker leases exactly the tasks `can_run` allows.
pub fn lease_agrees_with_can_run_for_every_offer(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let schedulers = [None, Some(SchedulerKind::Ddim), Some(SchedulerKind::Pndm)];
    let mut tasks = Vec::new();
    for pipeline in [
        Pipeline::Text2Image,
        Pipeline::Image2Image,
        Pipeline::Inpaint,
    ] {
        for scheduler in schedulers {
            for safety_checker in [false, true] {
                let needs = TaskNeeds {
                    pipeline,
                    scheduler,
                    safety_checker,
                };
                let task = NewTask {
                    needs,
                    ..new_task(a, "{}", None)
                };
                tasks.push((s.enqueue(&task, CAPS, secs(0)).unwrap().id, needs));
            }
        }
    }
    let pipeline_sets = [
        vec![Pipeline::Text2Image],
        vec![Pipeline::Text2Image, Pipeline::Inpaint],
    ];
    let scheduler_sets = [
        vec![],
        vec![SchedulerKind::Ddim],
        vec![SchedulerKind::Ddim, SchedulerKind::Pndm],
    ];
    let mut now = 1;
    for pipelines in &pipeline_sets {
        for schedulers in &scheduler_sets {
            for checker in [false, true] {
                let can = Capabilities::new(pipelines.clone(), schedulers.clone(), checker);
                let offer = WorkerOffer::new(W, can.clone());
                let mut held = Vec::new();
                while let Some(l) = s.lease(&offer, LEASE, secs(now)).unwrap() {
                    assert!(held.len() < tasks.len(), "a held task was leased twice");
                    held.push(l);
                }
                let leased: HashSet<TaskId> = held.iter().map(|l| l.id).collect();
                // Given back without counting an attempt, for the next offer.
                for l in &held {
                    assert!(s.release(&l.fence(W), secs(now)).unwrap());
                }
                now += 1;
                let allowed: HashSet<TaskId> = tasks
                    .iter()
                    .filter(|(_, needs)| can.can_run(needs))
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(leased, allowed, "{can:?}");
            }
        }
    }
}

pub fn lease_matches_worker_offer(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let needs = |pipeline: &str, scheduler: Option<&str>, safety_checker| TaskNeeds {
        pipeline: Pipeline::parse(pipeline).unwrap(),
        scheduler: scheduler.map(|s| SchedulerKind::parse(s).unwrap()),
        safety_checker,
    };
    let put = |needs: TaskNeeds, t| {
        let task = NewTask {
            needs,
            ..new_task(a, "{}", None)
        };
        s.enqueue(&task, CAPS, secs(t)).unwrap().id
    };
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
    let full = WorkerOffer::new(
        "full",
        Capabilities::new(
            [Pipeline::Text2Image, Pipeline::Image2Image],
            [SchedulerKind::Pndm],
            true,
        ),
    );
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
                &Fence::new(W, id, attempt),
                &Failure::new(code("out_of_memory"), "CUDA OOM", true),
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
        .fail(
            &Fence::new(W, id, 3),
            &Failure::new(code("out_of_memory"), "CUDA OOM", true),
            secs(3)
        )
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
        .fail(
            &Fence::new(W, id, l.attempt),
            &Failure::new(code("gpu_fault"), "x", true),
            secs(12)
        )
        .unwrap());
    let v = view(s, a, id);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);
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
    assert!(s.release(&Fence::new(W, id, l.attempt), secs(2)).unwrap());
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
    assert_eq!(s.sweep(secs(359)).unwrap(), []);
    // Both leases lapsed, nobody asks for work: the sweep ends them, and only them.
    assert_eq!(s.sweep(secs(400)).unwrap().len(), 2);
    assert_eq!(s.sweep(secs(400)).unwrap(), []);
    let v = view(s, a, lost);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::WORKER_LOST);
    let v = view(s, a, cancelled);
    assert_eq!(v.state, TaskState::Failed);
    assert_eq!(v.error.unwrap().code, codes::CANCELLED);
    assert_eq!(view(s, a, waiting).state, TaskState::Queued);
}

pub fn lapse_leases_frees_what_one_process_held(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let ids: Vec<TaskId> = (0..3).map(|i| enqueue(s, a, "{}", secs(i))).collect();
    let take = |worker: &str| s.lease(&offer(worker), LEASE, secs(10)).unwrap().unwrap();
    let (first, second, other) = (take("local:0"), take("local:1"), take("localhost"));
    assert_eq!(
        vec![first.id, second.id, other.id],
        ids,
        "each worker holds one task"
    );
    let rung = s.work_signal().generation();
    // Long before the leases would lapse, the prefix's workers lose theirs; a worker whose
    // id merely starts alike ("localhost") keeps its own.
    assert_eq!(s.lapse_leases("local:", secs(11)).unwrap(), 2);
    assert!(
        s.work_signal().generation() > rung,
        "waiting workers are woken"
    );
    let v = s.get(a, first.id, secs(11)).unwrap().unwrap();
    assert_eq!(v.state, TaskState::Queued);
    assert_eq!(v.queue_position, Some(1));
    let again = s
        .lease(&offer("local:0"), LEASE, secs(11))
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.attempt), (first.id, 2));
    let again = s
        .lease(&offer("worker-b"), LEASE, secs(11))
        .unwrap()
        .unwrap();
    assert_eq!((again.id, again.attempt), (second.id, 2));
    assert!(
        s.lease(&offer("worker-b"), LEASE, secs(11))
            .unwrap()
            .is_none(),
        "the other worker's task is still held"
    );
    // The lapsed attempts are fenced off like any lost lease.
    assert_eq!(
        s.heartbeat(&first.fence("local:0"), None, LEASE, secs(12))
            .unwrap(),
        Heartbeat::Lost
    );
    assert!(!s
        .complete(
            &second.fence("local:1"),
            "{}",
            TaskUsage::default(),
            secs(12)
        )
        .unwrap());
    assert_eq!(s.lapse_leases("local:1", secs(12)).unwrap(), 0);
    assert!(matches!(
        s.lapse_leases("", secs(12)),
        Err(crate::StoreError::BadArgument(_))
    ));
}

pub fn queue_stats_and_task_outcomes(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let b = approved_org(s, "b");
    let empty = s.queue_stats(secs(0)).unwrap();
    assert_eq!(
        empty,
        QueueStats {
            queued: 0,
            running: 0,
            oldest_waiting_since: None,
            lapsed: 0,
        }
    );
    let first = enqueue(s, a, "{}", secs(1));
    let second = enqueue(s, b, "{}", secs(2));
    let third = enqueue(s, a, "{}", secs(3));
    // The oldest waiting task is the first, until it is leased.
    let stats = s.queue_stats(secs(4)).unwrap();
    assert_eq!((stats.queued, stats.running), (3, 0));
    assert_eq!(stats.oldest_waiting_since, Some(secs(1)));
    assert_eq!(lease(s, secs(4)).unwrap().id, first);
    let stats = s.queue_stats(secs(5)).unwrap();
    assert_eq!((stats.queued, stats.running, stats.lapsed), (2, 1, 0));
    assert_eq!(stats.oldest_waiting_since, Some(secs(2)));
    // Its lease lapses: it waits again, the oldest, and counts as lapsed.
    let stats = s.queue_stats(secs(4 + 60)).unwrap();
    assert_eq!((stats.queued, stats.running, stats.lapsed), (3, 0, 1));
    assert_eq!(stats.oldest_waiting_since, Some(secs(1)));

    // Outcomes, read by id alone, name the organization.
    let outcome = s.task_outcome(second).unwrap().unwrap();
    assert_eq!(outcome.org.as_str(), "b");
    assert_eq!(
        (outcome.state, outcome.attempt, outcome.code),
        (TaskState::Queued, 0, None)
    );
    let running = s.task_outcome(first).unwrap().unwrap();
    assert_eq!((running.state, running.attempt), (TaskState::Running, 1));
    assert!(s
        .complete(
            &Fence::new(W, first, 1),
            "{}",
            TaskUsage::default(),
            secs(6)
        )
        .unwrap());
    let done = s.task_outcome(first).unwrap().unwrap();
    assert_eq!(done.org.as_str(), "a");
    assert_eq!((done.state, done.attempt), (TaskState::Succeeded, 1));
    // A retryable failure that leaves attempts puts the task back: not an end.
    let l = lease(s, secs(7)).unwrap();
    assert_eq!(l.id, second);
    let retry = Failure::new(code("engine_error"), "try again", true);
    assert!(s.fail(&l.fence(W), &retry, secs(8)).unwrap());
    let requeued = s.task_outcome(second).unwrap().unwrap();
    assert_eq!((requeued.state, requeued.attempt), (TaskState::Queued, 1));
    assert_eq!(
        s.cancel(a, third, secs(9)).unwrap(),
        CancelOutcome::Cancelled
    );
    let cancelled = s.task_outcome(third).unwrap().unwrap();
    assert_eq!(cancelled.state, TaskState::Failed);
    assert_eq!(cancelled.code.as_deref(), Some(codes::CANCELLED));
    assert_eq!(s.task_outcome(TaskId::random()).unwrap(), None);
}
