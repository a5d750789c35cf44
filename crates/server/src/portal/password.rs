//! Passwords: the policy a new one must meet, and argon2id hashing.
//!
//! At least 12 characters, not one of the passwords everybody tries first (a short list
//! kept beside this file, compared ignoring case), not one character repeated, and not the
//! account's own email. Hashes are PHC strings (`$argon2id$v=19$m=19456,t=2,p=1$...`) with
//! a 16-byte random salt, so the parameters travel with each hash and can be raised later.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// The shortest password accepted, in characters.
pub const MIN_LENGTH: usize = 12;
/// The longest, in bytes: hashing is deliberately slow, and grows with the input.
pub const MAX_BYTES: usize = 256;

const COMMON: &str = include_str!("common-passwords.txt");

/// Why `password` is refused for the account with `email`, if it is.
pub fn weakness(password: &str, email: &str) -> Option<String> {
    let chars = password.chars().count();
    if chars < MIN_LENGTH {
        return Some(format!(
            "Password: {chars} characters is too short; use at least {MIN_LENGTH}."
        ));
    }
    if password.len() > MAX_BYTES {
        return Some(format!("Password: at most {MAX_BYTES} bytes."));
    }
    let lower = password.to_lowercase();
    if COMMON.lines().any(|common| common == lower) {
        return Some("Password: this is one of the most common passwords; choose another.".into());
    }
    let mut distinct = password.chars().collect::<Vec<_>>();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Some("Password: use more than a few different characters.".into());
    }
    if lower == email.to_lowercase() {
        return Some("Password: it must not be your email address.".into());
    }
    None
}

/// An argon2id hash of `password` with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `stored` (a PHC string); a malformed one matches nothing.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash to verify against when the email is unknown, so that an unknown email takes as
/// long to refuse as a wrong password and timing reveals nothing.
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash("not a password anybody has").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_says_what_is_wrong() {
        let e = "alice@example.com";
        assert!(weakness("short", e).unwrap().contains("too short"));
        assert!(weakness("Password1234", e).unwrap().contains("common"));
        assert!(weakness("aaaaaaaaaaaaaa", e).is_some());
        assert!(weakness("Alice@Example.com", e).unwrap().contains("email"));
        assert_eq!(weakness("correct horse battery", e), None);
        assert!(weakness(&"x1".repeat(200), e).unwrap().contains("bytes"));
    }

    #[test]
    fn hashes_verify_only_their_password() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("x", "not a hash"));
        assert_ne!(h, hash("correct horse battery").unwrap(), "salted");
    }
}
