//! The release workflow's own records: schedules (by name), the outbox
//! of notifications still to deliver (by id, oldest first), and what
//! each trigger has seen (by `poll/APP`). Each write is flushed: a
//! schedule's taken time and a queued notification must survive a crash.

use halite_model::{Schedule, TriggerPause};
use serde::{Deserialize, Serialize};

use super::*;

/// A notification waiting to be delivered (or retried).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Delivery {
    /// Outbox id (also sent as `X-Halite-Delivery`).
    pub id: u64,
    /// Where it goes.
    pub url: String,
    /// The event (`approved`...), sent as `X-Halite-Event`.
    pub event: String,
    /// The exact body (what the signature covers).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Secrets-file entry that signs it; looked up when sent, so the
    /// secret itself is never stored here.
    pub secret: Option<String>,
    /// Attempts so far.
    pub attempts: u32,
    /// Not before this time (Unix ms).
    pub next_at: u64,
}

impl Store {
    /// Stores (or replaces) a schedule, durably.
    pub fn put_schedule(&self, schedule: &Schedule) -> Result<(), StoreError> {
        self.schedules
            .insert(schedule.name.as_bytes(), to_bytes("schedule", schedule)?)
            .map_err(failed("write schedule"))?;
        self.flush()
    }

    /// One schedule by name.
    pub fn schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        match self
            .schedules
            .get(name.as_bytes())
            .map_err(failed("read schedule"))?
        {
            Some(bytes) => Ok(Some(from_bytes("schedule", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Every schedule, by name.
    pub fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        self.schedules
            .iter()
            .map(|item| {
                let (_, bytes) = item.map_err(failed("scan schedules"))?;
                from_bytes("schedule", &bytes)
            })
            .collect()
    }

    /// Forgets a schedule; whether it existed.
    pub fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let gone = self
            .schedules
            .remove(name.as_bytes())
            .map_err(failed("remove schedule"))?;
        self.flush()?;
        Ok(gone)
    }

    /// Queues a notification (its id is assigned here), durably.
    pub fn queue_delivery(&self, mut delivery: Delivery) -> Result<u64, StoreError> {
        delivery.id = self.engine.generate_id().map_err(failed("outbox id"))?;
        self.put_delivery(&delivery)?;
        Ok(delivery.id)
    }

    /// Stores a delivery's new state (after a failed attempt).
    pub fn put_delivery(&self, delivery: &Delivery) -> Result<(), StoreError> {
        self.outbox
            .insert(delivery.id.to_be_bytes(), to_bytes("delivery", delivery)?)
            .map_err(failed("write outbox"))?;
        self.flush()
    }

    /// How many deliveries wait (due or not).
    pub fn outbox_len(&self) -> Result<usize, StoreError> {
        self.outbox.len().map_err(failed("count the outbox"))
    }

    /// Deliveries due at `now`, oldest first, at most `limit`.
    pub fn due_deliveries(&self, now: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for item in self.outbox.iter() {
            let (_, bytes) = item.map_err(failed("scan outbox"))?;
            let delivery: Delivery = from_bytes("delivery", &bytes)?;
            if delivery.next_at <= now {
                out.push(delivery);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Removes a delivered (or abandoned) notification.
    pub fn remove_delivery(&self, id: u64) -> Result<(), StoreError> {
        self.outbox
            .remove(id.to_be_bytes())
            .map_err(failed("remove outbox"))?;
        self.flush()
    }

    /// What a trigger has seen (`poll/shop`: the tags seen last time).
    pub fn trigger_state(&self, key: &str) -> Result<Option<Vec<String>>, StoreError> {
        match self
            .triggers
            .get(key.as_bytes())
            .map_err(failed("read trigger"))?
        {
            Some(bytes) => Ok(Some(from_bytes("trigger", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Whether an app's trigger is paused (`paused/APP`).
    pub fn trigger_pause(&self, app: &str) -> Result<Option<TriggerPause>, StoreError> {
        match self
            .triggers
            .get(format!("paused/{app}").as_bytes())
            .map_err(failed("read trigger pause"))?
        {
            Some(bytes) => Ok(Some(from_bytes("trigger pause", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Pauses (`Some`) or resumes (`None`) an app's trigger, durably.
    pub fn put_trigger_pause(
        &self,
        app: &str,
        pause: Option<&TriggerPause>,
    ) -> Result<(), StoreError> {
        let key = format!("paused/{app}");
        match pause {
            Some(pause) => self
                .triggers
                .insert(key.as_bytes(), to_bytes("trigger pause", pause)?)
                .map(|_| ()),
            None => self.triggers.remove(key.as_bytes()).map(|_| ()),
        }
        .map_err(failed("write trigger pause"))?;
        self.flush()
    }

    /// Records what a trigger has seen.
    pub fn put_trigger_state(&self, key: &str, seen: &[String]) -> Result<(), StoreError> {
        self.triggers
            .insert(key.as_bytes(), to_bytes("trigger", &seen)?)
            .map_err(failed("write trigger"))?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_deliveries_until_removed_and_across_a_reopen() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let delivery = |next_at| Delivery {
                id: 0,
                url: "http://127.0.0.1:9/".into(),
                event: "approved".into(),
                body: b"{}".to_vec(),
                secret: None,
                attempts: 0,
                next_at,
            };
            let first = store.queue_delivery(delivery(10)).unwrap();
            let later = store.queue_delivery(delivery(1000)).unwrap();
            assert!(later > first);
            assert_eq!(store.due_deliveries(20, 10).unwrap().len(), 1);
            drop(store);
            let store = fresh.open();
            assert_eq!(store.due_deliveries(2000, 10).unwrap().len(), 2);
            store.remove_delivery(first).unwrap();
            let left = store.due_deliveries(2000, 10).unwrap();
            assert_eq!(left.iter().map(|d| d.id).collect::<Vec<_>>(), [later]);
            store
                .put_trigger_state("poll/shop", &["v1".into()])
                .unwrap();
            assert_eq!(
                store.trigger_state("poll/shop").unwrap(),
                Some(vec!["v1".to_owned()])
            );
        }
    }
}
