//! API users across the masters of one shared store: a user added, given
//! a new password, revoked or deleted with `master-cli users` on one
//! master's host is so on every master.
//!
//! `master-cli users` edits the users file on its host and the master
//! reads that file on every login (no restart, no API for passwords), so
//! each master keeps its file and the store carries changes between
//! them, like minion keys (`shared_keys.rs`): a master notices its file
//! changed (it looks every [`WATCH_INTERVAL`]), records each changed
//! user in the store and puts a `user/shared` entry on the event stream;
//! the other masters write that user into their own files. At start a
//! master takes every recorded user, then records the users only its
//! file has. A user changed on two masters within one interval ends as
//! the later change says. On the embedded store none of this runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_pki::users::UserRecord;
use tokio_util::sync::CancellationToken;

use super::auth::{stamp_of, FileStamp};
use super::{Core, CoreError};
use crate::store::SharedUser;

/// The stream entry that tells the other masters a user changed.
const KIND: &str = "user/shared";

/// How often a master looks whether its users file changed (a `stat`;
/// the file is read only when its time or length changed).
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The users file as this master last shared or mirrored it: what a
/// change is told against. Held while the file is compared and written,
/// so a mirrored user is never taken for a local change.
#[derive(Default)]
pub(super) struct SharedUsers {
    known: Mutex<Known>,
}

/// The users last shared or mirrored, and the file's stamp when they
/// were last compared with it (unchanged: nothing to read).
#[derive(Default)]
struct Known {
    users: Option<BTreeMap<String, UserRecord>>,
    compared: Option<FileStamp>,
}

impl SharedUsers {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Core {
    /// Records every user whose entry in this master's users file changed
    /// since it was last shared or mirrored (on a shared store; nothing
    /// otherwise). Blocks (the file read; store writes and flushes).
    pub fn share_user_changes(&self) -> Result<(), CoreError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        let mut known = self.shared_users.known();
        // Taken before the read: a change made while reading is seen at
        // the next look.
        let stamp = stamp_of(&self.config.users_file);
        if known.users.is_some() && known.compared == Some(stamp) {
            return Ok(());
        }
        let now = self.config.users().records()?;
        let before = known.users.take().unwrap_or_default();
        let mut changed: Vec<(String, Option<UserRecord>)> = now
            .iter()
            .filter(|(name, record)| before.get(*name) != Some(*record))
            .map(|(name, record)| (name.clone(), Some(record.clone())))
            .collect();
        changed.extend(
            before
                .keys()
                .filter(|name| !now.contains_key(*name))
                .map(|name| (name.clone(), None)),
        );
        let mut result = Ok(());
        let mut shared = before;
        for (name, entry) in changed {
            match self.share_user(&name, entry.clone()) {
                Ok(()) => {
                    match entry {
                        Some(record) => shared.insert(name, record),
                        None => shared.remove(&name),
                    };
                }
                // Told again at the next look: it still differs.
                Err(e) => result = Err(e),
            }
        }
        known.users = Some(shared);
        // A change that could not be shared is told again at the next look.
        known.compared = result.is_ok().then_some(stamp);
        result
    }

    fn share_user(&self, name: &str, entry: Option<UserRecord>) -> Result<(), CoreError> {
        let at = halite_proto::time::now_ms();
        self.store.put_user_state(
            name,
            &SharedUser {
                entry,
                changed_at: at,
                master: self.config.id.clone(),
            },
        )?;
        tracing::info!(
            user = name,
            "a change to the users file is shared with the other masters"
        );
        self.announce(halite_model::BusEntry {
            id: 0,
            kind: KIND.to_owned(),
            at,
            jid: None,
            minion: None,
            data: serde_json::json!({ "master": self.config.id, "user": name }),
        });
        Ok(())
    }

    /// Makes `name` in this master's users file what the store records.
    /// Blocks (the file read and written).
    fn mirror_user(&self, name: &str) -> Result<(), CoreError> {
        let Some(state) = self.store.user_state(name)? else {
            return Ok(());
        };
        let mut known = self.shared_users.known();
        let users = self.config.users();
        if users.mirror(name, state.entry.as_ref())? {
            tracing::info!(user = name, from = %state.master, "a user changed on another master is written into the users file");
        }
        if let Some(known) = known.users.as_mut() {
            match state.entry {
                Some(record) => known.insert(name.to_owned(), record),
                None => known.remove(name),
            };
        }
        Ok(())
    }

    /// At start on a shared store: takes every recorded user, then
    /// records the users only this master's file has. Blocks.
    pub fn sync_shared_users(&self) -> Result<(), CoreError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        if self.shared_users.known().users.is_some() {
            // Again (events were missed): this file's changes not shared
            // yet go first, so taking the store's records keeps them.
            self.share_user_changes()?;
        }
        let recorded = self.store.all_user_states()?;
        for (name, _) in &recorded {
            if let Err(e) = self.mirror_user(name) {
                tracing::warn!(user = %name, error = %e, "cannot take a shared user");
            }
        }
        {
            // Told against what the store has: the users only this file
            // has (or has otherwise) are the local changes.
            let mut known = self.shared_users.known();
            known.users = Some(
                recorded
                    .into_iter()
                    .filter_map(|(name, state)| state.entry.map(|record| (name, record)))
                    .collect(),
            );
            known.compared = None;
        }
        self.share_user_changes()
    }
}

/// Shares this master's user changes and takes the other masters' until
/// `shutdown` (on a shared store; returns at once otherwise).
pub async fn follow(core: Arc<Core>, shutdown: CancellationToken) {
    if !core.store.is_shared() {
        return;
    }
    let mut live = core.store.subscribe();
    blocking(&core, |core| core.sync_shared_users()).await;
    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = watch.tick() => {
                blocking(&core, |core| core.share_user_changes()).await;
                continue;
            }
            entry = live.recv() => entry,
        };
        match entry {
            Ok(entry) if entry.kind == KIND && entry.data["master"] != core.config.id.as_str() => {
                let Some(name) = entry.data["user"].as_str().map(str::to_owned) else {
                    continue;
                };
                blocking(&core, move |core| core.mirror_user(&name)).await;
            }
            Ok(_) => {}
            // Missed some: take everything the store records.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                blocking(&core, |core| core.sync_shared_users()).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Runs one blocking step of the user sync on the blocking pool, logging
/// what failed.
async fn blocking(
    core: &Arc<Core>,
    step: impl FnOnce(&Core) -> Result<(), CoreError> + Send + 'static,
) {
    let core = core.clone();
    match tokio::task::spawn_blocking(move || step(&core)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot share the API users with the other masters")
        }
        Err(e) => tracing::error!(error = %e, "the shared users step failed"),
    }
}
