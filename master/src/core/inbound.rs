//! Messages from minions: each is verified against a key the master
//! already trusts, then dispatched — auth, heartbeats, events, catch-up;
//! returns go on to the collector ([`super::returns`]).

use std::sync::Arc;

use bytes::Bytes;
use halite_model::EventRecord;
use halite_pki::PublicKey;
use halite_proto::message::{
    Auth, AuthReply, Catchup, CatchupReply, Event, EventBody, Heartbeat, HeartbeatAck, JobSummary,
    KeyStatus, Return, ReturnAck, TOPIC_JOB,
};
use halite_proto::time::now_ms;
use halite_proto::{Envelope, Jid, Kind, Message};

use super::{printable, Core, PendingReturn};
use crate::peer_masters::PeerError;

impl Core {
    /// Handles one ROUTER message. Replies (if any) go out through the
    /// replier; returns go to the collector, which acks after storing.
    pub async fn handle(&self, peer: Bytes, body: Bytes) {
        let envelope = match Envelope::from_bytes(&body) {
            Ok(envelope) => envelope,
            Err(e) => {
                // Throttled per connection: garbage must not flood the log.
                if let Some(suppressed) = self.drop_log.allow(&hex::encode(&peer)) {
                    tracing::warn!(error = %e, suppressed, "dropped undecodable message");
                }
                return;
            }
        };
        let kind = envelope.kind;
        let sender = envelope.sender.clone();
        if let Err(reason) = self.dispatch(peer, envelope).await {
            let who = printable(&sender);
            if let Some(suppressed) = self.drop_log.allow(&who) {
                tracing::warn!(minion = %who, kind = ?kind, %reason, suppressed, "dropped message");
            }
        }
    }

    async fn dispatch(&self, peer: Bytes, envelope: Envelope) -> Result<(), Refusal> {
        match envelope.kind {
            // Accepting a new key writes and syncs a key file.
            Kind::Auth => super::blocking(|| self.on_auth(peer, envelope)),
            Kind::Heartbeat => self.on_heartbeat(peer, envelope),
            Kind::Return => {
                let mut ret: Return = self.verified(&envelope)?;
                same_id(&envelope.sender, &ret.id)?;
                let depth = halite_proto::envelope::depth(&ret.data);
                if depth > halite_proto::envelope::MAX_DATA_DEPTH {
                    // Kept (with its outcome), but not as data no reader
                    // could parse back.
                    ret.data = serde_json::Value::String(format!(
                        "the return's data nests {depth} levels deep, more than {}: not kept",
                        halite_proto::envelope::MAX_DATA_DEPTH
                    ));
                }
                let own = ret.master.is_empty() || ret.master == self.config.id;
                let checked = match own {
                    true => self.check_expected(&ret.jid, &ret.id).map(|()| None),
                    false => self.check_foreign(&ret).map(Some),
                };
                let foreign = match checked {
                    Ok(foreign) => foreign,
                    // Kept by the minion until the operator trusts that
                    // master: nothing is lost meanwhile.
                    Err(refusal @ Refusal::Peer(PeerError::UnknownMaster { .. })) => {
                        return Err(refusal)
                    }
                    Err(refusal) => {
                        // Acked so the minion stops re-sending it, never stored.
                        let ack = ReturnAck {
                            jid: ret.jid,
                            id: ret.id,
                            nonce: ret.nonce,
                        };
                        self.reply_to(&envelope.sender, peer, &ack);
                        return Err(refusal);
                    }
                };
                tracing::debug!(jid = %ret.jid, minion = %ret.id, "return received");
                // Back-pressure: a full collector slows the ROUTER reader,
                // not the store.
                let _ = self
                    .returns
                    .send(PendingReturn { peer, ret, foreign })
                    .await;
                Ok(())
            }
            Kind::Event => {
                let event: Event = self.verified(&envelope)?;
                same_id(&envelope.sender, &event.id)?;
                self.check_expected(&event.jid, &event.id)?;
                self.on_event(event);
                Ok(())
            }
            Kind::Catchup => {
                let catchup: Catchup = self.verified(&envelope)?;
                same_id(&envelope.sender, &catchup.id)?;
                let jobs = self.catchup_for(&catchup.id);
                tracing::debug!(minion = %catchup.id, jobs = jobs.len(), "catch-up");
                self.reply(
                    peer,
                    &CatchupReply {
                        nonce: catchup.nonce,
                        jobs,
                    },
                );
                Ok(())
            }
            other => Err(Refusal::UnexpectedKind(other)),
        }
    }

    /// Opens a message after checking it is signed by the accepted key of
    /// its sender.
    fn verified<M: Message>(&self, envelope: &Envelope) -> Result<M, Refusal> {
        halite_proto::ident::validate_id(&envelope.sender)?;
        let key = self
            .keys
            .accepted_key(&envelope.sender)
            .ok_or(Refusal::NotAccepted)?;
        halite_pki::verify_envelope(envelope, &key)?;
        Ok(envelope.open()?)
    }

    pub(super) fn reply<M: Message>(&self, peer: Bytes, message: &M) {
        match self.sign(message) {
            Ok(envelope) => self.outbound.reply(peer, envelope),
            Err(e) => tracing::error!(error = %e, "cannot sign a reply"),
        }
    }

    /// Replies to `minion` with a link MAC when it checks them and the
    /// kind allows (see `halite_pki::link_key`), else signed.
    pub(super) fn reply_to<M: Message>(&self, minion: &str, peer: Bytes, message: &M) {
        if halite_pki::LinkKey::allows(M::KIND) {
            if let Some(link_key) = self.link_key(minion) {
                match link_key.seal_message(&self.config.id, message) {
                    Ok(envelope) => self.outbound.reply(peer, envelope.to_bytes()),
                    Err(e) => tracing::error!(minion, error = %e, "cannot authenticate a reply"),
                }
                return;
            }
        }
        self.reply(peer, message);
    }

    /// `minion`'s link key, if it checks link MACs.
    fn link_key(&self, minion: &str) -> Option<halite_pki::LinkKey> {
        self.link_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(minion)
            .cloned()
    }

    /// Opens a heartbeat: signed, or with a link MAC under the sender's
    /// link key. A MAC this master has no key for (it restarted, or the
    /// key was rejected) is [`Refusal::NotAccepted`]: the minion is told
    /// to authenticate again.
    fn verified_heartbeat(&self, envelope: &Envelope) -> Result<Heartbeat, Refusal> {
        if !halite_pki::LinkKey::carries_mac(envelope) {
            return self.verified(envelope);
        }
        halite_proto::ident::validate_id(&envelope.sender)?;
        match self.link_key(&envelope.sender) {
            Some(link_key) if self.keys.accepted_key(&envelope.sender).is_some() => {
                link_key.verify(envelope)?;
                Ok(envelope.open()?)
            }
            _ => Err(Refusal::NotAccepted),
        }
    }

    fn on_auth(&self, peer: Bytes, envelope: Envelope) -> Result<(), Refusal> {
        // Auth is self-signed: the signature proves the sender holds the key
        // it presents; whether that key is trusted is the key store's call.
        let auth: Auth = envelope.open()?;
        halite_proto::ident::validate_id(&auth.id)?;
        same_id(&envelope.sender, &auth.id)?;
        let key = PublicKey::from_bytes(&auth.pubkey)?;
        halite_pki::verify_envelope(&envelope, &key)?;
        if auth.probe {
            // Only "who are you?": this master's signed key, nothing
            // recorded (the minion checks master_fingerprint first).
            let status = self.keys.status(&auth.id).unwrap_or(KeyStatus::Pending);
            self.reply(peer, &self.auth_reply(auth.nonce, status, None));
            return Ok(());
        }
        // On a shared store a submit that changed anything is news for
        // the other masters.
        let before = if self.store.is_shared() {
            self.keys.states_of(&auth.id).ok()
        } else {
            None
        };
        let status = match self.keys.submit(&auth.id, &key, self.config.auto_accept) {
            Err(halite_pki::PkiError::TooManyPending { max }) => {
                // No answer: the minion asks again later, when there may
                // be room. One line per interval, whoever is knocking.
                if let Some(suppressed) = self.drop_log.allow("max_pending_keys") {
                    tracing::warn!(minion = %printable(&auth.id), max, suppressed, "pending keys at max_pending_keys: new minion ids refused");
                }
                return Ok(());
            }
            other => other?,
        };
        if before.is_some() && self.keys.states_of(&auth.id).ok() != before {
            self.share_keys(std::slice::from_ref(&auth.id));
        }
        let session = if status == KeyStatus::Accepted {
            let transcript = halite_pki::transcript(&auth.id, &key, &self.master_pub, &auth.nonce);
            self.presence
                .authenticated(&auth.id, auth.grains.clone(), &auth.version);
            // A fresh key of its own at every auth, for the secrets
            // sealed to it alone.
            let personal = halite_pki::SessionKey::generate(self.session.current().epoch())?;
            let grant = halite_pki::grant(
                &self.session.current(),
                Some(&personal),
                &auth.eph_pub,
                &transcript,
            )?;
            let link_key = match auth.link_macs {
                true => Some(halite_pki::LinkKey::derive(&personal)?),
                false => None,
            };
            self.personal
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(auth.id.clone(), personal);
            let mut link_keys = self.link_keys.write().unwrap_or_else(|p| p.into_inner());
            match link_key {
                Some(key) => link_keys.insert(auth.id.clone(), key),
                None => link_keys.remove(&auth.id),
            };
            Some(grant)
        } else {
            None
        };
        if status == KeyStatus::Pending {
            self.wait_for_acceptance(&auth.id, peer.clone(), envelope);
        }
        self.report_auth(&auth.id, status, &key);
        match status {
            KeyStatus::Accepted => tracing::info!(minion = %auth.id, "minion authenticated"),
            KeyStatus::Pending => tracing::info!(
                minion = %auth.id,
                fingerprint = %key.fingerprint(),
                "minion key pending: accept it with `master-cli keys accept {}`",
                auth.id
            ),
            KeyStatus::Rejected => tracing::warn!(minion = %auth.id, "auth from a rejected key"),
            KeyStatus::Denied => tracing::warn!(
                minion = %auth.id,
                fingerprint = %key.fingerprint(),
                "auth with a key different from the accepted one: denied (see minions_denied/)"
            ),
        }
        self.reply(peer, &self.auth_reply(auth.nonce, status, session));
        Ok(())
    }

    fn auth_reply(
        &self,
        nonce: Vec<u8>,
        status: KeyStatus,
        session: Option<halite_proto::message::SessionGrant>,
    ) -> AuthReply {
        AuthReply {
            nonce,
            status,
            master: self.config.id.clone(),
            master_pub: self.master_pub.as_bytes().to_vec(),
            publish_port: self.publish_port,
            heartbeat_interval: self.config.heartbeat_interval.as_secs(),
            session,
            link_macs: true,
        }
    }

    /// Puts an auth on the event stream (salt-api shows it as
    /// `salt/auth`): every accepted one (a minion starting or coming
    /// back), otherwise only a change of state, so a minion knocking every
    /// few seconds while pending, rejected or denied adds one entry.
    fn report_auth(&self, id: &str, status: KeyStatus, key: &PublicKey) {
        {
            let mut reported = self.auth_reported.lock().unwrap_or_else(|p| p.into_inner());
            if status != KeyStatus::Accepted && reported.get(id) == Some(&status) {
                return;
            }
            // Bounded like the pending keys: forget everyone, at worst
            // one more entry each.
            if reported.len() >= self.config.max_pending_keys.saturating_mul(2).max(10_000) {
                reported.clear();
            }
            reported.insert(id.to_owned(), status);
        }
        let (act, result) = match status {
            KeyStatus::Accepted => ("accept", true),
            KeyStatus::Pending => ("pend", true),
            KeyStatus::Rejected => ("reject", false),
            KeyStatus::Denied => ("denied", false),
        };
        self.announce(halite_model::BusEntry {
            id: 0,
            kind: "minion/auth".to_owned(),
            at: halite_proto::time::now_ms(),
            jid: None,
            minion: Some(id.to_owned()),
            data: serde_json::json!({
                "act": act, "result": result, "id": id, "pub": key.to_pem(),
            }),
        });
    }

    /// After a key change the next auth of these minions is news again
    /// (a deleted key asked for anew is a new `pend`).
    pub(super) fn forget_reported_auths(&self, ids: &[String]) {
        let mut reported = self.auth_reported.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            reported.remove(id);
        }
    }

    /// Keeps a pending minion's last auth (and where it came from), so
    /// accepting its key answers that auth at once (see
    /// [`Core::answer_waiting`]) instead of when the minion next retries.
    fn wait_for_acceptance(&self, id: &str, peer: Bytes, envelope: Envelope) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded like the pending keys themselves.
        if waiting.len() < self.config.max_pending_keys || waiting.contains_key(id) {
            waiting.insert(id.to_owned(), (peer, envelope));
        }
    }

    /// Answers the waiting auth of each of `ids` again once their keys
    /// are `accepted`: the minion gets its session key on the connection
    /// it is waiting on and runs jobs within a round trip. Otherwise the
    /// waiting auths are dropped. Blocks (key files, signing): call off
    /// the async workers.
    pub(super) fn answer_waiting(&self, ids: &[String], accepted: bool) {
        for id in ids {
            let entry = self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            if let Some((peer, envelope)) = entry.filter(|_| accepted) {
                if let Err(e) = self.on_auth(peer, envelope) {
                    tracing::debug!(minion = %id, error = %e, "could not answer a waiting auth");
                }
            }
        }
    }

    fn on_heartbeat(&self, peer: Bytes, envelope: Envelope) -> Result<(), Refusal> {
        let epoch = self.session.current().epoch();
        match self.verified_heartbeat(&envelope) {
            Ok(heartbeat) => {
                same_id(&envelope.sender, &heartbeat.id)?;
                let fresh = self.presence.heartbeat(
                    &heartbeat.id,
                    heartbeat.at,
                    &heartbeat.version,
                    heartbeat.rtt_ms,
                    now_ms(),
                );
                if !fresh {
                    // Not newer than one already accepted: a replay. No
                    // ack either, so it teaches the sender nothing.
                    return Err(Refusal::Replayed);
                }
                self.reply_to(
                    &heartbeat.id,
                    peer,
                    &HeartbeatAck {
                        nonce: heartbeat.nonce,
                        accepted: true,
                        session_epoch: epoch,
                    },
                );
                Ok(())
            }
            Err(Refusal::NotAccepted) => {
                // The key was deleted or rejected while the minion was
                // connected: tell it to authenticate again, which puts it in
                // front of an operator instead of leaving it waiting.
                let heartbeat: Heartbeat = envelope.open()?;
                self.reply(
                    peer,
                    &HeartbeatAck {
                        nonce: heartbeat.nonce,
                        accepted: false,
                        session_epoch: epoch,
                    },
                );
                Err(Refusal::NotAccepted)
            }
            Err(other) => Err(other),
        }
    }

    fn on_event(&self, event: Event) {
        if let EventBody::Stage {
            stage,
            status,
            duration_ms: Some(duration_ms),
            ..
        } = &event.body
        {
            self.metrics.stage_ended(stage, status, *duration_ms);
        }
        let record = EventRecord {
            cursor: 0,
            id: event.id.clone(),
            seq: event.seq,
            at: event.at,
            body: event.body,
        };
        let jid = event.jid;
        let stored = self
            .store
            .put_event(&jid, record)
            .and_then(|record| self.store.publish(crate::store::event_entry(&jid, &record)));
        if let Err(e) = stored {
            tracing::warn!(jid = %jid, minion = %event.id, error = %e, "cannot store event");
        }
    }

    /// Refuses a return or event unless this master published the job
    /// for that minion: an accepted minion speaks only for itself, about
    /// jobs it was sent. Jobs still within their expiry are checked in
    /// memory, older ones in the store.
    fn check_expected(&self, jid: &Jid, id: &str) -> Result<(), Refusal> {
        {
            let recent = self.recent.read().unwrap_or_else(|p| p.into_inner());
            let mut same_job = recent.iter().filter(|job| job.jid == *jid).peekable();
            if same_job.peek().is_some() {
                return match same_job.any(|job| job.expected.contains(id)) {
                    true => Ok(()),
                    false => Err(Refusal::NotExpected { jid: jid.clone() }),
                };
            }
        }
        match self.store.job(jid) {
            Ok(Some(job)) if job.record.expected.iter().any(|e| e == id) => Ok(()),
            Ok(Some(_)) => Err(Refusal::NotExpected { jid: jid.clone() }),
            Ok(None) => Err(Refusal::UnknownJob { jid: jid.clone() }),
            Err(e) => Err(Refusal::Store(e)),
        }
    }

    /// Checks a return for a job another master published: it must carry
    /// that master's signed summary of the job, for this very return
    /// (jid, function), and the minion must be among the job's targets.
    /// The summary, not the minion, then says what the job was.
    fn check_foreign(&self, ret: &Return) -> Result<JobSummary, Refusal> {
        let vouched = ret.job.as_ref().ok_or_else(|| Refusal::Unvouched {
            jid: ret.jid.clone(),
            master: ret.master.clone(),
        })?;
        let summary = &vouched.summary;
        if summary.jid != ret.jid || summary.master != ret.master || summary.fun != ret.fun {
            return Err(Refusal::NotExpected {
                jid: ret.jid.clone(),
            });
        }
        self.peer_masters.verify(vouched)?;
        let target = halite_proto::Target::parse(summary.tgt_type, &summary.tgt).map_err(|_| {
            Refusal::NotExpected {
                jid: ret.jid.clone(),
            }
        })?;
        if self
            .presence
            .matching(std::slice::from_ref(&ret.id), &target)
            .is_empty()
        {
            return Err(Refusal::NotExpected {
                jid: ret.jid.clone(),
            });
        }
        Ok(summary.clone())
    }

    /// The jobs `id` may have missed, sealed like publications (with the
    /// current session key, which the asking minion holds).
    fn catchup_for(&self, id: &str) -> Vec<serde_bytes::ByteBuf> {
        let now = now_ms();
        let missed: Vec<Arc<Vec<u8>>> = {
            let mut recent = self.recent.write().unwrap_or_else(|p| p.into_inner());
            recent.retain(|job| job.expires_at > now);
            recent
                .iter()
                .filter(|job| job.expected.contains(id))
                .map(|job| Arc::clone(&job.envelope))
                .collect()
        };
        let session = self.session.current();
        missed
            .iter()
            .filter_map(|envelope| {
                halite_pki::seal_publication(&session, TOPIC_JOB, envelope)
                    .inspect_err(|e| tracing::error!(error = %e, "cannot seal a catch-up job"))
                    .ok()
            })
            .map(serde_bytes::ByteBuf::from)
            .collect()
    }
}

/// Why a message from a minion was dropped (logged, never answered).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("malformed: {0}")]
    Malformed(#[from] halite_proto::ProtoError),
    #[error("no accepted key for this id")]
    NotAccepted,
    #[error("bad signature: {0}")]
    Signature(#[from] halite_pki::PkiError),
    #[error("sender {sender:?} does not match the id {id:?} in the message")]
    Impersonation { sender: String, id: String },
    #[error("job {jid} was not sent to this minion")]
    NotExpected { jid: Jid },
    #[error("no job {jid} on this master")]
    UnknownJob { jid: Jid },
    #[error("a return for job {jid} of master {master:?} without that master's signed summary of the job")]
    Unvouched { jid: Jid, master: String },
    #[error("another master's job: {0}")]
    Peer(#[from] PeerError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the master does not accept {0:?} messages")]
    UnexpectedKind(Kind),
    #[error("a heartbeat not newer than the last one accepted (a replay)")]
    Replayed,
}

fn same_id(sender: &str, id: &str) -> Result<(), Refusal> {
    if sender == id {
        Ok(())
    } else {
        Err(Refusal::Impersonation {
            sender: sender.to_owned(),
            id: id.to_owned(),
        })
    }
}
