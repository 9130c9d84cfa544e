//! Minions as last seen, their up/down transitions and connectivity
//! checks.

use halite_proto::message::KeyStatus;

use super::*;

/// One of a minion's keys, as the masters sharing a store record it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedKey {
    /// Its state.
    pub status: KeyStatus,
    /// The public key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// An API user as the masters sharing a store last changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedUser {
    /// What the users file holds of them; `None`: deleted (kept so that a
    /// master that was away deletes them too).
    pub entry: Option<halite_pki::users::UserRecord>,
    /// When (unix ms) and where the change was made.
    pub changed_at: u64,
    /// The master whose users file changed.
    pub master: String,
}

impl Store {
    /// Records an API user as changed on one master, durably.
    pub fn put_user_state(&self, name: &str, user: &SharedUser) -> Result<(), StoreError> {
        self.users
            .insert(name.as_bytes(), to_bytes("shared user", user)?)
            .map_err(failed("write shared user"))?;
        self.flush()
    }

    /// An API user as last recorded (`None`: never recorded).
    pub fn user_state(&self, name: &str) -> Result<Option<SharedUser>, StoreError> {
        named(&self.users, name, "shared user")
    }

    /// Every recorded API user, by name.
    pub fn all_user_states(&self) -> Result<Vec<(String, SharedUser)>, StoreError> {
        all_named(&self.users, "shared user")
    }

    /// Records a minion's keys as they now are, durably (empty: deleted,
    /// kept so that a master that was away deletes it too).
    pub fn put_key_states(&self, id: &str, states: &[SharedKey]) -> Result<(), StoreError> {
        self.keys
            .insert(id.as_bytes(), to_bytes("shared key", &states)?)
            .map_err(failed("write shared key"))?;
        self.flush()
    }

    /// A minion's keys as last recorded (`None`: never recorded).
    pub fn key_states(&self, id: &str) -> Result<Option<Vec<SharedKey>>, StoreError> {
        named(&self.keys, id, "shared key")
    }

    /// Every recorded minion's keys, by id.
    pub fn all_key_states(&self) -> Result<Vec<(String, Vec<SharedKey>)>, StoreError> {
        all_named(&self.keys, "shared key")
    }

    /// Saves what is known of a minion.
    pub fn put_minion(&self, minion: &MinionRecord) -> Result<(), StoreError> {
        let bytes = to_bytes("minion", minion)?;
        self.minions
            .insert(minion.id.as_bytes(), bytes)
            .map_err(failed("write minion"))?;
        Ok(())
    }

    /// Every minion record.
    pub fn minions(&self) -> Result<Vec<MinionRecord>, StoreError> {
        self.minions
            .iter()
            .map(|item| decode_item("scan minions", "minion", item))
            .collect()
    }

    /// Forgets a minion (its key was deleted).
    pub fn remove_minion(&self, id: &str) -> Result<(), StoreError> {
        self.minions
            .remove(id.as_bytes())
            .map_err(failed("remove minion"))?;
        Ok(())
    }

    /// Records an up/down transition (key: time, then id, so listing is
    /// a reverse range scan).
    pub fn put_presence(&self, event: &PresenceEvent) -> Result<(), StoreError> {
        let mut key = event.at.to_be_bytes().to_vec();
        key.extend_from_slice(event.id.as_bytes());
        let bytes = to_bytes("presence", event)?;
        self.presence
            .insert(key, bytes)
            .map_err(failed("write presence"))?;
        Ok(())
    }

    /// Forgets transitions older than `cutoff_ms`.
    pub fn prune_presence_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        prune_timed(&self.presence, cutoff_ms)
    }

    /// Records one round of connectivity checks (key: time, then id).
    pub fn put_checks(&self, checks: &[CheckRecord]) -> Result<(), StoreError> {
        for check in checks {
            let mut key = check.at.to_be_bytes().to_vec();
            key.extend_from_slice(check.id.as_bytes());
            self.checks
                .insert(key, to_bytes("check", check)?)
                .map_err(failed("write check"))?;
        }
        Ok(())
    }

    /// Check results at or after `since`, newest first, optionally only
    /// the failures, at most `limit`.
    pub fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.checks.range(since.to_be_bytes().to_vec()..).rev() {
            let check: CheckRecord = decode_item("scan checks", "check", item)?;
            if failed_only && check.ok {
                continue;
            }
            out.push(check);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Forgets check results older than `cutoff_ms`.
    pub fn prune_checks_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        prune_timed(&self.checks, cutoff_ms)
    }

    /// Up/down transitions, newest first.
    pub fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, StoreError> {
        self.presence
            .iter()
            .rev()
            .take(limit)
            .map(|item| decode_item("scan presence", "presence", item))
            .collect()
    }
}
