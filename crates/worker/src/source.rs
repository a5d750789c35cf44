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
    FailureCode, Heartbeat, Progress, Queue, StoreError, TaskId, TaskUsage, Timestamp, WorkerOffer,
};

/// A task this worker now holds.
#[derive(Debug, Clone)]
pub struct LeasedTask {
    pub id: TaskId,
    pub attempt: u32,
    /// The typed request, or why this worker cannot read it (the task then fails as that says).
    pub request: Result<CreateTask, Unreadable>,
    pub created_at: Timestamp,
    /// How long the lease lasts without a heartbeat.
    pub lease: Duration,
}

/// A leased request this worker cannot read.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub code: &'static str,
    pub message: String,
    /// Another worker might read it (a newer build), so the attempt is given up, not the task.
    pub retryable: bool,
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

pub trait TaskSource: Send + Sync {
    /// One task this worker can run, waiting up to `wait` for one to arrive.
    fn lease(&self, wait: Duration) -> Result<Option<LeasedTask>, SourceError>;
    fn heartbeat(
        &self,
        id: TaskId,
        attempt: u32,
        progress: Option<Progress>,
    ) -> Result<Heartbeat, SourceError>;
    /// Stores `model_outputs`; `false` when another attempt owns the task.
    fn complete(
        &self,
        id: TaskId,
        attempt: u32,
        model_outputs: ModelOutputs,
        usage: TaskUsage,
    ) -> Result<bool, SourceError>;
    /// See [`Queue::fail`] for `retryable`.
    fn fail(
        &self,
        id: TaskId,
        attempt: u32,
        code: &str,
        message: &str,
        retryable: bool,
    ) -> Result<bool, SourceError>;
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
}

impl TaskSource for StoreSource {
    fn lease(&self, wait: Duration) -> Result<Option<LeasedTask>, SourceError> {
        let Some(l) = self.store.lease_within(&self.offer, self.lease, wait)? else {
            return Ok(None);
        };
        Ok(Some(LeasedTask {
            id: l.id,
            attempt: l.attempt,
            request: serde_json::from_str(&l.request_json).map_err(|e| Unreadable {
                code: "invalid_request",
                message: format!("the stored request does not load: {e}"),
                retryable: false,
            }),
            created_at: l.created_at,
            lease: self.lease,
        }))
    }

    fn heartbeat(
        &self,
        id: TaskId,
        attempt: u32,
        progress: Option<Progress>,
    ) -> Result<Heartbeat, SourceError> {
        Ok(self.store.heartbeat(
            &self.offer.worker_id,
            id,
            attempt,
            progress,
            self.lease,
            Timestamp::now(),
        )?)
    }

    fn complete(
        &self,
        id: TaskId,
        attempt: u32,
        model_outputs: ModelOutputs,
        usage: TaskUsage,
    ) -> Result<bool, SourceError> {
        // Serialised once, here: the store keeps the client's `modelOutputs` as text.
        let result = serde_json::to_string(&model_outputs)
            .map_err(|e| SourceError::Remote(format!("serialising modelOutputs: {e}")))?;
        Ok(self.store.complete(
            &self.offer.worker_id,
            id,
            attempt,
            &result,
            usage,
            Timestamp::now(),
        )?)
    }

    fn fail(
        &self,
        id: TaskId,
        attempt: u32,
        code: &str,
        message: &str,
        retryable: bool,
    ) -> Result<bool, SourceError> {
        let code = FailureCode::parse(code).map_err(StoreError::from)?;
        Ok(self.store.fail(
            &self.offer.worker_id,
            id,
            attempt,
            &code,
            message,
            retryable,
            Timestamp::now(),
        )?)
    }

    fn release(&self, id: TaskId, attempt: u32) -> Result<bool, SourceError> {
        Ok(self
            .store
            .release(&self.offer.worker_id, id, attempt, Timestamp::now())?)
    }
}
