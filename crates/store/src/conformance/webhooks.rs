//! Conformance checks of [`Webhooks`](crate::Webhooks): signing secrets, and the outbox the
//! queue fills as tasks with a webhook URL end (completed, failed, cancelled; not requeued),
//! claimed for one attempt at a time, fenced on that attempt, and gone with its task.

use super::*;

const HOOK: &str = "https://hooks.example.com/sie";

fn enqueue_hooked(s: &dyn Store, org: OrgId, now: Timestamp) -> TaskId {
    let task = NewTask {
        webhook_url: Some(HOOK),
        ..new_task(org, "{}", None)
    };
    s.enqueue(&task, CAPS, now).unwrap().id
}

fn claim(s: &dyn Store, now: Timestamp) -> Vec<Delivery> {
    s.claim_deliveries(10, Duration::from_secs(30), now)
        .unwrap()
}

/// Claims what is due at `now` and records each as delivered; their tasks.
fn delivered(s: &dyn Store, now: Timestamp) -> Vec<TaskId> {
    let due = claim(s, now);
    for d in &due {
        assert!(s
            .finish_delivery(d, &DeliveryOutcome::Delivered, now)
            .unwrap());
    }
    due.iter().map(|d| d.task).collect()
}

pub fn webhook_secrets(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    assert_eq!(s.webhook_secret(a).unwrap(), None);
    let name = OrgName::parse("a").unwrap();
    s.set_webhook_secret(&name, "whsec_one").unwrap();
    s.set_webhook_secret(&name, "whsec_two").unwrap();
    assert_eq!(s.webhook_secret(a).unwrap().as_deref(), Some("whsec_two"));
    let nobody = OrgName::parse("nobody").unwrap();
    assert!(matches!(
        s.set_webhook_secret(&nobody, "whsec_x"),
        Err(crate::StoreError::UnknownOrg(_))
    ));
}

pub fn webhook_deliveries_are_queued_as_tasks_end(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    // Completed: one delivery, due at once, for the task's organization.
    let done = enqueue_hooked(s, a, secs(0));
    let plain = enqueue(s, a, "{}", secs(0));
    assert!(claim(s, secs(0)).is_empty(), "nothing ended yet");
    let l = lease(s, secs(1)).unwrap();
    assert_eq!(l.id, done);
    s.complete(&l.fence(W), "{}", TaskUsage::default(), secs(2))
        .unwrap();
    let l = lease(s, secs(2)).unwrap();
    assert_eq!(l.id, plain);
    s.complete(&l.fence(W), "{}", TaskUsage::default(), secs(3))
        .unwrap();
    let claimed = claim(s, secs(3));
    assert_eq!(claimed.len(), 1, "only the task with a URL: {claimed:?}");
    let d = &claimed[0];
    assert_eq!(
        (d.task, d.org, d.url.as_str(), d.attempt),
        (done, a, HOOK, 1)
    );
    assert_eq!(d.id, format!("msg_{done}"));
    assert_eq!(d.created_at, secs(2));
    assert!(s
        .finish_delivery(d, &DeliveryOutcome::Delivered, secs(3))
        .unwrap());

    // A retryable failure puts the task back: nothing to send yet; the last one ends it.
    let failing = enqueue_hooked(s, a, secs(4));
    let failure = Failure::new(code("engine_error"), "boom", true);
    for attempt in 1..=MAX_ATTEMPTS {
        let l = lease(s, secs(5)).unwrap();
        assert_eq!((l.id, l.attempt), (failing, attempt));
        s.fail(&l.fence(W), &failure, secs(5)).unwrap();
        let due = delivered(s, secs(5));
        assert_eq!(due.contains(&failing), attempt == MAX_ATTEMPTS, "{attempt}");
    }

    // Cancelled while queued: sent at once.
    let cancelled = enqueue_hooked(s, a, secs(6));
    s.cancel(a, cancelled, secs(7)).unwrap();
    assert_eq!(delivered(s, secs(7)), [cancelled]);

    // A failure that may not be retried: sent at once.
    let broken = enqueue_hooked(s, a, secs(8));
    let l = lease(s, secs(8)).unwrap();
    assert_eq!(l.id, broken);
    let fatal = Failure::new(code("invalid_image"), "no", false);
    s.fail(&l.fence(W), &fatal, secs(9)).unwrap();
    assert_eq!(delivered(s, secs(9)), [broken]);
    // A late report on the ended task queues nothing more.
    s.fail(&l.fence(W), &fatal, secs(9)).unwrap();
    assert!(claim(s, secs(100)).is_empty());

    // Lost workers: the last lapse ends the task with `worker_lost`, and queues it.
    let lost = enqueue_hooked(s, a, secs(200));
    let mut t = 200;
    for attempt in 1..=MAX_ATTEMPTS {
        let l = lease(s, secs(t)).unwrap();
        assert_eq!((l.id, l.attempt), (lost, attempt));
        assert!(claim(s, secs(t)).is_empty());
        t += LEASE.as_secs() as i64 + 1;
    }
    s.sweep(secs(t)).unwrap();
    assert_eq!(delivered(s, secs(t)), [lost]);
    assert_eq!(view(s, a, lost).error.unwrap().code.as_str(), "worker_lost");
}

pub fn webhook_attempts_are_claimed_fenced_and_retried(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue_hooked(s, a, secs(0));
    s.cancel(a, id, secs(1)).unwrap();
    let first = claim(s, secs(1)).remove(0);
    assert_eq!(first.attempt, 1);
    // Held by its claim: no one else gets it meanwhile.
    assert!(claim(s, secs(2)).is_empty());
    let retry = DeliveryOutcome::Retry {
        at: secs(10),
        error: "503".into(),
    };
    assert!(s.finish_delivery(&first, &retry, secs(2)).unwrap());
    assert!(
        claim(s, secs(9)).is_empty(),
        "not due before its retry time"
    );
    let second = claim(s, secs(10)).remove(0);
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    // The first attempt's late failure changes nothing.
    assert!(!s.finish_delivery(&first, &retry, secs(11)).unwrap());
    // A claim whose node vanished lapses: the delivery is due again after the hold.
    assert!(claim(s, secs(39)).is_empty());
    let third = claim(s, secs(40)).remove(0);
    assert_eq!(third.attempt, 3);
    // The lapsed second attempt did arrive after all: that counts, and ends the delivery.
    assert!(s
        .finish_delivery(&second, &DeliveryOutcome::Delivered, secs(41))
        .unwrap());
    assert!(!s.finish_delivery(&third, &retry, secs(41)).unwrap());
    assert!(!s
        .finish_delivery(&third, &DeliveryOutcome::Delivered, secs(41))
        .unwrap());
    assert!(claim(s, secs(10_000)).is_empty(), "delivered: never again");

    // Given up: never again either.
    let other = enqueue_hooked(s, a, secs(50));
    s.cancel(a, other, secs(50)).unwrap();
    let d = claim(s, secs(50)).remove(0);
    let give_up = DeliveryOutcome::GiveUp {
        error: "gone".into(),
    };
    assert!(s.finish_delivery(&d, &give_up, secs(51)).unwrap());
    assert!(claim(s, secs(10_000)).is_empty());

    // At most `limit` at a time, oldest due first.
    let ids: Vec<TaskId> = (0..3)
        .map(|i| {
            let id = enqueue_hooked(s, a, secs(100 + i));
            s.cancel(a, id, secs(100 + i)).unwrap();
            id
        })
        .collect();
    let batch = s
        .claim_deliveries(2, Duration::from_secs(30), secs(200))
        .unwrap();
    let got: Vec<TaskId> = batch.iter().map(|d| d.task).collect();
    assert_eq!(got, ids[..2]);
}

pub fn webhook_deliveries_expire_with_their_task(h: &dyn Harness) {
    let s = &*h.open();
    let a = approved_org(s, "a");
    let id = enqueue_hooked(s, a, secs(0));
    s.cancel(a, id, secs(1)).unwrap();
    let later = secs(1).plus(RESULT_TTL);
    assert_eq!(s.expire(RESULT_TTL, later).unwrap(), 1);
    assert!(claim(s, later).is_empty());
}
