//! Session tokens: the user's [`SlotTag`] then 256 bits from the OS CSPRNG, all lower-case hex,
//! in the cookie; SHA-256 of the whole token in the stores.

use rand::RngCore;

use crate::model::{SessionKey, SlotTag, TokenHash};

/// The secret a client presents. Deliberately not `Debug`/`Display`, so it cannot end up in a
/// log line by accident.
pub struct SessionToken(String);

const RANDOM_BYTES: usize = 32;
const TOKEN_CHARS: usize = SlotTag::LEN + RANDOM_BYTES * 2;

/// 256 random bits as 64 lower-case hex digits (also the CSRF double-submit token).
pub fn random_secret() -> String {
    let mut bytes = [0u8; RANDOM_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `value` has the shape [`random_secret`] gives.
pub fn is_random_secret(value: &str) -> bool {
    value.len() == RANDOM_BYTES * 2 && is_lower_hex(value)
}

fn is_lower_hex(value: &str) -> bool {
    value
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl SessionToken {
    /// A fresh token for a session of the user whose slot tag this is.
    pub fn generate(tag: SlotTag) -> Self {
        Self(format!("{}{}", tag.as_str(), random_secret()))
    }

    /// Accepts a cookie value only if it has the exact shape of a token we issue, so junk
    /// never costs a store round trip. (Tokens issued before slot tags existed, 64 hex digits,
    /// no longer parse: those sessions ended with the upgrade.)
    pub fn parse(value: &str) -> Option<Self> {
        let well_formed = value.len() == TOKEN_CHARS && is_lower_hex(value);
        well_formed.then(|| Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.as_bytes())
    }

    /// Where the stores keep this token's session.
    pub fn key(&self) -> SessionKey {
        let tag = SlotTag::parse(self.0.get(..SlotTag::LEN).unwrap_or(""))
            .unwrap_or_else(|| SlotTag::of_user(uuid::Uuid::nil()));
        SessionKey {
            tag,
            hash: self.hash(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_well_formed_and_round_trip() {
        let user = uuid::Uuid::new_v4();
        let a = SessionToken::generate(SlotTag::of_user(user));
        let b = SessionToken::generate(SlotTag::of_user(user));
        assert_ne!(a.as_str(), b.as_str());
        let parsed = SessionToken::parse(a.as_str()).expect("own tokens parse");
        assert!(parsed.hash() == a.hash());
        assert_eq!(parsed.key().tag, SlotTag::of_user(user));
        assert_ne!(a.hash().to_hex(), a.as_str());
    }

    #[test]
    fn malformed_values_are_rejected() {
        assert!(SessionToken::parse("").is_none());
        assert!(SessionToken::parse("abc").is_none());
        assert!(SessionToken::parse(&"A".repeat(TOKEN_CHARS)).is_none());
        assert!(SessionToken::parse(&"0".repeat(TOKEN_CHARS + 1)).is_none());
        // A token from before slot tags.
        assert!(SessionToken::parse(&"0".repeat(64)).is_none());
        assert!(is_random_secret(&random_secret()));
    }
}
