//! JSON shapes of the native `/v1` API.
//!
//! The records (jobs, returns, events, releases, presence, audit) are the
//! domain model's (`halite-model`), served as their serde form; this module
//! adds the shapes that exist only on the wire of the HTTP API.

use serde::{Deserialize, Serialize};

pub use halite_model::*;

/// The body of every error response.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// `POST /v1/login` body (JSON or form).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LoginRequest {
    /// User name (from `master-cli users add`).
    pub username: String,
    /// Password.
    pub password: String,
    /// Accepted and ignored (salt-api clients send `eauth`).
    #[serde(default)]
    pub eauth: Option<String>,
}
