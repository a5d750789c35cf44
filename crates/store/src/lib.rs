//! Persistent state of `sie`: accounts, organizations, API keys, and the
//! durable task queue with its results and usage.
//!
//! It knows nothing of HTTP, tensors or the engine: requests and results are
//! opaque JSON text that the API and the worker serialize.
//!
//! # Layout
//! - [`domain`]: newtypes parsed at the edge (`OrgName`, `TaskId`, `KeyPrefix`, ...).
//! - [`store`]: the [`Store`] trait, with the fairness and queue-position rules.
//! - [`types`]: the records that cross the trait (`TaskView`, `Leased`, ...).
//! - [`error`]: [`StoreError`], one enum for every implementation.
//! - [`keys`]: API key and worker token generation and hashing.
//! - `signal.rs`: [`WorkSignal`], how waiting workers learn that work arrived.
//! - [`sqlite`]: [`SqliteStore`], the embedded implementation.
//! - [`postgres`]: [`PostgresStore`], the scale-out implementation (`SKIP LOCKED`
//!   claims, `LISTEN/NOTIFY` wake-ups).
//! - [`conformance`]: the suite every implementation must pass.

#[doc(hidden)]
pub mod conformance;
pub mod domain;
pub mod error;
pub mod keys;
pub mod postgres;
mod signal;
pub mod sqlite;
pub mod store;
pub mod types;

pub use domain::{
    AccountId, AccountName, IdempotencyKey, InvalidValue, KeyPrefix, OrgId, OrgName, TaskId,
    Timestamp, UtcDay, WorkerName,
};
pub use error::{QueueScope, Result, StoreError};
pub use keys::{NewApiKey, NewWorkerToken};
pub use postgres::PostgresStore;
pub use signal::WorkSignal;
pub use sqlite::SqliteStore;
pub use store::{Store, RECHECK};
pub use types::*;
