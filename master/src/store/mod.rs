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

pub use engine::EngineError;
use engine::{Bytes, Engine, SledEngine, Space};

/// A store failure, naming what was being read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (sled's I/O, PostgreSQL's connection or a
    /// statement).
    #[error("store: {context}: {source}")]
    Engine {
        /// What was being done.
        context: &'static str,
        /// The engine's error.
        source: EngineError,
    },
    /// The thread following a shared store's event stream did not start.
    #[error("store: cannot follow the shared event stream: {0}")]
    Follow(String),
    /// The master config's `store` is not a store this halite knows.
    #[error("store {location:?}: {reason}")]
    Location {
        /// What the config says.
        location: String,
        /// Why it is refused.
        reason: &'static str,
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
    /// A copy's target already holds records (a copy is into a new
    /// store, before any master runs on it).
    #[error(
        "store: the target already holds {space}: copy into a new, empty database, \
         before any master runs on it"
    )]
    TargetNotEmpty {
        /// The keyspace found not empty.
        space: &'static str,
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

/// Names what was being done when the engine failed.
fn failed<E: Into<EngineError>>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |source| StoreError::Engine {
        context,
        source: source.into(),
    }
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
pub struct LazyJob(Bytes);

impl LazyJob {
    /// Decodes the whole job.
    pub fn decode(&self) -> Result<StoredJob, StoreError> {
        from_bytes("job", &self.0)
    }
}

/// The store: its engine and one keyspace per kind of record.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    jobs: Space,
    returns: Space,
    events: Space,
    minions: Space,
    presence: Space,
    checks: Space,
    deploys: Space,
    tokens: Space,
    audit: Space,
    bus: Space,
    minion_jobs: Space,
    /// The function index: `fun_key(fun, jid)` → nothing (schema 2).
    fun_jobs: Space,
    job_stream: Space,
    batches: Space,
    requests: Space,
    schedules: Space,
    outbox: Space,
    triggers: Space,
    rollouts: Space,
    active_rollouts: Space,
    /// Minion keys by state, as the masters sharing the store decided
    /// them (only written on a shared store).
    keys: Space,
    /// API users as the masters sharing the store last changed them
    /// (only written on a shared store).
    users: Space,
    /// Rollout actions asked on a master that does not drive, by id,
    /// until the driving master has applied them (`rollouts.rs`).
    rollout_actions: Space,
    /// Set on PostgreSQL: its partitions are made ahead as days pass.
    postgres: Option<Arc<postgres::PgEngine>>,
    publishing: Arc<std::sync::Mutex<()>>,
    live: tokio::sync::broadcast::Sender<Arc<BusEntry>>,
    /// Owned while any clone of this store lives; the PostgreSQL stream
    /// follower stops when it has no owner left.
    following: Arc<()>,
}

/// Every keyspace, by name (sled trees, PostgreSQL tables `kv_<name>`).
pub const SPACES: &[&str] = &[
    "jobs",
    "returns",
    "events",
    "minions",
    "presence",
    "checks",
    "deploys",
    "tokens",
    "audit",
    "bus",
    "minion_jobs",
    FUN_JOBS_TREE,
    "job_stream",
    "batches",
    "requests",
    "schedules",
    "outbox",
    "triggers",
    "rollouts",
    "active_rollouts",
    "keys",
    "users",
    "rollout_actions",
];

/// Where the store lives: the master config's `store` (a PostgreSQL URL),
/// or by default sled in `data_dir/store`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store in this directory.
    Sled(std::path::PathBuf),
    /// A PostgreSQL database, shared with other masters.
    Postgres(String),
}

impl StoreLocation {
    /// What the config's `store` says; `None`: sled in `default_dir`.
    pub fn parse(text: Option<&str>, default_dir: &Path) -> Result<StoreLocation, StoreError> {
        match text {
            None => Ok(StoreLocation::Sled(default_dir.to_path_buf())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(StoreLocation::Postgres(url.to_owned()))
            }
            Some(other) => Err(StoreError::Location {
                location: other.chars().take(200).collect(),
                reason:
                    "expected a postgres:// URL (leave it out for the embedded store in data_dir)",
            }),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    /// The location without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sled(dir) => write!(f, "{}", dir.display()),
            StoreLocation::Postgres(url) => match url.split_once('@') {
                Some((user, rest)) => match user.rsplit_once(':') {
                    Some((scheme_user, _)) if scheme_user.contains("://") => {
                        write!(f, "{scheme_user}:***@{rest}")
                    }
                    _ => write!(f, "{url}"),
                },
                None => write!(f, "{url}"),
            },
        }
    }
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
    let meta = db.open_tree(META_TREE).map_err(failed("open meta"))?;
    match meta.get(SCHEMA_KEY).map_err(failed("read schema"))? {
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
    let meta = db.open_tree(META_TREE).map_err(failed("open meta"))?;
    meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
        .map_err(failed("write schema"))?;
    db.flush().map_err(failed("flush schema"))?;
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
    let jobs = db.open_tree("jobs").map_err(failed("open jobs"))?;
    let index = db
        .open_tree(FUN_JOBS_TREE)
        .map_err(failed("open fun_jobs"))?;
    for item in jobs.iter() {
        let (_, bytes) = item.map_err(failed("scan jobs"))?;
        let head: HeadOnly = from_bytes("job", &bytes)?;
        index
            .insert(fun_key(&head.record.fun, &head.record.jid), &[])
            .map_err(failed("index job"))?;
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

mod copy;
mod engine;
mod fleet;
mod jobs;
mod numbered;
pub mod postgres;
mod records;
mod requests;
mod rollouts;
mod stream;
pub mod throwaway;
mod workflow;
pub use copy::copy_store;
pub use fleet::{SharedKey, SharedUser};
pub use rollouts::{AskedRolloutAction, AskedState, Refusal, ASKED_ACTIONS_KEPT_MS};
pub use workflow::Delivery;

pub use stream::{event_entry, return_entry};

impl Store {
    /// Opens the store where the config says: sled in a directory or a
    /// PostgreSQL database.
    pub fn at(location: &StoreLocation) -> Result<Store, StoreError> {
        match location {
            StoreLocation::Sled(dir) => Store::open(dir),
            StoreLocation::Postgres(url) => Store::connect(url),
        }
    }

    /// Opens (or creates) the store in `dir`, migrating an older schema
    /// in place and refusing a newer one. One process per store: a
    /// second master on the same `data_dir` fails here.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .flush_every_ms(Some(500))
            .open()
            .map_err(failed("open"))?;
        migrate(&db, dir)?;
        Store::over(Arc::new(SledEngine { db }), None)
    }

    /// Connects to the PostgreSQL store at `url` (several masters may),
    /// applying the migrations it lacks.
    pub fn connect(url: &str) -> Result<Store, StoreError> {
        let engine = Arc::new(postgres::PgEngine::connect(url).map_err(failed("connect"))?);
        let store = Store::over(engine.clone(), Some(engine))?;
        let live = store.live.clone();
        postgres::follow_stream(
            url.to_owned(),
            store.stream_head()?,
            Arc::downgrade(&store.following),
            move |id, bytes| match from_bytes::<BusEntry>("stream entry", bytes) {
                Ok(entry) => {
                    let _ = live.send(Arc::new(entry));
                }
                Err(e) => tracing::warn!(id, error = %e, "an undecodable stream entry skipped"),
            },
        )
        .map_err(|e| StoreError::Follow(e.to_string()))?;
        Ok(store)
    }

    fn over(
        engine: Arc<dyn Engine>,
        postgres: Option<Arc<postgres::PgEngine>>,
    ) -> Result<Store, StoreError> {
        let space = |name| engine.space(name).map_err(failed("open a keyspace"));
        Ok(Store {
            jobs: space("jobs")?,
            returns: space("returns")?,
            events: space("events")?,
            minions: space("minions")?,
            presence: space("presence")?,
            checks: space("checks")?,
            deploys: space("deploys")?,
            tokens: space("tokens")?,
            audit: space("audit")?,
            bus: space("bus")?,
            minion_jobs: space("minion_jobs")?,
            fun_jobs: space(FUN_JOBS_TREE)?,
            job_stream: space("job_stream")?,
            batches: space("batches")?,
            requests: space("requests")?,
            schedules: space("schedules")?,
            rollouts: space("rollouts")?,
            active_rollouts: space("active_rollouts")?,
            keys: space("keys")?,
            users: space("users")?,
            rollout_actions: space("rollout_actions")?,
            outbox: space("outbox")?,
            triggers: space("triggers")?,
            postgres,
            publishing: Arc::new(std::sync::Mutex::new(())),
            live: tokio::sync::broadcast::channel(LIVE_CAPACITY).0,
            following: Arc::new(()),
            engine,
        })
    }

    /// Takes or keeps lease `name` for `holder` (a master's id) for
    /// `ttl_ms`; whether `holder` has it. On sled always (one master).
    pub fn hold_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        self.engine
            .hold_lease(name, holder, ttl_ms)
            .map_err(failed("hold a lease"))
    }

    /// Is this store shared by several masters (PostgreSQL)?
    pub fn is_shared(&self) -> bool {
        self.postgres.is_some()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.engine.flush().map_err(failed("flush"))
    }
}

/// The index prefix of one minion's entries (`id` NUL).
fn jid_prefix_of_id(id: &str) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.push(0);
    key
}

/// Removes the entries of a keyspace keyed by big-endian time older
/// than `cutoff_ms`.
fn prune_timed(space: &Space, cutoff_ms: u64) -> Result<usize, StoreError> {
    space
        .remove_below(cutoff_ms.to_be_bytes())
        .map_err(failed("prune"))
}

/// Decodes one `(key, value)` of a scan; failures name the scan and the
/// record kind.
fn decode_item<T: serde::de::DeserializeOwned>(
    context: &'static str,
    what: &'static str,
    item: Result<(Bytes, Bytes), EngineError>,
) -> Result<T, StoreError> {
    let (_, bytes) = item.map_err(failed(context))?;
    from_bytes(what, &bytes)
}

/// The record stored under `name` in `space`, if any.
fn named<T: serde::de::DeserializeOwned>(
    space: &Space,
    name: &str,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    match space.get(name.as_bytes()).map_err(failed(what))? {
        Some(bytes) => Ok(Some(from_bytes(what, &bytes)?)),
        None => Ok(None),
    }
}

/// Every record in `space`, with the name it is stored under.
fn all_named<T: serde::de::DeserializeOwned>(
    space: &Space,
    what: &'static str,
) -> Result<Vec<(String, T)>, StoreError> {
    space
        .iter()
        .map(|item| {
            let (name, bytes) = item.map_err(failed(what))?;
            Ok((
                String::from_utf8_lossy(&name).into_owned(),
                from_bytes(what, &bytes)?,
            ))
        })
        .collect()
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

/// A fresh, empty store on one engine, opened as often as a test wants
/// (a reopen sees what was stored before).
#[cfg(test)]
pub(crate) struct Fresh {
    dir: tempfile::TempDir,
    url: Option<String>,
}

#[cfg(test)]
impl Fresh {
    /// The database's URL, on PostgreSQL.
    pub(crate) fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Opens (again) the store.
    pub(crate) fn open(&self) -> Store {
        match &self.url {
            Some(url) => Store::connect(url).expect("connect to the test database"),
            None => {
                // sled lets go of the directory's lock when the last
                // background write of a handle just dropped ends.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                loop {
                    match Store::open(self.dir.path()) {
                        Err(StoreError::Engine {
                            source: EngineError::Sled(sled::Error::Io(io)),
                            ..
                        }) if matches!(
                            io.kind(),
                            // sled reports a held lock as `Other`.
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Other
                        ) && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(std::time::Duration::from_millis(10))
                        }
                        opened => break opened.expect("open the test store"),
                    }
                }
            }
        }
    }
}

/// The store tests run on every engine: sled in a temporary directory
/// and PostgreSQL in a new database of this test process's own cluster.
#[cfg(test)]
pub(crate) fn each_engine() -> [Fresh; 2] {
    static CLUSTER: std::sync::OnceLock<throwaway::Cluster> = std::sync::OnceLock::new();
    let cluster = CLUSTER.get_or_init(|| {
        throwaway::Cluster::start().expect("start a PostgreSQL cluster for the store tests")
    });
    let url = cluster.database().expect("create a test database");
    [
        Fresh {
            dir: tempfile::tempdir().unwrap(),
            url: None,
        },
        Fresh {
            dir: tempfile::tempdir().unwrap(),
            url: Some(url),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::TargetType;

    pub(super) fn job(jid: &Jid) -> StoredJob {
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
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
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
            assert_eq!(store.fun_jobs.len().unwrap(), 6);
        }
    }

    #[test]
    fn opening_a_schema_1_store_builds_the_function_index() {
        let dir = tempfile::tempdir().unwrap();
        let jid = Jid::from_unix_us(1_700_000_000_000_000);
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_job(&job_of(&jid, "git_deploy.deploy")).unwrap();
            // What a schema 1 store looks like: jobs without the index.
            store.fun_jobs.remove_below([0xff]).unwrap();
            store
                .engine
                .space(META_TREE)
                .unwrap()
                .insert(SCHEMA_KEY, 1u32.to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                jids_of(&store, |f| f.starts_with("git_deploy"), None),
                vec![jid]
            );
        }
        let db = sled::open(dir.path()).unwrap();
        assert_eq!(schema_of(&db).unwrap(), Some(SCHEMA_VERSION));
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
        for fresh in crate::store::each_engine() {
            let jid = Jid::from_unix_us(1_700_000_000_000_000);
            {
                let store = fresh.open();
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
            let store = fresh.open();
            let stored = store.job(&jid).unwrap().unwrap();
            assert_eq!(stored.record, job(&jid).record);
            assert_eq!(stored.envelope, vec![1, 2, 3, 255]);
            assert_eq!(store.returns(&jid).unwrap(), vec![ret("a", 0)]);
            assert_eq!(store.events(&jid, None).unwrap().len(), 1);
            let cursor = store.events(&jid, None).unwrap()[0].cursor;
            assert!(store.events(&jid, Some(cursor)).unwrap().is_empty());
        }
    }

    #[test]
    fn a_store_location_is_shown_without_its_password() {
        let shown = |url: &str| StoreLocation::Postgres(url.into()).to_string();
        assert_eq!(
            shown("postgres://halite:s3cret@db:5432/halite"),
            "postgres://halite:***@db:5432/halite"
        );
        assert_eq!(
            shown("postgres://halite@db/halite"),
            "postgres://halite@db/halite"
        );
        assert!(StoreLocation::parse(Some("sqlite:///x"), Path::new("/d")).is_err());
    }

    #[test]
    fn the_returns_of_many_jobs_come_back_by_job_in_one_read() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let jids: Vec<Jid> = (0..3)
                .map(|i| Jid::from_unix_us(1_700_000_000_000_000 + i * 1_000_000))
                .collect();
            store
                .put_returns(&[
                    (jids[0].clone(), ret("b", 0)),
                    (jids[0].clone(), ret("a", 1)),
                    (jids[2].clone(), ret("c", 0)),
                ])
                .unwrap();
            let outcomes = store.return_outcomes_of(&jids).unwrap();
            let seen: Vec<Vec<(String, bool)>> = outcomes
                .iter()
                .map(|list| list.iter().map(|o| (o.id.clone(), o.success)).collect())
                .collect();
            assert_eq!(
                seen,
                vec![
                    vec![("a".to_owned(), false), ("b".to_owned(), true)],
                    vec![],
                    vec![("c".to_owned(), true)],
                ]
            );
            assert!(store.return_outcomes_of(&[]).unwrap().is_empty());
        }
    }

    #[test]
    fn a_duplicate_return_keeps_the_first() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let jid = Jid::from_unix_us(1_700_000_000_000_000);
            assert_eq!(
                store
                    .put_returns(&[(jid.clone(), ret("a", 0)), (jid.clone(), ret("a", 1))])
                    .unwrap(),
                vec![true, false]
            );
            assert_eq!(store.returns(&jid).unwrap(), vec![ret("a", 0)]);
        }
    }

    #[test]
    fn checks_filter_by_time_and_failure_and_prune() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
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
    }

    #[test]
    fn listing_is_newest_first_and_prune_removes_old() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
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
}
