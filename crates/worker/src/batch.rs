//! Step-level batching in the worker: text-to-image tasks of one size that are waiting
//! together run as one engine [`Batch`], each joining at a step boundary and leaving at its
//! own last step, with its own lease, heartbeats, progress, cancel and report.
//!
//! The worker leases a first task and, before every step, as many more as the batch has room
//! for (`--max-batch`), without waiting: tasks that arrive while a batch runs join it at its
//! next step. Each member is exactly a task run alone as far as the queue can tell: a
//! heartbeat thread of its own renews its lease and relays its client's cancel (it leaves at
//! the next step, the others carry on), and its outcome is reported by the same code as a
//! task run alone. A task that cannot join (another pipeline, another size) is given back to
//! the queue (`release`: it counts no attempt) and no more are leased until the batch ends,
//! so it runs next, here or on another worker. A first task that cannot be batched runs
//! alone. A run's own failure or panic ends that run alone; when the evaluation the members
//! share fails, they go back to the queue without an attempt counted, and this worker runs
//! tasks alone from then on.
//!
//! `gpu_ms` in a member's usage is its wall time in the batch, shared with the others.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use sie_engine::pipeline::{Batch, Request, RunId, TextToImage};

use crate::{
    heartbeat_every, panic_message, queue_ms, Ended, LeasedTask, ProgressObserver, Ran, Signals,
    SourceError, Worker,
};

/// A task in the batch, and what its report needs.
struct Member<'scope> {
    id: sie_store::TaskId,
    attempt: u32,
    task: sie_api::CreateTask,
    request: TextToImage,
    queue_ms: u64,
    started: Instant,
    signals: Arc<Signals>,
    heartbeats: ScopedJoinHandle<'scope, ()>,
}

impl Worker {
    /// Runs at most `max_batch` tasks at once: [`Worker::run_one`] when that is 1, else a
    /// batch as the module says, until it is empty. What each leased task came to.
    pub fn run_some(&self, wait: Duration) -> Result<Vec<Ran>, SourceError> {
        if self.max_batch <= 1 || self.degraded.load(Ordering::SeqCst) {
            return self.run_one(wait).map(|ran| vec![ran]);
        }
        if self.stop.load(Ordering::SeqCst) {
            return Ok(vec![Ran::Idle]);
        }
        let Some(first) = self.source.lease(wait)? else {
            return Ok(vec![Ran::Idle]);
        };
        if !batchable(&first) {
            return self.run_leased(first).map(|ran| vec![ran]);
        }
        std::thread::scope(|scope| self.run_batch(scope, first))
    }

    fn run_batch<'scope, 'env>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        first: LeasedTask,
    ) -> Result<Vec<Ran>, SourceError> {
        let mut batch = Batch::new(&self.model);
        let mut members: HashMap<RunId, Member<'scope>> = HashMap::new();
        let mut ran = Vec::new();
        // A report the source refused: the batch goes on, and the error is returned at its end.
        let mut failed_report = None;
        let mut keep = |r: Result<Ran, SourceError>| match r {
            Ok(r) => ran.push(r),
            Err(e) => {
                tracing::warn!(error = %e, "a batch member's report failed");
                failed_report.get_or_insert(e);
            }
        };
        let mut next = Some(first);
        // Cleared when a task could not join: the rest wait for the batch to end.
        let mut admitting = true;
        // When the queue had nothing (or did not answer), it is asked again only after a
        // pause, not before every step: a remote queue costs a round trip per look.
        let mut look_after = Instant::now();
        loop {
            while let Some(leased) = next.take() {
                match self.admit(scope, &mut batch, leased) {
                    Admitted::Joined(id, member) => {
                        members.insert(id, *member);
                    }
                    Admitted::Ended(r) => keep(r),
                    Admitted::GivenBack(r) => {
                        keep(r);
                        admitting = false;
                    }
                }
                next = self.more(&batch, admitting, &mut look_after);
            }
            if batch.is_empty() {
                break;
            }
            let stepped = batch.step();
            for (id, outcome) in stepped.left {
                if let Some(member) = members.remove(&id) {
                    keep(self.leave(member, Ok(outcome)));
                }
            }
            if let Some(e) = stepped.failed {
                // The evaluation the members shared failed (out of memory, most likely, with
                // so many rows): no one task is at fault. They go back to the queue without
                // an attempt counted, and this worker runs its tasks alone from now on, where
                // a failure is the task's own.
                tracing::error!(error = %e, batch = members.len(),
                    "a batch's UNet evaluation failed; its tasks go back to the queue and this \
                     worker runs tasks alone from now on");
                self.degraded.store(true, Ordering::SeqCst);
                for (_, member) in members.drain() {
                    keep(self.give_back(member.id, member.attempt));
                }
                break;
            }
            next = self.more(&batch, admitting, &mut look_after);
        }
        match failed_report {
            Some(e) => Err(e),
            None => Ok(ran),
        }
    }

    /// Another waiting task for the batch, if it has room and this worker is not stopping;
    /// never waits. After the queue had none (or did not answer), it is asked again only
    /// once [`LOOK_AGAIN`] has passed.
    fn more(
        &self,
        batch: &Batch<'_>,
        admitting: bool,
        look_after: &mut Instant,
    ) -> Option<LeasedTask> {
        if !admitting
            || batch.len() >= self.max_batch
            || self.stop.load(Ordering::SeqCst)
            || Instant::now() < *look_after
        {
            return None;
        }
        let leased = self.source.lease(Duration::ZERO).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not lease another task for the batch");
            None
        });
        if leased.is_none() {
            *look_after = Instant::now() + LOOK_AGAIN;
        }
        leased
    }

    /// A leased task into the batch, with a heartbeat thread of its own; or its end, when
    /// it cannot be read or run; or given back, when it cannot join this batch.
    fn admit<'scope, 'env>(
        &'env self,
        scope: &'scope Scope<'scope, 'env>,
        batch: &mut Batch<'_>,
        leased: LeasedTask,
    ) -> Admitted<'scope> {
        let (id, attempt) = (leased.id, leased.attempt);
        // Stopping: what was leased meanwhile goes straight back, as a task alone does.
        if !batchable(&leased) || self.stop.load(Ordering::SeqCst) {
            return Admitted::GivenBack(self.give_back(id, attempt));
        }
        let queue_ms = queue_ms(&leased);
        let every = heartbeat_every(&leased);
        let (task, request) = match self.readable(leased) {
            Ok((task, Request::TextToImage(request))) => (task, request),
            Ok(_) => return Admitted::GivenBack(self.give_back(id, attempt)),
            Err(ran) => return Admitted::Ended(ran),
        };
        if !batch.fits(&request) {
            return Admitted::GivenBack(self.give_back(id, attempt));
        }
        let signals = Arc::new(Signals::default());
        let started = Instant::now();
        let observer = ProgressObserver::new(signals.clone(), request.num_inference_steps, started);
        let (beat, joining) = (signals.clone(), request.clone());
        // Nothing that can panic between the thread's start and the member that stops it.
        let heartbeats = scope.spawn(move || self.heartbeats(id, attempt, every, &beat));
        let member = Member {
            id,
            attempt,
            task,
            request,
            queue_ms,
            started,
            signals: signals.clone(),
            heartbeats,
        };
        let joined = catch_unwind(AssertUnwindSafe(|| {
            batch.join(joining, Box::new(observer), signals.cancel.clone())
        }));
        let joined = match joined {
            Ok(joined) => joined,
            // Encoding its prompts panicked: reported as a panic alone is, retryably.
            Err(panic) => return Admitted::Ended(self.leave(member, Err(panic_message(&panic)))),
        };
        match joined {
            Ok(run) => {
                tracing::info!(request_id = %id, attempt, batch = batch.len(), "task joined a batch");
                Admitted::Joined(run, Box::new(member))
            }
            // Refused by the engine (an invalid request): ended as a run alone would end.
            Err(e) => Admitted::Ended(self.leave(member, Ok(Err(e)))),
        }
    }

    /// Gives a task that cannot join back to the queue (no attempt counted).
    fn give_back(&self, id: sie_store::TaskId, attempt: u32) -> Result<Ran, SourceError> {
        if self.source.release(id, attempt)? {
            tracing::info!(request_id = %id, "task given back: it cannot join the running batch");
            Ok(Ran::Released(id))
        } else {
            Ok(Ran::Lost(id))
        }
    }

    /// A member's run ended: its outcome reported, as a task alone's is; its heartbeats stop
    /// when it is dropped, after the report.
    fn leave(
        &self,
        member: Member<'_>,
        outcome: Result<sie_engine::Result<sie_engine::pipeline::Generated>, String>,
    ) -> Result<Ran, SourceError> {
        let span = tracing::info_span!("task", request_id = %member.id, attempt = member.attempt);
        let _enter = span.enter();
        let ended = Ended {
            id: member.id,
            attempt: member.attempt,
            task: &member.task,
            request: &member.request,
            steps: member.request.num_inference_steps,
            queue_ms: member.queue_ms,
            started: member.started,
        };
        self.conclude(ended, outcome, &member.signals)
    }
}

impl Drop for Member<'_> {
    /// However a member ends (reported, or abandoned when its worker gives up), its
    /// heartbeat thread stops: the scope that runs the batch waits for it.
    fn drop(&mut self) {
        self.signals.done.store(true, Ordering::SeqCst);
        self.heartbeats.thread().unpark();
    }
}

/// How long a batch waits before asking an empty queue again.
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// What became of a leased task offered to the batch.
enum Admitted<'scope> {
    Joined(RunId, Box<Member<'scope>>),
    Ended(Result<Ran, SourceError>),
    GivenBack(Result<Ran, SourceError>),
}

/// Whether a leased task may join a batch at all: a text-to-image request this worker can
/// read (its size is checked against the batch's once it is parsed).
fn batchable(leased: &LeasedTask) -> bool {
    match &leased.request {
        Ok(task) => task.call_inputs.pipeline == sie_vocab::Pipeline::Text2Image,
        // Unreadable: reported as a task alone reports it.
        Err(_) => true,
    }
}
