//! `sie admin --data-dir DIR …` or `sie admin --database-url URL …`: the portal's account
//! flow (SPEC 2) and worker tokens, from the command line.
//!
//! It opens the same store the servers use: the SQLite file of `sie serve` (WAL mode lets
//! both run at once) or the PostgreSQL database of `sie api`. `key create` and
//! `worker-token create` and `org webhook-secret` print only the secret on stdout, so
//! scripts can capture it.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use sie_store::{AccountName, BillingNote, KeyPrefix, OrgName, Timestamp, WorkerName};

use super::common::StoreArgs;

#[derive(Args)]
pub struct AdminArgs {
    #[command(flatten)]
    store: StoreArgs,
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
    /// Worker tokens: what a remote `sie worker` presents.
    #[command(subcommand)]
    WorkerToken(WorkerTokenCommand),
}

#[derive(Subcommand)]
enum WorkerTokenCommand {
    /// Create a token for a worker (1-64 of a-z, 0-9, - and _); prints only the token (shown
    /// once). A name is never reused, even after its token is revoked.
    Create { name: String },
    /// Revoke a worker's token: its calls are refused at once and its tasks go back to the queue.
    Revoke { name: String },
    /// List worker tokens (names only).
    List,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account (1-64 of a-z, 0-9, - and _).
    Create { name: String },
    /// List accounts.
    List,
    /// Give a portal account (by its email) a new random password, printed once; its
    /// sessions end. For a forgotten password: no mail server is assumed.
    ResetPassword { email: String },
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
    /// Make a new webhook signing secret for an organization, replacing any it had; prints
    /// only the secret (`whsec_…`, shown once). Receivers verify the Standard Webhooks
    /// signature of every delivery with it; one made before stops verifying at once.
    WebhookSecret { name: String },
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
    let store = args.store.open()?;
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
        AdminCommand::Account(AccountCommand::ResetPassword { email }) => {
            let email = sie_store::Email::parse(&email)?;
            let login = store.login(&email)?.ok_or_else(|| {
                anyhow::anyhow!("no portal account has the email {}", email.as_str())
            })?;
            let (password, hash) = sie_server::reset_password().map_err(anyhow::Error::msg)?;
            store.set_password(login.account, &hash)?;
            println!("{password}");
            eprintln!(
                "the new password of {} (shown once); its sessions have ended",
                email.as_str()
            );
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
            store.approve_org(&OrgName::parse(&name)?, &BillingNote::parse(&billing)?, now)?;
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
        AdminCommand::Org(OrgCommand::WebhookSecret { name }) => {
            let secret = sie_server::webhooks::Secret::generate().map_err(anyhow::Error::msg)?;
            store.set_webhook_secret(&OrgName::parse(&name)?, &secret)?;
            println!("{secret}");
            eprintln!(
                "the webhook signing secret of {name} (shown once); deliveries are signed \
                 with it from now on"
            );
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
        AdminCommand::WorkerToken(WorkerTokenCommand::Create { name }) => {
            let token = store.create_worker_token(&WorkerName::parse(&name)?, now)?;
            println!("{}", token.expose_token());
        }
        AdminCommand::WorkerToken(WorkerTokenCommand::Revoke { name }) => {
            if store.revoke_worker_token(&WorkerName::parse(&name)?, now)? {
                println!("revoked the token of worker {name}; its tasks went back to the queue");
            } else {
                bail!(
                    "no live worker token named {name}; `sie admin worker-token list` shows them"
                );
            }
        }
        AdminCommand::WorkerToken(WorkerTokenCommand::List) => {
            println!("name\tstate");
            for t in store.list_worker_tokens()? {
                let state = if t.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{}\t{state}", t.name);
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
