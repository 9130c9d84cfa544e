//! Sessions and the audit log.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A session token and what it allows.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LoginToken {
    /// Send it as `X-Auth-Token` or `Authorization: Bearer`.
    pub token: String,
    /// User name.
    pub user: String,
    /// When it was issued (unix ms).
    pub issued_at: u64,
    /// When it stops working (unix ms).
    pub expires_at: u64,
    /// The user's grants as written in the master's `[acl]`.
    pub perms: Vec<Value>,
}

/// One request that changed something (`GET /v1/audit`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AuditRecord {
    /// When (unix ms).
    pub at: u64,
    /// Who (`root` for the local CLI; the name tried for a failed login).
    pub user: String,
    /// Client address as seen by the master.
    pub from: String,
    /// HTTP method.
    pub method: String,
    /// Path (without the query string).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// What was asked, briefly (function and target, key id...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A session token as kept: only its SHA-256 is stored, so a copy of the
/// store does not hand out working tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    /// Who it authenticates.
    pub user: String,
    /// Issued (unix ms).
    pub issued_at: u64,
    /// Expires (unix ms).
    pub expires_at: u64,
    /// The user's credential fingerprint when it was issued
    /// (`halite_pki::users::Session`): a new password ends it. Empty in
    /// tokens issued before it was kept.
    #[serde(default)]
    pub credential: String,
}
