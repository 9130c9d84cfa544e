//! Jobs, their returns and events, a minion's job history, batch plans,
//! and pruning old jobs.

use super::*;

/// Jobs a filtered listing reads per batch (a page is 50 by default).
const JOB_BATCH: usize = 64;

impl Store {
    /// Records a job (before it is published, so no return can precede it).
    pub fn put_job(&self, job: &StoredJob) -> Result<(), StoreError> {
        let bytes = to_bytes("job", job)?;
        self.jobs
            .insert(job.record.jid.as_str().as_bytes(), bytes)
            .map_err(failed("write job"))?;
        self.fun_jobs
            .insert(fun_key(&job.record.fun, &job.record.jid), [])
            .map_err(failed("index job"))?;
        Ok(())
    }

    /// Is `jid` recorded? (A key lookup, without decoding the job.)
    pub fn has_job(&self, jid: &Jid) -> Result<bool, StoreError> {
        self.jobs
            .contains_key(jid.as_str().as_bytes())
            .map_err(failed("read job"))
    }

    /// One job, if known.
    pub fn job(&self, jid: &Jid) -> Result<Option<StoredJob>, StoreError> {
        match self
            .jobs
            .get(jid.as_str().as_bytes())
            .map_err(failed("read job"))?
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
            let (_, bytes) = item.map_err(failed("scan jobs"))?;
            let head: HeadOnly = from_bytes("job", &bytes)?;
            Ok((head.record, LazyJob(bytes)))
        })
    }

    /// Jobs whose function `wanted` accepts, newest first, strictly
    /// older than `before`: a merge of the function index's ranges, one
    /// per stored function name that `wanted` accepts, so a filtered page
    /// reads its own jobs and not every job in between.
    pub fn scan_jobs_of<'a>(
        &'a self,
        wanted: impl Fn(&str) -> bool,
        before: Option<&Jid>,
    ) -> Result<impl Iterator<Item = Result<(JobHead, LazyJob), StoreError>> + 'a, StoreError> {
        let mut ranges = Vec::new();
        for (fun, prefix) in self.function_prefixes()? {
            if !wanted(&fun) {
                continue;
            }
            let mut end = prefix.clone();
            match before {
                Some(before) => end.extend_from_slice(before.as_str().as_bytes()),
                None => end.push(0xff),
            }
            let mut range = self.fun_jobs.range(prefix.clone()..end).keys().rev();
            let head = range.next();
            ranges.push((prefix.len(), range, head));
        }
        // The index's jids, newest first: a merge of the ranges' heads (a
        // few functions at most).
        let mut jids = std::iter::from_fn(move || {
            let mut newest: Option<usize> = None;
            for (i, (skip, _, head)) in ranges.iter().enumerate() {
                match head {
                    Some(Err(_)) => {
                        newest = Some(i);
                        break;
                    }
                    Some(Ok(key)) => {
                        let better = match newest {
                            None => true,
                            Some(n) => match &ranges[n].2 {
                                Some(Ok(other)) => key[*skip..] > other[ranges[n].0..],
                                _ => false,
                            },
                        };
                        if better {
                            newest = Some(i);
                        }
                    }
                    None => {}
                }
            }
            let (skip, range, head) = &mut ranges[newest?];
            let taken = std::mem::replace(head, range.next());
            Some(match taken? {
                Ok(key) => Ok(key[*skip..].to_vec()),
                Err(e) => Err(failed("scan function index")(e)),
            })
        });
        // The jobs read a batch at a time (one round trip to a shared
        // store for a page, not one per job).
        let jobs = self.jobs.clone();
        let mut ready: std::collections::VecDeque<Result<(JobHead, LazyJob), StoreError>> =
            std::collections::VecDeque::new();
        Ok(std::iter::from_fn(move || loop {
            if let Some(item) = ready.pop_front() {
                return Some(item);
            }
            let mut batch = Vec::with_capacity(JOB_BATCH);
            for jid in jids.by_ref().take(JOB_BATCH) {
                match jid {
                    Ok(jid) => batch.push(jid),
                    Err(e) => {
                        ready.push_back(Err(e));
                        break;
                    }
                }
            }
            if batch.is_empty() {
                return ready.pop_front();
            }
            match jobs.get_many(&batch) {
                Err(e) => ready.push_front(Err(failed("read jobs")(e))),
                Ok(found) => {
                    // `None`: pruned between the index read and this one.
                    let decoded = found.into_iter().flatten().map(|bytes| {
                        from_bytes::<HeadOnly>("job", &bytes)
                            .map(|head| (head.record, LazyJob(bytes)))
                    });
                    let errors_after = std::mem::take(&mut ready);
                    ready.extend(decoded);
                    ready.extend(errors_after);
                }
            }
        }))
    }

    /// Each stored function name (one index seek each) with its index
    /// prefix as stored.
    pub(super) fn function_prefixes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut names = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(item) = self.fun_jobs.range(from.clone()..).keys().next() {
            let key = item.map_err(failed("scan function index"))?;
            let Some(len) = key
                .get(..2)
                .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            else {
                return Err(StoreError::Corrupt {
                    what: "function index",
                    reason: "key shorter than its length".into(),
                });
            };
            let Some(name) = key.get(2..2 + len) else {
                return Err(StoreError::Corrupt {
                    what: "function index",
                    reason: "name shorter than its length".into(),
                });
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let prefix = key[..2 + len].to_vec();
            // Past every jid of this name: jids are ASCII digits.
            from = prefix.clone();
            from.push(0xff);
            names.push((name, prefix));
        }
        Ok(names)
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
                let new = self
                    .returns
                    .insert_new(return_key(jid, &ret.id), bytes)
                    .map_err(failed("write return"))?;
                if new {
                    let mut index = jid_prefix_of_id(&ret.id);
                    index.extend_from_slice(jid.as_str().as_bytes());
                    self.minion_jobs
                        .insert(index, [])
                        .map_err(failed("index return"))?;
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
                let key = key.map_err(failed("scan minion jobs"))?;
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
            .map_err(failed("write batch plan"))?;
        Ok(())
    }

    /// Forgets a job's batch plan (done or cancelled).
    pub fn delete_batch(&self, jid: &Jid) -> Result<(), StoreError> {
        self.batches
            .remove(jid.as_str().as_bytes())
            .map_err(failed("delete batch plan"))?;
        Ok(())
    }

    /// How many jobs still have batches to publish.
    pub fn batches_len(&self) -> Result<usize, StoreError> {
        self.batches.len().map_err(failed("count batch plans"))
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

    /// [`Store::return_outcomes`] of several jobs at once, in their order
    /// (a page of jobs reads its returns in one go).
    pub fn return_outcomes_of(
        &self,
        jids: &[Jid],
    ) -> Result<Vec<Vec<halite_model::ReturnOutcome>>, StoreError> {
        let prefixes: Vec<Vec<u8>> = jids.iter().map(jid_prefix).collect();
        self.returns
            .scan_prefixes(&prefixes)
            .map_err(failed("scan returns"))?
            .into_iter()
            .map(|entries| {
                entries
                    .iter()
                    .map(|(_, bytes)| from_bytes("return", bytes))
                    .collect()
            })
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
        event.cursor = self.engine.generate_id().map_err(failed("event id"))?;
        let mut key = jid_prefix(jid);
        key.extend_from_slice(&event.cursor.to_be_bytes());
        let bytes = to_bytes("event", &event)?;
        self.events
            .insert(key, bytes)
            .map_err(failed("write event"))?;
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
    /// Returns how many jobs were pruned. Returns and events go by key
    /// range (on PostgreSQL whole partitions), also those of a job whose
    /// own record an earlier, interrupted prune already removed.
    pub fn prune_before(&self, cutoff: &Jid) -> Result<usize, StoreError> {
        // Pruning runs every few minutes: the coming days' partitions are
        // made here too, before their rows arrive.
        if let Some(postgres) = &self.postgres {
            postgres
                .make_partitions(halite_proto::time::now_ms())
                .map_err(failed("make partitions"))?;
        }
        let cutoff = cutoff.as_str().as_bytes();
        let old: Vec<Bytes> = self
            .jobs
            .range(..cutoff)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(failed("scan old jobs"))?;
        for key in &old {
            if let Some(bytes) = self.jobs.get(key).map_err(failed("read old job"))? {
                let head: HeadOnly = from_bytes("job", &bytes)?;
                self.fun_jobs
                    .remove(fun_key(&head.record.fun, &head.record.jid))
                    .map_err(failed("prune index"))?;
            }
            self.jobs.remove(key).map_err(failed("prune job"))?;
        }
        // Returns are jid NUL minion; their index is minion NUL jid.
        for key in self.returns.range(..cutoff).keys() {
            let key = key.map_err(failed("scan old returns"))?;
            let jid_len = cutoff.len();
            if key.len() <= jid_len {
                continue;
            }
            let mut index = key[jid_len + 1..].to_vec();
            index.push(0);
            index.extend_from_slice(&key[..jid_len]);
            self.minion_jobs
                .remove(index)
                .map_err(failed("prune index"))?;
        }
        self.returns
            .remove_below(cutoff)
            .map_err(failed("prune returns"))?;
        self.events
            .remove_below(cutoff)
            .map_err(failed("prune events"))?;
        Ok(old.len())
    }
}
