//! The store's one error type.
//!
//! Variants a caller acts on (a name already taken, an unknown organization,
//! a full queue) are distinct; everything the database itself reports is
//! `Database`, with the operation that failed, because the API can only map
//! it to a 500 and the operator needs to know which call it was.

use std::path::PathBuf;

use crate::domain::{AccountId, InvalidValue};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which cap a refused enqueue ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueScope {
    /// The organization's own queued tasks reached `QueueCaps::per_org`.
    Org,
    /// All queued tasks together reached `QueueCaps::global`.
    Global,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] InvalidValue),

    #[error("an account named {0:?} already exists; pick another name")]
    AccountExists(String),

    #[error("an organization named {0:?} already exists; pick another name")]
    OrgExists(String),

    /// The portal shows no page that says so (no page reveals whether an email is
    /// registered); the message is for the operator's command line.
    #[error("an account with the email {0:?} already exists")]
    EmailTaken(String),

    #[error("a worker token named {0:?} already exists (names are never reused, even after revoking); pick another name")]
    WorkerExists(String),

    #[error("no account with id {0}; `sie admin account list` shows the accounts")]
    UnknownAccount(AccountId),

    #[error("no organization named {0:?}; `sie admin org list` shows the organizations")]
    UnknownOrg(String),

    #[error(
        "the {} queue is full; retry in {retry_after_seconds} s",
        match scope { QueueScope::Org => "organization's", QueueScope::Global => "server's" }
    )]
    QueueFull {
        scope: QueueScope,
        retry_after_seconds: u32,
    },

    #[error(
        "the Idempotency-Key {0:?} was first used with another request; send that request \
         to get its task, or use a new key for this one"
    )]
    IdempotencyKeyReused(String),

    #[error("{0}")]
    BadArgument(String),

    #[error("could not open the database at {}: {source}; check the path exists and is writable", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(
        "the database schema is at version {found}, newer than this sie knows ({known}); \
         run a newer sie or restore a backup"
    )]
    SchemaTooNew { found: i64, known: i64 },

    #[error("database error during {operation}: {source}")]
    Database {
        operation: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("the database holds a value this sie cannot read ({0}); was it edited by hand?")]
    Corrupt(String),
}
