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

    /// Stores (or replaces) a rollout, durably, and keeps the index of
    /// those not finished (what the driver reads every round).
    pub fn put_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        self.numbered_rollouts().put(rollout.id, rollout)?;
        let key = rollout.id.to_be_bytes();
        if rollout.state.is_final() {
            self.active_rollouts.remove(key).map(|_| ())
        } else {
            self.active_rollouts.insert(key, []).map(|_| ())
        }
        .map_err(failed("write the active rollouts"))?;
        self.flush()
    }

    /// The ids of the rollouts not finished, oldest first.
    pub fn active_rollouts(&self) -> Result<Vec<u64>, StoreError> {
        self.active_rollouts
            .iter()
            .keys()
            .map(|key| {
                let key = key.map_err(failed("scan the active rollouts"))?;
                <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "active rollout",
                        reason: "a key that is not a rollout id".into(),
                    })
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use halite_model::RolloutState;
    use halite_proto::rollout::RolloutPlan;

    fn rollout(id: u64, state: RolloutState) -> Rollout {
        Rollout {
            id,
            app: "shop".into(),
            version: serde_json::Map::new(),
            fun: "git_deploy.deploy".into(),
            user: "dev".into(),
            reason: String::new(),
            plan: RolloutPlan::default(),
            steps: Vec::new(),
            current: 0,
            state,
            bake_until: 0,
            failure: None,
            rollback: None,
            history: Vec::new(),
            created_at: 1,
            release_request: None,
            aborting: None,
            override_freeze: false,
            then: Vec::new(),
        }
    }

    #[test]
    fn only_unfinished_rollouts_are_active_and_that_survives_a_reopen() {
        for fresh in crate::store::each_engine() {
            {
                let store = fresh.open();
                assert_eq!(store.next_rollout_id().unwrap(), 1);
                store
                    .put_rollout(&rollout(1, RolloutState::Running))
                    .unwrap();
                store
                    .put_rollout(&rollout(2, RolloutState::Paused))
                    .unwrap();
                store
                    .put_rollout(&rollout(3, RolloutState::Running))
                    .unwrap();
                store
                    .put_rollout(&rollout(1, RolloutState::Succeeded))
                    .unwrap();
                assert_eq!(store.active_rollouts().unwrap(), [2, 3]);
            }
            let store = fresh.open();
            assert_eq!(store.active_rollouts().unwrap(), [2, 3]);
            assert_eq!(store.next_rollout_id().unwrap(), 4);
            let newest: Vec<u64> = store
                .rollouts(2, |_| true)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(newest, [3, 2]);
            assert_eq!(
                store.rollout(1).unwrap().unwrap().state,
                RolloutState::Succeeded
            );
        }
    }
}
