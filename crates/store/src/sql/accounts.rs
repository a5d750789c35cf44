//! [`Accounts`] on any [`Backend`]: accounts, organizations, memberships and API keys.
//!
//! A name already taken shows as an insert that changed nothing (`ON CONFLICT DO
//! NOTHING`), not as a constraint error to pick apart per driver; it also leaves a
//! PostgreSQL transaction usable. Lookups that change nothing run in read snapshots.

use super::rows;
use super::statements as sql;
use super::{Backend, Db, Params};
use crate::domain::{AccountId, AccountName, BillingNote, KeyPrefix, OrgId, OrgName, Timestamp};
use crate::error::{Result, StoreError};
use crate::keys::{draw_api_key, hash_key, looks_like_key, NewApiKey};
use crate::store::Accounts;
use crate::types::{AccountInfo, ApiKeyInfo, OrgAccess, OrgInfo};

/// How finely an API key's last use is recorded.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

fn require_account(tx: &mut impl Db, account: AccountId) -> Result<()> {
    tx.first(
        "find account",
        sql::ACCOUNT_EXISTS,
        &[&account.get()],
        |_| Ok(()),
    )?
    .ok_or(StoreError::UnknownAccount(account))
}

impl<B: Backend> Accounts for B {
    fn create_account(&self, name: &AccountName, now: Timestamp) -> Result<AccountId> {
        self.write("create account", |tx| {
            let params: Params<'_> = &[&name.as_str(), &now.as_millis()];
            tx.first("create account", sql::CREATE_ACCOUNT, params, |r| r.int(0))?
                .map(AccountId::from_row)
                .ok_or_else(|| StoreError::AccountExists(name.as_str().to_owned()))
        })
    }

    fn find_account(&self, name: &AccountName) -> Result<Option<AccountId>> {
        self.read("find account", |tx| {
            let id = tx.first("find account", sql::FIND_ACCOUNT, &[&name.as_str()], |r| {
                r.int(0)
            })?;
            Ok(id.map(AccountId::from_row))
        })
    }

    fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        self.read("list accounts", |tx| {
            tx.all("list accounts", sql::LIST_ACCOUNTS, &[], rows::account)
        })
    }

    fn create_org(&self, name: &OrgName, owner: AccountId, now: Timestamp) -> Result<OrgId> {
        let op = "create organization";
        self.write(op, |tx| {
            require_account(tx, owner)?;
            let params: Params<'_> = &[&name.as_str(), &owner.get(), &now.as_millis()];
            let org = tx
                .first(op, sql::CREATE_ORG, params, |r| r.int(0))?
                .ok_or_else(|| StoreError::OrgExists(name.as_str().to_owned()))?;
            tx.exec(op, sql::ADD_MEMBER, &[&org, &owner.get(), &now.as_millis()])?;
            Ok(OrgId::from_row(org))
        })
    }

    fn add_member(&self, org: &OrgName, account: AccountId, now: Timestamp) -> Result<bool> {
        self.write("add member", |tx| {
            let org = tx
                .first(
                    "find organization",
                    sql::ORG_BY_NAME,
                    &[&org.as_str()],
                    |r| r.int(0),
                )?
                .ok_or_else(|| StoreError::UnknownOrg(org.as_str().to_owned()))?;
            require_account(tx, account)?;
            let params: Params<'_> = &[&org, &account.get(), &now.as_millis()];
            Ok(tx.exec("add member", sql::ADD_MEMBER, params)? == 1)
        })
    }

    fn approve_org(&self, org: &OrgName, billing_note: &BillingNote, now: Timestamp) -> Result<()> {
        self.write("approve organization", |tx| {
            let params: Params<'_> = &[&billing_note.as_str(), &now.as_millis(), &org.as_str()];
            if tx.exec("approve organization", sql::APPROVE_ORG, params)? == 0 {
                return Err(StoreError::UnknownOrg(org.as_str().to_owned()));
            }
            Ok(())
        })
    }

    fn list_orgs(&self) -> Result<Vec<OrgInfo>> {
        self.read("list organizations", |tx| {
            tx.all("list organizations", sql::LIST_ORGS, &[], rows::org)
        })
    }

    fn create_api_key(&self, account: AccountId, now: Timestamp) -> Result<NewApiKey> {
        self.write("create API key", |tx| {
            require_account(tx, account)?;
            draw_api_key(|key| {
                let params: Params<'_> = &[
                    &key.prefix().as_str(),
                    &key.hash(),
                    &account.get(),
                    &now.as_millis(),
                ];
                Ok(tx.exec("create API key", sql::CREATE_API_KEY, params)? == 1)
            })
        })
    }

    fn revoke_api_key(&self, prefix: &KeyPrefix, now: Timestamp) -> Result<bool> {
        self.write("revoke API key", |tx| {
            let params: Params<'_> = &[&now.as_millis(), &prefix.as_str()];
            Ok(tx.exec("revoke API key", sql::REVOKE_API_KEY, params)? == 1)
        })
    }

    fn list_api_keys(&self, account: AccountId) -> Result<Vec<ApiKeyInfo>> {
        self.read("list API keys", |tx| {
            require_account(tx, account)?;
            let keys = sql::list_api_keys(B::KEY_INSERTION_ORDER);
            tx.all("list API keys", &keys, &[&account.get()], rows::api_key)
        })
    }

    fn authenticate(&self, presented_key: &str, now: Timestamp) -> Result<Option<AccountId>> {
        if !looks_like_key(presented_key) {
            return Ok(None);
        }
        // Looked up by hash: the secret never reaches SQL or a log line.
        let hash = hash_key(presented_key);
        let found = self.read("authenticate", |tx| {
            tx.first("authenticate", sql::AUTHENTICATE, &[&hash], |r| {
                Ok((AccountId::from_row(r.int(0)?), r.opt_int(1)?))
            })
        })?;
        let Some((account, last_used)) = found else {
            return Ok(None);
        };
        // The last use is written at most once a minute per key, so a busy key costs a
        // read per request, not a write.
        let stale = now.as_millis() - LAST_USED_RESOLUTION_MS;
        if last_used.is_none_or(|t| t < stale) {
            self.write("record key use", |tx| {
                let params: Params<'_> = &[&now.as_millis(), &hash, &stale];
                tx.exec("record key use", sql::TOUCH_API_KEY, params)
            })?;
        }
        Ok(Some(account))
    }

    fn org_access(&self, account: AccountId, org: &OrgName) -> Result<OrgAccess> {
        let op = "check organization access";
        self.read(op, |tx| {
            let params: Params<'_> = &[&account.get(), &org.as_str()];
            let access = tx.first(op, sql::ORG_ACCESS, params, rows::org_access)?;
            Ok(access.unwrap_or(OrgAccess::UnknownOrg))
        })
    }
}
