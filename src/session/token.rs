//! Session tokens: 256 bits from the OS CSPRNG, hex in the cookie, SHA-256 in the stores.

use rand::RngCore;

use crate::model::TokenHash;

/// The secret a client presents. Deliberately not `Debug`/`Display`, so it cannot end up in a
/// log line by accident.
pub struct SessionToken(String);

const TOKEN_BYTES: usize = 32;

impl SessionToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// Accepts a cookie value only if it has the exact shape of a token we issue, so junk
    /// never costs a store round trip.
    pub fn parse(value: &str) -> Option<Self> {
        let well_formed = value.len() == TOKEN_BYTES * 2
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        well_formed.then(|| Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_unique_well_formed_and_round_trip() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a.as_str(), b.as_str());
        let parsed = SessionToken::parse(a.as_str()).expect("own tokens parse");
        assert!(parsed.hash() == a.hash());
        assert_ne!(a.hash().to_hex(), a.as_str());
    }

    #[test]
    fn malformed_values_are_rejected() {
        assert!(SessionToken::parse("").is_none());
        assert!(SessionToken::parse("abc").is_none());
        assert!(SessionToken::parse(&"A".repeat(64)).is_none());
        assert!(SessionToken::parse(&"0".repeat(65)).is_none());
    }
}
