//! The PostgreSQL engine: one table per keyspace (`kv_<name>`, `k bytea`
//! primary key, `v bytea`), so several masters share one store.
//!
//! - **Ordering.** `bytea` compares bytewise, as sled does, so every range
//!   the store reads (jobs newest first, one job's returns) is an index
//!   range scan, read in pages as the caller walks.
//! - **Exactly once.** A return is inserted with `ON CONFLICT DO NOTHING`
//!   on its `(jid, minion)` key: a return re-sent, or sent to two
//!   masters, is stored once and announced once.
//! - **Ids.** Event cursors, stream ids and outbox ids come from one
//!   sequence; request and rollout numbers from a sequence each, so two
//!   masters never hand out the same one.
//! - **Durability.** Sessions commit with `synchronous_commit = off` and
//!   [`Engine::flush`] commits one synchronous transaction: PostgreSQL
//!   flushes the write-ahead log up to that commit, which covers every
//!   commit before it. That is sled's contract (writes visible at once,
//!   durable at flush), so the return collector's one flush per batch
//!   works unchanged.
//! - **Time partitions.** Returns and events (keys start with the jid,
//!   `YYYYMMDD…`) are partitioned by day; pruning drops the partitions
//!   wholly older than the cutoff and deletes only the rest. A default
//!   partition takes rows of days without one, so no insert depends on
//!   the partitions being made in time.
//! - **Migrations** are numbered SQL steps in [`MIGRATIONS`], applied at
//!   start under an advisory lock (two masters starting together apply
//!   each once) and recorded in `halite_migrations`.
//!
//! **Which calls block.** The `postgres` client is synchronous; its
//! connections live on [`POOL_SIZE`] threads of their own, and a store
//! call sends its statement there and waits for the answer. That keeps
//! the store's calls synchronous like sled's (a round trip on loopback
//! is tens of microseconds), and works from any thread, async or not.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, NoTls, Row, Statement};

use super::engine::{Bytes, Engine, EngineError, Item, KeyRange, Keyspace, OrderedWrite, Space};
#[cfg(test)]
use super::Store;

/// The channel stream appends notify (`LISTEN halite_stream`).
const STREAM_CHANNEL: &str = "halite_stream";

/// Connections (and threads) per master.
pub const POOL_SIZE: usize = 4;

/// Keyspaces partitioned by day (keys start with a jid).
const PARTITIONED: &[&str] = &["returns", "events"];

/// Keyspaces numbered by their own sequence.
const NUMBERED: &[&str] = &["requests", "rollouts"];

/// Days of partitions made ahead of today.
const DAYS_AHEAD: u64 = 3;

/// The schema, step by step. A step is never edited once released; a
/// change is a new step.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, "the keyspaces, ids and time partitions"),
    (2, "leases"),
    (3, "minion keys shared by the masters"),
    (4, "API users shared by the masters"),
    (5, "rollout actions asked on a master that does not drive"),
];

/// The keyspaces of migration 1, as they were then (a step never
/// changes; a keyspace added later is a step of its own).
const V1_SPACES: &[&str] = &[
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
    "fun_jobs",
    "job_stream",
    "batches",
    "requests",
    "schedules",
    "outbox",
    "triggers",
    "rollouts",
    "active_rollouts",
];

/// A task for a pooled connection.
type Task = Box<dyn FnOnce(&mut Conn) + Send>;

/// The connection pool: threads each owning one connection.
struct Pool {
    tasks: Mutex<Option<mpsc::Sender<Task>>>,
}

impl Pool {
    fn start(url: &str) -> Result<Pool, EngineError> {
        let (send, receive) = mpsc::channel::<Task>();
        let receive = Arc::new(Mutex::new(receive));
        for n in 0..POOL_SIZE {
            let receive = receive.clone();
            let mut conn = Conn::new(url);
            std::thread::Builder::new()
                .name(format!("store-pg-{n}"))
                .spawn(move || loop {
                    let task = match receive.lock() {
                        Ok(receive) => receive.recv(),
                        Err(_) => return,
                    };
                    match task {
                        Ok(task) => task(&mut conn),
                        Err(_) => return,
                    }
                })
                .map_err(|_| EngineError::PoolStopped)?;
        }
        let pool = Pool {
            tasks: Mutex::new(Some(send)),
        };
        // Connect once now, so a wrong URL fails the start and not the
        // first store call (on a pool thread: the client blocks on a
        // runtime of its own, which an async caller's thread refuses).
        pool.run(|conn| conn.client().map(|_| ()))?;
        Ok(pool)
    }

    /// Runs `work` on a pooled connection and waits for its answer.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Conn) -> Result<T, EngineError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let (answer, answered) = mpsc::sync_channel(1);
        let task: Task = Box::new(move |conn| {
            let _ = answer.send(work(conn));
        });
        let sent = match self.tasks.lock() {
            Ok(tasks) => tasks.as_ref().map(|tasks| tasks.send(task).is_ok()),
            Err(_) => None,
        };
        if sent != Some(true) {
            return Err(EngineError::PoolStopped);
        }
        answered.recv().map_err(|_| EngineError::PoolStopped)?
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the channel ends the threads once their task is done.
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.take();
        }
    }
}

/// One connection and its prepared statements.
struct Conn {
    url: String,
    client: Option<Client>,
    prepared: HashMap<String, Statement>,
}

impl Conn {
    fn new(url: &str) -> Conn {
        Conn {
            url: url.to_owned(),
            client: None,
            prepared: HashMap::new(),
        }
    }

    /// The connection, made (again) if there is none or it was lost.
    fn client(&mut self) -> Result<&mut Client, EngineError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.prepared.clear();
            let mut client = Client::connect(&self.url, NoTls)?;
            client.batch_execute("SET synchronous_commit = off")?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    fn statement(&mut self, sql: &str) -> Result<Statement, EngineError> {
        if let Some(statement) = self.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client()?.prepare(sql)?;
        self.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, EngineError> {
        let statement = self.statement(sql)?;
        Ok(self.client()?.query(&statement, params)?)
    }

    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, EngineError> {
        let statement = self.statement(sql)?;
        Ok(self.client()?.execute(&statement, params)?)
    }
}

/// A store in PostgreSQL.
pub struct PgEngine {
    pool: Arc<Pool>,
}

impl PgEngine {
    /// Connects, applies the migrations this database lacks and makes
    /// the coming days' partitions.
    pub fn connect(url: &str) -> Result<PgEngine, EngineError> {
        let pool = Arc::new(Pool::start(url)?);
        pool.run(move |conn| migrate(conn.client()?))?;
        let engine = PgEngine { pool };
        engine.make_partitions(halite_proto::time::now_ms())?;
        Ok(engine)
    }

    /// Makes the partitions of the days from yesterday to
    /// [`DAYS_AHEAD`] days on (those already there are kept).
    pub fn make_partitions(&self, now_ms: u64) -> Result<(), EngineError> {
        self.pool.run(move |conn| {
            let client = conn.client()?;
            for table in PARTITIONED {
                for day in 0..=DAYS_AHEAD + 1 {
                    let at = (now_ms / 1000 + day * 86_400).saturating_sub(86_400);
                    let (from, to) = day_bounds(at);
                    let sql = format!(
                        "CREATE TABLE IF NOT EXISTS kv_{table}_p{from} PARTITION OF kv_{table} \
                         FOR VALUES FROM ('{from}') TO ('{to}')"
                    );
                    // A default partition already holding rows of that day
                    // refuses the new one: those rows stay where they are
                    // (pruning deletes them), and the day goes on without.
                    if let Err(e) = client.batch_execute(&sql) {
                        tracing::warn!(table, day = from, error = %e, "cannot make a partition");
                    }
                }
            }
            Ok(())
        })
    }
}

/// The day of `at_s` (unix seconds) and the next, as `YYYYMMDD`: the
/// partition's bounds on jid-prefixed keys.
fn day_bounds(at_s: u64) -> (String, String) {
    let day = |s: u64| halite_proto::Jid::from_unix_us(s * 1_000_000).as_str()[..8].to_owned();
    (day(at_s), day(at_s + 86_400))
}

/// Applies the missing [`MIGRATIONS`] in one transaction under an
/// advisory lock.
fn migrate(client: &mut Client) -> Result<(), EngineError> {
    let mut tx = client.transaction()?;
    // Any constant: one lock for "halite migrates this database".
    tx.execute("SELECT pg_advisory_xact_lock(4857001)", &[])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS halite_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM halite_migrations", &[])?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, name) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(&migration_sql(*version))?;
        tx.execute(
            "INSERT INTO halite_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )?;
        tracing::info!(version, name, "store migration applied");
    }
    tx.commit()?;
    Ok(())
}

/// The SQL of one migration step.
fn migration_sql(version: i32) -> String {
    match version {
        1 => {
            let mut sql = String::from("CREATE SEQUENCE halite_ids;\n");
            for space in V1_SPACES {
                if PARTITIONED.contains(space) {
                    sql.push_str(&format!(
                        "CREATE TABLE kv_{space} (k bytea PRIMARY KEY, v bytea NOT NULL) \
                         PARTITION BY RANGE (k);\n\
                         CREATE TABLE kv_{space}_default PARTITION OF kv_{space} DEFAULT;\n"
                    ));
                } else {
                    sql.push_str(&format!(
                        "CREATE TABLE kv_{space} (k bytea PRIMARY KEY, v bytea NOT NULL);\n"
                    ));
                }
                if NUMBERED.contains(space) {
                    sql.push_str(&format!("CREATE SEQUENCE kv_{space}_seq;\n"));
                }
            }
            sql
        }
        2 => "CREATE TABLE halite_leases (
                  name text PRIMARY KEY,
                  holder text NOT NULL,
                  expires_at timestamptz NOT NULL)"
            .to_owned(),
        3 => "CREATE TABLE kv_keys (k bytea PRIMARY KEY, v bytea NOT NULL)".to_owned(),
        4 => "CREATE TABLE kv_users (k bytea PRIMARY KEY, v bytea NOT NULL)".to_owned(),
        5 => "CREATE TABLE kv_rollout_actions (k bytea PRIMARY KEY, v bytea NOT NULL)".to_owned(),
        _ => unreachable!("every step in MIGRATIONS has its SQL"),
    }
}

impl Engine for PgEngine {
    fn space(&self, name: &'static str) -> Result<Space, EngineError> {
        Ok(Space(Arc::new(PgSpace {
            pool: self.pool.clone(),
            name,
            sql: Sql::of(name),
        })))
    }

    fn generate_id(&self) -> Result<u64, EngineError> {
        self.pool.run(|conn| {
            let rows = conn.query("SELECT nextval('halite_ids')", &[])?;
            Ok(rows[0].get::<_, i64>(0) as u64)
        })
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.pool.run(|conn| {
            // A transaction with an xid commits with a WAL record;
            // committed synchronously, the WAL is flushed up to it.
            let mut tx = conn.client()?.transaction()?;
            tx.batch_execute("SET LOCAL synchronous_commit = on; SELECT txid_current()")?;
            tx.commit()?;
            Ok(())
        })
    }

    fn append_ordered(&self, write: OrderedWrite) -> Result<u64, EngineError> {
        self.pool.run(move |conn| {
            let lock = conn.statement("SELECT pg_advisory_xact_lock(4857002)")?;
            let next = conn.statement("SELECT nextval('halite_ids')")?;
            let notify = conn.statement(&format!("SELECT pg_notify('{STREAM_CHANNEL}', '')"))?;
            let mut tx = conn.client()?.transaction()?;
            // Held to the commit: ids commit in the order handed out, so
            // a follower reading past its last id skips none.
            tx.execute(&lock, &[])?;
            let id = tx.query_one(&next, &[])?.get::<_, i64>(0) as u64;
            for (space, key, value) in write(id).map_err(EngineError::Encode)? {
                tx.execute(&upsert_sql(space.name()), &[&key, &value])?;
            }
            tx.execute(&notify, &[])?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn raise_ids(&self, next: u64) -> Result<(), EngineError> {
        let next = i64::try_from(next).unwrap_or(i64::MAX);
        self.pool.run(move |conn| {
            // `is_called = false`: the next nextval answers `next` itself.
            conn.query(
                "SELECT setval('halite_ids', greatest($1, \
                 (SELECT last_value + 1 FROM halite_ids)), false)",
                &[&next],
            )?;
            Ok(())
        })
    }

    fn hold_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, EngineError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        self.pool.run(move |conn| {
            // Taken when free or run out, kept (renewed) by its holder;
            // the row's lock orders two masters asking at once. The
            // database's clock decides, so masters' clocks may differ.
            let rows = conn.query(
                "INSERT INTO halite_leases (name, holder, expires_at) \
                 VALUES ($1, $2, clock_timestamp() + $3::float8 * interval '1 millisecond') \
                 ON CONFLICT (name) DO UPDATE \
                 SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE halite_leases.holder = excluded.holder \
                    OR halite_leases.expires_at < clock_timestamp() \
                 RETURNING holder",
                &[&name, &holder, &(ttl_ms as f64)],
            )?;
            Ok(!rows.is_empty())
        })
    }
}

/// One keyspace's fixed statements.
struct Sql {
    get: String,
    upsert: String,
    insert_new: String,
    remove: String,
    count: String,
    swap: String,
    remove_if: String,
}

impl Sql {
    fn of(name: &str) -> Sql {
        Sql {
            get: format!("SELECT v FROM kv_{name} WHERE k = $1"),
            upsert: upsert_sql(name),
            insert_new: format!(
                "INSERT INTO kv_{name} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO NOTHING"
            ),
            remove: format!("DELETE FROM kv_{name} WHERE k = $1"),
            count: format!("SELECT count(*) FROM kv_{name}"),
            swap: format!("UPDATE kv_{name} SET v = $3 WHERE k = $1 AND v = $2"),
            remove_if: format!("DELETE FROM kv_{name} WHERE k = $1 AND v = $2"),
        }
    }
}

/// A keyspace's table.
struct PgSpace {
    pool: Arc<Pool>,
    name: &'static str,
    sql: Sql,
}

/// Sets a key of table `kv_<name>` to a value.
fn upsert_sql(name: &str) -> String {
    format!(
        "INSERT INTO kv_{name} (k, v) VALUES ($1, $2) \
         ON CONFLICT (k) DO UPDATE SET v = excluded.v"
    )
}

impl Keyspace for PgSpace {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let sql = self.sql.get.clone();
        let key = key.to_vec();
        self.pool.run(move |conn| {
            let rows = conn.query(&sql, &[&key])?;
            Ok(rows.first().map(|row| Bytes::Owned(row.get(0))))
        })
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        let sql = self.sql.upsert.clone();
        let (key, value) = (key.to_vec(), value.to_vec());
        self.pool
            .run(move |conn| conn.execute(&sql, &[&key, &value]).map(|_| ()))
    }

    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, EngineError> {
        let sql = self.sql.insert_new.clone();
        let (key, value) = (key.to_vec(), value.to_vec());
        self.pool
            .run(move |conn| Ok(conn.execute(&sql, &[&key, &value])? == 1))
    }

    fn insert_new_many(&self, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), EngineError> {
        let sql = format!(
            "INSERT INTO kv_{} (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
             ON CONFLICT (k) DO NOTHING",
            self.name
        );
        let (keys, values): (Vec<Vec<u8>>, Vec<Vec<u8>>) = rows.iter().cloned().unzip();
        self.pool
            .run(move |conn| conn.execute(&sql, &[&keys, &values]).map(|_| ()))
    }

    fn remove(&self, key: &[u8]) -> Result<bool, EngineError> {
        let sql = self.sql.remove.clone();
        let key = key.to_vec();
        self.pool
            .run(move |conn| Ok(conn.execute(&sql, &[&key])? > 0))
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, EngineError> {
        let key = key.to_vec();
        // Each case is one statement, so atomic without a transaction:
        // the row's lock orders two masters swapping the same key.
        match (old.map(<[u8]>::to_vec), new.map(<[u8]>::to_vec)) {
            (None, Some(new)) => self.insert_new(&key, &new),
            (None, None) => Ok(self.get(&key)?.is_none()),
            (Some(old), Some(new)) => {
                let sql = self.sql.swap.clone();
                self.pool
                    .run(move |conn| Ok(conn.execute(&sql, &[&key, &old, &new])? == 1))
            }
            (Some(old), None) => {
                let sql = self.sql.remove_if.clone();
                self.pool
                    .run(move |conn| Ok(conn.execute(&sql, &[&key, &old])? == 1))
            }
        }
    }

    fn scan(&self, range: KeyRange, values: bool) -> Box<dyn Iterator<Item = Item> + Send> {
        Box::new(PgScan {
            pool: self.pool.clone(),
            name: self.name,
            range,
            values,
            page: Vec::new().into_iter(),
            page_size: FIRST_PAGE,
            done: false,
        })
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, EngineError> {
        let keys = keys.to_vec();
        let sql = format!("SELECT k, v FROM kv_{} WHERE k = ANY($1)", self.name);
        self.pool.run(move |conn| {
            let mut found: HashMap<Vec<u8>, Vec<u8>> = conn
                .query(&sql, &[&keys])?
                .into_iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect();
            Ok(keys
                .iter()
                .map(|key| found.remove(key).map(Bytes::Owned))
                .collect())
        })
    }

    fn scan_prefixes(&self, prefixes: &[Vec<u8>]) -> Result<Vec<Vec<(Bytes, Bytes)>>, EngineError> {
        let count = prefixes.len();
        let lows: Vec<Vec<u8>> = prefixes.to_vec();
        // Past every key under the prefix (an all-0xff prefix, which no
        // store key has, is closed with more 0xff).
        let highs: Vec<Vec<u8>> = prefixes
            .iter()
            .map(|p| {
                super::engine::prefix_end(p).unwrap_or_else(|| {
                    let mut end = p.clone();
                    end.extend_from_slice(&[0xff; 16]);
                    end
                })
            })
            .collect();
        let sql = format!(
            "SELECT p.n, r.k, r.v \
             FROM unnest($1::bytea[], $2::bytea[]) WITH ORDINALITY AS p(lo, hi, n) \
             CROSS JOIN LATERAL \
             (SELECT k, v FROM kv_{} WHERE k >= p.lo AND k < p.hi ORDER BY k) r \
             ORDER BY p.n, r.k",
            self.name
        );
        self.pool.run(move |conn| {
            let mut out: Vec<Vec<(Bytes, Bytes)>> = vec![Vec::new(); count];
            for row in conn.query(&sql, &[&lows, &highs])? {
                let n: i64 = row.get(0);
                if let Some(list) = usize::try_from(n - 1).ok().and_then(|i| out.get_mut(i)) {
                    list.push((Bytes::Owned(row.get(1)), Bytes::Owned(row.get(2))));
                }
            }
            Ok(out)
        })
    }

    fn len(&self) -> Result<usize, EngineError> {
        let sql = self.sql.count.clone();
        self.pool.run(move |conn| {
            let rows = conn.query(&sql, &[])?;
            Ok(rows[0].get::<_, i64>(0) as usize)
        })
    }

    fn remove_below(&self, hi: &[u8]) -> Result<usize, EngineError> {
        let name = self.name;
        let hi = hi.to_vec();
        self.pool.run(move |conn| {
            let mut removed = 0usize;
            if PARTITIONED.contains(&name) {
                // Partitions are named by their first day; one wholly
                // below `hi` ends (next day) at or before it.
                let parts = conn.query(
                    "SELECT c.relname FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent \
                     WHERE p.relname = $1",
                    &[&format!("kv_{name}")],
                )?;
                let prefix = format!("kv_{name}_p");
                for row in parts {
                    let part: String = row.get(0);
                    let Some(day) = part.strip_prefix(&prefix) else {
                        continue;
                    };
                    let Some(end) = next_day(day) else {
                        continue;
                    };
                    if end.as_bytes() <= hi.as_slice() {
                        let rows = conn.query(&format!("SELECT count(*) FROM {part}"), &[])?;
                        removed += rows[0].get::<_, i64>(0) as usize;
                        conn.client()?
                            .batch_execute(&format!("DROP TABLE {part}"))?;
                        conn.prepared.clear();
                    }
                }
            }
            removed +=
                conn.execute(&format!("DELETE FROM kv_{name} WHERE k < $1"), &[&hi])? as usize;
            Ok(removed)
        })
    }

    fn next_number(&self) -> Result<u64, EngineError> {
        let name = self.name;
        self.pool.run(move |conn| {
            if NUMBERED.contains(&name) {
                // The sequence's next, or past the greatest key if a record
                // was put under a number it did not hand out.
                let rows = conn.query(
                    &format!(
                        "SELECT setval('kv_{name}_seq', greatest(nextval('kv_{name}_seq'), \
                         coalesce((SELECT ('x' || encode(k, 'hex'))::bit(64)::bigint + 1 \
                         FROM kv_{name} ORDER BY k DESC LIMIT 1), 1)))"
                    ),
                    &[],
                )?;
                return Ok(rows[0].get::<_, i64>(0) as u64);
            }
            // Not numbered by a sequence: past the greatest key.
            let rows = conn.query(
                &format!("SELECT k FROM kv_{name} ORDER BY k DESC LIMIT 1"),
                &[],
            )?;
            let last = rows
                .first()
                .and_then(|row| <[u8; 8]>::try_from(row.get::<_, Vec<u8>>(0).as_slice()).ok())
                .map_or(0, u64::from_be_bytes);
            Ok(last + 1)
        })
    }
}

/// Follows the event stream of every master sharing the database: reads
/// the entries past `cursor` in id order whenever one is appended
/// (`LISTEN`), and at least every second, handing each to `deliver`.
/// Runs on a thread of its own until `alive` has no owner left; a lost
/// connection is made again and reading goes on from the cursor.
pub fn follow_stream(
    url: String,
    mut cursor: u64,
    alive: std::sync::Weak<()>,
    deliver: impl Fn(u64, &[u8]) + Send + 'static,
) -> std::io::Result<()> {
    let read_after = "SELECT k, v FROM kv_bus WHERE k > $1 ORDER BY k LIMIT 1000";
    std::thread::Builder::new()
        .name("store-pg-stream".into())
        .spawn(move || {
            let mut warned = false;
            'connect: while alive.strong_count() > 0 {
                let mut client = match Client::connect(&url, NoTls)
                    .and_then(|mut c| c.batch_execute(&format!("LISTEN {STREAM_CHANNEL}")).map(|()| c))
                {
                    Ok(client) => client,
                    Err(e) => {
                        if !std::mem::replace(&mut warned, true) {
                            tracing::warn!(error = %e, "cannot follow the shared event stream; retrying");
                        }
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                };
                warned = false;
                while alive.strong_count() > 0 {
                    loop {
                        let rows = match client.query(read_after, &[&cursor.to_be_bytes().to_vec()]) {
                            Ok(rows) => rows,
                            Err(_) => continue 'connect,
                        };
                        for row in &rows {
                            let key: Vec<u8> = row.get(0);
                            let Ok(id) = <[u8; 8]>::try_from(key.as_slice()) else {
                                continue;
                            };
                            cursor = u64::from_be_bytes(id);
                            deliver(cursor, &row.get::<_, Vec<u8>>(1));
                        }
                        if rows.len() < 1000 {
                            break;
                        }
                    }
                    let waited = client
                        .notifications()
                        .timeout_iter(std::time::Duration::from_secs(1))
                        .next();
                    if waited.is_err() {
                        continue 'connect;
                    }
                    // Several appends, one read.
                    while let Ok(Some(_)) = client.notifications().iter().next() {}
                }
            }
        })
        .map(|_| ())
}

/// `YYYYMMDD` of the day after `day`.
fn next_day(day: &str) -> Option<String> {
    if day.len() != 8 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (
        day[..4].parse().ok()?,
        day[4..6].parse().ok()?,
        day[6..].parse().ok()?,
    );
    let days = halite_proto::time::days_from_civil(y, m, d);
    let (_, next) = day_bounds((days.max(0) as u64) * 86_400);
    Some(next)
}

/// Rows in the first page of a scan; each next page doubles, up to
/// [`LAST_PAGE`] (a listing of 50 reads one page, a full scan few).
const FIRST_PAGE: i64 = 64;
const LAST_PAGE: i64 = 2048;

/// A range read in pages, each continuing after the last key seen.
struct PgScan {
    pool: Arc<Pool>,
    name: &'static str,
    range: KeyRange,
    values: bool,
    page: std::vec::IntoIter<(Bytes, Bytes)>,
    page_size: i64,
    done: bool,
}

impl PgScan {
    fn fetch(&mut self) -> Result<(), EngineError> {
        let mut clauses = Vec::new();
        let mut params: Vec<Vec<u8>> = Vec::new();
        for (bound, below) in [(&self.range.lo, false), (&self.range.hi, true)] {
            let (op, key) = match (bound, below) {
                (Bound::Included(key), false) => (">=", key),
                (Bound::Excluded(key), false) => (">", key),
                (Bound::Included(key), true) => ("<=", key),
                (Bound::Excluded(key), true) => ("<", key),
                (Bound::Unbounded, _) => continue,
            };
            params.push(key.clone());
            clauses.push(format!("k {op} ${}", params.len()));
        }
        let sql = format!(
            "SELECT k{} FROM kv_{}{}{} ORDER BY k{} LIMIT {}",
            if self.values { ", v" } else { "" },
            self.name,
            if clauses.is_empty() { "" } else { " WHERE " },
            clauses.join(" AND "),
            if self.range.rev { " DESC" } else { "" },
            self.page_size,
        );
        let values = self.values;
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self.pool.run(move |conn| {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            Ok(conn
                .query(&sql, &params)?
                .into_iter()
                .map(|row| {
                    let value = if values { row.get(1) } else { Vec::new() };
                    (row.get(0), value)
                })
                .collect())
        })?;
        if (rows.len() as i64) < self.page_size {
            self.done = true;
        }
        // The next page continues past the last key of this one.
        if let Some((last, _)) = rows.last() {
            let after = Bound::Excluded(last.clone());
            if self.range.rev {
                self.range.hi = after;
            } else {
                self.range.lo = after;
            }
        }
        self.page_size = (self.page_size * 2).min(LAST_PAGE);
        self.page = rows
            .into_iter()
            .map(|(k, v)| (Bytes::Owned(k), Bytes::Owned(v)))
            .collect::<Vec<_>>()
            .into_iter();
        Ok(())
    }
}

impl Iterator for PgScan {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if let Some(entry) = self.page.next() {
            return Some(Ok(entry));
        }
        if self.done {
            return None;
        }
        if let Err(e) = self.fetch() {
            self.done = true;
            return Some(Err(e));
        }
        self.page.next().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_by_one_master_until_it_runs_out() {
        let fresh = &crate::store::each_engine()[1];
        let store = fresh.open();
        assert!(store.is_shared());
        assert!(store.hold_lease("drivers", "master-a", 60_000).unwrap());
        assert!(!store.hold_lease("drivers", "master-b", 60_000).unwrap());
        // Renewed by its holder; another lease is another name.
        assert!(store.hold_lease("drivers", "master-a", 60_000).unwrap());
        assert!(store.hold_lease("other", "master-b", 60_000).unwrap());
        // Run out (a holder that stopped renewing): the next asker has it.
        assert!(store.hold_lease("drivers", "master-a", 0).unwrap());
        assert!(store.hold_lease("drivers", "master-b", 60_000).unwrap());
        assert!(!store.hold_lease("drivers", "master-a", 60_000).unwrap());
    }

    #[test]
    fn pruning_drops_the_partitions_of_whole_days() {
        use halite_model::ReturnRecord;
        use halite_proto::Jid;
        let fresh = &crate::store::each_engine()[1];
        let url = fresh.url().unwrap().to_owned();
        let store = fresh.open();
        let engine = PgEngine::connect(&url).unwrap();
        // Each prune makes the coming days' partitions.
        store.prune_before(&Jid::from_unix_us(0)).unwrap();
        // Two days on: made even if midnight passed since the prune.
        let two_days_on = day_bounds(halite_proto::time::now_ms() / 1000 + 2 * 86_400).0;
        let mut client = Client::connect(&url, NoTls).unwrap();
        let ahead: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname = $1",
                &[&format!("kv_returns_p{two_days_on}")],
            )
            .unwrap()
            .get(0);
        assert_eq!(ahead, 1, "the partition two days ahead");
        // 2023-11-14 and the days around it get partitions of their own.
        let day_ms = 86_400_000;
        let start_ms = 1_699_920_000_000; // 2023-11-14 00:00 UTC
        engine.make_partitions(start_ms).unwrap();
        let jid_at = |ms: u64| Jid::from_unix_us(ms * 1000 + 1);
        let ret = |id: &str| ReturnRecord {
            id: id.into(),
            fun: "test.ping".into(),
            success: true,
            retcode: 0,
            data: serde_json::Value::Bool(true),
            started_at: 1,
            finished_at: 2,
            stored_at: 3,
        };
        for day in 0..3 {
            let jid = jid_at(start_ms + day * day_ms);
            store
                .put_returns(&[(jid.clone(), ret("a")), (jid, ret("b"))])
                .unwrap();
        }
        let mut client = Client::connect(&url, NoTls).unwrap();
        let partitions = |client: &mut Client| -> Vec<String> {
            let mut names: Vec<String> = client
                .query(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'kv_returns'",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            names.sort();
            names
        };
        assert!(partitions(&mut client).contains(&"kv_returns_p20231114".to_owned()));
        let rows_of = |client: &mut Client, table: &str| -> i64 {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .unwrap()
                .get(0)
        };
        assert_eq!(rows_of(&mut client, "kv_returns_p20231115"), 2);
        assert_eq!(rows_of(&mut client, "kv_returns_default"), 0);
        // Prune before noon of the 15th: the 14th goes whole (its
        // partition dropped), the 15th keeps what is after the cutoff.
        let cutoff = jid_at(start_ms + day_ms + day_ms / 2);
        store.prune_before(&cutoff).unwrap();
        let left = partitions(&mut client);
        assert!(
            !left.contains(&"kv_returns_p20231114".to_owned()),
            "{left:?}"
        );
        assert!(
            left.contains(&"kv_returns_p20231115".to_owned()),
            "{left:?}"
        );
        assert_eq!(rows_of(&mut client, "kv_returns"), 2);
        assert!(store.returns(&jid_at(start_ms)).unwrap().is_empty());
        assert_eq!(
            store.returns(&jid_at(start_ms + 2 * day_ms)).unwrap().len(),
            2
        );
    }

    #[test]
    fn every_keyspace_has_its_table_after_the_migrations() {
        let fresh = &crate::store::each_engine()[1];
        let url = fresh.url().unwrap().to_owned();
        let engine = PgEngine::connect(&url).unwrap();
        for name in crate::store::SPACES {
            let space = engine.space(name).unwrap();
            assert_eq!(space.len().unwrap(), 0, "{name}");
        }
    }

    #[test]
    fn masters_starting_together_apply_each_migration_once() {
        let fresh = &crate::store::each_engine()[1];
        let opened: Vec<Store> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| fresh.open())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(opened.len(), 4);
        let url = fresh.url().unwrap();
        let mut client = Client::connect(url, NoTls).unwrap();
        let versions: Vec<i32> = client
            .query(
                "SELECT version FROM halite_migrations ORDER BY version",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let known: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, known);
    }

    #[test]
    fn partitions_are_bounded_by_days_as_jids_spell_them() {
        // 2026-12-01 12:00 UTC.
        assert_eq!(
            day_bounds(1_796_126_400),
            ("20261201".to_owned(), "20261202".to_owned())
        );
        assert_eq!(next_day("20261231").as_deref(), Some("20270101"));
        assert_eq!(next_day("20240228").as_deref(), Some("20240229"));
        assert_eq!(next_day("default"), None);
    }
}
