//! Webhook signatures the Standard Webhooks way (standardwebhooks.com), so receivers can
//! verify them with that project's libraries or a few lines of their own.
//!
//! The secret is `whsec_` and the base64 of 32 random bytes; the signing key is those
//! bytes. A message is signed as HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}`
//! and the `webhook-signature` header carries `v1,` and the base64 of that MAC.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret.
const SECRET_BYTES: usize = 32;

/// A signing secret, as stored and as shown to the operator.
pub struct Secret {
    key: Vec<u8>,
}

impl Secret {
    /// A new secret from the OS's random source, in its `whsec_` text form.
    pub fn generate() -> Result<String, String> {
        let mut key = [0u8; SECRET_BYTES];
        getrandom::fill(&mut key).map_err(|e| format!("no randomness from the OS: {e}"))?;
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// Reads a secret's text form (`whsec_` and base64; a bare base64 key is taken too, as
    /// the Standard Webhooks libraries do).
    pub fn parse(text: &str) -> Result<Secret, String> {
        let encoded = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| format!("a webhook secret is `{SECRET_PREFIX}` and base64 ({e})"))?;
        if key.is_empty() {
            return Err("a webhook secret must not be empty".into());
        }
        Ok(Secret { key })
    }

    /// The `webhook-signature` header's value for the message `id` sent at `timestamp`
    /// (seconds since the epoch) with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The example of the Standard Webhooks specification (its README's "Signature
        // scheme" and the reference libraries' tests).
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = Secret::generate().unwrap();
        let b = Secret::generate().unwrap();
        assert!(a.starts_with(SECRET_PREFIX) && a != b);
        assert_eq!(Secret::parse(&a).unwrap().key.len(), SECRET_BYTES);
        assert!(Secret::parse("whsec_not base64!").is_err());
    }
}
