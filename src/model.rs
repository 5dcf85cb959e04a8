//! The vocabulary the session and record stores share, in a module neither owns, so neither
//! imports the other for it: the hash a session token is stored as, and how a store call fails.
//! Pure types, no I/O.

use sha2::{Digest, Sha256};

/// SHA-256 of a session token: the only form the stores ever see. Prints only a short prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &[u8]) -> TokenHash {
        TokenHash(Sha256::digest(token).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<TokenHash> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(TokenHash(bytes))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// The Redis Cluster hash tag every key of one user carries (4 hex digits of the SHA-256 of the
/// user id), so a user's sessions, session index and credential epoch share one hash slot and
/// one Lua script can change them together. A session token starts with its user's tag, so a
/// request finds its session's slot from the cookie alone. Not a secret, and not the user id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SlotTag([u8; SlotTag::LEN]);

impl SlotTag {
    pub const LEN: usize = 4;

    pub fn of_user(user_id: uuid::Uuid) -> SlotTag {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(user_id.as_bytes());
        let nibble = |i: usize| HEX[usize::from((digest[i / 2] >> (4 * (1 - i % 2))) & 0xf)];
        SlotTag([nibble(0), nibble(1), nibble(2), nibble(3)])
    }

    /// Four lower-case hex digits, or `None`.
    pub fn parse(text: &str) -> Option<SlotTag> {
        let bytes: [u8; SlotTag::LEN] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            .then_some(SlotTag(bytes))
    }

    /// Which of `buckets` buckets this tag falls in (spread evenly: the digits are a hash).
    pub fn bucket(&self, buckets: usize) -> usize {
        u32::from_be_bytes(self.0) as usize % buckets.max(1)
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from hex digits.
        std::str::from_utf8(&self.0).unwrap_or("0000")
    }
}

/// Where a session lives in a store: its user's slot tag and its token's hash.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SessionKey {
    pub tag: SlotTag,
    pub hash: TokenHash,
}

/// A failed store call, as the API must report it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is down, slow or refusing: the client should retry later (503).
    #[error("{store} unavailable: {detail}")]
    Unavailable { store: &'static str, detail: String },
    /// A statement was sent and no answer came in time (503 like `Unavailable`). It may still
    /// be applied, so a change that is not idempotent must not be sent again.
    #[error("{store} unavailable: {detail}")]
    NoAnswer { store: &'static str, detail: String },
    /// A uniqueness rule was broken; the field that collided.
    #[error("duplicate {0}")]
    Conflict(&'static str),
    /// A bounded store holds as much as it may (the in-process session store's
    /// `storage.max_sessions`).
    #[error("{store} session store is full ({limit} live sessions)")]
    Full { store: &'static str, limit: usize },
}
