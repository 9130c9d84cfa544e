//! The one error type of the wire layer.

use thiserror::Error;

/// Why bytes from a socket or a field from a user could not be accepted.
///
/// Every variant names what was wrong, so the log line written when a
/// message is dropped tells an operator which peer sent what.
#[derive(Debug, Error)]
pub enum ProtoError {
    /// The bytes are not a msgpack envelope or message of the expected shape.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded (`envelope`, `job`, ...).
        what: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// The envelope was made by a peer speaking another protocol version.
    #[error("unsupported protocol version {got} (this build speaks {supported})")]
    Version {
        /// Version found in the envelope.
        got: u8,
        /// Version this build speaks.
        supported: u8,
    },
    /// The envelope's kind is not the one the receiver asked to open.
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        /// Kind the caller asked for.
        expected: crate::Kind,
        /// Kind in the envelope.
        got: crate::Kind,
    },
    /// A message could not be encoded (only for values serde cannot map).
    #[error("cannot encode {what}: {reason}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's message.
        reason: String,
    },
    /// An id, jid or name does not match its strict pattern.
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        /// Which field (`minion id`, `jid`, `function name`).
        what: &'static str,
        /// The offending value, truncated for logs.
        value: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}
