//! [`Webhooks`] on any [`Backend`]: the organizations' signing secrets and the outbox of
//! deliveries.
//!
//! The outbox's rows are written by the queue itself, in the transaction that ends a task
//! (`queue.rs`), so a delivery exists exactly when its task ended with a webhook URL. The
//! API nodes claim due rows for an attempt (PostgreSQL passes over rows another node is
//! claiming), and every failure report is fenced on the attempt it claimed: a node that
//! took longer than its claim cannot undo what a later attempt recorded. A success counts
//! whichever attempt reports it, so a delivery that arrived is not sent again.

use std::time::Duration;

use super::rows;
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{OrgId, OrgName, Timestamp};
use crate::error::{Result, StoreError};
use crate::store::Webhooks;
use crate::types::{Delivery, DeliveryOutcome};

impl<B: Backend> Webhooks for B {
    fn set_webhook_secret(&self, org: &OrgName, secret: &str) -> Result<()> {
        let op = "set webhook secret";
        self.write(op, |tx| {
            if tx.exec(op, sql::SET_WEBHOOK_SECRET, &[&secret, &org.as_str()])? == 0 {
                return Err(StoreError::UnknownOrg(org.as_str().to_owned()));
            }
            Ok(())
        })
    }

    fn webhook_secret(&self, org: OrgId) -> Result<Option<String>> {
        let op = "read webhook secret";
        self.read(op, |tx| {
            tx.first(op, sql::WEBHOOK_SECRET, &[&org.get()], |r| r.opt_text(0))
                .map(Option::flatten)
        })
    }

    fn claim_deliveries(
        &self,
        limit: u32,
        hold: Duration,
        now: Timestamp,
    ) -> Result<Vec<Delivery>> {
        let op = "claim webhook deliveries";
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.write(op, |tx| {
            let due = format!("{}{}", sql::DUE_DELIVERIES, B::SKIP_LOCKED_ROWS);
            let params: Params<'_> = &[&now.as_millis(), &i64::from(limit)];
            let ids = tx.all(op, &due, params, |r| r.text(0))?;
            let until = now.plus(hold).as_millis();
            let mut claimed = Vec::with_capacity(ids.len());
            for id in &ids {
                let params: Params<'_> = &[id, &until];
                if let Some(d) = tx.first(op, sql::CLAIM_DELIVERY, params, rows::delivery)? {
                    claimed.push(d);
                }
            }
            Ok(claimed)
        })
    }

    fn finish_delivery(
        &self,
        delivery: &Delivery,
        outcome: &DeliveryOutcome,
        now: Timestamp,
    ) -> Result<bool> {
        let op = "finish webhook delivery";
        let (id, attempt) = (delivery.id.as_str(), i64::from(delivery.attempt));
        self.write(op, |tx| {
            let changed = match outcome {
                DeliveryOutcome::Delivered => {
                    tx.exec(op, sql::DELIVERED, &[&id, &now.as_millis()])?
                }
                DeliveryOutcome::Retry { at, error } => {
                    let params: Params<'_> = &[&id, &attempt, &at.as_millis(), &error.as_str()];
                    tx.exec(op, sql::RETRY_DELIVERY, params)?
                }
                DeliveryOutcome::GiveUp { error } => {
                    let params: Params<'_> = &[&id, &attempt, &now.as_millis(), &error.as_str()];
                    tx.exec(op, sql::GIVE_UP_DELIVERY, params)?
                }
            };
            Ok(changed == 1)
        })
    }
}
