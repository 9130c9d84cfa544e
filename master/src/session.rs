//! The current session key, and its rotation.
//!
//! Secret job arguments are sealed under this key; every accepted minion
//! receives it at auth. When a minion key is rejected or deleted the key
//! is replaced, so that minion cannot open later secrets; the new epoch is
//! announced in beacons and heartbeat acks and the others re-auth.

use std::sync::RwLock;

use halite_pki::{PkiError, SessionKey};

/// Holds the session key in force.
pub struct SessionKeys {
    current: RwLock<SessionKey>,
}

impl SessionKeys {
    /// A fresh key; its epoch is the current time in ms, so epochs never
    /// repeat across master restarts.
    pub fn new() -> Result<Self, PkiError> {
        Ok(SessionKeys {
            current: RwLock::new(SessionKey::generate(halite_proto::time::now_ms())?),
        })
    }

    /// The key in force.
    pub fn current(&self) -> SessionKey {
        match self.current.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the key with a new one of a later epoch.
    pub fn rotate(&self) -> Result<u64, PkiError> {
        let mut current = match self.current.write() {
            Ok(key) => key,
            Err(poisoned) => poisoned.into_inner(),
        };
        let epoch = halite_proto::time::now_ms().max(current.epoch() + 1);
        *current = SessionKey::generate(epoch)?;
        tracing::info!(epoch, "session key rotated");
        Ok(epoch)
    }
}
