//! `sie admin --data-dir DIR …`: the portal's account flow from the command line (SPEC 2).
//!
//! It opens the same SQLite file `sie serve` uses (WAL mode lets both run at once).
//! `key create` prints only the key on stdout, so scripts can capture it.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sie_store::{AccountName, KeyPrefix, OrgName, SqliteStore, Store, Timestamp};

#[derive(Args)]
pub struct AdminArgs {
    /// The data directory of `sie serve` (holds sie.db).
    #[arg(long, default_value = "./sie-data")]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Accounts: the people or services that hold API keys.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Organizations: what tasks are billed to.
    #[command(subcommand)]
    Org(OrgCommand),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account (1-64 of a-z, 0-9, - and _).
    Create { name: String },
    /// List accounts.
    List,
}

#[derive(Subcommand)]
enum OrgCommand {
    /// Create an organization owned by an account (the owner becomes a member).
    Create {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// Record billing information, which approves the organization for use.
    Approve {
        name: String,
        /// What the billing information is (kept with the organization).
        #[arg(long, default_value = "approved with sie admin")]
        billing: String,
    },
    /// Make an account a member of an organization.
    AddMember {
        name: String,
        #[arg(long)]
        account: String,
    },
    /// List organizations.
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key for an account; prints only the key (shown once).
    Create {
        #[arg(long)]
        account: String,
    },
    /// Revoke a key by its visible prefix (`sie_xxxxxxxx`).
    Revoke { prefix: String },
    /// List an account's keys (prefixes only).
    List {
        #[arg(long)]
        account: String,
    },
}

pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let db = args.data_dir.join("sie.db");
    if !db.is_file() {
        bail!(
            "{} does not exist; start `sie serve --data-dir {}` once, or pass the right --data-dir",
            db.display(),
            args.data_dir.display()
        );
    }
    let store = SqliteStore::open(&db)?;
    let now = Timestamp::now();
    let account = |name: &str| -> anyhow::Result<_> {
        let parsed = AccountName::parse(name)?;
        store.find_account(&parsed)?.with_context(|| {
            format!("no account named {name:?}; `sie admin account list` shows them")
        })
    };
    match args.command {
        AdminCommand::Account(AccountCommand::Create { name }) => {
            let id = store.create_account(&AccountName::parse(&name)?, now)?;
            println!("created account {name} (id {id})");
        }
        AdminCommand::Account(AccountCommand::List) => {
            for a in store.list_accounts()? {
                println!("{}\t{}", a.id, a.name.as_str());
            }
        }
        AdminCommand::Org(OrgCommand::Create { name, owner }) => {
            let owner = account(&owner)?;
            store.create_org(&OrgName::parse(&name)?, owner, now)?;
            println!("created organization {name}; it needs billing information: sie admin org approve {name}");
        }
        AdminCommand::Org(OrgCommand::Approve { name, billing }) => {
            store.approve_org(&OrgName::parse(&name)?, &billing, now)?;
            println!("approved organization {name}");
        }
        AdminCommand::Org(OrgCommand::AddMember { name, account: who }) => {
            let id = account(&who)?;
            if store.add_member(&OrgName::parse(&name)?, id, now)? {
                println!("{who} is now a member of {name}");
            } else {
                println!("{who} was already a member of {name}");
            }
        }
        AdminCommand::Org(OrgCommand::List) => {
            println!("name\tapproved\tmembers");
            for o in store.list_orgs()? {
                let approved = if o.approved_at.is_some() { "yes" } else { "no" };
                println!("{}\t{approved}\t{}", o.name.as_str(), o.members);
            }
        }
        AdminCommand::Key(KeyCommand::Create { account: who }) => {
            let key = store.create_api_key(account(&who)?, now)?;
            println!("{}", key.expose_key());
        }
        AdminCommand::Key(KeyCommand::Revoke { prefix }) => {
            if store.revoke_api_key(&KeyPrefix::parse(&prefix)?, now)? {
                println!("revoked {prefix}");
            } else {
                bail!("no active key with prefix {prefix}; `sie admin key list --account NAME` shows them");
            }
        }
        AdminCommand::Key(KeyCommand::List { account: who }) => {
            for k in store.list_api_keys(account(&who)?)? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{state}", k.prefix);
            }
        }
    }
    Ok(())
}
