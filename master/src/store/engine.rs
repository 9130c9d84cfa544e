//! What the store is written against: ordered keyspaces of byte keys and
//! byte values, with two engines behind them, sled (embedded, the
//! default) and PostgreSQL (shared by several masters, `postgres.rs`).
//!
//! The trait sits at the keyspace and not at the record level so that
//! every record kind (jobs, returns, requests, rollouts, ...) is written
//! once, in the store's own modules, and the same store tests prove both
//! engines: a record-level trait would be some seventy methods written
//! twice, drifting apart. What an engine must give is small and what both
//! do well: keys ordered bytewise (sled's order, and PostgreSQL's for
//! `bytea`), insert-if-absent (sled's compare-and-swap, PostgreSQL's
//! `ON CONFLICT DO NOTHING`: a return re-sent to two masters is stored
//! once), ids unique across writers, and a flush after which every write
//! so far is durable.

use std::ops::{Bound, Deref, RangeBounds};
use std::sync::Arc;

/// An engine failure.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// sled failed (I/O, corruption).
    #[error(transparent)]
    Sled(#[from] sled::Error),
    /// PostgreSQL refused a statement or the connection failed.
    #[error(transparent)]
    Postgres(#[from] postgres::Error),
    /// A record could not be encoded for an ordered append.
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// The PostgreSQL connection pool's threads are gone (the master is
    /// stopping).
    #[error("the PostgreSQL connection pool has stopped")]
    PoolStopped,
}

/// Bytes as an engine hands them out: sled's shared buffer (no copy) or
/// an owned copy from PostgreSQL.
#[derive(Clone, Debug)]
pub enum Bytes {
    /// A sled buffer.
    Shared(sled::IVec),
    /// An owned buffer.
    Owned(Vec<u8>),
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Shared(bytes) => bytes,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

/// A range of keys, in one direction.
#[derive(Clone, Debug)]
pub struct KeyRange {
    /// The lower bound.
    pub lo: Bound<Vec<u8>>,
    /// The upper bound.
    pub hi: Bound<Vec<u8>>,
    /// Newest (greatest) first.
    pub rev: bool,
}

/// What a scan yields: a key and its value (empty for a keys-only scan).
pub type Item = Result<(Bytes, Bytes), EngineError>;

/// Rows to write: keyspace, key, value.
pub type Rows = Vec<(Space, Vec<u8>, Vec<u8>)>;

/// What an ordered append writes, given the id it was handed.
pub type OrderedWrite = Box<dyn FnOnce(u64) -> Result<Rows, String> + Send>;

/// One ordered keyspace (a sled tree, a PostgreSQL table).
pub trait Keyspace: Send + Sync {
    /// The keyspace's name (the sled tree, the table `kv_<name>`).
    fn name(&self) -> &'static str;
    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError>;
    /// Sets `key` to `value`.
    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError>;
    /// Sets `key` to `value` only if `key` is absent; whether it was.
    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, EngineError>;
    /// Sets each absent key of `rows` to its value (one round trip per
    /// call on PostgreSQL: a store copy).
    fn insert_new_many(&self, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), EngineError>;
    /// Removes `key`; whether it was there.
    fn remove(&self, key: &[u8]) -> Result<bool, EngineError>;
    /// Replaces `key`'s value `old` by `new` (absent for either: `None`)
    /// only if it is still `old`; whether it was. What lets two masters
    /// change one record without either losing the other's change.
    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, EngineError>;
    /// The entries of `range` in its direction, read as the caller walks
    /// (values left empty unless `values`).
    fn scan(&self, range: KeyRange, values: bool) -> Box<dyn Iterator<Item = Item> + Send>;
    /// The entries under each of `prefixes`, in key order, one list per
    /// prefix: one round trip on PostgreSQL (a page of jobs and their
    /// returns is then two queries, not fifty-one).
    fn scan_prefixes(&self, prefixes: &[Vec<u8>]) -> Result<Vec<Vec<(Bytes, Bytes)>>, EngineError>;
    /// The values under `keys`, in their order (one round trip on
    /// PostgreSQL).
    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, EngineError>;
    /// How many entries there are.
    fn len(&self) -> Result<usize, EngineError>;
    /// Removes every key below `hi`; how many. PostgreSQL drops the
    /// partitions wholly below it instead of deleting their rows.
    fn remove_below(&self, hi: &[u8]) -> Result<usize, EngineError>;
    /// A number greater than every key's (keys are big-endian u64) and
    /// never handed out before, also to another master.
    fn next_number(&self) -> Result<u64, EngineError>;
}

/// An engine: its keyspaces, ids and durability.
pub trait Engine: Send + Sync {
    /// The keyspace `name` (created if new).
    fn space(&self, name: &'static str) -> Result<Space, EngineError>;
    /// An id greater than every id handed out before by this engine (to
    /// any master sharing it).
    fn generate_id(&self) -> Result<u64, EngineError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), EngineError>;
    /// Hands out the next id and writes what `write` makes of it, such
    /// that every id below it is written before it becomes visible (the
    /// event stream: a reader following ids misses none, even with several
    /// masters writing). The caller holds the store's publishing lock, which
    /// orders one process; PostgreSQL also orders the masters.
    fn append_ordered(&self, write: OrderedWrite) -> Result<u64, EngineError>;
    /// Takes or keeps lease `name` for `holder` for `ttl_ms`: true while
    /// `holder` has it, false while another holder's has not run out.
    fn hold_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, EngineError>;
    /// Makes every id handed out from now on at least `next` (a store
    /// copied in keeps its ids).
    fn raise_ids(&self, next: u64) -> Result<(), EngineError>;
}

/// A keyspace with sled's calling shape (what the store's modules use).
#[derive(Clone)]
pub struct Space(pub(super) Arc<dyn Keyspace>);

impl Space {
    /// The keyspace's name.
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// The value under `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, EngineError> {
        self.0.get(key.as_ref())
    }

    /// Is `key` there?
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> Result<bool, EngineError> {
        Ok(self.0.get(key.as_ref())?.is_some())
    }

    /// Sets `key` to `value`.
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), EngineError> {
        self.0.insert(key.as_ref(), value.as_ref())
    }

    /// Sets `key` only if absent; whether it was.
    pub fn insert_new(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<bool, EngineError> {
        self.0.insert_new(key.as_ref(), value.as_ref())
    }

    /// Sets each absent key of `rows` to its value.
    pub fn insert_new_many(&self, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), EngineError> {
        self.0.insert_new_many(rows)
    }

    /// Removes `key`; whether it was there.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool, EngineError> {
        self.0.remove(key.as_ref())
    }

    /// Sets `key` from `old` to `new` only if it is still `old`; whether
    /// it was (see [`Keyspace::compare_and_swap`]).
    pub fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, EngineError> {
        self.0.compare_and_swap(key.as_ref(), old, new)
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Scan {
        self.scan_of(Bound::Unbounded, Bound::Unbounded)
    }

    /// The entries in `range`, in key order.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Scan {
        let own = |bound: Bound<&K>| match bound {
            Bound::Included(key) => Bound::Included(key.as_ref().to_vec()),
            Bound::Excluded(key) => Bound::Excluded(key.as_ref().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.scan_of(own(range.start_bound()), own(range.end_bound()))
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Scan {
        let prefix = prefix.as_ref().to_vec();
        let hi = match prefix_end(&prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.scan_of(Bound::Included(prefix), hi)
    }

    /// The values under `keys`, in their order.
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, EngineError> {
        self.0.get_many(keys)
    }

    /// The entries under each of `prefixes`, one list per prefix.
    pub fn scan_prefixes(
        &self,
        prefixes: &[Vec<u8>],
    ) -> Result<Vec<Vec<(Bytes, Bytes)>>, EngineError> {
        self.0.scan_prefixes(prefixes)
    }

    /// The greatest entry.
    pub fn last(&self) -> Result<Option<(Bytes, Bytes)>, EngineError> {
        self.iter().rev().next().transpose()
    }

    /// How many entries there are.
    pub fn len(&self) -> Result<usize, EngineError> {
        self.0.len()
    }

    /// Removes every key below `hi`; how many.
    pub fn remove_below(&self, hi: impl AsRef<[u8]>) -> Result<usize, EngineError> {
        self.0.remove_below(hi.as_ref())
    }

    /// The next number of a numbered keyspace.
    pub fn next_number(&self) -> Result<u64, EngineError> {
        self.0.next_number()
    }

    fn scan_of(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan {
        Scan {
            space: self.0.clone(),
            range: KeyRange { lo, hi, rev: false },
            values: true,
            open: None,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`
/// (`None`: no such key, the prefix is all 0xff).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A range not read yet: `rev` and `keys` shape it, iterating reads it.
pub struct Scan {
    space: Arc<dyn Keyspace>,
    range: KeyRange,
    values: bool,
    open: Option<Box<dyn Iterator<Item = Item> + Send>>,
}

impl Scan {
    /// Greatest key first.
    pub fn rev(mut self) -> Scan {
        self.range.rev = !self.range.rev;
        self
    }

    /// Only the keys (PostgreSQL does not send the values).
    pub fn keys(mut self) -> Keys {
        self.values = false;
        Keys(self)
    }
}

impl Iterator for Scan {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let open = self
            .open
            .get_or_insert_with(|| self.space.scan(self.range.clone(), self.values));
        open.next()
    }
}

/// The keys of a [`Scan`].
pub struct Keys(Scan);

impl Keys {
    /// Greatest key first.
    pub fn rev(self) -> Keys {
        Keys(self.0.rev())
    }
}

impl Iterator for Keys {
    type Item = Result<Bytes, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|item| item.map(|(key, _)| key))
    }
}

/// The embedded engine.
pub struct SledEngine {
    pub(super) db: sled::Db,
}

impl Engine for SledEngine {
    fn space(&self, name: &'static str) -> Result<Space, EngineError> {
        Ok(Space(Arc::new(SledSpace(self.db.open_tree(name)?, name))))
    }

    fn generate_id(&self) -> Result<u64, EngineError> {
        Ok(self.db.generate_id()?)
    }

    fn flush(&self) -> Result<(), EngineError> {
        self.db.flush()?;
        Ok(())
    }

    fn append_ordered(&self, write: OrderedWrite) -> Result<u64, EngineError> {
        // One process per sled store, ordered by the caller's lock; ids
        // start at 1 (0 is "from the start" to readers).
        let id = self.db.generate_id()? + 1;
        for (space, key, value) in write(id).map_err(EngineError::Encode)? {
            space.insert(key, value)?;
        }
        Ok(id)
    }

    fn hold_lease(&self, _name: &str, _holder: &str, _ttl_ms: u64) -> Result<bool, EngineError> {
        // A sled store has one master (sled locks its directory).
        Ok(true)
    }

    fn raise_ids(&self, next: u64) -> Result<(), EngineError> {
        // sled cannot set its counter; it is a copy's target only in
        // tests, so counting up is enough (bounded by `next`).
        while self.db.generate_id()? + 1 < next {}
        Ok(())
    }
}

/// A sled tree.
struct SledSpace(sled::Tree, &'static str);

impl Keyspace for SledSpace {
    fn name(&self) -> &'static str {
        self.1
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self.0.get(key)?.map(Bytes::Shared))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.0.insert(key, value)?;
        Ok(())
    }

    fn insert_new(&self, key: &[u8], value: &[u8]) -> Result<bool, EngineError> {
        Ok(self
            .0
            .compare_and_swap(key, None as Option<&[u8]>, Some(value))?
            .is_ok())
    }

    fn insert_new_many(&self, rows: &[(Vec<u8>, Vec<u8>)]) -> Result<(), EngineError> {
        for (key, value) in rows {
            self.insert_new(key, value)?;
        }
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool, EngineError> {
        Ok(self.0.remove(key)?.is_some())
    }

    fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, EngineError> {
        Ok(self.0.compare_and_swap(key, old, new)?.is_ok())
    }

    fn scan(&self, range: KeyRange, values: bool) -> Box<dyn Iterator<Item = Item> + Send> {
        let _ = values;
        let iter = self.0.range((range.lo, range.hi));
        let shared = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            item.map(|(key, value)| (Bytes::Shared(key), Bytes::Shared(value)))
                .map_err(EngineError::from)
        };
        if range.rev {
            Box::new(iter.rev().map(shared))
        } else {
            Box::new(iter.map(shared))
        }
    }

    fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Bytes>>, EngineError> {
        keys.iter()
            .map(|key| Ok(self.0.get(key)?.map(Bytes::Shared)))
            .collect()
    }

    fn scan_prefixes(&self, prefixes: &[Vec<u8>]) -> Result<Vec<Vec<(Bytes, Bytes)>>, EngineError> {
        prefixes
            .iter()
            .map(|prefix| {
                self.0
                    .scan_prefix(prefix)
                    .map(|item| {
                        let (key, value) = item?;
                        Ok((Bytes::Shared(key), Bytes::Shared(value)))
                    })
                    .collect()
            })
            .collect()
    }

    fn len(&self) -> Result<usize, EngineError> {
        Ok(self.0.len())
    }

    fn remove_below(&self, hi: &[u8]) -> Result<usize, EngineError> {
        let old: Vec<sled::IVec> = self.0.range(..hi).keys().collect::<Result<_, _>>()?;
        for key in &old {
            self.0.remove(key)?;
        }
        Ok(old.len())
    }

    fn next_number(&self) -> Result<u64, EngineError> {
        // One master per sled store: the last key plus one is unique.
        let last = self
            .0
            .last()?
            .and_then(|(key, _)| <[u8; 8]>::try_from(key.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(last + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_past_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
