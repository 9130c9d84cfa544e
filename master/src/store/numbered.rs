//! Trees of records numbered 1, 2, ... (release requests, rollouts): keys
//! are big-endian ids, so a scan is in the order they were made, and the
//! next id is one past the last key (never reused, also after a restart).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::*;

/// One numbered tree and the kind of record it holds (for errors).
pub(super) struct Numbered<'a> {
    pub(super) tree: &'a Space,
    pub(super) what: &'static str,
}

impl Numbered<'_> {
    /// The id the next record gets.
    pub(super) fn next_id(&self) -> Result<u64, StoreError> {
        self.tree.next_number().map_err(failed("number a record"))
    }

    /// Stores (or replaces) record `id` (not flushed).
    pub(super) fn put<T: Serialize>(&self, id: u64, record: &T) -> Result<(), StoreError> {
        self.tree
            .insert(id.to_be_bytes(), to_bytes(self.what, record)?)
            .map_err(failed("write a numbered record"))?;
        Ok(())
    }

    /// Record `id`.
    pub(super) fn get<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        match self
            .tree
            .get(id.to_be_bytes())
            .map_err(failed("read a numbered record"))?
        {
            Some(bytes) => Ok(Some(from_bytes(self.what, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records newest first, at most `limit`, those `keep` says yes to.
    pub(super) fn newest<T: DeserializeOwned>(
        &self,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = item.map_err(failed("scan numbered records"))?;
            let record: T = from_bytes(self.what, &bytes)?;
            if keep(&record) {
                out.push(record);
            }
        }
        Ok(out)
    }
}
