//! Domain newtypes: values parsed once at the edge and impossible to build invalid.
//!
//! Each type has private fields and a `parse` that returns [`InvalidValue`]
//! naming the value and what is accepted (zero2prod's `SubscriberName`), so the
//! store's methods can take them without re-checking, and an error a user reads
//! says what to type instead.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use uuid::Uuid;

/// A value that failed to parse into one of the domain types.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {accepted}")]
pub struct InvalidValue {
    /// What kind of value it was ("organization name", "task id", ...).
    pub what: &'static str,
    /// The value as given (never a secret: API keys are not parsed through here).
    pub value: String,
    /// What would have been accepted.
    pub accepted: &'static str,
}

impl InvalidValue {
    fn new(what: &'static str, value: &str, accepted: &'static str) -> Self {
        // Cap the echoed value so a megabyte of garbage does not end up in a log line.
        let value: String = value.chars().take(80).collect();
        Self {
            what,
            value,
            accepted,
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

const NAME_RULE: &str = "use 1 to 64 characters of a-z, 0-9, '-' and '_'";

fn parse_name(what: &'static str, s: &str) -> Result<String, InvalidValue> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(is_name_char) {
        return Err(InvalidValue::new(what, s, NAME_RULE));
    }
    Ok(s.to_owned())
}

/// An organization's name as it appears in the URL: 1-64 of `[a-z0-9-_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_name("organization name", s).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An account's name (the portal's user): 1-64 of `[a-z0-9-_]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_name("account name", s).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A worker token's name (`sie admin worker-token create NAME`): 1-64 of
/// `[a-z0-9-_]`. It is also the worker's identity in leases: every write a
/// worker makes is fenced on the name its token carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerName(String);

impl WorkerName {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        parse_name("worker name", s).map(Self)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A task's id: a random (version 4) UUID, the SIE `requestId`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A fresh random id from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        crate::keys::fill_random(&mut bytes);
        Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }

    /// Accepts the one spelling ids are given out in: a version-4 UUID, lowercase and
    /// hyphenated. Other spellings of the same UUID (uppercase, braces, no hyphens,
    /// `urn:uuid:`) are refused, so an id has one form in URLs, logs and caches; another
    /// version is a typo or a probe.
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const RULE: &str = "a task id is a version-4 UUID in lowercase with hyphens, such as \
                            1b4e28ba-2fa1-41d2-883f-0016d3cca427";
        let refuse = || InvalidValue::new("task id", s, RULE);
        let uuid = Uuid::try_parse(s).map_err(|_| refuse())?;
        let mut canonical = [0u8; uuid::fmt::Hyphenated::LENGTH];
        if uuid.get_version_num() != 4
            || uuid.hyphenated().encode_lower(&mut canonical).as_bytes() != s.as_bytes()
        {
            return Err(refuse());
        }
        Ok(Self(uuid))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hyphenated lowercase: the form SIE clients see and the form stored.
        write!(f, "{}", self.0.hyphenated())
    }
}

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i64);

        impl $name {
            /// Parses the decimal form that [`Display`](fmt::Display) prints (a positive integer).
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                match s.parse::<i64>() {
                    Ok(n) if n > 0 => Ok(Self(n)),
                    _ => Err(InvalidValue::new($what, s, "use a positive integer, as `sie admin` prints it")),
                }
            }
            /// Store implementations build ids from their own rows.
            pub(crate) fn from_row(n: i64) -> Self {
                Self(n)
            }
            pub fn get(&self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

row_id!(
    /// An account's id, assigned by the store.
    AccountId,
    "account id"
);
row_id!(
    /// An organization's id, assigned by the store.
    OrgId,
    "organization id"
);

/// The alphabet of API key characters: lowercase base32 (no 0/1/8/9, so no
/// o-vs-0 or l-vs-1 confusion when a prefix is read aloud).
pub(crate) const KEY_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Length of the visible part of an API key after `sie_`.
pub(crate) const KEY_PREFIX_LEN: usize = 8;

/// The visible, non-secret part of an API key: 8 characters of lowercase
/// base32. Printed as `sie_xxxxxxxx`; `parse` accepts it with or without `sie_`,
/// so an operator can paste the start of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let body = s.strip_prefix("sie_").unwrap_or(s);
        if body.len() != KEY_PREFIX_LEN || !body.bytes().all(|b| KEY_ALPHABET.contains(&b)) {
            return Err(InvalidValue::new(
                "API key prefix",
                s,
                "use the 8 characters after `sie_` (a-z, 2-7), as `sie admin key list` prints them",
            ));
        }
        Ok(Self(body.to_owned()))
    }
    /// The 8 characters without `sie_`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sie_{}", self.0)
    }
}

/// A client's `Idempotency-Key`: 1-255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(InvalidValue::new(
                "Idempotency-Key",
                s,
                "use 1 to 255 printable ASCII characters, e.g. a UUID",
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The longest [`FailureCode`].
pub const FAILURE_CODE_MAX: usize = 64;

const FAILURE_CODE_RULE: &str = "use 1 to 64 characters of a-z, 0-9 and '_'";

const fn is_failure_code(s: &str) -> bool {
    let bytes = s.as_bytes();
    if bytes.is_empty() || bytes.len() > FAILURE_CODE_MAX {
        return false;
    }
    // A `while` loop, not an iterator: this also runs at compile time (`from_static`).
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return false;
        }
        i += 1;
    }
    true
}

/// Why a task failed, as clients read it in `error.code` (`inference_failed`,
/// `out_of_memory`, [`codes::CANCELLED`](crate::codes::CANCELLED)): 1 to 64 characters of
/// `[a-z0-9_]`, so a client can match on it and a log line cannot be forged through it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FailureCode(Cow<'static, str>);

impl FailureCode {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if !is_failure_code(s) {
            return Err(InvalidValue::new("failure code", s, FAILURE_CODE_RULE));
        }
        Ok(Self(Cow::Owned(s.to_owned())))
    }

    /// A code written into the program. Checked by the same rule; bound to a `const`, a
    /// bad one fails the build instead of a request.
    pub const fn from_static(s: &'static str) -> Self {
        assert!(
            is_failure_code(s),
            "a failure code is 1 to 64 characters of a-z, 0-9 and '_'"
        );
        Self(Cow::Borrowed(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which page of a listing to read: `page` counts from 1 and holds up to
/// [`PageRequest::MAX_SIZE`] items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: u32,
    size: u32,
}

impl PageRequest {
    /// The most items one page holds.
    pub const MAX_SIZE: u32 = 1000;

    pub fn new(page: u32, size: u32) -> Result<Self, InvalidValue> {
        if page == 0 {
            return Err(InvalidValue::new("page", "0", "pages count from 1"));
        }
        if !(1..=Self::MAX_SIZE).contains(&size) {
            return Err(InvalidValue::new(
                "page_size",
                &size.to_string(),
                "use 1 to 1000",
            ));
        }
        Ok(Self { page, size })
    }

    pub fn page(&self) -> u32 {
        self.page
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// How many items the pages before this one hold.
    pub fn offset(&self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.size)
    }
}

/// What an organization is billed by (an invoice address, a contract number), recorded
/// when it is approved: anything but blank, kept as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingNote(String);

impl BillingNote {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        if s.trim().is_empty() {
            return Err(InvalidValue::new(
                "billing information",
                s,
                "give what the organization is billed by (e.g. an invoice address or contract number)",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address a portal account signs in with: trimmed and lower-cased (so one
/// address is one account however it is typed), at most 254 bytes, one `@` between a
/// non-empty local part and a domain with a dot, no spaces or control characters. Whether
/// mail reaches it is not checked: no mail server is assumed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        const RULE: &str = "an email address like name@example.com (at most 254 characters)";
        let e = s.trim().to_lowercase();
        let ok = e.len() <= 254
            && !e.chars().any(|c| c.is_whitespace() || c.is_control())
            && match e.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if !ok {
            return Err(InvalidValue::new("email", s, RULE));
        }
        Ok(Self(e))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A line of billing information: not blank, at most `max` bytes, no control characters
/// but line breaks (an address has several lines).
fn billing_text(what: &'static str, s: &str, max: usize) -> Result<String, InvalidValue> {
    let t = s.trim();
    let controls = t.chars().any(|c| c.is_control() && c != '\n' && c != '\r');
    if t.is_empty() || t.len() > max || controls {
        return Err(InvalidValue::new(
            what,
            s,
            "non-blank text of reasonable length, without control characters",
        ));
    }
    Ok(t.to_owned())
}

/// What the portal records when an organization adds billing information: who pays,
/// where, and optionally a tax id. Each field checked once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingInfo {
    name: String,
    email: Email,
    address: String,
    country: String,
    tax_id: Option<String>,
}

impl BillingInfo {
    /// `country` is an ISO 3166-1 alpha-2 code (two letters, any case; stored upper-case).
    pub fn parse(
        name: &str,
        email: &str,
        address: &str,
        country: &str,
        tax_id: Option<&str>,
    ) -> Result<Self, InvalidValue> {
        let c = country.trim().to_ascii_uppercase();
        if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(InvalidValue::new(
                "country",
                country,
                "a two-letter ISO 3166-1 country code, e.g. DE or US",
            ));
        }
        let tax_id = match tax_id.map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(billing_text("tax id", t, 64)?),
        };
        Ok(Self {
            name: billing_text("billing name", name, 200)?,
            email: Email::parse(email)?,
            address: billing_text("address", address, 500)?,
            country: c,
            tax_id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn email(&self) -> &Email {
        &self.email
    }
    pub fn address(&self) -> &str {
        &self.address
    }
    pub fn country(&self) -> &str {
        &self.country
    }
    pub fn tax_id(&self) -> Option<&str> {
        self.tax_id.as_deref()
    }

    /// The one-line note approval records (`sie admin org list` shows it).
    pub fn note(&self) -> BillingNote {
        BillingNote(format!(
            "{} <{}>, {}",
            self.name,
            self.email.as_str(),
            self.country
        ))
    }
}

/// A point in time: milliseconds since the Unix epoch, UTC.
///
/// Every store method takes the time as an argument instead of reading a
/// clock, so tests can step time across lease expiry and result TTLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }
    /// The system clock, for callers outside tests.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
    pub fn as_millis(&self) -> i64 {
        self.0
    }
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_ms(d)))
    }
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_ms(d)))
    }
    /// The UTC day this instant falls on.
    pub fn day(&self) -> UtcDay {
        UtcDay(self.0.div_euclid(86_400_000))
    }
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A calendar day in UTC, printed and parsed as `YYYY-MM-DD`.
///
/// Stored as days since 1970-01-01, which sorts and ranges like the date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UtcDay(i64);

impl UtcDay {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue::new("day", s, "use a date as YYYY-MM-DD, e.g. 2026-01-31");
        let parts: Vec<&str> = s.split('-').collect();
        let [y, m, d] = parts.as_slice() else {
            return Err(bad());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(bad());
        }
        let (y, m, d): (i64, u32, u32) = (
            y.parse().map_err(|_| bad())?,
            m.parse().map_err(|_| bad())?,
            d.parse().map_err(|_| bad())?,
        );
        if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
            return Err(bad());
        }
        Ok(Self(days_from_civil(y, m, d)))
    }
    pub fn from_days_since_epoch(days: i64) -> Self {
        Self(days)
    }
    pub fn days_since_epoch(&self) -> i64 {
        self.0
    }
    /// Midnight at the start of this day.
    pub fn start(&self) -> Timestamp {
        Timestamp(self.0 * 86_400_000)
    }
}

impl fmt::Display for UtcDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.0);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's `days_from_civil` / `civil_from_days`: exact proleptic
// Gregorian arithmetic, small enough not to need a date crate.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(OrgName::parse("acme-corp_1").is_ok());
        assert!(OrgName::parse("").is_err());
        assert!(OrgName::parse("Acme").is_err());
        assert!(OrgName::parse(&"a".repeat(65)).is_err());
        let err = OrgName::parse("a b").unwrap_err().to_string();
        assert!(err.contains("a-z, 0-9"), "{err}");
    }

    #[test]
    fn emails_are_one_per_address() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@c.de",
            "a@b@c.de",
            "alice@.com",
            "alice@example.",
            "a\u{0}@c.de",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn billing_information_is_checked_field_by_field() {
        let b = BillingInfo::parse(
            " ACME ",
            "b@acme.example",
            "1 Main St\nTown",
            "de",
            Some(""),
        )
        .unwrap();
        assert_eq!((b.name(), b.country(), b.tax_id()), ("ACME", "DE", None));
        assert!(b.note().as_str().contains("b@acme.example"));
        let err = |r: Result<BillingInfo, InvalidValue>| r.unwrap_err().what;
        assert_eq!(
            err(BillingInfo::parse("", "b@a.de", "x", "DE", None)),
            "billing name"
        );
        assert_eq!(
            err(BillingInfo::parse("A", "nope", "x", "DE", None)),
            "email"
        );
        assert_eq!(
            err(BillingInfo::parse("A", "b@a.de", " ", "DE", None)),
            "address"
        );
        assert_eq!(
            err(BillingInfo::parse("A", "b@a.de", "x", "Germany", None)),
            "country"
        );
        assert_eq!(
            err(BillingInfo::parse("A", "b@a.de", "x", "D1", None)),
            "country"
        );
        let long = "x".repeat(65);
        assert_eq!(
            err(BillingInfo::parse("A", "b@a.de", "x", "DE", Some(&long))),
            "tax id"
        );
    }

    #[test]
    fn task_ids() {
        let id = TaskId::random();
        assert_eq!(TaskId::parse(&id.to_string()).unwrap(), id);
        assert!(TaskId::parse("not-a-uuid").is_err());
        // Only the canonical spelling: the same UUID written otherwise is not an id.
        let canonical = id.to_string();
        for other in [
            canonical.to_uppercase(),
            format!("{{{canonical}}}"),
            canonical.replace('-', ""),
            format!("urn:uuid:{canonical}"),
        ] {
            let e = TaskId::parse(&other).unwrap_err();
            assert!(e.to_string().contains("lowercase with hyphens"), "{e}");
        }
        let long = "x".repeat(5000);
        assert!(TaskId::parse(&long).unwrap_err().to_string().len() < 300);
        // Version 1 UUID.
        assert!(TaskId::parse("c232ab00-9414-11ec-b3c8-9f68deced846").is_err());
    }

    #[test]
    fn days_round_trip() {
        for s in ["1970-01-01", "2000-02-29", "2026-11-26", "1969-12-31"] {
            assert_eq!(UtcDay::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(UtcDay::parse("1970-01-02").unwrap().days_since_epoch(), 1);
        assert!(UtcDay::parse("2026-02-29").is_err());
        assert!(UtcDay::parse("2026-1-01").is_err());
        assert_eq!(
            Timestamp::from_millis(86_400_000 - 1)
                .day()
                .days_since_epoch(),
            0
        );
        assert_eq!(Timestamp::from_millis(-1).day().days_since_epoch(), -1);
    }

    #[test]
    fn prefixes() {
        let p = KeyPrefix::parse("sie_abcd2345").unwrap();
        assert_eq!(p.as_str(), "abcd2345");
        assert_eq!(p.to_string(), "sie_abcd2345");
        assert_eq!(KeyPrefix::parse("abcd2345").unwrap(), p);
        assert!(KeyPrefix::parse("sie_abcd0000").is_err());
    }

    #[test]
    fn failure_codes() {
        assert_eq!(
            FailureCode::parse("out_of_memory").unwrap().as_str(),
            "out_of_memory"
        );
        assert_eq!(
            FailureCode::parse(&"a".repeat(64)).unwrap().as_str().len(),
            64
        );
        for bad in ["", "Boom", "out of memory", "x\ny", &"a".repeat(65)] {
            let err = FailureCode::parse(bad).unwrap_err();
            assert_eq!(err.accepted, "use 1 to 64 characters of a-z, 0-9 and '_'");
        }
        const LOST: FailureCode = FailureCode::from_static("worker_lost");
        assert_eq!(LOST, FailureCode::parse("worker_lost").unwrap());
    }

    #[test]
    #[should_panic(expected = "a failure code is 1 to 64 characters")]
    fn a_bad_static_failure_code_panics() {
        let _ = FailureCode::from_static(std::hint::black_box("Not a code"));
    }

    #[test]
    fn pages() {
        let p = PageRequest::new(3, 20).unwrap();
        assert_eq!((p.page(), p.size(), p.offset()), (3, 20, 40));
        assert_eq!(
            PageRequest::new(u32::MAX, 1000).unwrap().offset(),
            (u32::MAX as i64 - 1) * 1000
        );
        let err = PageRequest::new(0, 10).unwrap_err().to_string();
        assert!(err.contains("pages count from 1"), "{err}");
        for size in [0, 1001] {
            let err = PageRequest::new(1, size).unwrap_err().to_string();
            assert!(
                err.contains(&format!("page_size \"{size}\"")) && err.contains("1 to 1000"),
                "{err}"
            );
        }
    }

    #[test]
    fn billing_notes() {
        assert_eq!(
            BillingNote::parse(" PO 1234 ").unwrap().as_str(),
            " PO 1234 "
        );
        for blank in ["", "  ", "\t\n"] {
            let err = BillingNote::parse(blank).unwrap_err().to_string();
            assert!(err.contains("what the organization is billed by"), "{err}");
        }
    }
}
