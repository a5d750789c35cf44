//! Webhooks: a task's final status body, posted to its `callInputs.webhook_url` when it
//! ends, signed per organization the Standard Webhooks way (`sign.rs`), never to a private
//! address unless the operator allows it (`guard.rs`).
//!
//! The store's outbox is the source of truth: a delivery row is written in the transaction
//! that ends the task, by whichever process ends it (a worker's report, a cancel, a lapsed
//! lease). This loop, in every API process and never on a worker's thread, claims due rows
//! for one attempt, posts each on a task of its own (at most [`IN_FLIGHT`] at once, each
//! bounded by [`ATTEMPT_TIMEOUT`], so a receiver that never answers holds one slot and
//! delays no other delivery), and records how it went. A failed attempt is tried again
//! after 1, 2, 4, ... seconds, at most an hour apart, until a day after the task ended;
//! a process that dies mid-attempt leaves its claim to lapse after [`CLAIM_HOLD`], and the
//! delivery is claimed again, by it after a restart or by another node. Delivery is
//! therefore at least once: receivers tell repeats apart by `webhook-id`. A delivery lives
//! as long as its task: one whose result expires first (`--result-ttl` under a day) goes
//! with it. Redirects (at most five) are followed by posting the same signed body to the
//! new URL, checked as the first was; the receiver's answer body is never read.

mod guard;
mod sign;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use sie_store::{Delivery, DeliveryOutcome, TaskState, Timestamp};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

pub(crate) use guard::{refusal, Refusal};
pub use sign::{Secret, SECRET_PREFIX};

use crate::AppState;

/// What the operator decides about webhooks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Deliver to loopback, private, link-local and metadata addresses too
    /// (`--allow-private-webhooks`): for a receiver on the same machine or network.
    pub allow_private: bool,
}

/// Deliveries one process makes at once.
pub const IN_FLIGHT: usize = 32;
/// The longest one attempt may take, connecting, sending and hearing the status included.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a claimed delivery is held for its attempt before it is due again.
pub const CLAIM_HOLD: Duration = Duration::from_secs(30);
/// The longest a whole attempt (reading the task, resolving, every redirect's request)
/// takes; below [`CLAIM_HOLD`], so no other node claims a delivery still being attempted.
const WHOLE_ATTEMPT: Duration = Duration::from_secs(25);
/// Redirects an attempt follows at most.
const MAX_REDIRECTS: usize = 5;
/// How often the outbox is looked at for deliveries that became due.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The wait after a first failed attempt; it doubles after each, up to [`LONGEST_WAIT`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(3600);
/// No attempt is made this long after the task ended.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Delivers the outbox until `stopping` turns true. Started by [`crate::serve`].
pub(crate) async fn deliver(state: AppState, mut stopping: watch::Receiver<bool>) {
    let allow_private = state.settings.webhooks.allow_private;
    let client = match client(allow_private) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "webhooks cannot be delivered: no HTTP client");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let free = slots.available_permits() as u32;
        let mut full_batch = false;
        if free > 0 {
            let claimed = state
                .store(move |s| s.claim_deliveries(free, CLAIM_HOLD, Timestamp::now()))
                .await;
            match claimed {
                Ok(claimed) => {
                    full_batch = claimed.len() as u32 == free;
                    for delivery in claimed {
                        let Ok(slot) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        tokio::spawn(attempt(state.clone(), client.clone(), delivery, slot));
                    }
                }
                Err(e) => tracing::warn!(error = ?e, "could not claim webhook deliveries"),
            }
        }
        if *stopping.borrow() {
            return;
        }
        if full_batch && slots.available_permits() > 0 {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            _ = stopping.changed() => return,
        }
    }
}

fn client(allow_private: bool) -> reqwest::Result<reqwest::Client> {
    // (`allow_private` leaves the system resolver in place.)
    let mut builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        // Redirects are followed by `send`, which re-posts the signed body to each hop (a
        // client would turn a POST into a bodiless GET) and checks every hop's URL.
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would connect on our behalf to addresses the
        // resolver never saw.
        .no_proxy()
        .user_agent(concat!("sie-webhooks/", env!("CARGO_PKG_VERSION")));
    if !allow_private {
        builder = builder.dns_resolver(Arc::new(guard::GuardedResolver));
    }
    builder.build()
}

/// Why an attempt did not deliver.
enum Failed {
    /// Worth another attempt (the receiver, its network, or our store).
    Transient(String),
    /// Never deliverable (the task is gone, the URL may not be called).
    Permanent(String),
}

/// One attempt at `delivery`, holding one of the [`IN_FLIGHT`] slots.
async fn attempt(
    state: AppState,
    client: reqwest::Client,
    delivery: Delivery,
    _slot: OwnedSemaphorePermit,
) {
    let sent = match tokio::time::timeout(WHOLE_ATTEMPT, send(&state, &client, &delivery)).await {
        Ok(sent) => sent,
        Err(_) => Err(Failed::Transient(format!(
            "the attempt took longer than {} s",
            WHOLE_ATTEMPT.as_secs()
        ))),
    };
    let now = Timestamp::now();
    let outcome = match sent {
        Ok(status) => {
            tracing::info!(
                task = %delivery.task, attempt = delivery.attempt, %status,
                "webhook delivered"
            );
            DeliveryOutcome::Delivered
        }
        Err(Failed::Permanent(error)) => {
            tracing::warn!(task = %delivery.task, %error, "webhook dropped");
            DeliveryOutcome::GiveUp { error }
        }
        Err(Failed::Transient(error)) => {
            match next_attempt(delivery.attempt, delivery.created_at, now, jitter()) {
                Some(at) => {
                    tracing::warn!(
                        task = %delivery.task, attempt = delivery.attempt, %error,
                        retry_in_ms = at.as_millis() - now.as_millis(),
                        "webhook not delivered; it will be tried again"
                    );
                    DeliveryOutcome::Retry { at, error }
                }
                None => {
                    tracing::warn!(
                        task = %delivery.task, attempt = delivery.attempt, %error,
                        "webhook not delivered within a day of the task's end; given up"
                    );
                    DeliveryOutcome::GiveUp { error }
                }
            }
        }
    };
    let recorded = state
        .store(move |s| s.finish_delivery(&delivery, &outcome, now))
        .await;
    if let Err(e) = recorded {
        // The claim lapses and the delivery is attempted again: at least once.
        tracing::warn!(error = ?e, "could not record a webhook attempt");
    }
}

/// When the attempt after the failed `attempt` (1 for the first) is due, its wait
/// stretched by `jitter` (0.8..=1.2, so receivers failing together are not retried in
/// lockstep), or `None` when that would be more than [`GIVE_UP_AFTER`] after the task
/// ended at `ended`.
fn next_attempt(attempt: u32, ended: Timestamp, now: Timestamp, jitter: f64) -> Option<Timestamp> {
    let doublings = attempt.saturating_sub(1).min(31);
    let wait = FIRST_RETRY
        .saturating_mul(1u32 << doublings)
        .min(LONGEST_WAIT)
        .mul_f64(jitter);
    let at = now.plus(wait);
    let deadline = ended.plus(GIVE_UP_AFTER);
    (at.as_millis() <= deadline.as_millis()).then_some(at)
}

/// A factor in 0.8..=1.2 from the OS's random source (1 without one).
fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    match getrandom::fill(&mut byte) {
        // Whole hundredths, 80 to 120: exactly the bounds at the ends.
        Ok(()) => f64::from(80 + byte[0] % 41) / 100.0,
        Err(_) => 1.0,
    }
}

/// Posts the task's final status, signed, following redirects (each hop's URL checked, the
/// same signed body posted again); the receiver's status when it is 2xx.
async fn send(
    state: &AppState,
    client: &reqwest::Client,
    delivery: &Delivery,
) -> Result<reqwest::StatusCode, Failed> {
    let mut url = reqwest::Url::parse(&delivery.url)
        .map_err(|e| Failed::Permanent(format!("the stored URL does not parse: {e}")))?;
    let body = status_body(state, delivery).await?;
    let (org, id) = (delivery.org, delivery.id.clone());
    let secret = state
        .store(move |s| s.webhook_secret(org))
        .await
        .map_err(|e| Failed::Transient(format!("reading the signing secret: {e:?}")))?
        .ok_or_else(|| Failed::Permanent("the organization has no webhook secret".into()))?;
    let secret = Secret::parse(&secret).map_err(Failed::Permanent)?;
    let timestamp = Timestamp::now().as_millis() / 1000;
    let signature = secret.sign(&id, timestamp, &body);
    let allow_private = state.settings.webhooks.allow_private;
    for hop in 0..=MAX_REDIRECTS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failed::Permanent(format!(
                "redirected to a {}: URL; webhooks go to http and https only",
                url.scheme()
            )));
        }
        // Addresses written in a URL reach no resolver; names are checked here for a clear
        // message, and again by the client's resolver as it connects.
        match guard::refusal(&url, allow_private).await {
            Some(Refusal::Forbidden(why)) => {
                return Err(Failed::Permanent(format!("the URL {url} {why}")))
            }
            Some(Refusal::Unresolved(why)) => return Err(Failed::Transient(why)),
            None => {}
        }
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id.as_str())
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature.as_str())
            .body(body.clone())
            .send()
            .await
            .map_err(|e| Failed::Transient(describe(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(status);
        }
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|_| status.is_redirection());
        match location {
            Some(to) if hop < MAX_REDIRECTS => {
                url = url.join(to).map_err(|e| {
                    Failed::Transient(format!("the receiver redirected to {to:?}, not a URL: {e}"))
                })?;
            }
            Some(_) => {
                return Err(Failed::Transient(format!(
                    "more than {MAX_REDIRECTS} redirects"
                )))
            }
            None => return Err(Failed::Transient(format!("the receiver answered {status}"))),
        }
    }
    unreachable!("the loop returns by its last hop")
}

/// The task's final status, as `GET` on its result URL answers it.
async fn status_body(state: &AppState, delivery: &Delivery) -> Result<Bytes, Failed> {
    let (org, task) = (delivery.org, delivery.task);
    let gone = || Failed::Permanent("the task no longer exists (its result expired)".into());
    let view = state
        .store(move |s| s.get(org, task, Timestamp::now()))
        .await
        .map_err(|e| Failed::Transient(format!("reading the task: {e:?}")))?
        .ok_or_else(gone)?;
    if view.state != TaskState::Succeeded {
        let body = crate::routes::tasks::unfinished_body(&view);
        return Ok(Bytes::from(body.to_string()));
    }
    let outputs = state
        .results
        .outputs(state, org, task)
        .await
        .map_err(|e| Failed::Transient(format!("reading the result: {e:?}")))?
        .ok_or_else(gone)?;
    // The signature covers the whole body, so it is made contiguous here.
    Ok(Bytes::from(
        crate::results::success_parts(task, outputs).concat(),
    ))
}

/// A client error with its causes, which say what actually went wrong (a refused address
/// is the resolver's error, two levels down).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_for_a_day() {
        let start = Timestamp::from_millis(1_000_000_000);
        let wait = |attempt: u32, now: Timestamp| {
            next_attempt(attempt, start, now, 1.0).map(|at| at.as_millis() - now.as_millis())
        };
        assert_eq!(wait(1, start), Some(1_000));
        assert_eq!(wait(2, start), Some(2_000));
        assert_eq!(wait(3, start), Some(4_000));
        assert_eq!(wait(13, start), Some(3_600_000));
        assert_eq!(wait(40, start), Some(3_600_000));
        let late = start.plus(GIVE_UP_AFTER - Duration::from_secs(10));
        assert_eq!(wait(5, late), None);
        // Jitter stretches or shrinks the wait by at most a fifth.
        let jittered =
            |j| next_attempt(3, start, start, j).unwrap().as_millis() - start.as_millis();
        assert_eq!((jittered(0.8), jittered(1.2)), (3_200, 4_800));
        for _ in 0..100 {
            assert!((0.8..=1.2).contains(&jitter()));
        }
    }
}
