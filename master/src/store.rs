//! The master's embedded store (sled): jobs, returns, events, minions.
//!
//! A narrow interface so the backend can change: every key sorts by time
//! (jids are time-ordered), so listing is a range scan. Writes are durable
//! only after [`Store::flush`]; the return collector groups many returns
//! per flush and acknowledges them after it.

use std::path::Path;
use std::sync::Arc;

use halite_model::{
    AuditRecord, BusEntry, CheckRecord, DeployRecord, EventRecord, JobRecord, PresenceEvent,
    ReturnRecord,
};
pub use halite_model::{MinionRecord, TokenRecord};
use halite_proto::envelope::{decode, encode};
use halite_proto::Jid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A store failure, naming what was being read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled itself failed (I/O, corruption).
    #[error("store: {context}: {source}")]
    Sled {
        /// What was being done.
        context: &'static str,
        /// sled's error.
        source: sled::Error,
    },
    /// The store was written by a newer halite, whose records this one
    /// would misread.
    #[error(
        "store {dir}: written with store schema {found}, this halite knows schemas up to \
         {known}: run the newer halite again, or point data_dir at a new directory"
    )]
    NewerSchema {
        /// The store's directory.
        dir: String,
        /// The schema the store says it has.
        found: u32,
        /// The newest schema this build knows.
        known: u32,
    },
    /// A stored value could not be decoded.
    #[error("store: corrupt {what}: {reason}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Decoder's message.
        reason: String,
    },
}

fn sled_err(context: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |source| StoreError::Sled { context, source }
}

/// A job as kept: the record the API serves and the signed envelope as
/// published, which catch-up re-sends byte for byte.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredJob {
    /// What the API shows.
    pub record: JobRecord,
    /// The signed job envelope.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
}

/// The fields of a stored job that listing filters look at.
#[derive(Clone, Debug, Deserialize)]
pub struct JobHead {
    /// Job id.
    pub jid: Jid,
    /// Function.
    pub fun: String,
    /// Target expression as submitted.
    pub target: String,
    /// Who submitted it.
    pub user: String,
    /// When (unix ms).
    pub issued_at: u64,
}

/// A stored job's record, decoded for its head only (the named msgpack
/// map lets serde skip the other fields without building them).
#[derive(Deserialize)]
struct HeadOnly {
    record: JobHead,
}

/// A stored job not decoded yet.
pub struct LazyJob(sled::IVec);

impl LazyJob {
    /// Decodes the whole job.
    pub fn decode(&self) -> Result<StoredJob, StoreError> {
        from_bytes("job", &self.0)
    }
}

/// The sled database and its trees.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    returns: sled::Tree,
    events: sled::Tree,
    minions: sled::Tree,
    presence: sled::Tree,
    checks: sled::Tree,
    deploys: sled::Tree,
    tokens: sled::Tree,
    audit: sled::Tree,
    bus: sled::Tree,
    minion_jobs: sled::Tree,
    job_stream: sled::Tree,
    batches: sled::Tree,
    publishing: Arc<std::sync::Mutex<()>>,
    live: tokio::sync::broadcast::Sender<Arc<BusEntry>>,
}

/// How many stream entries a slow live subscriber may fall behind before
/// it re-reads from the store (it loses nothing either way).
const LIVE_CAPACITY: usize = 4096;

/// The store schema this build writes. Records are msgpack with named
/// fields (`halite_model`), so adding a field with a serde default needs
/// no new schema; renaming, retyping or re-keying one does, with a step
/// in [`migrate`] and a fixture store of the old schema under
/// `master/tests/fixtures/`.
pub const SCHEMA_VERSION: u32 = 1;

/// Where the schema version is kept: tree `meta`, key `schema`, a
/// big-endian u32.
const META_TREE: &str = "meta";
const SCHEMA_KEY: &[u8] = b"schema";

/// The schema a store says it has; `None` for a store that predates
/// versioning (schema 0) or is new.
pub fn schema_of(db: &sled::Db) -> Result<Option<u32>, StoreError> {
    let meta = db.open_tree(META_TREE).map_err(sled_err("open meta"))?;
    match meta.get(SCHEMA_KEY).map_err(sled_err("read schema"))? {
        None => Ok(None),
        Some(bytes) => {
            let bytes: [u8; 4] = bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                what: "schema version",
                reason: format!("{} bytes, expected 4", bytes.len()),
            })?;
            Ok(Some(u32::from_be_bytes(bytes)))
        }
    }
}

/// Brings a store to [`SCHEMA_VERSION`]: a new store is stamped, an
/// older one is migrated step by step, a newer one is refused.
///
/// Schema 0 is every store written before the version was kept; its
/// records are exactly schema 1's, so the step only stamps the version.
fn migrate(db: &sled::Db, dir: &Path) -> Result<(), StoreError> {
    let found = schema_of(db)?;
    match found {
        Some(SCHEMA_VERSION) => return Ok(()),
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                dir: dir.display().to_string(),
                found,
                known: SCHEMA_VERSION,
            })
        }
        _ => {}
    }
    let had_data = db
        .tree_names()
        .iter()
        .filter(|name| name.as_ref() != META_TREE.as_bytes())
        .any(|name| db.open_tree(name).is_ok_and(|tree| !tree.is_empty()));
    let meta = db.open_tree(META_TREE).map_err(sled_err("open meta"))?;
    meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
        .map_err(sled_err("write schema"))?;
    db.flush().map_err(sled_err("flush schema"))?;
    if had_data {
        tracing::info!(
            store = %dir.display(),
            from = found.unwrap_or(0),
            to = SCHEMA_VERSION,
            "store schema migrated"
        );
    }
    Ok(())
}

fn return_key(jid: &Jid, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(21 + id.len());
    key.extend_from_slice(jid.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

fn app_prefix(app: &str) -> Vec<u8> {
    let mut key = app.as_bytes().to_vec();
    key.push(0);
    key
}

fn jid_prefix(jid: &Jid) -> Vec<u8> {
    let mut key = jid.as_str().as_bytes().to_vec();
    key.push(0);
    key
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating an older schema
    /// in place and refusing a newer one. One process per store: a
    /// second master on the same `data_dir` fails here.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(sled_err("open"))?;
        migrate(&db, dir)?;
        Ok(Store {
            jobs: db.open_tree("jobs").map_err(sled_err("open jobs"))?,
            returns: db.open_tree("returns").map_err(sled_err("open returns"))?,
            events: db.open_tree("events").map_err(sled_err("open events"))?,
            minions: db.open_tree("minions").map_err(sled_err("open minions"))?,
            presence: db
                .open_tree("presence")
                .map_err(sled_err("open presence"))?,
            checks: db.open_tree("checks").map_err(sled_err("open checks"))?,
            deploys: db.open_tree("deploys").map_err(sled_err("open deploys"))?,
            tokens: db.open_tree("tokens").map_err(sled_err("open tokens"))?,
            audit: db.open_tree("audit").map_err(sled_err("open audit"))?,
            bus: db.open_tree("bus").map_err(sled_err("open bus"))?,
            minion_jobs: db
                .open_tree("minion_jobs")
                .map_err(sled_err("open minion_jobs"))?,
            job_stream: db
                .open_tree("job_stream")
                .map_err(sled_err("open job_stream"))?,
            batches: db.open_tree("batches").map_err(sled_err("open batches"))?,
            publishing: Arc::new(std::sync::Mutex::new(())),
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
            db,
        })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err("flush"))
    }

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

    // ---- the event stream -------------------------------------------------

    /// Appends an entry to the event stream, giving it the next id, and
    /// tells live subscribers. Ids are handed out and sent under one lock,
    /// so subscribers see them in increasing order and a client resuming
    /// after id N misses nothing. Not durable until [`Store::flush`].
    pub fn publish(&self, mut entry: BusEntry) -> Result<u64, StoreError> {
        let _order = self.publishing.lock().unwrap_or_else(|p| p.into_inner());
        entry.id = self.db.generate_id().map_err(sled_err("stream id"))? + 1;
        self.bus
            .insert(entry.id.to_be_bytes(), to_bytes("stream entry", &entry)?)
            .map_err(sled_err("write stream entry"))?;
        if let Some(jid) = &entry.jid {
            let mut index = jid_prefix(jid);
            index.extend_from_slice(&entry.id.to_be_bytes());
            self.job_stream
                .insert(index, &[])
                .map_err(sled_err("index stream entry"))?;
        }
        let id = entry.id;
        // No subscriber is fine: the entry is stored for later readers.
        let _ = self.live.send(Arc::new(entry));
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
            let key = key.map_err(sled_err("scan job stream"))?;
            let id = &key[prefix.len()..];
            if let Some(bytes) = self.bus.get(id).map_err(sled_err("read stream entry"))? {
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
            .map_err(sled_err("read stream"))?
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
            let (key, bytes) = item.map_err(sled_err("scan stream"))?;
            let entry: BusEntry = from_bytes("stream entry", &bytes)?;
            if entry.at >= cutoff_ms {
                break;
            }
            old.push((key, entry.jid));
        }
        for (key, jid) in &old {
            self.bus.remove(key).map_err(sled_err("prune stream"))?;
            if let Some(jid) = jid {
                let mut index = jid_prefix(jid);
                index.extend_from_slice(key);
                self.job_stream
                    .remove(index)
                    .map_err(sled_err("prune stream"))?;
            }
        }
        Ok(old.len())
    }

    // ---- jobs in batches -----------------------------------------------------

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

    // ---- tokens and audit ---------------------------------------------------

    /// Stores a session token (by its hash).
    pub fn put_token(&self, token_hash: &[u8], record: &TokenRecord) -> Result<(), StoreError> {
        self.tokens
            .insert(token_hash, to_bytes("token", record)?)
            .map_err(sled_err("write token"))?;
        self.flush()
    }

    /// The token with this hash, if stored (expired or not).
    pub fn token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        match self
            .tokens
            .get(token_hash)
            .map_err(sled_err("read token"))?
        {
            Some(bytes) => Ok(Some(from_bytes("token", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes tokens that expired before `now_ms`.
    pub fn prune_tokens(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for item in self.tokens.iter() {
            let (key, bytes) = item.map_err(sled_err("scan tokens"))?;
            let record: TokenRecord = from_bytes("token", &bytes)?;
            if record.expires_at <= now_ms {
                expired.push(key);
            }
        }
        for key in &expired {
            self.tokens.remove(key).map_err(sled_err("prune tokens"))?;
        }
        Ok(expired.len())
    }

    /// Appends an audit record (durably: an audit log that loses entries
    /// on a crash is not one).
    pub fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut key = record.at.to_be_bytes().to_vec();
        key.extend_from_slice(
            &self
                .db
                .generate_id()
                .map_err(sled_err("audit id"))?
                .to_be_bytes(),
        );
        self.audit
            .insert(key, to_bytes("audit", record)?)
            .map_err(sled_err("write audit"))?;
        self.flush()
    }

    /// Audit records in `[from, to)`, newest first, at most `limit`.
    pub fn audit(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit
            .range(from.to_be_bytes().to_vec()..to.to_be_bytes().to_vec())
            .rev()
            .take(limit)
            .map(|item| decode_item("scan audit", "audit", item))
            .collect()
    }

    /// Every deploy record whose time is in `[from, to)`, all apps.
    pub fn deploys_between(&self, from: u64, to: u64) -> Result<Vec<DeployRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.deploys.iter() {
            let record: DeployRecord = decode_item("scan deploys", "deploy", item)?;
            if record.at >= from && record.at < to {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Records a deploy or rollback (key: app, time, minion, jid, so one
    /// app's history is one ordered range and a re-sent return overwrites
    /// its own record). Not durable until [`Store::flush`].
    pub fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        let mut key = app_prefix(&record.app);
        key.extend_from_slice(&record.at.to_be_bytes());
        key.extend_from_slice(record.minion.as_bytes());
        key.push(0);
        key.extend_from_slice(record.jid.as_str().as_bytes());
        self.deploys
            .insert(key, to_bytes("deploy", record)?)
            .map_err(sled_err("write deploy"))?;
        Ok(())
    }

    /// An app's deploys and rollbacks, newest first, at most `limit`.
    pub fn deploys(&self, app: &str, limit: usize) -> Result<Vec<DeployRecord>, StoreError> {
        self.deploys
            .scan_prefix(app_prefix(app))
            .rev()
            .take(limit)
            .map(|item| decode_item("scan deploys", "deploy", item))
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

    /// Saves what is known of a minion.
    pub fn put_minion(&self, minion: &MinionRecord) -> Result<(), StoreError> {
        let bytes = to_bytes("minion", minion)?;
        self.minions
            .insert(minion.id.as_bytes(), bytes)
            .map_err(sled_err("write minion"))?;
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
            .map_err(sled_err("remove minion"))?;
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
            .map_err(sled_err("write presence"))?;
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
                .map_err(sled_err("write check"))?;
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

/// The index prefix of one minion's entries (`id` NUL).
fn jid_prefix_of_id(id: &str) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key
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

/// Removes the entries of a tree keyed by big-endian time older than
/// `cutoff_ms`.
fn prune_timed(tree: &sled::Tree, cutoff_ms: u64) -> Result<usize, StoreError> {
    let old: Vec<sled::IVec> = tree
        .range(..cutoff_ms.to_be_bytes().to_vec())
        .keys()
        .collect::<Result<_, _>>()
        .map_err(sled_err("scan old entries"))?;
    for key in &old {
        tree.remove(key).map_err(sled_err("prune"))?;
    }
    Ok(old.len())
}

/// Decodes one `(key, value)` of a scan; failures name the scan and the
/// record kind.
fn decode_item<T: serde::de::DeserializeOwned>(
    context: &'static str,
    what: &'static str,
    item: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<T, StoreError> {
    let (_, bytes) = item.map_err(sled_err(context))?;
    from_bytes(what, &bytes)
}

/// msgpack-encodes a record; a failure names the record kind.
fn to_bytes<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    encode(what, value).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// Decodes a stored record; a failure names the record kind.
fn from_bytes<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    decode(what, bytes).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::TargetType;

    fn job(jid: &Jid) -> StoredJob {
        StoredJob {
            record: JobRecord {
                jid: jid.clone(),
                target: "*".into(),
                tgt_type: TargetType::Glob,
                fun: "test.ping".into(),
                arg: vec![],
                kwarg: Default::default(),
                secret_keys: vec![],
                user: "root".into(),
                timeout: 5,
                issued_at: 1,
                expires_at: 2,
                expected: vec!["a".into()],
                down: vec![],
                published_by: None,
                batch_size: None,
            },
            envelope: vec![1, 2, 3, 255],
        }
    }

    fn ret(id: &str, retcode: i32) -> ReturnRecord {
        ReturnRecord {
            id: id.into(),
            fun: "test.ping".into(),
            success: retcode == 0,
            retcode,
            data: Value::Bool(true),
            started_at: 1,
            finished_at: 2,
            stored_at: 3,
        }
    }

    #[test]
    fn jobs_returns_and_events_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let jid = Jid::from_unix_us(1_700_000_000_000_000);
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_job(&job(&jid)).unwrap();
            assert_eq!(
                store.put_returns(&[(jid.clone(), ret("a", 0))]).unwrap(),
                vec![true]
            );
            store
                .put_event(
                    &jid,
                    EventRecord {
                        cursor: 0,
                        id: "a".into(),
                        seq: 0,
                        at: 1,
                        body: halite_proto::message::EventBody::Progress {
                            line: "hi".into(),
                            stream: "stdout".into(),
                        },
                    },
                )
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let stored = store.job(&jid).unwrap().unwrap();
        assert_eq!(stored.record, job(&jid).record);
        assert_eq!(stored.envelope, vec![1, 2, 3, 255]);
        assert_eq!(store.returns(&jid).unwrap(), vec![ret("a", 0)]);
        assert_eq!(store.events(&jid, None).unwrap().len(), 1);
        let cursor = store.events(&jid, None).unwrap()[0].cursor;
        assert!(store.events(&jid, Some(cursor)).unwrap().is_empty());
    }

    #[test]
    fn a_duplicate_return_keeps_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let jid = Jid::from_unix_us(1_700_000_000_000_000);
        assert_eq!(
            store
                .put_returns(&[(jid.clone(), ret("a", 0)), (jid.clone(), ret("a", 1))])
                .unwrap(),
            vec![true, false]
        );
        assert_eq!(store.returns(&jid).unwrap(), vec![ret("a", 0)]);
    }

    #[test]
    fn checks_filter_by_time_and_failure_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (at, ok) in [(1_000, true), (2_000, false), (3_000, true)] {
            let check = CheckRecord {
                id: "web01".into(),
                at,
                ok,
                latency_ms: None,
                last_seen: None,
            };
            store.put_checks(&[check]).unwrap();
        }
        let ats = |v: Vec<CheckRecord>| v.into_iter().map(|c| c.at).collect::<Vec<_>>();
        assert_eq!(
            ats(store.checks(0, false, 10).unwrap()),
            vec![3_000, 2_000, 1_000]
        );
        assert_eq!(ats(store.checks(0, true, 10).unwrap()), vec![2_000]);
        assert_eq!(ats(store.checks(2_500, false, 10).unwrap()), vec![3_000]);
        assert_eq!(ats(store.checks(0, false, 1).unwrap()), vec![3_000]);
        assert_eq!(store.prune_checks_before(2_500).unwrap(), 2);
        assert_eq!(ats(store.checks(0, false, 10).unwrap()), vec![3_000]);
    }

    #[test]
    fn listing_is_newest_first_and_prune_removes_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let jids: Vec<Jid> = (0..5)
            .map(|i| Jid::from_unix_us(1_700_000_000_000_000 + i * 1_000_000))
            .collect();
        for jid in &jids {
            store.put_job(&job(jid)).unwrap();
            store.put_returns(&[(jid.clone(), ret("a", 0))]).unwrap();
        }
        let listed: Vec<Jid> = store
            .jobs(10, None)
            .unwrap()
            .into_iter()
            .map(|j| j.record.jid)
            .collect();
        assert_eq!(listed, jids.iter().rev().cloned().collect::<Vec<_>>());
        let page: Vec<Jid> = store
            .jobs(2, Some(&jids[3]))
            .unwrap()
            .into_iter()
            .map(|j| j.record.jid)
            .collect();
        assert_eq!(page, vec![jids[2].clone(), jids[1].clone()]);
        assert_eq!(store.prune_before(&jids[2]).unwrap(), 2);
        assert!(store.job(&jids[0]).unwrap().is_none());
        assert!(store.returns(&jids[1]).unwrap().is_empty());
        assert_eq!(store.jobs_since(&jids[0]).unwrap().len(), 3);
    }
}
