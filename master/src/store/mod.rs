//! The master's embedded store (sled): jobs, returns, events, minions,
//! the event stream, tokens, audit and deploy records, under a schema
//! version.
//!
//! One `Store` type; its methods live by concern in `jobs.rs` (jobs,
//! returns, events, batch plans, pruning), `stream.rs` (the event
//! stream), `fleet.rs` (minions, presence, checks) and `records.rs`
//! (tokens, audit, deploys).
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
    /// The function index: `fun_key(fun, jid)` → nothing (schema 2).
    fun_jobs: sled::Tree,
    job_stream: sled::Tree,
    batches: sled::Tree,
    requests: sled::Tree,
    schedules: sled::Tree,
    outbox: sled::Tree,
    triggers: sled::Tree,
    rollouts: sled::Tree,
    active_rollouts: sled::Tree,
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
pub const SCHEMA_VERSION: u32 = 2;

/// The function index's tree (schema 2).
const FUN_JOBS_TREE: &str = "fun_jobs";

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
/// records are exactly schema 1's, so that step only stamps the version.
/// Schema 2 adds the function index (`fun_jobs`), built here from the
/// jobs already stored.
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
    if found.unwrap_or(0) < 2 {
        index_functions(db)?;
    }
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

/// Schema 1 → 2: indexes every stored job under its function.
fn index_functions(db: &sled::Db) -> Result<(), StoreError> {
    let jobs = db.open_tree("jobs").map_err(sled_err("open jobs"))?;
    let index = db
        .open_tree(FUN_JOBS_TREE)
        .map_err(sled_err("open fun_jobs"))?;
    for item in jobs.iter() {
        let (_, bytes) = item.map_err(sled_err("scan jobs"))?;
        let head: HeadOnly = from_bytes("job", &bytes)?;
        index
            .insert(fun_key(&head.record.fun, &head.record.jid), &[])
            .map_err(sled_err("index job"))?;
    }
    Ok(())
}

/// The function index's prefix for one name: its length (u16,
/// big-endian) then the name, so no name is a prefix of another's keys.
fn fun_prefix(fun: &str) -> Vec<u8> {
    let name = &fun.as_bytes()[..fun.len().min(u16::MAX as usize)];
    let mut key = Vec::with_capacity(2 + name.len() + 20);
    key.extend_from_slice(&(name.len() as u16).to_be_bytes());
    key.extend_from_slice(name);
    key
}

/// A job's key in the function index.
fn fun_key(fun: &str, jid: &Jid) -> Vec<u8> {
    let mut key = fun_prefix(fun);
    key.extend_from_slice(jid.as_str().as_bytes());
    key
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

mod fleet;
mod jobs;
mod numbered;
mod records;
mod requests;
mod rollouts;
mod stream;
mod workflow;
pub use workflow::Delivery;

pub use stream::{event_entry, return_entry};

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
            fun_jobs: db
                .open_tree(FUN_JOBS_TREE)
                .map_err(sled_err("open fun_jobs"))?,
            job_stream: db
                .open_tree("job_stream")
                .map_err(sled_err("open job_stream"))?,
            batches: db.open_tree("batches").map_err(sled_err("open batches"))?,
            requests: db
                .open_tree("requests")
                .map_err(sled_err("open requests"))?,
            schedules: db
                .open_tree("schedules")
                .map_err(sled_err("open schedules"))?,
            rollouts: db
                .open_tree("rollouts")
                .map_err(sled_err("open rollouts"))?,
            active_rollouts: db
                .open_tree("active_rollouts")
                .map_err(sled_err("open active rollouts"))?,
            outbox: db.open_tree("outbox").map_err(sled_err("open outbox"))?,
            triggers: db
                .open_tree("triggers")
                .map_err(sled_err("open triggers"))?,
            publishing: Arc::new(std::sync::Mutex::new(())),
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
            db,
        })
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(sled_err("flush"))
    }
}

/// The index prefix of one minion's entries (`id` NUL).
fn jid_prefix_of_id(id: &str) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key
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

    fn job_of(jid: &Jid, fun: &str) -> StoredJob {
        let mut stored = job(jid);
        stored.record.fun = fun.into();
        stored
    }

    fn jids_of(store: &Store, wanted: impl Fn(&str) -> bool, before: Option<&Jid>) -> Vec<Jid> {
        store
            .scan_jobs_of(wanted, before)
            .unwrap()
            .map(|item| item.unwrap().0.jid)
            .collect()
    }

    #[test]
    fn the_function_index_merges_names_newest_first_and_forgets_pruned_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let funs = [
            "git_deploy.deploy",
            "test.ping",
            "git_deploy.rollback",
            "git_deploy",
        ];
        let jids: Vec<Jid> = (0..12)
            .map(|i| Jid::from_unix_us(1_700_000_000_000_000 + i * 1_000_000))
            .collect();
        for (i, jid) in jids.iter().enumerate() {
            store.put_job(&job_of(jid, funs[i % funs.len()])).unwrap();
        }
        // A name that is a prefix of another is its own entry.
        let mut names: Vec<String> = store
            .function_prefixes()
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "git_deploy",
                "git_deploy.deploy",
                "git_deploy.rollback",
                "test.ping"
            ]
        );
        let deploys = |jid: &Jid| {
            let i = jids.iter().position(|j| j == jid).unwrap();
            funs[i % funs.len()].starts_with("git_deploy")
        };
        let expected: Vec<Jid> = jids.iter().rev().filter(|j| deploys(j)).cloned().collect();
        assert_eq!(
            jids_of(&store, |f| f.starts_with("git_deploy"), None),
            expected
        );
        assert_eq!(
            jids_of(&store, |f| f.starts_with("git_deploy"), Some(&jids[6])),
            expected
                .iter()
                .filter(|j| **j < jids[6])
                .cloned()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            jids_of(&store, |f| f == "test.ping", None),
            vec![jids[9].clone(), jids[5].clone(), jids[1].clone()]
        );
        assert!(jids_of(&store, |f| f == "cmd.run", None).is_empty());
        assert_eq!(store.prune_before(&jids[6]).unwrap(), 6);
        assert_eq!(
            jids_of(&store, |f| f == "test.ping", None),
            vec![jids[9].clone()]
        );
        assert_eq!(store.fun_jobs.len(), 6);
    }

    #[test]
    fn opening_a_schema_1_store_builds_the_function_index() {
        let dir = tempfile::tempdir().unwrap();
        let jid = Jid::from_unix_us(1_700_000_000_000_000);
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_job(&job_of(&jid, "git_deploy.deploy")).unwrap();
            // What a schema 1 store looks like: jobs without the index.
            store.fun_jobs.clear().unwrap();
            store
                .db
                .open_tree(META_TREE)
                .unwrap()
                .insert(SCHEMA_KEY, &1u32.to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(schema_of(&store.db).unwrap(), Some(SCHEMA_VERSION));
        assert_eq!(
            jids_of(&store, |f| f.starts_with("git_deploy"), None),
            vec![jid]
        );
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
