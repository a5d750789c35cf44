//! What is particular to SQLite in the queue: the lease's pick and turns, and the locks
//! and wake-ups it does without.
//!
//! Every write runs in `BEGIN IMMEDIATE` ([`pool`](super::pool)), so one writer holds
//! the whole database at a time: a pick cannot race another leaser, rows need no locks
//! of their own, and enqueues already take turns. SQLite has no `SKIP LOCKED` and no
//! `NOTIFY`; other processes on the same file are not told of new work, and their
//! waiters look again on a timer ([`RECHECK`](crate::RECHECK)).

use rusqlite::Transaction;

use super::SqliteStore;
use crate::domain::Timestamp;
use crate::error::Result;
use crate::signal::WorkSignal;
use crate::sql::rows::Candidate;
use crate::sql::statements::waiting;
use crate::sql::{Backend, Db, Params};
use crate::types::WorkerOffer;

impl Backend for SqliteStore {
    fn signal(&self) -> &WorkSignal {
        &self.signal
    }

    const LOCK_ROWS: &'static str = "";
    const SKIP_LOCKED_ROWS: &'static str = "";

    /// The table's primary key is the prefix; its hidden `rowid` counts up.
    const KEY_INSERTION_ORDER: &'static str = "rowid";

    /// One more than every other organization's turn.
    const TAKE_TURN: &'static str =
        "UPDATE organizations SET lease_turn = (SELECT MAX(lease_turn) FROM organizations) + 1
         WHERE id = $1";

    fn serialize_enqueues(_: &mut Transaction<'_>) -> Result<()> {
        Ok(())
    }

    fn announce_work(_: &mut Transaction<'_>, _: &'static str) -> Result<()> {
        Ok(())
    }

    /// The fairness rule: fewest live leases, then least recently served, then oldest
    /// head; within the organization, its head.
    fn pick(
        tx: &mut Transaction<'_>,
        offer: &WorkerOffer,
        now: Timestamp,
    ) -> Result<Option<Candidate>> {
        // The offer's lists travel as JSON arrays and are unpacked by json_each,
        // so the statement text stays fixed whatever the worker announces.
        let json_list =
            |v: Vec<&str>| serde_json::to_string(&v).expect("a list of strings serializes");
        let pick = format!(
            "WITH waiting AS (
                 SELECT seq, org_id FROM tasks WHERE {}
                   AND pipeline IN (SELECT value FROM json_each($2))
                   AND (scheduler IS NULL OR scheduler IN (SELECT value FROM json_each($3)))
                   AND (needs_safety_checker = 0 OR $4)
             ),
             heads AS (SELECT org_id, MIN(seq) AS head FROM waiting GROUP BY org_id),
             busy AS (
                 SELECT org_id, COUNT(*) AS n FROM tasks
                 WHERE state = 'running' AND lease_expires_at > $1 GROUP BY org_id
             )
             SELECT t.seq, t.id, t.org_id, t.state, t.attempt, t.request, t.created_at
             FROM heads h
             JOIN tasks t ON t.seq = h.head
             JOIN organizations o ON o.id = h.org_id
             LEFT JOIN busy b ON b.org_id = h.org_id
             ORDER BY COALESCE(b.n, 0), o.lease_turn, h.head
             LIMIT 1",
            waiting("", "$1")
        );
        let params: Params<'_> = &[
            &now.as_millis(),
            &json_list(offer.pipeline_names()),
            &json_list(offer.scheduler_names()),
            &offer.capabilities.safety_checker(),
        ];
        tx.first("lease", &pick, params, Candidate::read)
    }
}
