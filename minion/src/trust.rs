//! Which master key this minion trusts: pinned at first contact, or
//! required to match `master_fingerprint`, and never silently replaced.

use std::path::PathBuf;

use halite_pki::PublicKey;

/// A master key that must not be trusted, and why.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The master presents a key other than the one pinned.
    #[error("master key changed: pinned {pinned}, presented {presented}; if the master key really was replaced, delete {path} on this minion")]
    Changed {
        /// Fingerprint pinned.
        pinned: String,
        /// Fingerprint presented.
        presented: String,
        /// The pin file.
        path: PathBuf,
    },
    /// The key does not match `master_fingerprint` from the config.
    #[error("master key fingerprint {presented} does not match master_fingerprint {expected}")]
    Fingerprint {
        /// From the config.
        expected: String,
        /// Presented.
        presented: String,
    },
    /// The pin could not be read or written.
    #[error(transparent)]
    Pki(#[from] halite_pki::PkiError),
}

/// The trust decision for one master.
#[derive(Clone)]
pub struct MasterTrust {
    pin_file: PathBuf,
    expected_fingerprint: Option<String>,
}

impl MasterTrust {
    /// Trust for the master whose pin lives in `pin_file`.
    pub fn new(pin_file: PathBuf, expected_fingerprint: Option<String>) -> Self {
        MasterTrust {
            pin_file,
            expected_fingerprint,
        }
    }

    /// The pinned key, if this minion has met the master before.
    pub fn pinned(&self) -> Result<Option<PublicKey>, halite_pki::PkiError> {
        if self.pin_file.exists() {
            PublicKey::read_file(&self.pin_file).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Must the master's key be checked before the minion hands over its
    /// own? With `master_fingerprint` set and no pin yet.
    pub fn needs_probe(&self) -> bool {
        self.expected_fingerprint.is_some() && !self.pin_file.exists()
    }

    /// Decides whether `presented` is the master's key; pins it on first
    /// contact. The caller still checks the reply's signature with it.
    pub fn check(&self, presented: &PublicKey) -> Result<(), TrustError> {
        if let Some(expected) = &self.expected_fingerprint {
            if &presented.fingerprint() != expected {
                return Err(TrustError::Fingerprint {
                    expected: expected.clone(),
                    presented: presented.fingerprint(),
                });
            }
        }
        match self.pinned()? {
            Some(pinned) if &pinned == presented => Ok(()),
            Some(pinned) => Err(TrustError::Changed {
                pinned: pinned.fingerprint(),
                presented: presented.fingerprint(),
                path: self.pin_file.clone(),
            }),
            None => {
                if let Some(dir) = self.pin_file.parent() {
                    std::fs::create_dir_all(dir).map_err(|source| halite_pki::PkiError::Io {
                        action: "create",
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                presented.write_file(&self.pin_file)?;
                match self.expected_fingerprint {
                    Some(_) => tracing::info!(
                        fingerprint = %presented.fingerprint(),
                        pin = %self.pin_file.display(),
                        "the master key matches master_fingerprint; pinned"
                    ),
                    None => tracing::info!(
                        fingerprint = %presented.fingerprint(),
                        pin = %self.pin_file.display(),
                        "pinned the master key at first contact (set master_fingerprint to check it instead)"
                    ),
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_once_then_refuses_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let trust = MasterTrust::new(dir.path().join("masters/m.pub"), None);
        let first = halite_pki::KeyPair::generate().unwrap().public();
        let other = halite_pki::KeyPair::generate().unwrap().public();
        trust.check(&first).unwrap();
        trust.check(&first).unwrap();
        assert!(matches!(
            trust.check(&other),
            Err(TrustError::Changed { .. })
        ));
    }

    #[test]
    fn configured_fingerprint_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let good = halite_pki::KeyPair::generate().unwrap().public();
        let bad = halite_pki::KeyPair::generate().unwrap().public();
        let trust = MasterTrust::new(dir.path().join("m.pub"), Some(good.fingerprint()));
        assert!(matches!(
            trust.check(&bad),
            Err(TrustError::Fingerprint { .. })
        ));
        assert!(
            !dir.path().join("m.pub").exists(),
            "a refused key is not pinned"
        );
        trust.check(&good).unwrap();
    }
}
