//! API key material: generation from the OS CSPRNG and the hash that is stored.
//!
//! A key reads `sie_<prefix>_<secret>`: an 8-character visible prefix (40
//! bits, the handle for listing and revoking) and a 32-character secret (160
//! bits). Both use lowercase base32, one character per random byte masked to 5
//! bits, which is unbiased because 256 is a multiple of 32. Only the SHA-256 of
//! the whole key is kept; a fast hash is enough because the key is random with
//! far more entropy than any guesser can search, unlike a password.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::domain::{KeyPrefix, KEY_ALPHABET, KEY_PREFIX_LEN};
use crate::error::{Result, StoreError};

const SECRET_LEN: usize = 32;

/// Fills `buf` from the operating system's CSPRNG.
///
/// There is no sensible fallback when the OS cannot give randomness (keys and
/// ids would be guessable), so this panics with the reason.
pub(crate) fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

fn random_chars(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    bytes
        .iter()
        .map(|b| KEY_ALPHABET[usize::from(b & 31)] as char)
        .collect()
}

/// A freshly made key: the only moment its secret exists outside the client.
///
/// `Debug` prints the prefix only, so the key cannot leak through a `{:?}` in a log.
pub struct NewApiKey {
    prefix: KeyPrefix,
    key: String,
}

impl NewApiKey {
    pub(crate) fn generate() -> Self {
        let prefix_chars = random_chars(KEY_PREFIX_LEN);
        let prefix =
            KeyPrefix::parse(&prefix_chars).expect("generated prefix uses the key alphabet");
        let key = format!("sie_{prefix_chars}_{}", random_chars(SECRET_LEN));
        Self { prefix, key }
    }
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }
    /// The whole key, to be shown to its owner once.
    pub fn expose_key(&self) -> &str {
        &self.key
    }
    pub(crate) fn hash(&self) -> String {
        hash_key(&self.key)
    }
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("prefix", &self.prefix)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Makes keys until `store` keeps one (answers `true`; `false` when the prefix was
/// taken). 40 bits of prefix collide rarely, but they can; eight in a row means the
/// random source is broken.
pub(crate) fn draw_api_key(mut store: impl FnMut(&NewApiKey) -> Result<bool>) -> Result<NewApiKey> {
    for _ in 0..8 {
        let key = NewApiKey::generate();
        if store(&key)? {
            return Ok(key);
        }
    }
    Err(StoreError::Corrupt(
        "eight fresh API key prefixes in a row were already taken; the random source is broken"
            .into(),
    ))
}

/// A freshly made worker token, `siew_` and 32 characters (160 bits) of
/// lowercase base32: the only moment its secret exists outside the worker.
/// Stored, like API keys, only as its SHA-256; its handle is the worker's name.
pub struct NewWorkerToken {
    token: String,
}

const WORKER_TOKEN_SCHEME: &str = "siew_";

impl NewWorkerToken {
    pub(crate) fn generate() -> Self {
        Self {
            token: format!("{WORKER_TOKEN_SCHEME}{}", random_chars(SECRET_LEN)),
        }
    }
    /// The whole token, to be given to the worker once.
    pub fn expose_token(&self) -> &str {
        &self.token
    }
    pub(crate) fn hash(&self) -> String {
        hash_key(&self.token)
    }
}

impl fmt::Debug for NewWorkerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewWorkerToken(<redacted>)")
    }
}

/// Shape check for a presented worker token, as [`looks_like_key`] for keys.
pub(crate) fn looks_like_worker_token(presented: &str) -> bool {
    presented.len() == WORKER_TOKEN_SCHEME.len() + SECRET_LEN
        && presented.starts_with(WORKER_TOKEN_SCHEME)
}

/// The stored form of a key: lowercase hex SHA-256 of the exact string.
pub(crate) fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Cheap shape check before touching the database, so obvious junk in the
/// header costs no query.
pub(crate) fn looks_like_key(presented: &str) -> bool {
    presented.len() == 4 + KEY_PREFIX_LEN + 1 + SECRET_LEN && presented.starts_with("sie_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let k = NewApiKey::generate();
        assert!(looks_like_key(k.expose_key()));
        assert!(k.expose_key().starts_with(&k.prefix().to_string()));
        assert!(!format!("{k:?}").contains(&k.expose_key()[13..]));
        assert_ne!(k.expose_key(), NewApiKey::generate().expose_key());
        assert_eq!(k.hash().len(), 64);
        let t = NewWorkerToken::generate();
        assert!(looks_like_worker_token(t.expose_token()));
        assert!(!looks_like_key(t.expose_token()));
        assert!(!format!("{t:?}").contains(&t.expose_token()[5..]));
    }

    #[test]
    fn a_taken_prefix_is_drawn_again_but_not_for_ever() {
        let mut offered = 0;
        let key = draw_api_key(|_| {
            offered += 1;
            Ok(offered == 3)
        })
        .unwrap();
        assert_eq!(offered, 3);
        assert!(looks_like_key(key.expose_key()));
        let mut offered = 0;
        let err = draw_api_key(|_| {
            offered += 1;
            Ok(false)
        })
        .unwrap_err();
        assert_eq!(offered, 8);
        assert!(err.to_string().contains("random source"), "{err}");
    }
}
