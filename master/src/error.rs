//! Why the master's centre refused or failed a request.
//!
//! The centre speaks in these; the HTTP adapter (`backend.rs`) is the one
//! place that turns them into statuses, so no domain code knows HTTP.

use halite_pki::PkiError;

use crate::store::StoreError;

/// A request the centre refused (the caller's doing) or could not serve
/// (the master's).
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The request itself is wrong: bad target, function, timeout or
    /// argument. Nothing was stored or published.
    #[error("{0}")]
    Invalid(String),
    /// Wrong user name or password.
    #[error("{0}")]
    BadCredentials(String),
    /// The user's grants do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// No such job, minion, app or key.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state (job done, minions down,
    /// published by another master).
    #[error("{0}")]
    Conflict(String),
    /// The store failed; the request may be retried.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys could not be read, written or used for signing.
    #[error(transparent)]
    Keys(#[from] PkiError),
    /// The users file cannot be read.
    #[error(transparent)]
    Users(#[from] halite_pki::users::UsersError),
    /// A file the master reads per request (users, Lua modules) is broken.
    #[error(transparent)]
    Config(#[from] halite_proto::config::ConfigError),
}

impl CoreError {
    /// Shorthand for [`CoreError::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        CoreError::Invalid(message.into())
    }
}
