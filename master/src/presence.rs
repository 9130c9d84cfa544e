//! Who is up: last seen, latency, version and grains of every minion, in
//! memory and written through to the store, plus the `minion/up` and
//! `minion/down` transitions, recorded with their time.
//!
//! A minion goes up when anything signed by it arrives, and down when
//! nothing has been heard for `down_after` (missed heartbeats); the
//! master's timer calls [`Presence::sweep`] every second to notice.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use halite_model::PresenceEvent;
use serde_json::Value;

use crate::store::{MinionRecord, Store};

/// In-memory view of minions, written through to the store.
pub struct Presence {
    minions: RwLock<HashMap<String, MinionRecord>>,
    /// Minions currently considered up (transitions are edges of this set).
    up: Mutex<HashSet<String>>,
    store: Store,
    down_after: Duration,
}

impl Presence {
    /// Loads what the store remembers; minions heard from within
    /// `down_after` start up, without a transition being recorded.
    pub fn load(
        store: Store,
        down_after: Duration,
        now: u64,
    ) -> Result<Self, crate::store::StoreError> {
        let minions: HashMap<String, MinionRecord> = store
            .minions()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let presence = Presence {
            up: Mutex::new(HashSet::new()),
            minions: RwLock::new(HashMap::new()),
            store,
            down_after,
        };
        let up = minions
            .values()
            .filter(|m| presence.is_up_at(m.last_seen, now))
            .map(|m| m.id.clone())
            .collect();
        *presence.up.lock().unwrap_or_else(|p| p.into_inner()) = up;
        *presence.write() = minions;
        Ok(presence)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, MinionRecord>> {
        self.minions.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, MinionRecord>> {
        self.minions.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A minion authenticated: remember its grains and version. Not a
    /// sign of life by itself (an `Auth` has no timestamp, so a recorded
    /// one could be replayed): the first fresh heartbeat is.
    pub fn authenticated(&self, id: &str, grains: Value, version: &str) {
        self.apply(id, None, |record| {
            record.grains = grains;
            record.version = version.to_owned();
            true
        });
    }

    /// A signed heartbeat sent at `at` (the minion's clock) arrived: the
    /// minion is alive — unless `at` is not newer than the last heartbeat
    /// accepted from it, which makes it a replay (false, nothing changes).
    /// The last `at` is kept in the minion's record, so a restart of the
    /// master does not reopen the window.
    pub fn heartbeat(
        &self,
        id: &str,
        at: u64,
        version: &str,
        rtt_ms: Option<u64>,
        now: u64,
    ) -> bool {
        self.apply(id, Some(now), |record| {
            if at <= record.heartbeat_at {
                return false;
            }
            record.heartbeat_at = at;
            record.version = version.to_owned();
            if rtt_ms.is_some() {
                record.rtt_ms = rtt_ms;
            }
            true
        })
    }

    /// Changes a minion's record if `change` says so (false: leave it),
    /// and with `seen_at`, marks it seen then (and up, if it was not).
    fn apply(
        &self,
        id: &str,
        seen_at: Option<u64>,
        change: impl FnOnce(&mut MinionRecord) -> bool,
    ) -> bool {
        let record = {
            let mut minions = self.write();
            let record = minions
                .entry(id.to_owned())
                .or_insert_with(|| MinionRecord {
                    id: id.to_owned(),
                    grains: Value::Null,
                    ..Default::default()
                });
            if !change(record) {
                return false;
            }
            if let Some(now) = seen_at {
                record.last_seen = now;
            }
            record.clone()
        };
        if let Err(e) = self.store.put_minion(&record) {
            tracing::warn!(minion = id, error = %e, "cannot persist minion record");
        }
        let Some(now) = seen_at else {
            return true;
        };
        let came_up = self
            .up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        if came_up {
            self.transition(id, "minion/up", now);
        }
        true
    }

    /// Marks down every minion silent for longer than `down_after`;
    /// returns the transitions it recorded.
    pub fn sweep(&self, now: u64) -> Vec<PresenceEvent> {
        let silent: Vec<String> = {
            let minions = self.read();
            let up = self.up.lock().unwrap_or_else(|p| p.into_inner());
            up.iter()
                .filter(|id| {
                    minions
                        .get(id.as_str())
                        .is_none_or(|m| !self.is_up_at(m.last_seen, now))
                })
                .cloned()
                .collect()
        };
        silent
            .into_iter()
            .filter(|id| self.up.lock().unwrap_or_else(|p| p.into_inner()).remove(id))
            .map(|id| self.transition(&id, "minion/down", now))
            .collect()
    }

    fn transition(&self, id: &str, event: &str, at: u64) -> PresenceEvent {
        let event = PresenceEvent {
            id: id.to_owned(),
            event: event.to_owned(),
            at,
        };
        tracing::info!(minion = id, event = %event.event, "presence changed");
        if let Err(e) = self.store.put_presence(&event) {
            tracing::warn!(minion = id, error = %e, "cannot record presence change");
        }
        let entry = halite_model::BusEntry {
            id: 0,
            kind: event.event.clone(),
            at,
            jid: None,
            minion: Some(id.to_owned()),
            data: serde_json::json!({ "id": id }),
        };
        if let Err(e) = self.store.publish(entry) {
            tracing::warn!(minion = id, error = %e, "cannot publish presence change");
        }
        event
    }

    /// Forgets a minion whose key was deleted.
    pub fn forget(&self, id: &str) {
        self.write().remove(id);
        self.up.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        if let Err(e) = self.store.remove_minion(id) {
            tracing::warn!(minion = id, error = %e, "cannot remove minion record");
        }
    }

    fn is_up_at(&self, last_seen: u64, now: u64) -> bool {
        last_seen > 0 && now.saturating_sub(last_seen) <= self.down_after.as_millis() as u64
    }

    /// Is the minion up? The same state the recorded transitions are
    /// edges of, so what is shown always agrees with the history (a silent
    /// minion turns down at the next sweep, within a second).
    pub fn is_up(&self, id: &str) -> bool {
        self.up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_recorded_once_each_way() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let presence = Presence::load(store.clone(), Duration::from_secs(3), 0).unwrap();
            assert!(presence.heartbeat("web01", 1, "0.1.0", Some(4), 1_000));
            assert!(presence.heartbeat("web01", 2, "0.1.0", None, 2_000));
            assert!(presence.is_up("web01"));
            assert!(presence.sweep(4_000).is_empty());
            let down = presence.sweep(5_001);
            assert_eq!(down.len(), 1);
            assert_eq!(down[0].event, "minion/down");
            assert!(presence.sweep(9_000).is_empty(), "down is recorded once");
            assert!(presence.heartbeat("web01", 3, "0.1.0", None, 10_000));
            let events = store.presence(10).unwrap();
            let kinds: Vec<(&str, u64)> = events.iter().map(|e| (e.event.as_str(), e.at)).collect();
            assert_eq!(
                kinds,
                vec![
                    ("minion/up", 10_000),
                    ("minion/down", 5_001),
                    ("minion/up", 1_000)
                ]
            );
            assert_eq!(
                presence.all()[0].rtt_ms,
                Some(4),
                "latency kept until the next measurement"
            );
        }
    }

    #[test]
    fn a_restarted_master_knows_who_was_up_without_new_events() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            {
                let presence = Presence::load(store.clone(), Duration::from_secs(3), 0).unwrap();
                assert!(presence.heartbeat("web01", 1, "0.1.0", None, 1_000));
            }
            let presence = Presence::load(store.clone(), Duration::from_secs(3), 2_000).unwrap();
            assert!(presence.is_up("web01"));
            assert_eq!(store.presence(10).unwrap().len(), 1);
            assert_eq!(presence.sweep(10_000).len(), 1);
        }
    }

    #[test]
    fn a_replayed_heartbeat_is_no_sign_of_life_even_after_a_restart() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            {
                let presence = Presence::load(store.clone(), Duration::from_secs(3), 0).unwrap();
                assert!(presence.heartbeat("web01", 500, "0.1.0", None, 1_000));
                assert!(!presence.heartbeat("web01", 500, "0.1.0", None, 2_000));
                assert!(
                    presence.sweep(4_500).len() == 1,
                    "the replay kept nothing up"
                );
            }
            let presence = Presence::load(store.clone(), Duration::from_secs(3), 10_000).unwrap();
            assert!(!presence.heartbeat("web01", 500, "0.1.0", None, 10_000));
            assert!(!presence.is_up("web01"));
            presence.authenticated("web01", Value::Null, "0.1.0");
            assert!(!presence.is_up("web01"), "an auth is not a sign of life");
            assert!(presence.heartbeat("web01", 501, "0.1.0", None, 10_000));
            assert!(presence.is_up("web01"));
        }
    }
}
