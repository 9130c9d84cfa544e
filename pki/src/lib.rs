//! Keys, signatures, key states and session keys.
//!
//! Only this crate touches private keys: key generation and files
//! ([`KeyPair`], [`PublicKey`]), signing and verifying the envelopes of
//! `halite-proto` ([`KeyPair::sign_message`], [`verify_envelope`]), the
//! master's minion key states in Salt's directory layout ([`KeyStore`]),
//! and the session key that seals secret job arguments ([`SessionKey`],
//! handed to minions over an ephemeral X25519 exchange: [`Ephemeral`],
//! [`grant`], [`transcript`]). Other crates hold keys only through these
//! types, whose `Debug` never prints secret material, and secrets in
//! configuration through [`Secret`].
//!
//! All cryptography is `ring` 0.17: Ed25519 signatures, X25519 +
//! HKDF-SHA256 key agreement, ChaCha20-Poly1305 sealing.
#![deny(missing_docs)]

pub mod error;
mod fsio;
pub mod keys;
pub mod keystore;
pub mod link_key;
mod pem;
pub mod secret;
pub mod session;
pub mod tls;
pub mod users;

pub use error::PkiError;
pub use fsio::write_atomic;
pub use keys::{normalize_fingerprint, verify_envelope, verify_vouched_job, KeyPair, PublicKey};
pub use keystore::{KeyEntry, KeyStore};
pub use link_key::LinkKey;
pub use secret::Secret;
pub use session::{
    grant, open_for_minion, open_publication, seal_for_minion, seal_publication, transcript,
    Ephemeral, SessionKey,
};
pub use tls::install_tls_provider;

/// SHA-256 of `bytes`, lower-case hex: how Lua module versions are named
/// and checked on both sides.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
