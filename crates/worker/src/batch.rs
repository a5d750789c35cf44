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
//! alone. A panic in the shared evaluation fails every member retryably, as a panic fails a
//! task alone.
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
    heartbeat_every, queue_ms, Ended, LeasedTask, ProgressObserver, Ran, Signals, SourceError,
    Worker,
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
        if self.max_batch <= 1 {
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
                next = self.more(&batch, admitting);
            }
            if batch.is_empty() {
                break;
            }
            let left = match catch_unwind(AssertUnwindSafe(|| batch.step())) {
                Ok(Ok(left)) => left,
                // The shared evaluation failed: every member ends with it, retryably, as a
                // panic ends a task alone (it may be this node's fault).
                Ok(Err(e)) => return self.end_all(members, ran, e.to_string()),
                Err(panic) => return self.end_all(members, ran, panic_message(&panic)),
            };
            for (id, outcome) in left {
                if let Some(member) = members.remove(&id) {
                    keep(self.leave(member, Ok(outcome)));
                }
            }
            next = self.more(&batch, admitting);
        }
        match failed_report {
            Some(e) => Err(e),
            None => Ok(ran),
        }
    }

    /// Another waiting task for the batch, if it has room and this worker is not stopping;
    /// never waits. A source that cannot answer now is asked again at the next step.
    fn more(&self, batch: &Batch<'_>, admitting: bool) -> Option<LeasedTask> {
        if !admitting || batch.len() >= self.max_batch || self.stop.load(Ordering::SeqCst) {
            return None;
        }
        self.source.lease(Duration::ZERO).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "could not lease another task for the batch");
            None
        })
    }

    /// Ends every member with the failure of the evaluation they shared.
    fn end_all(
        &self,
        members: HashMap<RunId, Member<'_>>,
        mut ran: Vec<Ran>,
        what: String,
    ) -> Result<Vec<Ran>, SourceError> {
        tracing::error!(error = %what, "a batch's UNet evaluation failed");
        let mut failed_report = None;
        for (_, member) in members {
            match self.leave(member, Err(what.clone())) {
                Ok(r) => ran.push(r),
                Err(e) => {
                    failed_report.get_or_insert(e);
                }
            }
        }
        match failed_report {
            Some(e) => Err(e),
            None => Ok(ran),
        }
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
        if !batchable(&leased) {
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
        let beat = signals.clone();
        let heartbeats = scope.spawn(move || self.heartbeats(id, attempt, every, &beat));
        let member = Member {
            id,
            attempt,
            task,
            request: request.clone(),
            queue_ms,
            started,
            signals: signals.clone(),
            heartbeats,
        };
        match batch.join(request, Box::new(observer), signals.cancel.clone()) {
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

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
