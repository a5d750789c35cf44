//! [`PostgresStore`]: the scale-out store, shared by several API nodes and
//! their workers through one PostgreSQL database.
//!
//! The semantics are [`SqliteStore`](crate::SqliteStore)'s, rule for rule: the role
//! traits are implemented once, in `sql/`, and the conformance suite
//! checks both. This folder is what differs when many processes write at once:
//!
//! - **Claims** (`dialect.rs`) lock the task they take with `FOR UPDATE … SKIP LOCKED`
//!   in the statement that picks it by the fairness rule, so two leasers never wait on
//!   each other or take the same row. Reports and cancels lock their task before
//!   deciding; turns come from a sequence, so concurrent leases never read the same
//!   "latest turn".
//! - **Enqueues** (`dialect.rs`) take one transaction-scoped advisory lock, so two
//!   enqueues cannot both pass a queue cap, nor both store the same idempotency key.
//! - **Migrations** (`migrate.rs`) run under an advisory lock too, since several API
//!   nodes start at once against one fresh database.
//! - **Connections** (`pool.rs`) come from a small pool that drops dead connections and
//!   runs a transaction once more when its connection died before `COMMIT`, so after
//!   PostgreSQL restarts `sie` recovers by itself.
//! - **Wake-ups** (`listener.rs`) cross processes through `LISTEN/NOTIFY`, so a task
//!   posted on one node wakes a worker long-polling on another.
//!
//! Times are BIGINT milliseconds passed in by the caller, never `now()`.

mod dialect;
mod listener;
mod migrate;
mod pool;

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres::config::Host;
use postgres::Config;

use crate::error::{Result, StoreError};
use crate::signal::WorkSignal;

/// How long opening a connection may take before the call fails, so calls
/// fail fast while the database is down instead of hanging the API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    config: Config,
    /// `user@host:port/database`, for messages: never the password.
    target: String,
    pool: Mutex<pool::Pool>,
    /// Rung when a connection goes back to the pool or is closed.
    freed: Condvar,
    /// The listener thread holds only a `Weak` to this, and stops once the
    /// store (its only strong owner) is dropped.
    signal: Arc<WorkSignal>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish()
    }
}

/// `user@host:port/database`, the URL without its password.
fn describe(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            // One port for all hosts, or one each (libpq's rule).
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    format!("{user}@{}/{db}", hosts.join(","))
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`),
    /// brings its schema up to date and starts listening for work. Several
    /// nodes may connect to one database at once.
    pub fn connect(url: &str) -> Result<Self> {
        let mut config = Config::from_str(url).map_err(|e| {
            StoreError::BadArgument(format!(
                "the database URL is not valid ({e}); use postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sie");
        }
        // A silent network partition otherwise leaves a call (or the listener)
        // waiting on a dead socket for the kernel's two hours.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let target = describe(&config);
        let connect_error = |e: pool::ConnectFailed| StoreError::Database {
            operation: "connect",
            source: Box::new(e),
        };
        let mut client = pool::open(&config, &target).map_err(connect_error)?;
        migrate::migrate(&mut client)?;
        // LISTEN before returning, so a task enqueued anywhere once this store
        // exists is heard.
        let listening = listener::listen(&config, &target).map_err(connect_error)?;
        let signal = Arc::new(WorkSignal::default());
        listener::spawn(
            listening,
            config.clone(),
            target.clone(),
            Arc::downgrade(&signal),
        )?;
        Ok(Self {
            config,
            target,
            pool: Mutex::new(pool::Pool::holding(client)),
            freed: Condvar::new(),
            signal,
        })
    }
}
