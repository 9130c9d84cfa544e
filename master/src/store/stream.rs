//! The event stream: ids handed out and entries sent to live
//! subscribers in one order, so a subscriber sees them in order. On sled
//! one lock orders both; on PostgreSQL appends commit in id order (the
//! engine's `append_ordered`) and a follower thread per master reads them
//! in that order, every master's, and sends them to its subscribers.

use super::*;

impl Store {
    /// Appends an entry to the event stream, giving it the next id, and
    /// tells live subscribers. Ids are handed out and sent under one lock,
    /// so subscribers see them in increasing order and a client resuming
    /// after id N misses nothing. Not durable until [`Store::flush`].
    pub fn publish(&self, mut entry: BusEntry) -> Result<u64, StoreError> {
        let _order = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        let written = entry.clone();
        let (bus, job_stream) = (self.bus.clone(), self.job_stream.clone());
        let id = self
            .engine
            .append_ordered(Box::new(move |id| {
                let mut entry = written;
                entry.id = id;
                let bytes = to_bytes("stream entry", &entry).map_err(|e| e.to_string())?;
                let mut rows = vec![(bus, id.to_be_bytes().to_vec(), bytes)];
                if let Some(jid) = &entry.jid {
                    let mut index = jid_prefix(jid);
                    index.extend_from_slice(&id.to_be_bytes());
                    rows.push((job_stream, index, Vec::new()));
                }
                Ok(rows)
            }))
            .map_err(failed("write stream entry"))?;
        entry.id = id;
        // On a shared store the follower sends it, in order with the other
        // masters' entries. No subscriber is fine: it is stored.
        if !self.is_shared() {
            let _ = self.live.send(Arc::new(entry));
        }
        Ok(id)
    }

    /// Stream entries with an id greater than `after`, oldest first; only
    /// one job's when `jid` is given.
    pub fn stream_after(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, StoreError> {
        let start = after.saturating_add(1).to_be_bytes();
        let Some(jid) = jid else {
            return self
                .bus
                .range(start..)
                .take(limit)
                .map(|item| decode_item("scan stream", "stream entry", item))
                .collect();
        };
        let prefix = jid_prefix(jid);
        let mut from = prefix.clone();
        from.extend_from_slice(&start);
        let mut to = prefix.clone();
        to.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut out = Vec::new();
        for key in self.job_stream.range(from..=to).keys().take(limit) {
            let key = key.map_err(failed("scan job stream"))?;
            let id = &key[prefix.len()..];
            if let Some(bytes) = self.bus.get(id).map_err(failed("read stream entry"))? {
                out.push(from_bytes("stream entry", &bytes)?);
            }
        }
        Ok(out)
    }

    /// The id of the newest stream entry (0 when empty).
    pub fn stream_head(&self) -> Result<u64, StoreError> {
        Ok(self
            .bus
            .last()
            .map_err(failed("read stream"))?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Live stream entries from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<BusEntry>> {
        self.live.subscribe()
    }

    /// Drops stream entries older than `cutoff_ms`.
    pub fn prune_stream_before(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for item in self.bus.iter() {
            let (key, bytes) = item.map_err(failed("scan stream"))?;
            let entry: BusEntry = from_bytes("stream entry", &bytes)?;
            if entry.at >= cutoff_ms {
                break;
            }
            old.push((key, entry.jid));
        }
        for (key, jid) in &old {
            self.bus.remove(key).map_err(failed("prune stream"))?;
            if let Some(jid) = jid {
                let mut index = jid_prefix(jid);
                index.extend_from_slice(key);
                self.job_stream
                    .remove(index)
                    .map_err(failed("prune stream"))?;
            }
        }
        Ok(old.len())
    }
}

/// The stream entry of a stored return.
pub fn return_entry(jid: &Jid, ret: &ReturnRecord) -> BusEntry {
    BusEntry {
        id: 0,
        kind: "job/return".to_owned(),
        at: ret.stored_at,
        jid: Some(jid.clone()),
        minion: Some(ret.id.clone()),
        data: serde_json::to_value(ret).unwrap_or(Value::Null),
    }
}

/// The stream entry of a stored job event.
pub fn event_entry(jid: &Jid, event: &EventRecord) -> BusEntry {
    BusEntry {
        id: 0,
        kind: "job/event".to_owned(),
        at: event.at,
        jid: Some(jid.clone()),
        minion: Some(event.id.clone()),
        data: serde_json::to_value(event).unwrap_or(Value::Null),
    }
}
