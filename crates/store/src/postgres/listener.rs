//! Wake-ups across processes: both ends of the `LISTEN/NOTIFY` channel.
//!
//! A transaction that makes a task leasable runs [`notify_work`], which PostgreSQL
//! delivers on commit; each store keeps one connection that `LISTEN`s and rings its
//! [`WorkSignal`], so a task posted on one node wakes a worker long-polling on another.
//! The listener is a thread of its own because the driver's notifications block. It
//! holds the signal only weakly and stops once its store is dropped; when its
//! connection breaks it reconnects with back-off, and rings once on reconnecting, since
//! work may have arrived while it was deaf.

use std::sync::Weak;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, Transaction};

use super::pool::{open, ConnectFailed, Op};
use crate::error::{Result, StoreError};
use crate::signal::WorkSignal;

/// The `LISTEN/NOTIFY` channel for "a task may be leasable".
const CHANNEL: &str = "sie_work";

/// How often the listener looks up from its connection to see whether its
/// store is gone.
const LISTEN_POLL: Duration = Duration::from_millis(500);
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Tells every listening store, on commit, that a task may be leasable.
pub(super) fn notify_work(tx: &mut Transaction<'_>, operation: &'static str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])
        .op(operation)?;
    Ok(())
}

/// Opens the listener's connection and subscribes it.
pub(super) fn listen(config: &Config, target: &str) -> std::result::Result<Client, ConnectFailed> {
    let mut client = open(config, target)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|source| ConnectFailed {
            target: target.to_owned(),
            source,
        })?;
    Ok(client)
}

/// Starts the listener thread on `client`, a connection [`listen`] subscribed.
pub(super) fn spawn(
    client: Client,
    config: Config,
    target: String,
    signal: Weak<WorkSignal>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("sie-pg-listen".into())
        .spawn(move || run(client, &config, &target, &signal))
        .map(drop)
        .map_err(|e| StoreError::Database {
            operation: "start the work listener",
            source: Box::new(e),
        })
}

/// Rings the signal; `false` once the store is gone and the listener should stop.
fn ring(signal: &Weak<WorkSignal>) -> bool {
    signal.upgrade().map(|s| s.notify()).is_some()
}

/// What one [`relay`] round ended with.
enum Relay {
    /// The poll interval passed; the connection is fine.
    Quiet,
    /// The connection failed or the server hung up.
    Broken,
    /// The store was dropped: the listener should stop.
    StoreGone,
}

/// Rings `signal` for each notification that arrives on `client` until
/// [`LISTEN_POLL`] passes without one.
fn relay(client: &mut Client, target: &str, signal: &Weak<WorkSignal>) -> Relay {
    {
        let mut notifications = client.notifications();
        let mut iter = notifications.timeout_iter(LISTEN_POLL);
        loop {
            match iter.next() {
                Ok(Some(_)) if ring(signal) => {}
                Ok(Some(_)) => return Relay::StoreGone,
                // The poll interval passed quietly, or the server hung up;
                // `is_closed` below tells which.
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(target: "sie_store", error = %e, %target,
                        "the work listener's PostgreSQL connection failed; reconnecting");
                    return Relay::Broken;
                }
            }
        }
    }
    if client.is_closed() {
        tracing::warn!(target: "sie_store", %target,
            "PostgreSQL closed the work listener's connection; reconnecting");
        Relay::Broken
    } else {
        Relay::Quiet
    }
}

/// The listener thread: rings `signal` for every notification, until the
/// store is dropped. A broken connection is replaced with back-off.
fn run(client: Client, config: &Config, target: &str, signal: &Weak<WorkSignal>) {
    let mut client = Some(client);
    let mut backoff = RECONNECT_FIRST;
    while signal.strong_count() > 0 {
        match &mut client {
            Some(c) => match relay(c, target, signal) {
                Relay::Quiet => {}
                Relay::Broken => client = None,
                Relay::StoreGone => return,
            },
            None => {
                // Sleep in short steps, so a dropped store is noticed soon.
                let wake = Instant::now() + backoff;
                while Instant::now() < wake {
                    if signal.strong_count() == 0 {
                        return;
                    }
                    std::thread::sleep(
                        wake.saturating_duration_since(Instant::now())
                            .min(RECONNECT_FIRST),
                    );
                }
                match listen(config, target) {
                    Ok(c) => {
                        client = Some(c);
                        backoff = RECONNECT_FIRST;
                        // Work may have been queued while nobody listened.
                        if !ring(signal) {
                            return;
                        }
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        tracing::warn!(target: "sie_store", error = %e,
                            "the work listener could not reconnect; retrying in {backoff:?}");
                    }
                }
            }
        }
    }
}
