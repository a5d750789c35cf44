//! Persistent state of `sie`: accounts, organizations, API keys, and the
//! durable task queue with its results and usage.
//!
//! It knows nothing of HTTP, tensors or the engine: requests and results are
//! opaque JSON text that the API and the worker serialize.
//!
//! # Layout
//! - [`store`]: the role traits ([`Accounts`], [`WorkerTokens`], [`Tasks`], [`Queue`])
//!   and [`Store`], all four; the fairness, queue-position and fencing rules.
//! - [`domain`]: newtypes parsed at the edge (`OrgName`, `TaskId`, `FailureCode`,
//!   `PageRequest`, ...), so a store cannot be handed an unchecked argument.
//! - [`types`]: the records that cross the traits (`TaskView`, `Leased`, ...).
//! - [`error`]: [`StoreError`], one enum for every implementation.
//! - [`keys`]: API key and worker token generation and hashing.
//! - `signal.rs`: [`WorkSignal`], how waiting workers learn that work arrived.
//! - `rules.rs`: the queue's decisions (what a failure, a release, a cancel or a lapsed
//!   lease does to a task; when a queue is full), as plain functions.
//! - `sql/`: the role traits implemented once for any SQL `Backend`: the statements both
//!   databases run as written, how rows decode, and each role's methods.
//! - [`sqlite`]: [`SqliteStore`], the embedded backend.
//! - [`postgres`]: [`PostgresStore`], the scale-out backend (`SKIP LOCKED` claims,
//!   `LISTEN/NOTIFY` wake-ups).
//! - `conformance` (feature `conformance`): the suite every implementation must pass.

#[cfg(feature = "conformance")]
#[doc(hidden)]
pub mod conformance;
pub mod domain;
pub mod error;
pub mod keys;
pub mod postgres;
mod rules;
mod signal;
mod sql;
pub mod sqlite;
pub mod store;
pub mod types;

pub use domain::{
    AccountId, AccountName, BillingInfo, BillingNote, Email, FailureCode, IdempotencyKey,
    InvalidValue, KeyPrefix, OrgId, OrgName, PageRequest, TaskId, Timestamp, UtcDay, WorkerName,
};
pub use error::{QueueScope, Result, StoreError};
pub use keys::{NewApiKey, NewWorkerToken};
pub use postgres::PostgresStore;
pub use signal::WorkSignal;
pub use sqlite::SqliteStore;
pub use store::{Accounts, Portal, Queue, Store, Tasks, Webhooks, WorkerTokens, RECHECK};
pub use types::*;
