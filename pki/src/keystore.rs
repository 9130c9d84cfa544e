//! The master's view of minion keys, laid out under `pki_dir` as Salt does:
//! `minions/` (accepted), `minions_pre/` (pending), `minions_rejected/` and
//! `minions_denied/`, one public key file per minion, named by the id.
//!
//! Operators who know Salt can inspect (and, with the master stopped, edit)
//! the directories by hand. Every id is checked with
//! [`halite_proto::ident::validate_id`] before it becomes part of a path.
//!
//! Consistency: state changes are serialized by a mutex, and a move between
//! states writes the new file before removing the old one, so a crash never
//! loses a key. If a crash leaves an id in two states, the safer one wins:
//! rejected over accepted over pending over denied. The accepted keys are
//! also held in memory ([`KeyStore::accepted_key`] is called for every
//! message); a revocation removes the key from memory before touching the
//! disk, so it takes effect even if the disk write then fails.
//!
//! Durability: an operator's decision (accept, reject, delete, a mirrored
//! one) is synced before it is reported done. A key as a minion presented
//! it (pending, auto-accepted, denied) is written whole but not synced: a
//! crash may lose it or leave it empty, and an empty key file is taken as
//! no key (removed), since the minion presents the same key at its next
//! auth and gets the same answer.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use halite_proto::ident;
use halite_proto::message::KeyStatus;
use serde::Serialize;

use crate::fsio;
use crate::keys::PublicKey;
use crate::PkiError;

/// Every state, in the order [`KeyStore::list`] sorts by.
const STATES: [KeyStatus; 4] = [
    KeyStatus::Accepted,
    KeyStatus::Pending,
    KeyStatus::Rejected,
    KeyStatus::Denied,
];

/// Salt's directory name for each state.
fn state_dir(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Accepted => "minions",
        KeyStatus::Pending => "minions_pre",
        KeyStatus::Rejected => "minions_rejected",
        KeyStatus::Denied => "minions_denied",
    }
}

fn rank(status: KeyStatus) -> usize {
    STATES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(STATES.len())
}

/// One key as [`KeyStore::list`] reports it (what `master-cli keys list`
/// shows and the API serves).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyEntry {
    /// Minion id.
    pub id: String,
    /// Which directory the key is in.
    pub status: KeyStatus,
    /// [`PublicKey::fingerprint`] of the key, for comparing out of band.
    pub fingerprint: String,
    /// The key itself (salt-api's `key.print` shows it).
    #[serde(skip)]
    pub key: PublicKey,
}

/// Minion keys by state, on disk under `pki_dir`, with the accepted keys
/// cached in memory. `Send + Sync`: share one behind an `Arc`.
pub struct KeyStore {
    dir: PathBuf,
    accepted: RwLock<HashMap<String, PublicKey>>,
    changes: Mutex<()>,
    /// New ids are refused once this many keys wait for acceptance.
    max_pending: std::sync::atomic::AtomicUsize,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .field("accepted", &self.cache().len())
            .finish()
    }
}

impl KeyStore {
    /// Opens the store, creating `pki_dir` and the four state directories
    /// (0700 on unix) if needed, and loads the accepted keys into memory.
    /// A malformed accepted key file is an error naming it: the master
    /// should not start with a trust list it cannot read.
    pub fn open(pki_dir: &Path) -> Result<KeyStore, PkiError> {
        fsio::create_private_dir(pki_dir)?;
        for status in STATES {
            fsio::create_private_dir(&pki_dir.join(state_dir(status)))?;
        }
        let store = KeyStore {
            dir: pki_dir.to_path_buf(),
            accepted: RwLock::new(HashMap::new()),
            changes: Mutex::new(()),
            max_pending: std::sync::atomic::AtomicUsize::new(usize::MAX),
        };
        store.reload()?;
        Ok(store)
    }

    /// Refuses keys of new ids once `max` keys are pending (an anonymous
    /// peer could otherwise fill the disk and the operator's list).
    pub fn set_max_pending(&self, max: usize) {
        self.max_pending
            .store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Re-reads the accepted keys from disk into memory, for when an
    /// operator changed the directories by hand.
    pub fn reload(&self) -> Result<(), PkiError> {
        let _guard = self.lock();
        let mut map = HashMap::new();
        for id in self.ids_in(KeyStatus::Accepted)? {
            // A crash mid-reject can leave both files: rejected wins.
            if self.has(KeyStatus::Rejected, &id)? {
                continue;
            }
            if let Some(key) = self.read(KeyStatus::Accepted, &id)? {
                map.insert(id, key);
            }
        }
        *self.cache_mut() = map;
        Ok(())
    }

    /// A minion presents its key at auth; returns where it stands, following
    /// Salt's rules:
    ///
    /// - rejected → `Rejected`;
    /// - accepted with the same key → `Accepted`; with a different key →
    ///   the new key is written to `minions_denied/` and the answer is
    ///   `Denied` (an accepted key is never replaced silently);
    /// - pending with the same key → `Pending`, or `Accepted` (moved) when
    ///   `auto_accept`; with a different key → written to denied, `Denied`;
    /// - only a denied key (left by hand) → `Denied`, the presented key
    ///   recorded there: an operator must delete it first;
    /// - unknown → pending, or accepted when `auto_accept`.
    pub fn submit(
        &self,
        id: &str,
        key: &PublicKey,
        auto_accept: bool,
    ) -> Result<KeyStatus, PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        if self.has(KeyStatus::Rejected, id)? {
            return Ok(KeyStatus::Rejected);
        }
        if let Some(accepted) = self.read(KeyStatus::Accepted, id)? {
            if accepted == *key {
                // Also picks up a key an operator placed by hand.
                self.cache_mut().insert(id.to_owned(), accepted);
                return Ok(KeyStatus::Accepted);
            }
            self.write_submitted(KeyStatus::Denied, id, key)?;
            return Ok(KeyStatus::Denied);
        }
        if let Some(pending) = self.read(KeyStatus::Pending, id)? {
            if pending != *key {
                self.write_submitted(KeyStatus::Denied, id, key)?;
                return Ok(KeyStatus::Denied);
            }
            if !auto_accept {
                return Ok(KeyStatus::Pending);
            }
            self.write_submitted(KeyStatus::Accepted, id, key)?;
            self.cache_mut().insert(id.to_owned(), *key);
            self.remove(KeyStatus::Pending, id)?;
            return Ok(KeyStatus::Accepted);
        }
        if self.has(KeyStatus::Denied, id)? {
            if self.read(KeyStatus::Denied, id).ok().flatten() != Some(*key) {
                self.write_submitted(KeyStatus::Denied, id, key)?;
            }
            return Ok(KeyStatus::Denied);
        }
        if auto_accept {
            self.write_submitted(KeyStatus::Accepted, id, key)?;
            self.cache_mut().insert(id.to_owned(), *key);
            Ok(KeyStatus::Accepted)
        } else {
            let max = self.max_pending.load(std::sync::atomic::Ordering::Relaxed);
            if self.ids_in(KeyStatus::Pending)?.len() >= max {
                return Err(PkiError::TooManyPending { max });
            }
            self.write_submitted(KeyStatus::Pending, id, key)?;
            Ok(KeyStatus::Pending)
        }
    }

    /// Accepts a pending or rejected key (`master-cli keys accept`). Errors
    /// if the id has no key, if it is already accepted, or if only a denied
    /// key exists: a denied key must be deleted (and the minion re-submit)
    /// so that accepting never trusts a key nobody looked at as pending.
    pub fn accept(&self, id: &str) -> Result<(), PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        self.accept_locked(id)
    }

    /// Accepts every pending key (`keys accept --all`); returns the ids
    /// accepted, sorted.
    pub fn accept_all_pending(&self) -> Result<Vec<String>, PkiError> {
        let _guard = self.lock();
        let mut done = Vec::new();
        for id in self.ids_in(KeyStatus::Pending)? {
            if self.status_locked(&id)? == Some(KeyStatus::Pending) {
                self.accept_locked(&id)?;
                done.push(id);
            }
        }
        Ok(done)
    }

    /// Rejects a pending or accepted key. Returns `true` if an accepted key
    /// was revoked, which is the caller's cue to rotate the session key.
    pub fn reject(&self, id: &str) -> Result<bool, PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        if self.has(KeyStatus::Accepted, id)? {
            // Revoke in memory first: effective even if the disk fails.
            self.cache_mut().remove(id);
            if let Some(key) = self.read(KeyStatus::Accepted, id)? {
                self.write(KeyStatus::Rejected, id, &key)?;
                self.remove(KeyStatus::Accepted, id)?;
                self.remove_if_same(KeyStatus::Pending, id, &key)?;
                return Ok(true);
            }
        }
        if self.has(KeyStatus::Rejected, id)? {
            return Err(wrong_state(id, "reject", "it is already rejected"));
        }
        if let Some(key) = self.read(KeyStatus::Pending, id)? {
            self.write(KeyStatus::Rejected, id, &key)?;
            self.remove(KeyStatus::Pending, id)?;
            return Ok(false);
        }
        if self.has(KeyStatus::Denied, id)? {
            return Err(wrong_state(
                id,
                "reject",
                "only a denied key exists; delete it instead",
            ));
        }
        Err(PkiError::NoSuchKey { id: id.to_owned() })
    }

    /// Removes the id's keys from every state. Returns `true` if an
    /// accepted key was removed (rotate the session key). Errors if the id
    /// has no key at all. Works on malformed files too.
    pub fn delete(&self, id: &str) -> Result<bool, PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        self.cache_mut().remove(id);
        let mut any = false;
        let mut accepted = false;
        for status in STATES {
            let removed = self.remove(status, id)?;
            any |= removed;
            accepted |= removed && status == KeyStatus::Accepted;
        }
        if !any {
            return Err(PkiError::NoSuchKey { id: id.to_owned() });
        }
        Ok(accepted)
    }

    /// Every key in every state, sorted by status (accepted, pending,
    /// rejected, denied) then id. An id can appear twice (accepted and
    /// denied: the key it has, and the one it tried). Files whose names are
    /// not valid ids (temp files, editor backups) are skipped; a malformed
    /// key file is an error naming it.
    pub fn list(&self) -> Result<Vec<KeyEntry>, PkiError> {
        let _guard = self.lock();
        let mut entries = Vec::new();
        for status in STATES {
            for id in self.ids_in(status)? {
                if let Some(key) = self.read(status, &id)? {
                    entries.push(KeyEntry {
                        id,
                        status,
                        fingerprint: key.fingerprint(),
                        key,
                    });
                }
            }
        }
        entries.sort_by(|a, b| {
            rank(a.status)
                .cmp(&rank(b.status))
                .then_with(|| a.id.cmp(&b.id))
        });
        Ok(entries)
    }

    /// The accepted key of `id`, from memory (no disk I/O): called for
    /// every message a minion sends.
    pub fn accepted_key(&self, id: &str) -> Option<PublicKey> {
        self.cache().get(id).copied()
    }

    /// Ids of all accepted minions, sorted (e.g. to expand a `*` target).
    pub fn accepted_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.cache().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Where `id`'s key stands (`None` if it has none, or the id is
    /// invalid). An id with an accepted and a denied key is `Accepted`.
    pub fn status(&self, id: &str) -> Option<KeyStatus> {
        check_id(id).ok()?;
        let _guard = self.lock();
        self.status_locked(id).ok().flatten()
    }

    /// The keys `id` has, by state (what another master mirrors).
    pub fn states_of(&self, id: &str) -> Result<Vec<(KeyStatus, PublicKey)>, PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        let mut states = Vec::new();
        for status in STATES {
            if let Some(key) = self.read(status, id)? {
                states.push((status, key));
            }
        }
        Ok(states)
    }

    /// Makes `id`'s keys exactly `states` (several masters sharing one
    /// store mirror each other's decisions): new files are written before
    /// old ones go, so a crash never loses a key. Returns `true` if an
    /// accepted key was revoked (rotate the session key).
    pub fn mirror(&self, id: &str, states: &[(KeyStatus, PublicKey)]) -> Result<bool, PkiError> {
        check_id(id)?;
        let _guard = self.lock();
        let wanted = |status: KeyStatus| {
            states
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, key)| *key)
        };
        for status in STATES {
            if let Some(key) = wanted(status) {
                if self.read(status, id)? != Some(key) {
                    self.write(status, id, &key)?;
                }
            }
        }
        let accepted = match (wanted(KeyStatus::Accepted), wanted(KeyStatus::Rejected)) {
            (Some(key), None) => Some(key),
            _ => None,
        };
        let revoked = {
            let mut cache = self.cache_mut();
            let before = match accepted {
                Some(key) => cache.insert(id.to_owned(), key),
                None => cache.remove(id),
            };
            before.is_some_and(|before| Some(before) != accepted)
        };
        for status in STATES {
            if wanted(status).is_none() {
                self.remove(status, id)?;
            }
        }
        Ok(revoked)
    }

    // ---- internals; callers hold `changes` ----

    fn accept_locked(&self, id: &str) -> Result<(), PkiError> {
        let rejected = self.read(KeyStatus::Rejected, id)?;
        if rejected.is_none() && self.has(KeyStatus::Accepted, id)? {
            return Err(wrong_state(id, "accept", "it is already accepted"));
        }
        let (source, key) = if let Some(key) = rejected {
            (KeyStatus::Rejected, key)
        } else if let Some(key) = self.read(KeyStatus::Pending, id)? {
            (KeyStatus::Pending, key)
        } else if self.has(KeyStatus::Denied, id)? {
            return Err(wrong_state(
                id,
                "accept",
                "only a denied key exists; delete it first",
            ));
        } else {
            return Err(PkiError::NoSuchKey { id: id.to_owned() });
        };
        self.write(KeyStatus::Accepted, id, &key)?;
        self.cache_mut().insert(id.to_owned(), key);
        self.remove(source, id)?;
        self.remove_if_same(KeyStatus::Pending, id, &key)?;
        Ok(())
    }

    fn status_locked(&self, id: &str) -> Result<Option<KeyStatus>, PkiError> {
        for status in [
            KeyStatus::Rejected,
            KeyStatus::Accepted,
            KeyStatus::Pending,
            KeyStatus::Denied,
        ] {
            if self.has(status, id)? {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }

    fn path(&self, status: KeyStatus, id: &str) -> PathBuf {
        self.dir.join(state_dir(status)).join(id)
    }

    fn has(&self, status: KeyStatus, id: &str) -> Result<bool, PkiError> {
        fsio::exists(&self.path(status, id))
    }

    fn read(&self, status: KeyStatus, id: &str) -> Result<Option<PublicKey>, PkiError> {
        let path = self.path(status, id);
        if !fsio::exists(&path)? {
            return Ok(None);
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            // What a crash leaves of a submitted key not yet synced (see
            // `write_submitted`): no decision anyone made. Gone, and the
            // minion presents its key again at its next auth.
            fsio::remove_if_exists(&path)?;
            return Ok(None);
        }
        PublicKey::read_file(&path).map(Some)
    }

    /// An operator's decision (accept, reject, mirror): synced before
    /// the change is reported done.
    fn write(&self, status: KeyStatus, id: &str, key: &PublicKey) -> Result<(), PkiError> {
        key.write_file(&self.path(status, id))
    }

    /// A key as a minion presented it at auth (pending, auto-accepted or
    /// denied): written whole but not synced. A crash can lose it or leave
    /// it empty, which costs nothing: the minion presents the same key at
    /// its next auth and gets the same answer. The two syncs per key were
    /// most of an enrolment's time (`bench/RESULTS.md`, 2026-12-01).
    fn write_submitted(
        &self,
        status: KeyStatus,
        id: &str,
        key: &PublicKey,
    ) -> Result<(), PkiError> {
        fsio::write_atomic_unsynced(&self.path(status, id), key.to_pem().as_bytes())
    }

    fn remove(&self, status: KeyStatus, id: &str) -> Result<bool, PkiError> {
        fsio::remove_if_exists(&self.path(status, id))
    }

    /// Cleans up a leftover of an interrupted move: the same key in `status`.
    fn remove_if_same(&self, status: KeyStatus, id: &str, key: &PublicKey) -> Result<(), PkiError> {
        if self.read(status, id).ok().flatten() == Some(*key) {
            self.remove(status, id)?;
        }
        Ok(())
    }

    /// Valid ids of the regular files in a state directory.
    fn ids_in(&self, status: KeyStatus) -> Result<Vec<String>, PkiError> {
        let dir = self.dir.join(state_dir(status));
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(fsio::io_err("list", &dir))? {
            let entry = entry.map_err(fsio::io_err("list", &dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if ident::validate_id(&name).is_err() {
                continue;
            }
            // Follows symlinks, as Salt does; skips directories.
            if fs::metadata(entry.path())
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                ids.push(name);
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot corrupt it.
        self.changes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> RwLockReadGuard<'_, HashMap<String, PublicKey>> {
        self.accepted.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, PublicKey>> {
        self.accepted.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_id(id: &str) -> Result<(), PkiError> {
    ident::validate_id(id).map_err(|reason| PkiError::InvalidId {
        id: id.chars().take(64).collect(),
        reason,
    })
}

fn wrong_state(id: &str, action: &'static str, reason: &'static str) -> PkiError {
    PkiError::State {
        id: id.to_owned(),
        action,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;

    fn key() -> PublicKey {
        KeyPair::generate().unwrap().public()
    }

    #[test]
    fn mirroring_makes_an_ids_keys_exactly_what_another_master_has() {
        let (mine, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (here, there) = (
            KeyStore::open(mine.path()).unwrap(),
            KeyStore::open(theirs.path()).unwrap(),
        );
        let k = key();
        // Pending there, mirrored here; accepted there, mirrored here.
        assert_eq!(there.submit("web1", &k, false).unwrap(), KeyStatus::Pending);
        assert!(!here
            .mirror("web1", &there.states_of("web1").unwrap())
            .unwrap());
        assert_eq!(here.status("web1"), Some(KeyStatus::Pending));
        assert_eq!(here.accepted_key("web1"), None);
        there.accept("web1").unwrap();
        assert!(!here
            .mirror("web1", &there.states_of("web1").unwrap())
            .unwrap());
        assert_eq!(here.accepted_key("web1"), Some(k));
        assert_eq!(
            here.states_of("web1").unwrap(),
            vec![(KeyStatus::Accepted, k)]
        );
        // Rejected there: revoked here.
        assert!(there.reject("web1").unwrap());
        assert!(here
            .mirror("web1", &there.states_of("web1").unwrap())
            .unwrap());
        assert_eq!(here.accepted_key("web1"), None);
        assert_eq!(here.status("web1"), Some(KeyStatus::Rejected));
        // Deleted there: gone here.
        there.delete("web1").unwrap();
        assert!(!here.mirror("web1", &[]).unwrap());
        assert_eq!(here.status("web1"), None);
        assert!(here.mirror("../x", &[]).is_err());
    }

    fn open() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(&dir.path().join("pki")).unwrap();
        (dir, store)
    }

    fn file(store: &KeyStore, status: KeyStatus, id: &str) -> Option<PublicKey> {
        let path = store.path(status, id);
        path.exists().then(|| PublicKey::read_file(&path).unwrap())
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<KeyStore>();
    }

    #[test]
    fn open_creates_salt_layout() {
        let (dir, _store) = open();
        for name in [
            "minions",
            "minions_pre",
            "minions_rejected",
            "minions_denied",
        ] {
            let path = dir.path().join("pki").join(name);
            assert!(path.is_dir(), "{name}");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{name} is {mode:o}");
            }
        }
    }

    #[test]
    fn unknown_key_goes_pending_then_stays_pending() {
        let (_dir, store) = open();
        let k = key();
        assert_eq!(
            store.submit("web01", &k, false).unwrap(),
            KeyStatus::Pending
        );
        assert_eq!(file(&store, KeyStatus::Pending, "web01"), Some(k));
        assert_eq!(
            store.submit("web01", &k, false).unwrap(),
            KeyStatus::Pending
        );
        assert_eq!(store.accepted_key("web01"), None);
        assert_eq!(store.status("web01"), Some(KeyStatus::Pending));
    }

    #[test]
    fn unknown_key_with_auto_accept_is_accepted() {
        let (_dir, store) = open();
        let k = key();
        assert_eq!(
            store.submit("web01", &k, true).unwrap(),
            KeyStatus::Accepted
        );
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), Some(k));
        assert_eq!(store.accepted_key("web01"), Some(k));
    }

    #[test]
    fn an_empty_key_file_left_by_a_crash_is_no_decision() {
        // Submitted keys are not synced: a crash can leave an accepted or
        // pending file empty. The master still starts, the id is unknown,
        // and the minion's next auth gets the same answer as its first.
        let (dir, store) = open();
        let k = key();
        store.submit("web01", &k, true).unwrap();
        store.submit("web02", &k, false).unwrap();
        drop(store);
        let pki = dir.path().join("pki");
        fs::write(pki.join("minions").join("web01"), b"").unwrap();
        fs::write(pki.join("minions_pre").join("web02"), b"").unwrap();
        let store = KeyStore::open(&pki).expect("opens past empty key files");
        assert_eq!(store.accepted_key("web01"), None);
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            store.submit("web01", &k, true).unwrap(),
            KeyStatus::Accepted
        );
        assert_eq!(
            store.submit("web02", &k, false).unwrap(),
            KeyStatus::Pending
        );
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), Some(k));
    }

    #[test]
    fn pending_same_key_with_auto_accept_moves_to_accepted() {
        let (_dir, store) = open();
        let k = key();
        store.submit("web01", &k, false).unwrap();
        assert_eq!(
            store.submit("web01", &k, true).unwrap(),
            KeyStatus::Accepted
        );
        assert_eq!(file(&store, KeyStatus::Pending, "web01"), None);
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), Some(k));
        assert_eq!(store.accepted_key("web01"), Some(k));
    }

    #[test]
    fn pending_with_other_key_is_denied_and_pending_kept() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.submit("web01", &k1, false).unwrap();
        for auto in [false, true] {
            assert_eq!(store.submit("web01", &k2, auto).unwrap(), KeyStatus::Denied);
        }
        assert_eq!(file(&store, KeyStatus::Pending, "web01"), Some(k1));
        assert_eq!(file(&store, KeyStatus::Denied, "web01"), Some(k2));
        assert_eq!(store.accepted_key("web01"), None);
    }

    #[test]
    fn accepted_same_key_is_accepted_other_key_denied_never_replaced() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.submit("web01", &k1, true).unwrap();
        assert_eq!(
            store.submit("web01", &k1, false).unwrap(),
            KeyStatus::Accepted
        );
        assert_eq!(store.submit("web01", &k2, true).unwrap(), KeyStatus::Denied);
        assert_eq!(file(&store, KeyStatus::Denied, "web01"), Some(k2));
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), Some(k1));
        assert_eq!(store.accepted_key("web01"), Some(k1));
        assert_eq!(store.status("web01"), Some(KeyStatus::Accepted));
    }

    #[test]
    fn rejected_stays_rejected_even_with_auto_accept() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.submit("web01", &k1, false).unwrap();
        assert!(!store.reject("web01").unwrap());
        assert_eq!(
            store.submit("web01", &k1, true).unwrap(),
            KeyStatus::Rejected
        );
        assert_eq!(
            store.submit("web01", &k2, true).unwrap(),
            KeyStatus::Rejected
        );
        assert_eq!(store.accepted_key("web01"), None);
        assert_eq!(file(&store, KeyStatus::Rejected, "web01"), Some(k1));
    }

    #[test]
    fn denied_only_stays_denied() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.write(KeyStatus::Denied, "web01", &k1).unwrap();
        assert_eq!(store.submit("web01", &k2, true).unwrap(), KeyStatus::Denied);
        assert_eq!(file(&store, KeyStatus::Denied, "web01"), Some(k2));
        assert_eq!(store.accepted_key("web01"), None);
    }

    #[test]
    fn accept_moves_pending_and_rejected() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.submit("a", &k1, false).unwrap();
        store.accept("a").unwrap();
        assert_eq!(store.accepted_key("a"), Some(k1));
        assert_eq!(file(&store, KeyStatus::Pending, "a"), None);
        assert_eq!(store.submit("a", &k1, false).unwrap(), KeyStatus::Accepted);

        store.submit("b", &k2, false).unwrap();
        store.reject("b").unwrap();
        store.accept("b").unwrap();
        assert_eq!(store.accepted_key("b"), Some(k2));
        assert_eq!(file(&store, KeyStatus::Rejected, "b"), None);
        assert_eq!(store.accepted_ids(), vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn accept_errors() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        assert!(matches!(
            store.accept("nobody"),
            Err(PkiError::NoSuchKey { .. })
        ));

        store.submit("web01", &k1, true).unwrap();
        let err = store.accept("web01").unwrap_err();
        assert!(matches!(err, PkiError::State { .. }));
        assert!(err.to_string().contains("already accepted"), "{err}");

        // A denied key can never be accepted directly.
        store.submit("web01", &k2, false).unwrap();
        store.delete("web01").unwrap();
        store.write(KeyStatus::Denied, "web01", &k2).unwrap();
        let err = store.accept("web01").unwrap_err();
        assert!(err.to_string().contains("delete it first"), "{err}");
        assert!(err.to_string().contains("web01"), "{err}");
        assert_eq!(store.accepted_key("web01"), None);
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), None);
    }

    #[test]
    fn accept_all_pending_accepts_only_pending() {
        let (_dir, store) = open();
        for id in ["c", "a", "b"] {
            store.submit(id, &key(), false).unwrap();
        }
        store.reject("b").unwrap();
        store.submit("z", &key(), true).unwrap();
        assert_eq!(store.accept_all_pending().unwrap(), vec!["a", "c"]);
        assert_eq!(store.accepted_ids(), vec!["a", "c", "z"]);
        assert_eq!(store.status("b"), Some(KeyStatus::Rejected));
        assert!(store.accept_all_pending().unwrap().is_empty());
    }

    #[test]
    fn reject_reports_revocation() {
        let (_dir, store) = open();
        let k = key();
        store.submit("web01", &k, true).unwrap();
        assert!(store.reject("web01").unwrap());
        assert_eq!(store.accepted_key("web01"), None);
        assert!(store.accepted_ids().is_empty());
        assert_eq!(file(&store, KeyStatus::Accepted, "web01"), None);
        assert_eq!(file(&store, KeyStatus::Rejected, "web01"), Some(k));

        let err = store.reject("web01").unwrap_err();
        assert!(err.to_string().contains("already rejected"), "{err}");
        assert!(matches!(
            store.reject("nobody"),
            Err(PkiError::NoSuchKey { .. })
        ));

        store.submit("db01", &key(), false).unwrap();
        assert!(!store.reject("db01").unwrap());
        assert_eq!(store.status("db01"), Some(KeyStatus::Rejected));
    }

    #[test]
    fn delete_removes_every_state() {
        let (_dir, store) = open();
        let (k1, k2) = (key(), key());
        store.submit("web01", &k1, true).unwrap();
        store.submit("web01", &k2, false).unwrap(); // denied
        assert!(store.delete("web01").unwrap());
        assert_eq!(store.status("web01"), None);
        assert_eq!(store.accepted_key("web01"), None);
        for status in STATES {
            assert_eq!(file(&store, status, "web01"), None);
        }
        assert!(matches!(
            store.delete("web01"),
            Err(PkiError::NoSuchKey { .. })
        ));

        store.submit("db01", &k1, false).unwrap();
        assert!(!store.delete("db01").unwrap());
        // The minion can start over.
        assert_eq!(
            store.submit("db01", &k2, false).unwrap(),
            KeyStatus::Pending
        );
    }

    #[test]
    fn list_sorts_and_skips_junk() {
        let (dir, store) = open();
        let (k1, k2, k3) = (key(), key(), key());
        store.submit("web02", &k1, true).unwrap();
        store.submit("web01", &k2, true).unwrap();
        store.submit("web01", &k3, false).unwrap(); // denied
        store.submit("db01", &k3, false).unwrap(); // pending
        store.submit("old", &k3, false).unwrap();
        store.reject("old").unwrap();
        let pre = dir.path().join("pki/minions_pre");
        fs::write(pre.join(".web09.swp"), "junk").unwrap();
        fs::write(pre.join("bad name"), "junk").unwrap();
        fs::create_dir(pre.join("subdir")).unwrap();

        let list = store.list().unwrap();
        let got: Vec<(&str, KeyStatus)> = list.iter().map(|e| (e.id.as_str(), e.status)).collect();
        assert_eq!(
            got,
            vec![
                ("web01", KeyStatus::Accepted),
                ("web02", KeyStatus::Accepted),
                ("db01", KeyStatus::Pending),
                ("old", KeyStatus::Rejected),
                ("web01", KeyStatus::Denied),
            ]
        );
        assert_eq!(list[0].fingerprint, k2.fingerprint());
        assert_eq!(list[4].fingerprint, k3.fingerprint());
    }

    #[test]
    fn malformed_key_file_in_list_names_it() {
        let (dir, store) = open();
        let path = dir.path().join("pki/minions_pre/web01");
        fs::write(&path, "not a key").unwrap();
        let err = store.list().unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        // Still deletable.
        assert!(!store.delete("web01").unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn traversal_ids_are_refused_everywhere() {
        let (dir, store) = open();
        // A key just outside the store that a traversal would reach.
        let k = key();
        k.write_file(&dir.path().join("pki/victim")).unwrap();
        for bad in [
            "../victim",
            "../../etc/passwd",
            "a/b",
            "..",
            ".",
            "",
            ".hidden",
            "a\\b",
        ] {
            let invalid = |r: Result<_, PkiError>| matches!(r, Err(PkiError::InvalidId { .. }));
            assert!(invalid(store.submit(bad, &k, true).map(|_| ())), "{bad:?}");
            assert!(invalid(store.accept(bad)), "{bad:?}");
            assert!(invalid(store.reject(bad).map(|_| ())), "{bad:?}");
            assert!(invalid(store.delete(bad).map(|_| ())), "{bad:?}");
            assert_eq!(store.status(bad), None);
            assert_eq!(store.accepted_key(bad), None);
        }
        assert!(dir.path().join("pki/victim").exists());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn reopen_loads_accepted_keys_and_rejected_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (key(), key());
        {
            let store = KeyStore::open(dir.path()).unwrap();
            store.submit("web01", &k1, true).unwrap();
            store.submit("web02", &k2, true).unwrap();
            // Simulate a crash between writing rejected/ and removing minions/.
            store.write(KeyStatus::Rejected, "web02", &k2).unwrap();
        }
        let store = KeyStore::open(dir.path()).unwrap();
        assert_eq!(store.accepted_key("web01"), Some(k1));
        assert_eq!(store.accepted_key("web02"), None);
        assert_eq!(store.status("web02"), Some(KeyStatus::Rejected));
        assert_eq!(
            store.submit("web02", &k2, true).unwrap(),
            KeyStatus::Rejected
        );
    }

    #[test]
    fn reload_picks_up_hand_edits() {
        let (dir, store) = open();
        let k = key();
        k.write_file(&dir.path().join("pki/minions/web01")).unwrap();
        assert_eq!(store.accepted_key("web01"), None);
        store.reload().unwrap();
        assert_eq!(store.accepted_key("web01"), Some(k));
    }

    #[test]
    fn new_ids_are_refused_past_the_pending_cap() {
        let (_dir, store) = open();
        store.set_max_pending(2);
        store.submit("a1", &key(), false).unwrap();
        store.submit("a2", &key(), false).unwrap();
        assert!(matches!(
            store.submit("a3", &key(), false),
            Err(PkiError::TooManyPending { max: 2 })
        ));
        assert_eq!(store.status("a3"), None, "nothing written");
        // Known ids still get their answer; accepting makes room.
        store.accept("a1").unwrap();
        assert_eq!(
            store.submit("a3", &key(), false).unwrap(),
            KeyStatus::Pending
        );
    }
}
