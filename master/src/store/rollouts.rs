//! Rollouts, by id (big-endian, in the order they were started). Written
//! durably after every change: a restarted master continues each one from
//! its stored step and never runs a passed step again.

use halite_model::Rollout;

use super::*;

impl Store {
    fn numbered_rollouts(&self) -> numbered::Numbered<'_> {
        numbered::Numbered {
            tree: &self.rollouts,
            what: "rollout",
        }
    }

    /// The next rollout id (1, 2, ...; never reused).
    pub fn next_rollout_id(&self) -> Result<u64, StoreError> {
        self.numbered_rollouts().next_id()
    }

    /// Stores (or replaces) a rollout, durably.
    pub fn put_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        self.numbered_rollouts().put(rollout.id, rollout)?;
        self.flush()
    }

    /// The rollout with this id.
    pub fn rollout(&self, id: u64) -> Result<Option<Rollout>, StoreError> {
        self.numbered_rollouts().get(id)
    }

    /// Rollouts newest first, at most `limit`, those `keep` says yes to.
    pub fn rollouts(
        &self,
        limit: usize,
        keep: impl Fn(&Rollout) -> bool,
    ) -> Result<Vec<Rollout>, StoreError> {
        self.numbered_rollouts().newest(limit, keep)
    }
}
