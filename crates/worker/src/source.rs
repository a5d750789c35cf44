//! Where a worker's tasks come from and where its reports go: a [`TaskSource`].
//!
//! The loop in `lib.rs` is the same whether the queue is the store in this process
//! ([`StoreSource`], `sie serve`) or an API node across the network
//! ([`remote::HttpSource`](crate::remote::HttpSource), `sie worker`); only this seam
//! differs. Every report carries the attempt number, the fencing token, and answers
//! `false` (or [`Heartbeat::Lost`]) when that attempt no longer owns the task.

use std::sync::Arc;
use std::time::Duration;

use sie_api::worker::ModelOutputs;
use sie_api::CreateTask;
use sie_store::{
    Failure, FailureCode, Fence, Heartbeat, Progress, Queue, StoreError, TaskId, TaskUsage,
    Timestamp, WorkerOffer,
};

/// A finished run: the `modelOutputs` the client reads, and what it used.
#[derive(Debug, Clone)]
pub struct Finished {
    pub outputs: ModelOutputs,
    pub usage: TaskUsage,
}

/// A task this worker now holds.
#[derive(Debug, Clone)]
pub struct LeasedTask {
    pub id: TaskId,
    pub attempt: u32,
    /// The typed request, or why this worker cannot read it (the task then fails so).
    pub request: Result<CreateTask, Failure>,
    pub created_at: Timestamp,
    /// How long the lease lasts without a heartbeat.
    pub lease: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API node could not be reached or answered with an error; the message says which.
    #[error("{0}")]
    Remote(String),
    /// The API node refused this worker's token (unknown or revoked).
    #[error("{0}")]
    Unauthorized(String),
    /// The API node refused the call itself (a 4xx other than 401 and 409): retrying the
    /// same call cannot help.
    #[error("{0}")]
    Rejected(String),
}

/// What a source answers: a value, or why it could not.
pub type Reply<T> = Result<T, SourceError>;

pub trait TaskSource: Send + Sync {
    /// One task this worker can run, waiting up to `wait` for one to arrive.
    fn lease(&self, wait: Duration) -> Result<Option<LeasedTask>, SourceError>;
    fn heartbeat(&self, id: TaskId, attempt: u32, at: Option<Progress>) -> Reply<Heartbeat>;
    /// Stores the finished result; `false` when another attempt owns the task.
    fn complete(&self, id: TaskId, attempt: u32, done: Finished) -> Result<bool, SourceError>;
    /// See [`Queue::fail`] for a retryable failure.
    fn fail(&self, id: TaskId, attempt: u32, failure: &Failure) -> Result<bool, SourceError>;
    /// Gives the task back to the queue without counting the attempt (shutdown).
    fn release(&self, id: TaskId, attempt: u32) -> Result<bool, SourceError>;
}

/// The store in this process: `sie serve`'s workers. It needs only the store's [`Queue`].
pub struct StoreSource {
    store: Arc<dyn Queue>,
    offer: WorkerOffer,
    lease: Duration,
}

impl StoreSource {
    pub fn new(store: Arc<dyn Queue>, offer: WorkerOffer, lease: Duration) -> Self {
        Self {
            store,
            offer,
            lease,
        }
    }

    /// What every write of this worker for attempt `attempt` of `id` is fenced on.
    fn fence(&self, id: TaskId, attempt: u32) -> Fence {
        Fence::new(&self.offer.worker_id, id, attempt)
    }
}

impl TaskSource for StoreSource {
    fn lease(&self, wait: Duration) -> Result<Option<LeasedTask>, SourceError> {
        let Some(l) = self.store.lease_within(&self.offer, self.lease, wait)? else {
            return Ok(None);
        };
        Ok(Some(LeasedTask {
            id: l.id,
            attempt: l.attempt,
            request: serde_json::from_str(&l.request_json).map_err(|e| {
                let code = FailureCode::from_static("invalid_request");
                Failure::new(
                    code,
                    format!("the stored request does not load: {e}"),
                    false,
                )
            }),
            created_at: l.created_at,
            lease: self.lease,
        }))
    }

    fn heartbeat(&self, id: TaskId, attempt: u32, at: Option<Progress>) -> Reply<Heartbeat> {
        let fence = self.fence(id, attempt);
        let beat = self
            .store
            .heartbeat(&fence, at, self.lease, Timestamp::now())?;
        Ok(beat)
    }

    fn complete(&self, id: TaskId, attempt: u32, done: Finished) -> Result<bool, SourceError> {
        let Finished { outputs, usage } = done;
        // Serialised once, here: the store keeps the client's `modelOutputs` as text.
        let result = serde_json::to_string(&outputs)
            .map_err(|e| SourceError::Remote(format!("serialising modelOutputs: {e}")))?;
        let fence = self.fence(id, attempt);
        Ok(self
            .store
            .complete(&fence, &result, usage, Timestamp::now())?)
    }

    fn fail(&self, id: TaskId, attempt: u32, failure: &Failure) -> Result<bool, SourceError> {
        let fence = self.fence(id, attempt);
        Ok(self.store.fail(&fence, failure, Timestamp::now())?)
    }

    fn release(&self, id: TaskId, attempt: u32) -> Result<bool, SourceError> {
        let fence = self.fence(id, attempt);
        Ok(self.store.release(&fence, Timestamp::now())?)
    }
}
