//! Who is up: last seen, version and grains of every minion, in memory,
//! persisted to the store so a restarted master still knows its fleet.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde_json::Value;

use crate::store::{MinionRecord, Store};

/// In-memory view of minions, written through to the store.
pub struct Presence {
    minions: RwLock<HashMap<String, MinionRecord>>,
    store: Store,
    down_after: Duration,
}

impl Presence {
    /// Loads what the store remembers. A minion is shown down once
    /// nothing has been heard from it for `down_after`.
    pub fn load(store: Store, down_after: Duration) -> Result<Self, crate::store::StoreError> {
        let minions = store
            .minions()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        Ok(Presence {
            minions: RwLock::new(minions),
            store,
            down_after,
        })
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, MinionRecord>> {
        self.minions.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, MinionRecord>> {
        self.minions.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A minion authenticated: remember its grains and version.
    pub fn authenticated(&self, id: &str, grains: Value, version: &str, now: u64) {
        let record = MinionRecord {
            id: id.to_owned(),
            grains,
            version: version.to_owned(),
            last_seen: now,
        };
        if let Err(e) = self.store.put_minion(&record) {
            tracing::warn!(minion = id, error = %e, "cannot persist minion record");
        }
        self.write().insert(id.to_owned(), record);
    }

    /// Something signed by the minion arrived.
    pub fn seen(&self, id: &str, version: Option<&str>, now: u64) {
        let was_down;
        let record = {
            let mut minions = self.write();
            let record = minions
                .entry(id.to_owned())
                .or_insert_with(|| MinionRecord {
                    id: id.to_owned(),
                    grains: Value::Null,
                    ..Default::default()
                });
            was_down = !self.is_up_at(record.last_seen, now);
            record.last_seen = now;
            if let Some(version) = version {
                record.version = version.to_owned();
            }
            record.clone()
        };
        if was_down {
            tracing::info!(minion = id, "minion up");
        }
        if let Err(e) = self.store.put_minion(&record) {
            tracing::warn!(minion = id, error = %e, "cannot persist minion record");
        }
    }

    /// Forgets a minion whose key was deleted.
    pub fn forget(&self, id: &str) {
        self.write().remove(id);
        if let Err(e) = self.store.remove_minion(id) {
            tracing::warn!(minion = id, error = %e, "cannot remove minion record");
        }
    }

    fn is_up_at(&self, last_seen: u64, now: u64) -> bool {
        last_seen > 0 && now.saturating_sub(last_seen) <= self.down_after.as_millis() as u64
    }

    /// Is the minion up at `now`?
    pub fn is_up(&self, id: &str, now: u64) -> bool {
        self.read()
            .get(id)
            .is_some_and(|m| self.is_up_at(m.last_seen, now))
    }

    /// The ids among `ids` whose last reported grains match `target`
    /// (a minion never heard from matches with empty grains).
    pub fn matching(&self, ids: &[String], target: &halite_proto::Target) -> Vec<String> {
        let minions = self.read();
        let empty = Value::Object(Default::default());
        ids.iter()
            .filter(|id| {
                let grains = minions.get(id.as_str()).map_or(&empty, |m| &m.grains);
                target.matches(id, grains)
            })
            .cloned()
            .collect()
    }

    /// Every record, sorted by id.
    pub fn all(&self) -> Vec<MinionRecord> {
        let mut all: Vec<MinionRecord> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }
}
