//! [`WorkerTokens`] on any [`Backend`]: the tokens remote workers present, kept as
//! SHA-256s.
//!
//! Revoking a token also lapses the leases its worker holds, in the same transaction,
//! and announces work: those tasks are waiting again at once, wherever a worker
//! long-polls.

use super::rows;
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{Timestamp, WorkerName};
use crate::error::{Result, StoreError};
use crate::keys::{hash_key, looks_like_worker_token, NewWorkerToken};
use crate::store::WorkerTokens;
use crate::types::WorkerTokenInfo;

impl<B: Backend> WorkerTokens for B {
    fn create_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<NewWorkerToken> {
        let op = "create worker token";
        self.write(op, |tx| {
            let token = NewWorkerToken::generate();
            let params: Params<'_> = &[&name.as_str(), &token.hash(), &now.as_millis()];
            if tx.exec(op, sql::CREATE_WORKER_TOKEN, params)? == 0 {
                return Err(StoreError::WorkerExists(name.as_str().to_owned()));
            }
            Ok(token)
        })
    }

    fn revoke_worker_token(&self, name: &WorkerName, now: Timestamp) -> Result<bool> {
        let op = "revoke worker token";
        let revoked = self.write(op, |tx| {
            let params: Params<'_> = &[&name.as_str(), &now.as_millis()];
            let revoked = tx.exec(op, sql::REVOKE_WORKER_TOKEN, params)? == 1;
            if revoked {
                tx.exec(op, sql::LAPSE_LEASES_OF, params)?;
                B::announce_work(tx, op)?;
            }
            Ok(revoked)
        })?;
        if revoked {
            // Other processes hear the announcement; this one's waiters are rung here,
            // without the round trip.
            self.signal().notify();
        }
        Ok(revoked)
    }

    fn list_worker_tokens(&self) -> Result<Vec<WorkerTokenInfo>> {
        let op = "list worker tokens";
        self.read(op, |tx| {
            tx.all(op, sql::LIST_WORKER_TOKENS, &[], rows::worker_token)
        })
    }

    fn authenticate_worker(&self, presented_token: &str) -> Result<Option<WorkerName>> {
        if !looks_like_worker_token(presented_token) {
            return Ok(None);
        }
        let hash = hash_key(presented_token);
        let op = "authenticate worker";
        self.read(op, |tx| {
            tx.first(op, sql::AUTHENTICATE_WORKER, &[&hash], rows::worker_name)
        })
    }
}
