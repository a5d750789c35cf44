//! Conformance checks of [`Accounts`](crate::Accounts) and
//! [`WorkerTokens`](crate::WorkerTokens): names taken once, keys and tokens that
//! authenticate until revoked, and who may use an organization.

use super::*;
use crate::domain::{KeyPrefix, WorkerName};
use crate::error::StoreError;

pub fn accounts_and_orgs(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    assert!(matches!(
        s.create_account(&AccountName::parse("alice").unwrap(), at(0)),
        Err(StoreError::AccountExists(n)) if n == "alice"
    ));
    assert_eq!(
        s.find_account(&AccountName::parse("alice").unwrap())
            .unwrap(),
        Some(alice)
    );
    assert_eq!(
        s.find_account(&AccountName::parse("nobody").unwrap())
            .unwrap(),
        None
    );
    let accounts = s.list_accounts().unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(
        (accounts[0].id, accounts[0].name.as_str()),
        (alice, "alice")
    );
    assert_eq!(accounts[0].created_at, at(0));

    let acme = OrgName::parse("acme").unwrap();
    let acme_id = s.create_org(&acme, alice, at(1)).unwrap();
    assert!(matches!(
        s.create_org(&acme, alice, at(1)),
        Err(StoreError::OrgExists(_))
    ));
    let ghost = crate::AccountId::parse("999999").unwrap();
    assert!(matches!(
        s.create_org(&OrgName::parse("other").unwrap(), ghost, at(1)),
        Err(StoreError::UnknownAccount(_))
    ));

    let bob = account(s, "bob");
    assert!(s.add_member(&acme, bob, at(2)).unwrap());
    assert!(
        !s.add_member(&acme, bob, at(2)).unwrap(),
        "adding twice reports false"
    );
    assert!(matches!(
        s.add_member(&OrgName::parse("nope").unwrap(), bob, at(2)),
        Err(StoreError::UnknownOrg(_))
    ));

    assert!(matches!(
        s.approve_org(&OrgName::parse("nope").unwrap(), &note("x"), at(3)),
        Err(StoreError::UnknownOrg(_))
    ));
    let orgs = s.list_orgs().unwrap();
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0].id, acme_id);
    assert_eq!(orgs[0].owner, alice);
    assert_eq!(orgs[0].members, 2);
    assert_eq!(orgs[0].approved_at, None);

    s.approve_org(&acme, &note("PO 1234"), at(4)).unwrap();
    s.approve_org(&acme, &note("PO 5678"), at(5)).unwrap();
    let orgs = s.list_orgs().unwrap();
    assert_eq!(orgs[0].billing_note.as_deref(), Some("PO 5678"));
    assert_eq!(
        orgs[0].approved_at,
        Some(at(4)),
        "the first approval time is kept"
    );
}

pub fn auth_and_org_access(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    let mallory = account(s, "mallory");
    let key = s.create_api_key(alice, at(0)).unwrap();
    assert_eq!(
        s.authenticate(key.expose_key(), at(0)).unwrap(),
        Some(alice)
    );
    assert!(
        key.expose_key().len() >= 4 + 8 + 1 + 26,
        "at least 128 random bits"
    );

    // A key with one character changed, junk, and the empty string.
    let mut wrong = key.expose_key().to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    assert_eq!(s.authenticate(&wrong, at(0)).unwrap(), None);
    assert_eq!(s.authenticate("", at(0)).unwrap(), None);
    assert_eq!(s.authenticate("sie_short", at(0)).unwrap(), None);
    assert_eq!(s.authenticate(key.prefix().as_str(), at(0)).unwrap(), None);

    let acme = OrgName::parse("acme").unwrap();
    let acme_id = s.create_org(&acme, alice, at(0)).unwrap();
    assert_eq!(
        s.org_access(alice, &OrgName::parse("nope").unwrap())
            .unwrap(),
        OrgAccess::UnknownOrg
    );
    assert_eq!(s.org_access(mallory, &acme).unwrap(), OrgAccess::NotMember);
    assert_eq!(s.org_access(alice, &acme).unwrap(), OrgAccess::NotApproved);
    s.approve_org(&acme, &note("card on file"), at(1)).unwrap();
    assert_eq!(
        s.org_access(alice, &acme).unwrap(),
        OrgAccess::Allowed(acme_id)
    );
    assert_eq!(s.org_access(mallory, &acme).unwrap(), OrgAccess::NotMember);
    s.add_member(&acme, mallory, at(2)).unwrap();
    assert_eq!(
        s.org_access(mallory, &acme).unwrap(),
        OrgAccess::Allowed(acme_id)
    );
}

pub fn key_revoke(h: &dyn Harness) {
    let s = &*h.open();
    let alice = account(s, "alice");
    let k1 = s.create_api_key(alice, at(0)).unwrap();
    let k2 = s.create_api_key(alice, at(1)).unwrap();
    assert_ne!(k1.prefix(), k2.prefix());
    assert!(s.revoke_api_key(k1.prefix(), at(2)).unwrap());
    assert!(
        !s.revoke_api_key(k1.prefix(), at(3)).unwrap(),
        "revoking twice reports false"
    );
    assert!(!s
        .revoke_api_key(&KeyPrefix::parse("sie_aaaaaaaa").unwrap(), at(3))
        .unwrap());
    assert_eq!(s.authenticate(k1.expose_key(), at(0)).unwrap(), None);
    assert_eq!(s.authenticate(k2.expose_key(), at(0)).unwrap(), Some(alice));

    let keys = s.list_api_keys(alice).unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(&keys[0].prefix, k1.prefix());
    assert_eq!(keys[0].created_at, at(0));
    assert_eq!(keys[0].revoked_at, Some(at(2)));
    assert_eq!(&keys[1].prefix, k2.prefix());
    assert_eq!(keys[1].revoked_at, None);
    let bob = account(s, "bob");
    assert!(s.list_api_keys(bob).unwrap().is_empty());
}

pub fn worker_tokens(h: &dyn Harness) {
    let s = &*h.open();
    let node1 = WorkerName::parse("node-1").unwrap();
    let node2 = WorkerName::parse("node-2").unwrap();
    let t1 = s.create_worker_token(&node1, secs(0)).unwrap();
    let t2 = s.create_worker_token(&node2, secs(1)).unwrap();
    assert_ne!(t1.expose_token(), t2.expose_token());
    assert!(matches!(
        s.create_worker_token(&node1, secs(2)),
        Err(StoreError::WorkerExists(n)) if n == "node-1"
    ));
    assert_eq!(
        s.authenticate_worker(t1.expose_token()).unwrap(),
        Some(node1.clone())
    );
    assert_eq!(
        s.authenticate_worker(t2.expose_token()).unwrap(),
        Some(node2.clone())
    );
    assert_eq!(s.authenticate_worker("siew_nope").unwrap(), None);
    let mut forged = t1.expose_token().to_owned();
    forged.pop();
    forged.push(if t1.expose_token().ends_with('a') {
        'b'
    } else {
        'a'
    });
    assert_eq!(s.authenticate_worker(&forged).unwrap(), None);
    // An API key is not a worker token.
    let acct = account(s, "someone");
    let key = s.create_api_key(acct, secs(0)).unwrap();
    assert_eq!(s.authenticate_worker(key.expose_key()).unwrap(), None);

    // Revoking node-1 while it holds a task: refused at once, and its task is
    // leasable again at once rather than after its lease would have run out.
    let a = approved_org(s, "a");
    let id = enqueue(s, a, "{}", secs(10));
    let l = s.lease(&offer("node-1"), LEASE, secs(10)).unwrap().unwrap();
    assert_eq!(l.id, id);
    assert!(s.revoke_worker_token(&node1, secs(11)).unwrap());
    assert!(!s.revoke_worker_token(&node1, secs(12)).unwrap());
    assert!(!s
        .revoke_worker_token(&WorkerName::parse("never").unwrap(), secs(12))
        .unwrap());
    assert_eq!(s.authenticate_worker(t1.expose_token()).unwrap(), None);
    assert_eq!(
        s.authenticate_worker(t2.expose_token()).unwrap(),
        Some(node2)
    );
    let again = s.lease(&offer("node-2"), LEASE, secs(12)).unwrap().unwrap();
    assert_eq!((again.id, again.attempt), (id, 2));
    assert_eq!(
        s.heartbeat(&Fence::new("node-1", id, l.attempt), None, LEASE, secs(13))
            .unwrap(),
        Heartbeat::Lost
    );
    let list = s.list_worker_tokens().unwrap();
    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    assert_eq!(list[0].revoked_at, Some(secs(11)));
    assert_eq!((list[1].created_at, list[1].revoked_at), (secs(1), None));
}
