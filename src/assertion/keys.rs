//! Signing keys of the identity assertion: generating them (ring), reading them from a PEM file
//! (`assertion.key_file`) or from their stored PKCS#8 form, naming them (`kid`) and publishing
//! their public halves as JWKs.
//!
//! A private key never leaves this module except as the PKCS#8 bytes the record store keeps:
//! [`SigningKey`] is deliberately neither `Debug` nor `Display`, and no error message quotes a
//! key's bytes.
//!
//! `kid` is the first 16 hex digits of the SHA-256 of the public key (Ed25519: its 32 bytes;
//! P-256: the 65-byte uncompressed point), so every gateway holding the same key names it the
//! same way, whether it came from the database or from a file.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use rustls_pemfile::Item;
use sha2::Digest as _;

pub use crate::config::AssertionAlgorithm;

/// A private key the gateway signs assertions with, and what is published of it.
pub struct SigningKey {
    kid: String,
    algorithm: AssertionAlgorithm,
    /// PKCS#8 DER: what the record store keeps.
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
    public: PublicKey,
}

/// The public half of a signing key, as `/auth/.well-known/jwks.json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub algorithm: AssertionAlgorithm,
    /// Ed25519: 32 bytes; P-256: the uncompressed point (0x04 || x || y).
    pub bytes: Vec<u8>,
}

impl SigningKey {
    /// A new random key.
    pub fn generate(algorithm: AssertionAlgorithm) -> Result<SigningKey, String> {
        let random = SystemRandom::new();
        let document = match algorithm {
            AssertionAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&random),
            AssertionAlgorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &random)
            }
        }
        .map_err(|_| "cannot generate a signing key (no system randomness?)".to_string())?;
        SigningKey::from_pkcs8(algorithm, document.as_ref())
    }

    /// A key from its PKCS#8 DER form (as stored), checked to be a key of `algorithm`.
    pub fn from_pkcs8(algorithm: AssertionAlgorithm, pkcs8: &[u8]) -> Result<SigningKey, String> {
        let public = match algorithm {
            AssertionAlgorithm::EdDsa => Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                .map_err(|e| format!("not an Ed25519 PKCS#8 private key ({e})"))?
                .public_key()
                .as_ref()
                .to_vec(),
            AssertionAlgorithm::Es256 => EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                pkcs8,
                &SystemRandom::new(),
            )
            .map_err(|e| format!("not a P-256 (ES256) private key ({e})"))?
            .public_key()
            .as_ref()
            .to_vec(),
        };
        let encoding = match algorithm {
            AssertionAlgorithm::EdDsa => EncodingKey::from_ed_der(pkcs8),
            AssertionAlgorithm::Es256 => EncodingKey::from_ec_der(pkcs8),
        };
        let kid = key_id(&public);
        Ok(SigningKey {
            public: PublicKey {
                kid: kid.clone(),
                algorithm,
                bytes: public,
            },
            kid,
            algorithm,
            pkcs8: pkcs8.to_vec(),
            encoding,
        })
    }

    /// A key from a PEM file: PKCS#8 (`BEGIN PRIVATE KEY`, Ed25519 or P-256) or SEC1
    /// (`BEGIN EC PRIVATE KEY`, P-256). The message names the file, never its content.
    pub fn from_pem_file(path: &Path, algorithm: AssertionAlgorithm) -> Result<SigningKey, String> {
        let text =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        // The first private key in the file; certificates beside it are ignored.
        let first_key = rustls_pemfile::read_all(&mut text.as_slice())
            .map_while(Result::ok)
            .find(|item| {
                matches!(
                    item,
                    Item::Pkcs8Key(_) | Item::Sec1Key(_) | Item::Pkcs1Key(_)
                )
            });
        let der = match first_key {
            Some(Item::Pkcs8Key(key)) => key.secret_pkcs8_der().to_vec(),
            Some(Item::Sec1Key(key)) if algorithm == AssertionAlgorithm::Es256 => {
                sec1_p256_to_pkcs8(key.secret_sec1_der())
            }
            Some(Item::Sec1Key(_)) => {
                return Err(format!(
                    "{}: an EC (SEC1) key, but assertion.algorithm is \"{}\"; use an Ed25519 \
                     PKCS#8 key or set algorithm = \"ES256\"",
                    path.display(),
                    algorithm.name()
                ))
            }
            Some(Item::Pkcs1Key(_)) => {
                return Err(format!(
                    "{}: an RSA key; use an Ed25519 (EdDSA) or P-256 (ES256) private key",
                    path.display()
                ))
            }
            _ => {
                return Err(format!(
                    "{}: no PEM private key in it (BEGIN PRIVATE KEY or BEGIN EC PRIVATE KEY)",
                    path.display()
                ))
            }
        };
        SigningKey::from_pkcs8(algorithm, &der).map_err(|message| {
            format!(
                "{}: {message}; assertion.algorithm is \"{}\"",
                path.display(),
                algorithm.name()
            )
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub(super) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
}

impl AssertionAlgorithm {
    /// The JOSE name (`alg`), as the config file spells it.
    pub fn name(self) -> &'static str {
        match self {
            AssertionAlgorithm::EdDsa => "EdDSA",
            AssertionAlgorithm::Es256 => "ES256",
        }
    }

    pub fn from_name(name: &str) -> Option<AssertionAlgorithm> {
        match name {
            "EdDSA" => Some(AssertionAlgorithm::EdDsa),
            "ES256" => Some(AssertionAlgorithm::Es256),
            _ => None,
        }
    }

    pub(super) fn jose(self) -> Algorithm {
        match self {
            AssertionAlgorithm::EdDsa => Algorithm::EdDSA,
            AssertionAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl PublicKey {
    /// The JWK (RFC 7517; OKP keys: RFC 8037).
    pub fn jwk(&self) -> serde_json::Value {
        let encode = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        match self.algorithm {
            AssertionAlgorithm::EdDsa => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": encode(&self.bytes),
                "kid": self.kid,
                "alg": "EdDSA",
                "use": "sig",
            }),
            AssertionAlgorithm::Es256 => {
                // 0x04 || x (32 bytes) || y (32 bytes).
                let x = self.bytes.get(1..33).unwrap_or_default();
                let y = self.bytes.get(33..65).unwrap_or_default();
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": encode(x),
                    "y": encode(y),
                    "kid": self.kid,
                    "alg": "ES256",
                    "use": "sig",
                })
            }
        }
    }
}

/// First 16 hex digits of the SHA-256 of the public key bytes.
fn key_id(public: &[u8]) -> String {
    let digest = sha2::Sha256::digest(public);
    hex::encode(&digest[..8])
}

/// Wraps a SEC1 `ECPrivateKey` of a P-256 key in PKCS#8 (RFC 5208), the form ring reads.
fn sec1_p256_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier { id-ecPublicKey, prime256v1 }.
    const ALGORITHM: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];
    let mut body = vec![0x02, 0x01, 0x00]; // version 0
    body.extend_from_slice(ALGORITHM);
    body.extend(der_tlv(0x04, sec1));
    der_tlv(0x30, &body)
}

/// One DER tag-length-value.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes: Vec<u8> = length
            .to_be_bytes()
            .into_iter()
            .skip_while(|&byte| byte == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_pkcs8_with_the_same_kid() {
        for algorithm in [AssertionAlgorithm::EdDsa, AssertionAlgorithm::Es256] {
            let key = SigningKey::generate(algorithm).expect("generate");
            assert_eq!(key.kid().len(), 16);
            let again = SigningKey::from_pkcs8(algorithm, key.pkcs8()).expect("reload");
            assert_eq!(again.kid(), key.kid());
            assert_eq!(again.public(), key.public());
        }
        let ed = SigningKey::generate(AssertionAlgorithm::EdDsa).unwrap();
        assert!(SigningKey::from_pkcs8(AssertionAlgorithm::Es256, ed.pkcs8()).is_err());
    }

    #[test]
    fn jwks_carry_the_curve_coordinates() {
        let ec = SigningKey::generate(AssertionAlgorithm::Es256).unwrap();
        let jwk = ec.public().jwk();
        assert_eq!(jwk["kty"], "EC");
        assert_eq!(jwk["crv"], "P-256");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
        assert_eq!(jwk["y"].as_str().unwrap().len(), 43);
        let ed = SigningKey::generate(AssertionAlgorithm::EdDsa).unwrap();
        let jwk = ed.public().jwk();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["x"].as_str().unwrap().len(), 43);
        assert_eq!(jwk["kid"], ed.kid());
        assert_eq!(jwk["use"], "sig");
    }

    #[test]
    fn der_lengths_use_the_long_form_past_127_bytes() {
        assert_eq!(der_tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der_tlv(0x04, &[0; 200]);
        assert_eq!(&long[..3], &[0x04, 0x81, 200]);
        let longer = der_tlv(0x04, &[0; 300]);
        assert_eq!(&longer[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
