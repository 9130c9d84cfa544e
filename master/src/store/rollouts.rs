//! Rollouts, by id (big-endian, in the order they were started). Written
//! durably after every change: a restarted master continues each one from
//! its stored step and never runs a passed step again.
//!
//! One master writes rollouts: the one holding the drivers' lease. A
//! person's action asked on another master sharing the store is kept in
//! `rollout_actions` until the driver has applied or refused it: the
//! driver changes a rollout between publishing a step's job and storing
//! it, and a second writer in that window would lose one of the changes
//! (a pause undone, or a step's job forgotten and published again).

use halite_model::{Rollout, RolloutAction};

use super::*;

/// A person's action on a rollout, asked on a master that does not drive
/// rollouts, until the driving master has settled it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskedRolloutAction {
    /// The rollout's id.
    pub rollout: u64,
    /// Who asked (their grants are checked again by the driver).
    pub user: String,
    /// What they asked.
    pub action: RolloutAction,
    /// When (ms since the epoch); settled actions are forgotten after
    /// [`ASKED_ACTIONS_KEPT_MS`].
    pub asked_at: u64,
    /// Where it is.
    pub state: AskedState,
}

/// Where an asked action is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AskedState {
    /// Not yet taken by a driver: the asking master may still withdraw it.
    Waiting,
    /// A driver is applying it.
    Taken,
    /// Applied; the rollout as stored shows it.
    Applied,
    /// Refused, with the driver's reason.
    Refused {
        /// Why, in the terms of the API's errors.
        refusal: Refusal,
        /// The driver's message.
        reason: String,
    },
}

/// Why a driver refused an asked action (the API answers as if the
/// asking master had refused it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No such rollout.
    NotFound,
    /// The user's grants no longer allow it.
    Forbidden,
    /// Not possible in the rollout's state.
    Conflict,
    /// The driver failed (the store); the action may be asked again.
    Failed,
}

/// How long a settled (or abandoned) asked action is kept.
pub const ASKED_ACTIONS_KEPT_MS: u64 = 10 * 60 * 1000;

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

    /// Keeps an action for the driving master; its id.
    pub fn ask_rollout_action(&self, asked: &AskedRolloutAction) -> Result<u64, StoreError> {
        let id = self
            .engine
            .generate_id()
            .map_err(failed("rollout action id"))?;
        self.rollout_actions
            .insert(id.to_be_bytes(), to_bytes("rollout action", asked)?)
            .map_err(failed("write a rollout action"))?;
        self.flush()?;
        Ok(id)
    }

    /// An asked action, as it is now.
    pub fn asked_rollout_action(&self, id: u64) -> Result<Option<AskedRolloutAction>, StoreError> {
        self.rollout_actions
            .get(id.to_be_bytes())
            .map_err(failed("read a rollout action"))?
            .map(|bytes| from_bytes("rollout action", &bytes))
            .transpose()
    }

    /// Every asked action, oldest first, with its id.
    pub fn asked_rollout_actions(&self) -> Result<Vec<(u64, AskedRolloutAction)>, StoreError> {
        self.rollout_actions
            .iter()
            .map(|item| {
                let (key, bytes) = item.map_err(failed("scan the rollout actions"))?;
                let id = <[u8; 8]>::try_from(key.as_ref())
                    .map(u64::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt {
                        what: "rollout action",
                        reason: "a key that is not an id".into(),
                    })?;
                Ok((id, from_bytes("rollout action", &bytes)?))
            })
            .collect()
    }

    /// Moves a waiting action from `from` to `to` only if no one else
    /// moved it first (`to` of `None` removes it); whether this did.
    fn move_rollout_action(
        &self,
        id: u64,
        from: AskedState,
        to: Option<AskedState>,
    ) -> Result<Option<AskedRolloutAction>, StoreError> {
        let key = id.to_be_bytes();
        let Some(bytes) = self
            .rollout_actions
            .get(key)
            .map_err(failed("read a rollout action"))?
        else {
            return Ok(None);
        };
        let mut asked: AskedRolloutAction = from_bytes("rollout action", &bytes)?;
        if asked.state != from {
            return Ok(None);
        }
        let moved = match to {
            Some(to) => {
                asked.state = to;
                let new = to_bytes("rollout action", &asked)?;
                self.rollout_actions
                    .compare_and_swap(key, Some(&bytes), Some(&new))
            }
            None => self
                .rollout_actions
                .compare_and_swap(key, Some(&bytes), None),
        }
        .map_err(failed("swap a rollout action"))?;
        self.flush()?;
        Ok(moved.then_some(asked))
    }

    /// Takes a waiting action for this driver to apply: `None` if it was
    /// taken or withdrawn first.
    pub fn take_rollout_action(&self, id: u64) -> Result<Option<AskedRolloutAction>, StoreError> {
        self.move_rollout_action(id, AskedState::Waiting, Some(AskedState::Taken))
    }

    /// Withdraws an action no driver has taken; whether it was withdrawn
    /// (false: a driver took it, and it settles it).
    pub fn withdraw_rollout_action(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self
            .move_rollout_action(id, AskedState::Waiting, None)?
            .is_some())
    }

    /// Records how a taken action ended (only its taker writes it).
    pub fn settle_rollout_action(
        &self,
        id: u64,
        asked: &AskedRolloutAction,
    ) -> Result<(), StoreError> {
        self.rollout_actions
            .insert(id.to_be_bytes(), to_bytes("rollout action", asked)?)
            .map_err(failed("write a rollout action"))?;
        self.flush()
    }

    /// Forgets an asked action (its answer was read, or it is old).
    pub fn forget_rollout_action(&self, id: u64) -> Result<(), StoreError> {
        self.rollout_actions
            .remove(id.to_be_bytes())
            .map_err(failed("remove a rollout action"))?;
        Ok(())
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
    use halite_model::{RolloutAction, RolloutState};
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
    fn a_swap_happens_only_from_the_value_seen() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let space = &store.rollout_actions;
            assert!(space.compare_and_swap(b"k", None, Some(b"one")).unwrap());
            assert!(!space.compare_and_swap(b"k", None, Some(b"two")).unwrap());
            assert!(!space
                .compare_and_swap(b"k", Some(b"two"), Some(b"three"))
                .unwrap());
            assert!(space
                .compare_and_swap(b"k", Some(b"one"), Some(b"two"))
                .unwrap());
            assert!(!space.compare_and_swap(b"k", Some(b"one"), None).unwrap());
            assert_eq!(space.get(b"k").unwrap().as_deref(), Some(&b"two"[..]));
            assert!(space.compare_and_swap(b"k", Some(b"two"), None).unwrap());
            assert!(space.get(b"k").unwrap().is_none());
            assert!(space.compare_and_swap(b"k", None, None).unwrap());
        }
    }

    #[test]
    fn an_asked_action_is_taken_by_a_driver_or_withdrawn_never_both() {
        for fresh in crate::store::each_engine() {
            let store = fresh.open();
            let asked = AskedRolloutAction {
                rollout: 7,
                user: "dev".into(),
                action: RolloutAction::Pause,
                asked_at: 1,
                state: AskedState::Waiting,
            };
            // Taken first: the asking master can no longer withdraw it,
            // and a second driver cannot take it again.
            let first = store.ask_rollout_action(&asked).unwrap();
            let mut taken = store.take_rollout_action(first).unwrap().expect("taken");
            assert_eq!(taken.state, AskedState::Taken);
            assert!(!store.withdraw_rollout_action(first).unwrap());
            assert!(store.take_rollout_action(first).unwrap().is_none());
            taken.state = AskedState::Refused {
                refusal: Refusal::Conflict,
                reason: "rollout 7 is paused, not running".into(),
            };
            store.settle_rollout_action(first, &taken).unwrap();
            assert_eq!(
                store.asked_rollout_action(first).unwrap(),
                Some(taken.clone())
            );

            // Withdrawn first: no driver takes it.
            let second = store.ask_rollout_action(&asked).unwrap();
            assert!(second > first);
            assert!(store.withdraw_rollout_action(second).unwrap());
            assert!(store.take_rollout_action(second).unwrap().is_none());
            assert!(store.asked_rollout_action(second).unwrap().is_none());

            let all: Vec<u64> = store
                .asked_rollout_actions()
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            assert_eq!(all, [first]);
            store.forget_rollout_action(first).unwrap();
            assert!(store.asked_rollout_actions().unwrap().is_empty());
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
