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

/// A failed store call, as the API must report it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is down, slow or refusing: the client should retry later (503).
    #[error("{store} unavailable: {detail}")]
    Unavailable { store: &'static str, detail: String },
    /// A uniqueness rule was broken; the field that collided.
    #[error("duplicate {0}")]
    Conflict(&'static str),
    /// A bounded store holds as much as it may (the in-process session store's
    /// `storage.max_sessions`).
    #[error("{store} session store is full ({limit} live sessions)")]
    Full { store: &'static str, limit: usize },
}
