//! Conformance checks of [`Portal`](crate::Portal): sign-up by email (one account per
//! address, whatever its case), sign-in records, sessions that expire when idle and end
//! with a new password, members, billing that approves, and keys' last use.

use super::*;
use crate::domain::{BillingInfo, Email};
use crate::error::StoreError;

fn email(s: &str) -> Email {
    Email::parse(s).unwrap()
}

pub fn portal_sign_up_and_sessions(h: &dyn Harness) {
    let s = &*h.open();
    let alice = s
        .sign_up(&email("Alice@Example.com"), "$argon2id$hash-a", at(0))
        .unwrap();
    let dotted = s.sign_up(&email("a.b@c.de"), "$argon2id$d", at(0)).unwrap();
    assert!(matches!(
        s.sign_up(&email("alice@example.COM"), "$argon2id$other", at(1)),
        Err(StoreError::EmailTaken(e)) if e == "alice@example.com"
    ));
    // Emails that make the same account name still get accounts of their own.
    let dashed = s
        .sign_up(&email("a-b@c.de"), "$argon2id$hash-b", at(2))
        .unwrap();
    assert_ne!(dotted, dashed);
    let names: Vec<String> = s
        .list_accounts()
        .unwrap()
        .into_iter()
        .map(|a| a.name.as_str().to_owned())
        .collect();
    assert_eq!(names, ["a-b-c-de", "a-b-c-de-2", "alice-example-com"]);

    let login = s.login(&email("ALICE@example.com")).unwrap().unwrap();
    assert_eq!(login.account, alice);
    assert_eq!(login.password_hash, "$argon2id$hash-a");
    assert_eq!(s.login(&email("nobody@example.com")).unwrap(), None);
    // An account made by `sie admin` has no email and cannot sign in.
    account(s, "bob");
    assert_eq!(s.login(&email("bob@example.com")).unwrap(), None);

    let idle = Duration::from_secs(60);
    s.create_session(alice, "token-hash-1", "csrf-1", secs(10))
        .unwrap();
    let seen = s.session("token-hash-1", idle, secs(20)).unwrap().unwrap();
    assert_eq!(
        (seen.account, seen.email.as_str(), seen.csrf.as_str()),
        (alice, "alice@example.com", "csrf-1")
    );
    // Each look counts as activity: 50 s after the last look is within a 60 s limit.
    assert!(s.session("token-hash-1", idle, secs(70)).unwrap().is_some());
    // Idle past the limit: gone, and it stays gone.
    assert_eq!(s.session("token-hash-1", idle, secs(200)).unwrap(), None);
    assert_eq!(s.session("token-hash-1", idle, secs(201)).unwrap(), None);
    assert_eq!(s.session("unknown", idle, secs(201)).unwrap(), None);

    s.create_session(alice, "token-hash-2", "csrf-2", secs(300))
        .unwrap();
    s.create_session(alice, "token-hash-3", "csrf-3", secs(300))
        .unwrap();
    assert!(s.end_session("token-hash-2").unwrap());
    assert!(!s.end_session("token-hash-2").unwrap());
    assert_eq!(s.session("token-hash-2", idle, secs(301)).unwrap(), None);
    // A new password ends every session of the account.
    s.set_password(alice, "$argon2id$hash-c").unwrap();
    assert_eq!(s.session("token-hash-3", idle, secs(302)).unwrap(), None);
    assert_eq!(
        s.login(&email("alice@example.com"))
            .unwrap()
            .unwrap()
            .password_hash,
        "$argon2id$hash-c"
    );
    let ghost = crate::AccountId::parse("999999").unwrap();
    assert!(matches!(
        s.set_password(ghost, "x"),
        Err(StoreError::UnknownAccount(_))
    ));
}

pub fn portal_orgs_members_and_billing(h: &dyn Harness) {
    let s = &*h.open();
    let alice = s
        .sign_up(&email("alice@example.com"), "$argon2id$a", at(0))
        .unwrap();
    let bob = account(s, "bob");
    let acme = OrgName::parse("acme").unwrap();
    let other = OrgName::parse("other").unwrap();
    s.create_org(&acme, alice, at(1)).unwrap();
    s.create_org(&other, bob, at(2)).unwrap();
    s.add_member(&acme, bob, at(3)).unwrap();

    let names = |orgs: Vec<OrgInfo>| -> Vec<String> {
        orgs.into_iter()
            .map(|o| o.name.as_str().to_owned())
            .collect()
    };
    assert_eq!(names(s.orgs_of(alice).unwrap()), ["acme"]);
    assert_eq!(names(s.orgs_of(bob).unwrap()), ["acme", "other"]);
    let members = s.members(&acme).unwrap();
    assert_eq!(members.len(), 2);
    let owner: Vec<_> = members.iter().filter(|m| m.owner).collect();
    assert_eq!(owner.len(), 1);
    assert_eq!(owner[0].account, alice);
    assert_eq!(
        owner[0].email.as_ref().map(|e| e.as_str()),
        Some("alice@example.com")
    );
    assert!(members
        .iter()
        .any(|m| m.account == bob && m.email.is_none()));
    assert!(matches!(
        s.members(&OrgName::parse("nope").unwrap()),
        Err(StoreError::UnknownOrg(_))
    ));

    // Billing with manual approval records it and leaves the organization pending.
    let billing = BillingInfo::parse(
        "ACME Inc.",
        "billing@acme.example",
        "1 Main St\nSpringfield",
        "us",
        Some(" "),
    )
    .unwrap();
    assert_eq!(s.billing(&acme).unwrap(), None);
    s.set_billing(&acme, &billing, false, at(10)).unwrap();
    assert_eq!(s.billing(&acme).unwrap(), Some(billing.clone()));
    assert_eq!(s.billing(&acme).unwrap().unwrap().country(), "US");
    assert_eq!(s.billing(&acme).unwrap().unwrap().tax_id(), None);
    assert_eq!(s.org_access(alice, &acme).unwrap(), OrgAccess::NotApproved);
    // Automatic approval: approved at once, and a later change keeps the first approval.
    let changed =
        BillingInfo::parse("ACME", "b@acme.example", "2 Main St", "DE", Some("DE123")).unwrap();
    s.set_billing(&acme, &changed, true, at(20)).unwrap();
    s.set_billing(&acme, &changed, true, at(30)).unwrap();
    assert_eq!(s.billing(&acme).unwrap(), Some(changed));
    assert!(matches!(
        s.org_access(alice, &acme).unwrap(),
        OrgAccess::Allowed(_)
    ));
    let info = s
        .list_orgs()
        .unwrap()
        .into_iter()
        .find(|o| o.name == acme)
        .unwrap();
    assert_eq!(info.approved_at, Some(at(20)));
    assert!(info.billing_note.unwrap().contains("b@acme.example"));
    assert!(matches!(
        s.set_billing(&OrgName::parse("nope").unwrap(), &billing, true, at(40)),
        Err(StoreError::UnknownOrg(_))
    ));
}

pub fn api_keys_remember_their_last_use(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    let key = s.create_api_key(alice, at(0)).unwrap();
    assert_eq!(s.list_api_keys(alice).unwrap()[0].last_used_at, None);
    let minute = 60_000;
    s.authenticate(key.expose_key(), at(minute)).unwrap();
    assert_eq!(
        s.list_api_keys(alice).unwrap()[0].last_used_at,
        Some(at(minute))
    );
    // Within the minute, not written again; after it, written.
    s.authenticate(key.expose_key(), at(minute + 30_000))
        .unwrap();
    assert_eq!(
        s.list_api_keys(alice).unwrap()[0].last_used_at,
        Some(at(minute))
    );
    s.authenticate(key.expose_key(), at(3 * minute)).unwrap();
    assert_eq!(
        s.list_api_keys(alice).unwrap()[0].last_used_at,
        Some(at(3 * minute))
    );
}
