//! What is particular to PostgreSQL in the queue: the locks that let many processes
//! write at once, `NOTIFY`, turns from a sequence, and the lease's pick.
//!
//! Transactions that write are READ COMMITTED, where a row locked after the statement's
//! snapshot is re-checked against the `WHERE` clause, so a task another leaser took a
//! moment ago is not taken again; reads are REPEATABLE READ snapshots
//! ([`pool`](super::pool)). The claim's compare-and-set and the fence on every report,
//! written once in [`sql`](crate::sql), hold whatever the locking.

use postgres::Transaction;

use super::listener::notify_work;
use super::pool::Op;
use super::PostgresStore;
use crate::domain::Timestamp;
use crate::error::Result;
use crate::signal::WorkSignal;
use crate::sql::rows::Candidate;
use crate::sql::statements::waiting;
use crate::sql::{Backend, Db};
use crate::types::WorkerOffer;

/// Advisory lock key for enqueues (arbitrary, but fixed: every node must use the same).
const ENQUEUE_LOCK: i64 = 0x5349_4530_0002;

/// The condition for a task the offer `$2` (pipelines), `$3` (schedulers), `$4` (has a
/// safety checker) can run: [`WorkerOffer::can_run`]. `t` is the column prefix.
fn runnable(t: &str) -> String {
    format!(
        "({t}pipeline = ANY($2) AND ({t}scheduler IS NULL OR {t}scheduler = ANY($3)) \
         AND (NOT {t}needs_safety_checker OR $4))"
    )
}

impl Backend for PostgresStore {
    fn signal(&self) -> &WorkSignal {
        &self.signal
    }

    const LOCK_ROWS: &'static str = " FOR UPDATE";
    const SKIP_LOCKED_ROWS: &'static str = " FOR UPDATE SKIP LOCKED";

    /// An identity column, there for this alone (SQLite's `rowid`).
    const KEY_INSERTION_ORDER: &'static str = "id";

    /// A sequence, unlike SQLite's `MAX(lease_turn) + 1`, never gives two concurrent
    /// leases the same turn, and locks no other organization's row.
    const TAKE_TURN: &'static str =
        "UPDATE organizations SET lease_turn = nextval('lease_turns') WHERE id = $1";

    /// One enqueue at a time across all nodes, until this transaction ends.
    fn serialize_enqueues(tx: &mut Transaction<'_>) -> Result<()> {
        let lock = "SELECT pg_advisory_xact_lock($1)";
        tx.exec("enqueue", lock, &[&ENQUEUE_LOCK])?;
        Ok(())
    }

    fn announce_work(tx: &mut Transaction<'_>, op: &'static str) -> Result<()> {
        notify_work(tx, op)
    }

    /// Every waiting task the offer can run is ranked by the fairness rule, and the
    /// first one nobody else holds is locked: when a concurrent lease is taking an
    /// organization's head, this one takes the next task in line instead of waiting.
    ///
    /// A task's key is its organization's live leases plus its place in the
    /// organization's line, so when a concurrent lease holds one organization's head,
    /// the next free task goes to the organization that would then have fewest running
    /// (as if that head were already leased), not to the same organization's second
    /// task. Sequentially the first key is always an organization's head, ranked
    /// exactly as SQLite ranks them.
    fn pick(
        tx: &mut Transaction<'_>,
        offer: &WorkerOffer,
        now: Timestamp,
    ) -> Result<Option<Candidate>> {
        let pick = format!(
            "SELECT t.seq, t.id, t.org_id, t.state, t.attempt, t.request, t.created_at
             FROM (SELECT seq, org_id,
                          ROW_NUMBER() OVER (PARTITION BY org_id ORDER BY seq) AS place,
                          MIN(seq) OVER (PARTITION BY org_id) AS head
                   FROM tasks WHERE {} AND {}) q
             JOIN tasks t ON t.seq = q.seq
             JOIN organizations o ON o.id = q.org_id
             LEFT JOIN (SELECT org_id, COUNT(*) AS n FROM tasks
                        WHERE state = 'running' AND lease_expires_at > $1
                        GROUP BY org_id) b ON b.org_id = q.org_id
             WHERE {} AND {}
             ORDER BY COALESCE(b.n, 0) + q.place, o.lease_turn, q.head, t.seq
             LIMIT 1
             FOR UPDATE OF t SKIP LOCKED",
            waiting("", "$1"),
            runnable(""),
            waiting("t.", "$1"),
            runnable("t."),
        );
        // The offer's lists bind as arrays, which only PostgreSQL has, so this one
        // statement binds through the driver itself.
        let row = tx
            .query_opt(
                &pick,
                &[
                    &now.as_millis(),
                    &offer.pipeline_names(),
                    &offer.scheduler_names(),
                    &offer.capabilities.safety_checker(),
                ],
            )
            .op("lease")?;
        row.map(|r| Candidate::read(&r)).transpose()
    }
}
