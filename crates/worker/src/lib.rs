//! The worker: lease a task, run the engine, report progress, complete or fail.
//!
//! # Layout
//! - [`task`]: the translation from the stored request to the engine and from the engine's
//!   images to the `modelOutputs` the client reads; what this worker offers to run.
//! - [`source`]: [`TaskSource`], the seam between this loop and the queue, and
//!   [`StoreSource`], the store in this process (`sie serve`).
//! - [`remote`]: [`remote::HttpSource`], an API node's `/worker/v1` over HTTP (`sie worker`).
//! - This file: [`Worker::run_one`], one task from lease to completion; `batch.rs`:
//!   [`Worker::run_some`], several at once as one engine batch (`--max-batch`).
//!
//! A worker owns a task only while its lease lasts, so a sibling thread renews the lease
//! (and reports progress) while the engine runs; if the store answers that the client
//! cancelled, or that the lease was lost to another attempt, the engine is stopped at its
//! next step through the cancel flag. Every write after the lease carries the attempt
//! number, so a worker that lost its lease cannot overwrite the winner's result. The engine
//! runs inside `catch_unwind`: a panic fails the task with `internal_error` instead of
//! taking the worker down.

mod batch;
pub mod remote;
pub mod source;
pub mod task;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sie_engine::candle_core::Tensor;
use sie_engine::pipeline::Observer;
use sie_engine::StableDiffusion;
use sie_store::{codes, Failure, FailureCode, Heartbeat, Progress, TaskId, TaskUsage, Timestamp};

pub use source::{Finished, LeasedTask, SourceError, StoreSource, TaskSource};

/// The codes this worker fails tasks with (besides the store's `cancelled`).
const ENGINE_ERROR: FailureCode = FailureCode::from_static("engine_error");
const INTERNAL_ERROR: FailureCode = FailureCode::from_static("internal_error");
/// A stored input image that no longer decodes.
const INVALID_IMAGE: FailureCode = FailureCode::from_static("invalid_image");
const RESULT_REJECTED: FailureCode = FailureCode::from_static("result_rejected");
/// A task this worker was handed but cannot run, or cannot read: another may.
pub(crate) const INCOMPATIBLE: FailureCode = FailureCode::from_static("worker_incompatible");

/// What one call of [`Worker::run_one`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ran {
    /// Nothing was queued.
    Idle,
    Succeeded(TaskId),
    /// Failed with this code (the request could not run, the engine failed, or it was cancelled).
    Failed(TaskId, String),
    /// The lease was lost to another attempt; this worker's work was discarded.
    Lost(TaskId),
    /// The worker was told to stop mid-run and gave the task back to the queue.
    Released(TaskId),
}

/// A worker bound to one task source and one loaded model.
pub struct Worker {
    source: Arc<dyn TaskSource>,
    model: Arc<StableDiffusion>,
    stop: Arc<AtomicBool>,
    /// Tasks run at once as one batch ([`Worker::run_some`]); 1 runs each alone.
    max_batch: usize,
    /// Raised when a batch's shared evaluation failed: tasks run alone from then on.
    degraded: AtomicBool,
}

impl Worker {
    pub fn new(source: Arc<dyn TaskSource>, model: Arc<StableDiffusion>) -> Self {
        Worker {
            source,
            model,
            stop: Arc::new(AtomicBool::new(false)),
            max_batch: 1,
            degraded: AtomicBool::new(false),
        }
    }

    /// Runs up to `max_batch` text-to-image tasks of one size as one batch (`batch.rs`); 1
    /// (the default) runs each task alone.
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = max_batch.max(1);
        self
    }

    /// Shares a stop flag: once raised, a running task is stopped at its next step and given
    /// back to the queue (`Queue::release`, not counted as a lost attempt), so a shutdown
    /// never waits for a long generation and never loses it.
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Leases one task (waiting up to `wait` for one) and runs it to the end. Errors are the
    /// source's own (a task already leased stays so, and is retried when its lease lapses).
    pub fn run_one(&self, wait: Duration) -> Result<Ran, SourceError> {
        if self.stop.load(Ordering::SeqCst) {
            return Ok(Ran::Idle);
        }
        let Some(leased) = self.source.lease(wait)? else {
            return Ok(Ran::Idle);
        };
        self.run_leased(leased)
    }

    /// Runs one leased task to the end, alone.
    fn run_leased(&self, leased: LeasedTask) -> Result<Ran, SourceError> {
        let (id, attempt) = (leased.id, leased.attempt);
        let span = tracing::info_span!("task", request_id = %id, attempt);
        let _enter = span.enter();
        if self.stop.load(Ordering::SeqCst) {
            // Stopping began while the lease call waited: hand the task straight back.
            return if self.source.release(id, attempt)? {
                Ok(Ran::Released(id))
            } else {
                Ok(Ran::Lost(id))
            };
        }
        let queue_ms = queue_ms(&leased);
        let heartbeat_every = heartbeat_every(&leased);
        let (task, request) = match self.readable(leased) {
            Ok(both) => both,
            Err(ran) => return ran,
        };

        // The lease is renewed (and progress reported) until the outcome is reported, not
        // only while the engine runs: encoding and uploading a result can outlast a lease.
        let signals = Arc::new(Signals::default());
        std::thread::scope(|scope| {
            let heartbeats =
                scope.spawn(|| self.heartbeats(id, attempt, heartbeat_every, &signals));
            let ran = self.run_and_report(id, attempt, &task, &request, queue_ms, &signals);
            signals.done.store(true, Ordering::SeqCst);
            heartbeats.thread().unpark();
            ran
        })
    }

    /// The leased task's request and what the engine runs for it; or, when this worker
    /// cannot read or run it, the failure reported for it.
    fn readable(
        &self,
        leased: LeasedTask,
    ) -> Result<(sie_api::CreateTask, sie_engine::pipeline::Request), Result<Ran, SourceError>>
    {
        let (id, attempt) = (leased.id, leased.attempt);
        let task = match leased.request {
            Ok(t) => t,
            Err(why) => return Err(self.report(id, attempt, why)),
        };
        match task::request(&self.model, &task, sie_api::request::Seed::random().get()) {
            Ok(r) => Ok((task, r)),
            Err(task::NotRun::Incompatible(why)) => {
                Err(self.report(id, attempt, Failure::new(INCOMPATIBLE, why, true)))
            }
            Err(task::NotRun::InvalidImage(why)) => Err(self.fail(id, attempt, INVALID_IMAGE, why)),
        }
    }

    /// Runs the engine and reports the outcome; the caller's heartbeat thread runs meanwhile.
    fn run_and_report(
        &self,
        id: TaskId,
        attempt: u32,
        task: &sie_api::CreateTask,
        request: &sie_engine::pipeline::Request,
        queue_ms: u64,
        signals: &Arc<Signals>,
    ) -> Result<Ran, SourceError> {
        let started = Instant::now();
        let mut observer = ProgressObserver::new(signals.clone(), request.steps_run(), started);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            request.run(&self.model, &mut observer, &signals.cancel)
        }));
        let outcome = outcome.map_err(|panic| panic_message(&panic));
        let ran = Ended {
            id,
            attempt,
            task,
            request: request.common(),
            steps: request.steps_run(),
            queue_ms,
            started,
        };
        self.conclude(ran, outcome, signals)
    }

    /// Reports how a run ended (the engine's outcome, or its panic): the images as the
    /// task's result, a failure, a release when the worker is stopping, or nothing when the
    /// lease was lost meanwhile.
    fn conclude(
        &self,
        ran: Ended<'_>,
        outcome: Result<sie_engine::Result<sie_engine::pipeline::Generated>, String>,
        signals: &Signals,
    ) -> Result<Ran, SourceError> {
        let Ended {
            id,
            attempt,
            task,
            request,
            steps,
            queue_ms,
            started,
        } = ran;
        let first_step = signals.first_step_ms();
        let inference_ms = started.elapsed().as_millis() as u64;
        if signals.lost.load(Ordering::SeqCst) {
            tracing::warn!("lease lost; discarding this attempt's work");
            return Ok(Ran::Lost(id));
        }
        let generated = match outcome {
            Err(what) => {
                tracing::error!(panic = %what, "the engine panicked");
                // Possibly this node's fault (a driver, memory): another attempt may succeed,
                // and after the last one the task fails with this code.
                let message =
                    "the engine failed unexpectedly; the failure is logged with this request id";
                return self.report(id, attempt, Failure::new(INTERNAL_ERROR, message, true));
            }
            Ok(Err(sie_engine::Error::Cancelled)) => {
                if !signals.client_cancelled.load(Ordering::SeqCst)
                    && self.stop.load(Ordering::SeqCst)
                {
                    return if self.source.release(id, attempt)? {
                        tracing::info!("stopping: task given back to the queue");
                        Ok(Ran::Released(id))
                    } else {
                        Ok(Ran::Lost(id))
                    };
                }
                let cancelled = FailureCode::from_static(codes::CANCELLED);
                return self.fail(id, attempt, cancelled, "cancelled by the client");
            }
            Ok(Err(e)) => return self.fail(id, attempt, ENGINE_ERROR, e.to_string()),
            Ok(Ok(g)) => g,
        };
        let spent = task::Spent {
            queue_ms,
            inference_ms,
            first_step_ms: first_step,
        };
        let outputs = match task::model_outputs(&self.model, task, request, &generated, spent) {
            Ok(o) => o,
            Err(e) => return self.fail(id, attempt, ENGINE_ERROR, e.to_string()),
        };
        let usage = TaskUsage {
            images: generated.images.len() as u32,
            steps: steps as u32,
            gpu_ms: inference_ms,
        };
        match self
            .source
            .complete(id, attempt, Finished { outputs, usage })
        {
            Ok(true) => {
                tracing::info!(inference_ms, "task succeeded");
                Ok(Ran::Succeeded(id))
            }
            Ok(false) => {
                tracing::warn!("another attempt finished first; this result is discarded");
                Ok(Ran::Lost(id))
            }
            // The server will not take this result (too large for a proxy in front of it,
            // say): say so on the task rather than let it run out of attempts.
            Err(SourceError::Rejected(why)) => {
                let message = format!("the finished result was refused: {why}");
                self.fail(id, attempt, RESULT_REJECTED, message)
            }
            Err(e) => Err(e),
        }
    }

    /// Fails the task for good: the request cannot run, or the engine refused it, and
    /// another node would do the same.
    fn fail(
        &self,
        id: TaskId,
        attempt: u32,
        code: FailureCode,
        message: impl Into<String>,
    ) -> Result<Ran, SourceError> {
        self.report(id, attempt, Failure::new(code, message, false))
    }

    fn report(&self, id: TaskId, attempt: u32, failure: Failure) -> Result<Ran, SourceError> {
        if self.source.fail(id, attempt, &failure)? {
            let (code, message) = (failure.code.as_str(), &failure.message);
            tracing::info!(code, message, retryable = failure.retryable, "task failed");
            Ok(Ran::Failed(id, code.to_owned()))
        } else {
            Ok(Ran::Lost(id))
        }
    }

    /// Renews the lease and reports progress until `done`; raises `cancel` when the client
    /// cancelled (and `client_cancelled`), when the worker is stopping, and when the task is
    /// no longer ours (and `lost`).
    fn heartbeats(&self, id: TaskId, attempt: u32, every: Duration, signals: &Signals) {
        let Signals {
            progress,
            cancel,
            client_cancelled,
            lost,
            done,
            ..
        } = signals;
        while !done.load(Ordering::SeqCst) {
            std::thread::park_timeout(every);
            if done.load(Ordering::SeqCst) {
                break;
            }
            if self.stop.load(Ordering::SeqCst) {
                cancel.store(true, Ordering::SeqCst);
            }
            let packed = progress.load(Ordering::SeqCst);
            let progress = (packed != 0).then_some(Progress {
                step: (packed >> 32) as u32,
                steps: packed as u32,
            });
            match self.source.heartbeat(id, attempt, progress) {
                Ok(Heartbeat::Continue) => {}
                Ok(Heartbeat::Cancelled) => {
                    client_cancelled.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                }
                Ok(Heartbeat::Lost) => {
                    lost.store(true, Ordering::SeqCst);
                    cancel.store(true, Ordering::SeqCst);
                }
                // A hiccup is not a lost lease: keep running, the next beat may pass (and if
                // the lease did lapse meanwhile, the next beat or the completion says so).
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// What a caught panic says, for the log and the task's failure.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// A run that ended, as its report needs it.
struct Ended<'a> {
    id: TaskId,
    attempt: u32,
    task: &'a sie_api::CreateTask,
    request: &'a sie_engine::pipeline::TextToImage,
    /// The denoising steps the request runs (see [`ProgressObserver`]).
    steps: usize,
    queue_ms: u64,
    started: Instant,
}

/// How long the task waited in the queue before this lease.
fn queue_ms(leased: &LeasedTask) -> u64 {
    (Timestamp::now().as_millis() - leased.created_at.as_millis()).max(0) as u64
}

/// Heartbeats go every second, or every third of the lease where that is shorter.
fn heartbeat_every(leased: &LeasedTask) -> Duration {
    (leased.lease / 3).min(Duration::from_secs(1))
}

/// What the engine thread and the heartbeat thread tell each other during one task.
#[derive(Default)]
struct Signals {
    /// (step << 32) | steps of the latest step; 0 before the first.
    progress: AtomicU64,
    /// Milliseconds from the start of inference to the end of the first step, plus one; 0
    /// before it ends.
    first_step: AtomicU64,
    /// Read by the engine before every step.
    cancel: Arc<AtomicBool>,
    /// The store said the client cancelled (as opposed to the worker stopping).
    client_cancelled: AtomicBool,
    /// The store said this attempt no longer owns the task.
    lost: AtomicBool,
    /// The engine returned; the heartbeat thread exits.
    done: AtomicBool,
}

impl Signals {
    fn first_step_ms(&self) -> Option<u64> {
        self.first_step.load(Ordering::SeqCst).checked_sub(1)
    }
}

/// Packs (step, steps) into one atomic for the heartbeat thread, and notes when the first
/// step ended (for `$timings`).
///
/// Progress counts the steps the client asked for. Some schedulers call the UNet more often
/// than that (PNDM lists one timestep twice, Heun evaluates twice per step), so the engine's
/// count of calls is scaled to the requested steps, rounding up: the first call shows step
/// 1, the last shows all of them.
struct ProgressObserver {
    signals: Arc<Signals>,
    /// The denoising steps the request runs (fewer than `num_inference_steps` when an
    /// image request's strength skips some).
    steps: u64,
    started: Instant,
}

impl ProgressObserver {
    fn new(signals: Arc<Signals>, steps: usize, started: Instant) -> Self {
        ProgressObserver {
            signals,
            steps: steps as u64,
            started,
        }
    }
}

impl Observer for ProgressObserver {
    fn step(&mut self, call: usize, calls: usize, _latents: &Tensor) {
        let first = self.started.elapsed().as_millis() as u64 + 1;
        let _ =
            self.signals
                .first_step
                .compare_exchange(0, first, Ordering::SeqCst, Ordering::SeqCst);
        let (call, calls) = (call as u64, calls.max(1) as u64);
        let step = (call * self.steps).div_ceil(calls).min(self.steps);
        self.signals
            .progress
            .store((step << 32) | self.steps, Ordering::SeqCst);
    }
}
