//! Minion keys across the masters of one shared store: a key a minion
//! presented to one master is pending on all, and accepting, rejecting
//! or deleting it on one does so on all.
//!
//! Each master keeps its `pki_dir` (the Salt layout operators know, and
//! what every message is checked against, from memory). After a local
//! change the master records the id's keys in the store and puts a
//! `key/shared` entry on the event stream; every other master, following
//! the stream, mirrors that record into its own `pki_dir`. At start a
//! master mirrors every recorded id and records the ids only it knows.
//! On the embedded store none of this runs.

use std::sync::Arc;

use halite_pki::PublicKey;
use tokio_util::sync::CancellationToken;

use super::{Core, CoreError};
use crate::store::SharedKey;

/// The stream entry that tells the other masters an id's keys changed.
const KIND: &str = "key/shared";

impl Core {
    /// Records the keys of `ids` as they now are here, for the other
    /// masters (on a shared store; nothing otherwise). Blocks (a store
    /// write and flush).
    pub(super) fn share_keys(&self, ids: &[String]) {
        if !self.store.is_shared() {
            return;
        }
        for id in ids {
            if let Err(e) = self.share_key(id) {
                tracing::error!(minion = %id, error = %e, "cannot share a key change with the other masters");
            }
        }
    }

    fn share_key(&self, id: &str) -> Result<(), CoreError> {
        let states: Vec<SharedKey> = self
            .keys
            .states_of(id)?
            .into_iter()
            .map(|(status, key)| SharedKey {
                status,
                key: key.as_bytes().to_vec(),
            })
            .collect();
        self.store.put_key_states(id, &states)?;
        self.announce(halite_model::BusEntry {
            id: 0,
            kind: KIND.to_owned(),
            at: halite_proto::time::now_ms(),
            jid: None,
            minion: Some(id.to_owned()),
            data: serde_json::json!({ "master": self.config.id }),
        });
        Ok(())
    }

    /// Makes this master's keys of `id` what the store records, as
    /// another master decided them. Blocks (key files written and synced).
    fn mirror_key(&self, id: &str) -> Result<(), CoreError> {
        let Some(states) = self.store.key_states(id)? else {
            return Ok(());
        };
        let states = states
            .iter()
            .map(|shared| Ok((shared.status, PublicKey::from_bytes(&shared.key)?)))
            .collect::<Result<Vec<_>, halite_pki::PkiError>>()?;
        let accepted = states
            .iter()
            .any(|(status, _)| *status == halite_proto::message::KeyStatus::Accepted);
        if self.keys.mirror(id, &states)? {
            self.forget_personal_key(id);
            self.rotate_session();
        }
        let ids = [id.to_owned()];
        // A minion waiting here for acceptance gets its session key now.
        self.answer_waiting(&ids, accepted);
        self.forget_reported_auths(&ids);
        Ok(())
    }

    /// At start on a shared store: mirrors every id the store records,
    /// then records the ids only this master knows. Blocks.
    pub fn sync_shared_keys(&self) -> Result<(), CoreError> {
        if !self.store.is_shared() {
            return Ok(());
        }
        let recorded = self.store.all_key_states()?;
        for (id, _) in &recorded {
            if let Err(e) = self.mirror_key(id) {
                tracing::warn!(minion = %id, error = %e, "cannot mirror a shared key");
            }
        }
        let local: Vec<String> = self
            .keys
            .list()?
            .into_iter()
            .map(|entry| entry.id)
            .filter(|id| !recorded.iter().any(|(known, _)| known == id))
            .collect();
        self.share_keys(&local);
        Ok(())
    }
}

/// Follows the other masters' key changes until `shutdown` (on a shared
/// store; returns at once otherwise).
pub async fn follow(core: Arc<Core>, shutdown: CancellationToken) {
    if !core.store.is_shared() {
        return;
    }
    let mut live = core.store.subscribe();
    {
        let core = core.clone();
        match tokio::task::spawn_blocking(move || core.sync_shared_keys()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot sync the shared minion keys"),
            Err(e) => tracing::error!(error = %e, "the shared key sync failed"),
        }
    }
    loop {
        let entry = tokio::select! {
            _ = shutdown.cancelled() => return,
            entry = live.recv() => entry,
        };
        let id = match entry {
            Ok(entry) if entry.kind == KIND && entry.data["master"] != core.config.id.as_str() => {
                match &entry.minion {
                    Some(id) => id.clone(),
                    None => continue,
                }
            }
            Ok(_) => continue,
            // Missed some: mirror everything the store records.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || core.sync_shared_keys()).await;
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let worker = core.clone();
        let mirrored = tokio::task::spawn_blocking(move || worker.mirror_key(&id)).await;
        if let Ok(Err(e)) = mirrored {
            tracing::warn!(error = %e, "cannot mirror another master's key change");
        }
    }
}
