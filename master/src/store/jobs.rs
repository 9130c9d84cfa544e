//! Jobs, their returns and events, a minion's job history, batch plans,
//! and pruning old jobs.

use super::*;

impl Store {
    /// Records a job (before it is published, so no return can precede it).
    pub fn put_job(&self, job: &StoredJob) -> Result<(), StoreError> {
        let bytes = to_bytes("job", job)?;
        self.jobs
            .insert(job.record.jid.as_str().as_bytes(), bytes)
            .map_err(sled_err("write job"))?;
        Ok(())
    }

    /// Is `jid` recorded? (A key lookup, without decoding the job.)
    pub fn has_job(&self, jid: &Jid) -> Result<bool, StoreError> {
        self.jobs
            .contains_key(jid.as_str().as_bytes())
            .map_err(sled_err("read job"))
    }

    /// One job, if known.
    pub fn job(&self, jid: &Jid) -> Result<Option<StoredJob>, StoreError> {
        match self
            .jobs
            .get(jid.as_str().as_bytes())
            .map_err(sled_err("read job"))?
        {
            Some(bytes) => Ok(Some(from_bytes("job", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Jobs newest first, at most `limit`, strictly older than `before`.
    pub fn jobs(&self, limit: usize, before: Option<&Jid>) -> Result<Vec<StoredJob>, StoreError> {
        let iter = match before {
            Some(before) => self.jobs.range(..before.as_str().as_bytes()),
            None => self.jobs.iter(),
        };
        iter.rev()
            .take(limit)
            .map(|item| decode_item("scan jobs", "job", item))
            .collect()
    }

    /// Jobs newest first, strictly older than `before`, as the caller
    /// walks (listing with filters stops when its page is full). Each
    /// comes as its [`JobHead`] (what filters look at, decoded without the
    /// envelope and arguments) and a [`LazyJob`] that decodes the rest only
    /// for the jobs a filter keeps.
    pub fn scan_jobs(
        &self,
        before: Option<&Jid>,
    ) -> impl Iterator<Item = Result<(JobHead, LazyJob), StoreError>> {
        let iter = match before {
            Some(before) => self.jobs.range(..before.as_str().as_bytes()),
            None => self.jobs.iter(),
        };
        iter.rev().map(|item| {
            let (_, bytes) = item.map_err(sled_err("scan jobs"))?;
            let head: HeadOnly = from_bytes("job", &bytes)?;
            Ok((head.record, LazyJob(bytes)))
        })
    }

    /// Jobs issued at or after `since`, oldest first.
    pub fn jobs_since(&self, since: &Jid) -> Result<Vec<StoredJob>, StoreError> {
        self.jobs
            .range(since.as_str().as_bytes()..)
            .map(|item| decode_item("scan jobs", "job", item))
            .collect()
    }

    /// Stores a batch of returns; a `(jid, id)` already stored is left as
    /// it was (re-sends are normal). Returns, per item, whether it was new.
    /// A new return is indexed under its minion and goes on the event
    /// stream. Not durable until [`Store::flush`].
    pub fn put_returns(&self, batch: &[(Jid, ReturnRecord)]) -> Result<Vec<bool>, StoreError> {
        batch
            .iter()
            .map(|(jid, ret)| {
                let bytes = to_bytes("return", ret)?;
                let previous = self
                    .returns
                    .compare_and_swap(return_key(jid, &ret.id), None as Option<&[u8]>, Some(bytes))
                    .map_err(sled_err("write return"))?;
                let new = previous.is_ok();
                if new {
                    let mut index = jid_prefix_of_id(&ret.id);
                    index.extend_from_slice(jid.as_str().as_bytes());
                    self.minion_jobs
                        .insert(index, &[])
                        .map_err(sled_err("index return"))?;
                }
                Ok(new)
            })
            .collect()
    }

    /// Jids of the jobs `minion` returned for, newest first, strictly
    /// older than `before`.
    pub fn minion_jobs(
        &self,
        minion: &str,
        limit: usize,
        before: Option<&Jid>,
    ) -> Result<Vec<Jid>, StoreError> {
        let prefix = jid_prefix_of_id(minion);
        let end = match before {
            Some(before) => {
                let mut end = prefix.clone();
                end.extend_from_slice(before.as_str().as_bytes());
                end
            }
            None => {
                let mut end = prefix.clone();
                end.push(0xff);
                end
            }
        };
        self.minion_jobs
            .range(prefix.clone()..end)
            .keys()
            .rev()
            .take(limit)
            .map(|key| {
                let key = key.map_err(sled_err("scan minion jobs"))?;
                let raw = std::str::from_utf8(&key[prefix.len()..]).unwrap_or_default();
                Jid::parse(raw).map_err(|e| StoreError::Corrupt {
                    what: "minion job index",
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Saves a job's batch plan (what is left to publish).
    pub fn put_batch(&self, plan: &crate::batch::BatchPlan) -> Result<(), StoreError> {
        self.batches
            .insert(
                plan.template.jid.as_str().as_bytes(),
                to_bytes("batch plan", plan)?,
            )
            .map_err(sled_err("write batch plan"))?;
        Ok(())
    }

    /// Forgets a job's batch plan (done or cancelled).
    pub fn delete_batch(&self, jid: &Jid) -> Result<(), StoreError> {
        self.batches
            .remove(jid.as_str().as_bytes())
            .map_err(sled_err("delete batch plan"))?;
        Ok(())
    }

    /// Every batch plan left.
    pub fn batches(&self) -> Result<Vec<crate::batch::BatchPlan>, StoreError> {
        self.batches
            .iter()
            .map(|item| decode_item("scan batch plans", "batch plan", item))
            .collect()
    }

    /// Who returned and whether it succeeded, by minion id order: the
    /// returns without their data (a large step's judgment reads
    /// hundreds of release reports otherwise).
    pub fn return_outcomes(
        &self,
        jid: &Jid,
    ) -> Result<Vec<halite_model::ReturnOutcome>, StoreError> {
        self.returns
            .scan_prefix(jid_prefix(jid))
            .map(|item| decode_item("scan returns", "return", item))
            .collect()
    }

    /// Every return of a job, by minion id order.
    pub fn returns(&self, jid: &Jid) -> Result<Vec<ReturnRecord>, StoreError> {
        self.returns
            .scan_prefix(jid_prefix(jid))
            .map(|item| decode_item("scan returns", "return", item))
            .collect()
    }

    /// Appends a progress event to a job; its cursor orders all events of
    /// the job by arrival.
    pub fn put_event(&self, jid: &Jid, mut event: EventRecord) -> Result<EventRecord, StoreError> {
        event.cursor = self.db.generate_id().map_err(sled_err("event id"))?;
        let mut key = jid_prefix(jid);
        key.extend_from_slice(&event.cursor.to_be_bytes());
        let bytes = to_bytes("event", &event)?;
        self.events
            .insert(key, bytes)
            .map_err(sled_err("write event"))?;
        Ok(event)
    }

    /// Events of a job with a cursor greater than `after`, in arrival order.
    pub fn events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, StoreError> {
        let prefix = jid_prefix(jid);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.map_or(0, |a| a.saturating_add(1)).to_be_bytes());
        let mut end = prefix;
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        self.events
            .range(start..=end)
            .map(|item| decode_item("scan events", "event", item))
            .collect()
    }

    /// Removes jobs older than `cutoff` with their returns and events.
    /// Returns how many jobs were pruned.
    pub fn prune_before(&self, cutoff: &Jid) -> Result<usize, StoreError> {
        let old: Vec<sled::IVec> = self
            .jobs
            .range(..cutoff.as_str().as_bytes())
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err("scan old jobs"))?;
        for key in &old {
            let mut prefix = key.to_vec();
            prefix.push(0);
            for tree in [&self.returns, &self.events] {
                let keys: Vec<sled::IVec> = tree
                    .scan_prefix(&prefix)
                    .keys()
                    .collect::<Result<_, _>>()
                    .map_err(sled_err("scan old records"))?;
                for k in keys {
                    if std::ptr::eq(tree, &self.returns) {
                        // returns are jid NUL minion; the index is minion NUL jid.
                        let mut index = k[prefix.len()..].to_vec();
                        index.push(0);
                        index.extend_from_slice(key);
                        self.minion_jobs
                            .remove(index)
                            .map_err(sled_err("prune index"))?;
                    }
                    tree.remove(k).map_err(sled_err("prune"))?;
                }
            }
            self.jobs.remove(key).map_err(sled_err("prune job"))?;
        }
        Ok(old.len())
    }
}
