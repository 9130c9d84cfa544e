//! The one error type of the key layer.

use std::path::PathBuf;

use halite_proto::ProtoError;
use thiserror::Error;

/// Why a key, a signature or a sealed value could not be used.
///
/// Every variant names the file, id or epoch involved, so the log line (or
/// the CLI message) tells an operator what to look at.
#[derive(Debug, Error)]
pub enum PkiError {
    /// A new id's key was refused: `max` keys already wait for
    /// acceptance (`max_pending_keys`).
    #[error("{max} keys are pending already (max_pending_keys); a new id is refused until some are accepted or deleted")]
    TooManyPending {
        /// The cap.
        max: usize,
    },
    /// A key file or key directory could not be read, written or moved.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, `rename`, ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A key file exists but is not a key in the expected format.
    #[error("malformed key file {}: {reason}", path.display())]
    KeyFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `<stem>.pub` holds a different key than `<stem>.key`.
    #[error(
        "{} does not match the private key in {}; move the wrong file away",
        pub_path.display(),
        key_path.display()
    )]
    KeyMismatch {
        /// The private key file.
        key_path: PathBuf,
        /// The public key file that disagrees with it.
        pub_path: PathBuf,
    },
    /// Public key bytes of the wrong length (Ed25519 keys are 32 bytes).
    #[error("an Ed25519 public key is 32 bytes, got {len}")]
    KeyLength {
        /// Length received.
        len: usize,
    },
    /// A signature does not verify against the key it was checked with.
    #[error("bad signature from {signer}")]
    BadSignature {
        /// Who the signature claims to be from (sender id or key fingerprint).
        signer: String,
    },
    /// An id that cannot be used in a path (see `halite_proto::ident`).
    #[error("{reason}")]
    InvalidId {
        /// The refused id.
        id: String,
        /// The rule it broke.
        reason: ProtoError,
    },
    /// A message could not be encoded into an envelope.
    #[error("cannot encode message from {sender}: {reason}")]
    Encode {
        /// The would-be sender.
        sender: String,
        /// The encoder's error.
        reason: ProtoError,
    },
    /// A sealed publication that is not one (damaged or foreign bytes).
    #[error("malformed publication: {0}")]
    Publication(ProtoError),
    /// No key of any state exists for this minion id.
    #[error("no key for minion {id}")]
    NoSuchKey {
        /// The minion id.
        id: String,
    },
    /// A key operation does not apply to the key's current state.
    #[error("cannot {action} the key of {id}: {reason}")]
    State {
        /// The minion id.
        id: String,
        /// The operation refused (`accept`, `reject`).
        action: &'static str,
        /// Why (names the state the key is in).
        reason: &'static str,
    },
    /// Sealed data (or a grant) from another session key epoch.
    #[error("sealed with session key epoch {got}, this key is epoch {expected}")]
    SessionEpoch {
        /// Epoch of the key at hand.
        expected: u64,
        /// Epoch in the sealed value.
        got: u64,
    },
    /// AEAD authentication failed: wrong key, wrong context, or tampering.
    #[error("cannot open {what} (epoch {epoch}): authentication failed")]
    Unseal {
        /// What was being opened (`sealed data`, `session grant`).
        what: &'static str,
        /// Session key epoch involved.
        epoch: u64,
    },
    /// Bytes from the network of the wrong shape for their cryptographic use.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being read (`ephemeral public key`, `nonce`, ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random generator or a primitive failed (no detail is
    /// available from ring, by design).
    #[error("cryptographic operation failed: {what}")]
    Crypto {
        /// The operation that failed.
        what: &'static str,
    },
}
