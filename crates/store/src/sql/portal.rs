//! [`Portal`] on any [`Backend`]: accounts that sign in, their sessions, billing.
//!
//! The store keeps what the portal decides with, never a password or a session token:
//! the caller hashes the password (argon2id) and the token (SHA-256), and the store only
//! compares and expires. A session is seen on every page; it is deleted once it was idle
//! longer than the caller's limit, so an old cookie cannot come back.

use std::time::Duration;

use super::rows;
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{AccountId, AccountName, BillingInfo, Email, OrgName, Timestamp};
use crate::error::{Result, StoreError};
use crate::store::Portal;
use crate::types::{Login, Member, OrgInfo, Session};

/// The account name (for `sie admin`) an email gets: its characters outside `[a-z0-9-_]`
/// made `-`, cut to fit a numbered suffix, then numbered if taken.
fn name_candidates(email: &Email) -> impl Iterator<Item = String> {
    let base: String = email
        .as_str()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    std::iter::once(base.clone()).chain((2..).map(move |n| format!("{base}-{n}")))
}

fn org_id(tx: &mut impl Db, org: &OrgName) -> Result<i64> {
    tx.first(
        "find organization",
        sql::ORG_BY_NAME,
        &[&org.as_str()],
        |r| r.int(0),
    )?
    .ok_or_else(|| StoreError::UnknownOrg(org.as_str().to_owned()))
}

impl<B: Backend> Portal for B {
    fn sign_up(&self, email: &Email, password_hash: &str, now: Timestamp) -> Result<AccountId> {
        let op = "sign up";
        self.write(op, |tx| {
            if tx
                .first(op, sql::EMAIL_TAKEN, &[&email.as_str()], |r| r.int(0))?
                .is_some()
            {
                return Err(StoreError::EmailTaken(email.as_str().to_owned()));
            }
            for name in name_candidates(email).take(1000) {
                if tx
                    .first(op, sql::NAME_TAKEN, &[&name], |r| r.int(0))?
                    .is_some()
                {
                    continue;
                }
                let name = AccountName::parse(&name).map_err(StoreError::from)?;
                let params: Params<'_> = &[
                    &name.as_str(),
                    &email.as_str(),
                    &password_hash,
                    &now.as_millis(),
                ];
                if let Some(id) = tx.first(op, sql::SIGN_UP, params, |r| r.int(0))? {
                    return Ok(AccountId::from_row(id));
                }
            }
            Err(StoreError::AccountExists(email.as_str().to_owned()))
        })
    }

    fn login(&self, email: &Email) -> Result<Option<Login>> {
        self.read("log in", |tx| {
            tx.first("log in", sql::LOGIN, &[&email.as_str()], |r| {
                Ok(Login {
                    account: AccountId::from_row(r.int(0)?),
                    password_hash: r.text(1)?,
                })
            })
        })
    }

    fn set_password(&self, account: AccountId, password_hash: &str) -> Result<()> {
        let op = "set password";
        self.write(op, |tx| {
            let params: Params<'_> = &[&password_hash, &account.get()];
            if tx.exec(op, sql::SET_PASSWORD, params)? == 0 {
                return Err(StoreError::UnknownAccount(account));
            }
            tx.exec(op, sql::END_SESSIONS_OF, &[&account.get()])?;
            Ok(())
        })
    }

    fn create_session(
        &self,
        account: AccountId,
        token_hash: &str,
        csrf: &str,
        now: Timestamp,
    ) -> Result<()> {
        self.write("create session", |tx| {
            let params: Params<'_> = &[&token_hash, &account.get(), &csrf, &now.as_millis()];
            tx.exec("create session", sql::CREATE_SESSION, params)?;
            Ok(())
        })
    }

    fn session(&self, token_hash: &str, idle: Duration, now: Timestamp) -> Result<Option<Session>> {
        let op = "read session";
        self.write(op, |tx| {
            let found = tx.first(op, sql::SESSION, &[&token_hash], |r| {
                let email = r.opt_text(1)?.unwrap_or_default();
                Ok((r.int(0)?, email, r.text(2)?, r.int(3)?))
            })?;
            let Some((account, email, csrf, last_seen)) = found else {
                return Ok(None);
            };
            let email = match Email::parse(&email) {
                Ok(e) => e,
                // An account without an email has no business holding a session.
                Err(_) => {
                    tx.exec(op, sql::END_SESSION, &[&token_hash])?;
                    return Ok(None);
                }
            };
            if Timestamp::from_millis(last_seen).plus(idle) < now {
                tx.exec(op, sql::END_SESSION, &[&token_hash])?;
                return Ok(None);
            }
            tx.exec(op, sql::TOUCH_SESSION, &[&now.as_millis(), &token_hash])?;
            Ok(Some(Session {
                account: AccountId::from_row(account),
                email,
                csrf,
            }))
        })
    }

    fn end_session(&self, token_hash: &str) -> Result<bool> {
        self.write("end session", |tx| {
            Ok(tx.exec("end session", sql::END_SESSION, &[&token_hash])? == 1)
        })
    }

    fn orgs_of(&self, account: AccountId) -> Result<Vec<OrgInfo>> {
        self.read("list organizations", |tx| {
            tx.all(
                "list organizations",
                sql::ORGS_OF,
                &[&account.get()],
                rows::org,
            )
        })
    }

    fn members(&self, org: &OrgName) -> Result<Vec<Member>> {
        self.read("list members", |tx| {
            org_id(tx, org)?;
            tx.all("list members", sql::MEMBERS, &[&org.as_str()], rows::member)
        })
    }

    fn set_billing(
        &self,
        org: &OrgName,
        billing: &BillingInfo,
        approve: bool,
        now: Timestamp,
    ) -> Result<()> {
        let op = "add billing information";
        self.write(op, |tx| {
            let id = org_id(tx, org)?;
            let params: Params<'_> = &[
                &id,
                &billing.name(),
                &billing.email().as_str(),
                &billing.address(),
                &billing.country(),
                &billing.tax_id(),
                &now.as_millis(),
            ];
            tx.exec(op, sql::SET_BILLING, params)?;
            let note = billing.note();
            if approve {
                let params: Params<'_> = &[&note.as_str(), &now.as_millis(), &org.as_str()];
                tx.exec(op, sql::APPROVE_ORG, params)?;
            } else {
                tx.exec(op, sql::SET_BILLING_NOTE, &[&note.as_str(), &id])?;
            }
            Ok(())
        })
    }

    fn billing(&self, org: &OrgName) -> Result<Option<BillingInfo>> {
        self.read("read billing information", |tx| {
            org_id(tx, org)?;
            tx.first(
                "read billing information",
                sql::BILLING,
                &[&org.as_str()],
                rows::billing,
            )
        })
    }
}
