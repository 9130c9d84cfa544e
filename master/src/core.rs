//! The master's state and what it does with each message and request.
//!
//! One `Core` is shared (in an `Arc`) by the ROUTER handler tasks, the
//! return collector, the beacon and prune timers and the HTTP API. Every
//! message from a minion is verified against a key the master already
//! trusts before anything is done with it; a message that fails is
//! dropped with a log line naming the sender and the reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use halite_api::types::{EventRecord, JobRecord, JobRequest, LoginToken, ReturnRecord, Submitted};
use halite_api::ApiError;
use halite_pki::{KeyPair, KeyStore, PublicKey};
use halite_proto::message::{
    Auth, AuthReply, Beacon, Catchup, CatchupReply, Event, Heartbeat, HeartbeatAck, Job, KeyStatus,
    Return, ReturnAck, TOPIC_BEACON, TOPIC_JOB,
};
use halite_proto::time::now_ms;
use halite_proto::{Envelope, Jid, JidGenerator, Kind, Message, Target};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::presence::Presence;
use crate::session::SessionKeys;
use crate::store::{Store, StoredJob};
use crate::transport::{Publisher, Replier};

pub use halite_api::types::RETURN_GRACE_MS;

/// A return waiting to be stored and acknowledged.
pub struct PendingReturn {
    /// Who to send the ack to.
    pub peer: Bytes,
    /// The verified return.
    pub ret: Return,
}

/// Who to acknowledge, with what, once a batch is stored (and whether the
/// return succeeded, for the log line).
type PendingAck = (Bytes, ReturnAck, bool);

/// A job still within its expiry, kept in memory for catch-up.
struct RecentJob {
    expires_at: u64,
    expected: Vec<String>,
    envelope: Arc<Vec<u8>>,
}

/// Shared master state. See the module docs.
pub struct Core {
    /// Validated configuration.
    pub config: Config,
    /// The master's signing key.
    key: KeyPair,
    master_pub: PublicKey,
    /// Minion keys by state.
    pub keys: KeyStore,
    /// Jobs, returns, events, minions.
    pub store: Store,
    /// Who is up.
    pub presence: Presence,
    session: SessionKeys,
    jids: JidGenerator,
    recent: Mutex<Vec<RecentJob>>,
    publisher: Publisher,
    replier: Replier,
    returns: mpsc::Sender<PendingReturn>,
    publish_port: u16,
    cli_token: halite_pki::Secret,
    batches: mpsc::UnboundedSender<crate::batch::BatchPlan>,
    batch_plans: Mutex<Option<mpsc::UnboundedReceiver<crate::batch::BatchPlan>>>,
    cancelled: Mutex<std::collections::HashSet<Jid>>,
}

/// Why a message from a minion was dropped (logged, never answered).
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("malformed: {0}")]
    Malformed(#[from] halite_proto::ProtoError),
    #[error("no accepted key for this id")]
    NotAccepted,
    #[error("bad signature: {0}")]
    Signature(#[from] halite_pki::PkiError),
    #[error("sender {sender:?} does not match the id {id:?} in the message")]
    Impersonation { sender: String, id: String },
    #[error("the master does not accept {0:?} messages")]
    UnexpectedKind(Kind),
}

/// Everything `Core::new` needs that is created by the caller.
pub struct CoreParts {
    /// Validated configuration.
    pub config: Config,
    /// Master key.
    pub key: KeyPair,
    /// Minion keys.
    pub keys: KeyStore,
    /// Opened store.
    pub store: Store,
    /// Publisher handle.
    pub publisher: Publisher,
    /// Reply handle.
    pub replier: Replier,
    /// Where verified returns go to be stored.
    pub returns: mpsc::Sender<PendingReturn>,
    /// Actual PUB port (told to minions at auth).
    pub publish_port: u16,
    /// Token of the local root CLI.
    pub cli_token: String,
}

impl Core {
    /// Assembles the state and reloads recent jobs for catch-up.
    pub fn new(parts: CoreParts) -> Result<Core, crate::Error> {
        let down_after = parts.config.heartbeat_interval * parts.config.missed_heartbeats
            + std::time::Duration::from_secs(1);
        let presence = Presence::load(parts.store.clone(), down_after, now_ms())?;
        let master_pub = parts.key.public();
        let (batches, batch_plans) = mpsc::unbounded_channel();
        let core = Core {
            batches,
            batch_plans: Mutex::new(Some(batch_plans)),
            cancelled: Mutex::new(Default::default()),
            presence,
            session: SessionKeys::new()?,
            jids: JidGenerator::new(),
            recent: Mutex::new(Vec::new()),
            master_pub,
            key: parts.key,
            keys: parts.keys,
            store: parts.store,
            publisher: parts.publisher,
            replier: parts.replier,
            returns: parts.returns,
            publish_port: parts.publish_port,
            cli_token: halite_pki::Secret::new(parts.cli_token),
            config: parts.config,
        };
        core.reload_recent()?;
        Ok(core)
    }

    fn reload_recent(&self) -> Result<(), crate::Error> {
        let now = now_ms();
        let since = Jid::from_unix_us(now.saturating_sub(7 * 86_400_000) * 1000);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for job in self.store.jobs_since(&since)? {
            if job.record.expires_at > now {
                recent.push(RecentJob {
                    expires_at: job.record.expires_at,
                    expected: job.record.expected,
                    envelope: Arc::new(job.envelope),
                });
            }
        }
        Ok(())
    }

    /// The plans of jobs run in batches, for the batch driver (once).
    pub fn take_batch_plans(&self) -> Option<mpsc::UnboundedReceiver<crate::batch::BatchPlan>> {
        self.batch_plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Hands the batch plans a previous run left in the store to the batch
    /// driver (at start).
    pub fn resume_batches(&self) -> Result<usize, crate::store::StoreError> {
        let plans = self.store.batches()?;
        let count = plans.len();
        for plan in plans {
            tracing::info!(jid = %plan.template.jid, remaining = plan.rest.len(), "resuming a job in batches");
            if self.batches.send(plan).is_err() {
                tracing::error!("the batch driver is not running");
            }
        }
        Ok(count)
    }

    /// Has the job been cancelled (so no further batch starts)?
    pub fn is_cancelled(&self, jid: &Jid) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(jid)
    }

    /// Publishes one later batch of a job in batches: the first batch's
    /// job, re-signed for `minions` with its own time window. Returns
    /// when that window ends (unix ms).
    pub fn publish_batch(&self, template: &Job, minions: &[String]) -> Result<u64, ApiError> {
        let mut job = template.clone();
        job.tgt = minions.join(",");
        job.tgt_type = halite_proto::TargetType::List;
        job.issued_at = now_ms();
        job.expires_at = job.issued_at + job.timeout * 1000;
        let envelope = self
            .key
            .sign_message(&self.config.id, &job)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .to_bytes();
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecentJob {
                expires_at: job.expires_at,
                expected: minions.to_vec(),
                envelope: Arc::new(envelope.clone()),
            });
        self.publisher.publish(TOPIC_JOB, envelope);
        tracing::info!(jid = %job.jid, minions = minions.len(), "next batch published");
        let entry = halite_api::types::BusEntry {
            id: 0,
            kind: "job/batch".to_owned(),
            at: job.issued_at,
            jid: Some(job.jid.clone()),
            minion: None,
            data: serde_json::json!({ "minions": minions }),
        };
        if let Err(e) = self.store.publish(entry) {
            tracing::warn!(jid = %job.jid, error = %e, "cannot publish the batch on the event stream");
        }
        Ok(job.expires_at)
    }

    /// Fingerprint of the master key, which minions pin.
    pub fn fingerprint(&self) -> String {
        self.master_pub.fingerprint()
    }

    /// The user a token authenticates: the local CLI token (compared in
    /// constant time) is `root`; others are looked up by their hash
    /// among the unexpired login tokens.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        if halite_pki::Secret::new(token) == self.cli_token {
            return Some(crate::users::ROOT.to_owned());
        }
        let record = match self.store.token(&token_hash(token)) {
            Ok(record) => record?,
            Err(e) => {
                tracing::error!(error = %e, "cannot read tokens");
                return None;
            }
        };
        (record.expires_at > now_ms()).then_some(record.user)
    }

    /// Checks a user's password (slowly, by design: call it off the async
    /// workers) and issues a token valid for `token_expire`.
    pub fn login(&self, user: &str, password: &str) -> Result<LoginToken, ApiError> {
        let valid = self
            .config
            .users()
            .verify(user, password)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        if !valid {
            tracing::warn!(user = %printable(user), "failed login");
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let token = hex::encode(bytes);
        let issued_at = now_ms();
        let expires_at = issued_at + self.config.token_expire.as_millis() as u64;
        self.store
            .put_token(
                &token_hash(&token),
                &crate::store::TokenRecord {
                    user: user.to_owned(),
                    issued_at,
                    expires_at,
                },
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
        tracing::info!(user, "login");
        Ok(LoginToken {
            token,
            user: user.to_owned(),
            issued_at,
            expires_at,
            perms: self.config.acl.written(user),
        })
    }

    /// Refuses with 403 unless `user` has the special grant.
    pub fn require(&self, user: &str, special: crate::acl::Special) -> Result<(), ApiError> {
        self.config
            .acl
            .check_special(user, special)
            .map_err(|denied| ApiError::forbidden(denied.0))
    }

    // ---- messages from minions ------------------------------------------------

    /// Handles one ROUTER message. Replies (if any) go out through the
    /// replier; returns go to the collector, which acks after storing.
    pub async fn handle(&self, peer: Bytes, body: Bytes) {
        let envelope = match Envelope::from_bytes(&body) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "dropped undecodable message");
                return;
            }
        };
        let kind = envelope.kind;
        let sender = envelope.sender.clone();
        if let Err(reason) = self.dispatch(peer, envelope).await {
            tracing::warn!(minion = %printable(&sender), kind = ?kind, %reason, "dropped message");
        }
    }

    async fn dispatch(&self, peer: Bytes, envelope: Envelope) -> Result<(), Refusal> {
        match envelope.kind {
            Kind::Auth => self.on_auth(peer, envelope),
            Kind::Heartbeat => self.on_heartbeat(peer, envelope),
            Kind::Return => {
                let ret: Return = self.verified(&envelope)?;
                same_id(&envelope.sender, &ret.id)?;
                tracing::debug!(jid = %ret.jid, minion = %ret.id, "return received");
                self.presence.seen(&ret.id, None, None, now_ms());
                // Back-pressure: a full collector slows the ROUTER reader,
                // not the store.
                let _ = self.returns.send(PendingReturn { peer, ret }).await;
                Ok(())
            }
            Kind::Event => {
                let event: Event = self.verified(&envelope)?;
                same_id(&envelope.sender, &event.id)?;
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

    fn reply<M: Message>(&self, peer: Bytes, message: &M) {
        match self.key.sign_message(&self.config.id, message) {
            Ok(envelope) => self.replier.send(peer, envelope.to_bytes()),
            Err(e) => tracing::error!(error = %e, "cannot sign a reply"),
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
        let status = self.keys.submit(&auth.id, &key, self.config.auto_accept)?;
        let session = if status == KeyStatus::Accepted {
            let transcript = halite_pki::transcript(&auth.id, &key, &self.master_pub, &auth.nonce);
            self.presence
                .authenticated(&auth.id, auth.grains.clone(), &auth.version, now_ms());
            Some(halite_pki::grant(
                &self.session.current(),
                &auth.eph_pub,
                &transcript,
            )?)
        } else {
            None
        };
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
        self.reply(
            peer,
            &AuthReply {
                nonce: auth.nonce,
                status,
                master: self.config.id.clone(),
                master_pub: self.master_pub.as_bytes().to_vec(),
                publish_port: self.publish_port,
                heartbeat_interval: self.config.heartbeat_interval.as_secs(),
                session,
            },
        );
        Ok(())
    }

    fn on_heartbeat(&self, peer: Bytes, envelope: Envelope) -> Result<(), Refusal> {
        let epoch = self.session.current().epoch();
        match self.verified::<Heartbeat>(&envelope) {
            Ok(heartbeat) => {
                same_id(&envelope.sender, &heartbeat.id)?;
                self.presence.seen(
                    &heartbeat.id,
                    Some(&heartbeat.version),
                    heartbeat.rtt_ms,
                    now_ms(),
                );
                self.reply(
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

    fn catchup_for(&self, id: &str) -> Vec<serde_bytes::ByteBuf> {
        let now = now_ms();
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|job| job.expires_at > now);
        recent
            .iter()
            .filter(|job| job.expected.iter().any(|e| e == id))
            .map(|job| serde_bytes::ByteBuf::from(job.envelope.as_slice()))
            .collect()
    }

    /// Stores a batch of returns, flushes, then acks each. Called by the
    /// collector only, so flushes are grouped.
    pub fn store_returns(&self, batch: Vec<PendingReturn>) {
        let now = now_ms();
        // Returns of jobs another master published (hot multi-master).
        // One per job, however many of its returns are in the batch.
        let mut foreign: Vec<(Jid, String, String, u64)> = batch
            .iter()
            .filter(|p| !p.ret.master.is_empty() && p.ret.master != self.config.id)
            .map(|p| {
                (
                    p.ret.jid.clone(),
                    p.ret.master.clone(),
                    p.ret.fun.clone(),
                    p.ret.started_at,
                )
            })
            .collect();
        foreign.sort_by(|a, b| a.0.cmp(&b.0));
        foreign.dedup_by(|a, b| a.0 == b.0);
        // Each return is split once: what the ack needs, and the record
        // (its data moved, not copied).
        let (acks, records): (Vec<PendingAck>, Vec<(Jid, ReturnRecord)>) = batch
            .into_iter()
            .map(|PendingReturn { peer, ret }| {
                let ack = ReturnAck {
                    jid: ret.jid.clone(),
                    id: ret.id.clone(),
                    nonce: ret.nonce,
                };
                let record = ReturnRecord {
                    id: ret.id,
                    fun: ret.fun,
                    success: ret.success,
                    retcode: ret.retcode,
                    data: ret.data,
                    started_at: ret.started_at,
                    finished_at: ret.finished_at,
                    stored_at: now,
                };
                ((peer, ack, ret.success), (ret.jid, record))
            })
            .unzip();
        let stored = self.store.put_returns(&records).and_then(|new| {
            for (jid, master, fun, started_at) in &foreign {
                self.record_foreign_job(jid, master, fun, *started_at)?;
            }
            for ((jid, record), _) in records.iter().zip(&new).filter(|(_, is_new)| **is_new) {
                if let Some(deploy) = crate::apps::deploy_record(jid, record) {
                    self.store.put_deploy(&deploy)?;
                }
                self.store
                    .publish(crate::store::return_entry(jid, record))?;
            }
            self.store.flush()?;
            Ok(new)
        });
        let new = match stored {
            Ok(new) => new,
            Err(e) => {
                // Not acknowledged: the minions keep the returns and re-send.
                tracing::error!(error = %e, returns = acks.len(), "cannot store returns; minions will re-send");
                return;
            }
        };
        for ((peer, ack, success), is_new) in acks.into_iter().zip(new) {
            if is_new {
                tracing::info!(jid = %ack.jid, minion = %ack.id, success, "return stored");
            } else {
                tracing::debug!(jid = %ack.jid, minion = %ack.id, "duplicate return acknowledged");
            }
            self.reply(peer, &ack);
        }
    }

    /// Makes sure a job another master published has a record here, so
    /// its returns (sent to every master in hot mode) can be listed and
    /// shown like this master's own. The record says who published it and
    /// has no envelope (it is never offered for catch-up).
    fn record_foreign_job(
        &self,
        jid: &Jid,
        master: &str,
        fun: &str,
        started_at: u64,
    ) -> Result<(), crate::store::StoreError> {
        if self.store.has_job(jid)? {
            return Ok(());
        }
        let record = JobRecord {
            jid: jid.clone(),
            target: String::new(),
            tgt_type: Default::default(),
            fun: fun.to_owned(),
            arg: Vec::new(),
            kwarg: Default::default(),
            secret_keys: Vec::new(),
            user: String::new(),
            timeout: 0,
            issued_at: started_at,
            expires_at: 0,
            expected: Vec::new(),
            down: Vec::new(),
            published_by: Some(master.to_owned()),
            batch_size: None,
        };
        tracing::info!(%jid, master, "returns of a job published by another master");
        self.store.put_job(&StoredJob {
            record,
            envelope: Vec::new(),
        })
    }

    // ---- timers --------------------------------------------------------------

    /// Publishes a signed beacon.
    pub fn beacon(&self) {
        let beacon = Beacon {
            master: self.config.id.clone(),
            at: now_ms(),
            session_epoch: self.session.current().epoch(),
        };
        match self.key.sign_message(&self.config.id, &beacon) {
            Ok(envelope) => self.publisher.publish(TOPIC_BEACON, envelope.to_bytes()),
            Err(e) => tracing::error!(error = %e, "cannot sign beacon"),
        }
    }

    /// Removes jobs and presence transitions older than `keep_jobs`.
    pub fn prune(&self) {
        let cutoff_ms = now_ms().saturating_sub(self.config.keep_jobs.as_millis() as u64);
        if let Err(e) = self.store.prune_stream_before(cutoff_ms) {
            tracing::warn!(error = %e, "prune of the event stream failed");
        }
        if let Err(e) = self.store.prune_tokens(now_ms()) {
            tracing::warn!(error = %e, "prune of expired tokens failed");
        }
        if let Err(e) = self.store.prune_presence_before(cutoff_ms) {
            tracing::warn!(error = %e, "prune of presence transitions failed");
        }
        let checks_cutoff = now_ms().saturating_sub(self.config.keep_checks.as_millis() as u64);
        if let Err(e) = self.store.prune_checks_before(checks_cutoff) {
            tracing::warn!(error = %e, "prune of connectivity checks failed");
        }
        match self
            .store
            .prune_before(&Jid::from_unix_us(cutoff_ms * 1000))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "pruned old jobs"),
            Err(e) => tracing::warn!(error = %e, "prune failed"),
        }
    }

    // ---- API -----------------------------------------------------------------

    /// Validates, checks the ACL, records durably, then publishes a job.
    pub fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError> {
        self.publish_job(user, request, true)
    }

    /// Cancels a running job: a signed `saltutil.kill_job` to the minions
    /// that have not returned. Allowed to the user who submitted the job
    /// and to anyone the ACL lets run its function on those minions.
    pub fn cancel(&self, user: &str, jid: &Jid) -> Result<serde_json::Value, ApiError> {
        let view = self.job_view(jid)?;
        if view.job.published_by.is_some() {
            return Err(ApiError::conflict(format!(
                "job {jid} was published by master {}; cancel it there",
                view.job.published_by.as_deref().unwrap_or_default()
            )));
        }
        if view.done {
            return Err(ApiError::conflict(format!(
                "job {jid} is done; nothing to cancel"
            )));
        }
        if view.job.user != user {
            self.config
                .acl
                .check_job(
                    user,
                    &acl_function(&view.job.fun),
                    &view.missing,
                    |ids, t| self.presence.matching(ids, t),
                )
                .map_err(|denied| ApiError::forbidden(denied.0))?;
        }
        let request = JobRequest {
            target: view.missing.join(","),
            tgt_type: halite_proto::TargetType::List,
            fun: halite_proto::message::KILL_JOB.to_owned(),
            arg: vec![serde_json::Value::String(jid.to_string())],
            timeout: Some(30),
            ..JobRequest::default()
        };
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jid.clone());
        if let Err(e) = self
            .store
            .delete_batch(jid)
            .and_then(|()| self.store.flush())
        {
            tracing::warn!(%jid, error = %e, "cannot delete the batch plan of a cancelled job");
        }
        let submitted = self.publish_job(user, request, false)?;
        let entry = halite_api::types::BusEntry {
            id: 0,
            kind: "job/cancel".to_owned(),
            at: now_ms(),
            jid: Some(jid.clone()),
            minion: None,
            data: serde_json::json!({ "by": user, "kill_jid": submitted.jid, "minions": submitted.minions }),
        };
        if let Err(e) = self.store.publish(entry) {
            tracing::warn!(%jid, error = %e, "cannot publish the cancel on the event stream");
        }
        tracing::warn!(%jid, user, minions = ?submitted.minions, "job cancelled");
        Ok(serde_json::json!({
            "jid": jid,
            "kill_jid": submitted.jid,
            "minions": submitted.minions,
        }))
    }

    fn publish_job(
        &self,
        user: &str,
        mut request: JobRequest,
        check_acl: bool,
    ) -> Result<Submitted, ApiError> {
        halite_proto::ident::validate_function(&request.fun)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let target = Target::parse(request.tgt_type, &request.target)
            .map_err(|e| ApiError::bad_request(format!("target: {e}")))?;
        let accepted = self.keys.accepted_ids();
        let expected = self.presence.matching(&accepted, &target);
        if check_acl {
            self.config
                .acl
                .check_job(user, &acl_function(&request.fun), &expected, |ids, t| {
                    self.presence.matching(ids, t)
                })
                .map_err(|denied| {
                    tracing::warn!(user, fun = %request.fun, target = %request.target, "refused by the ACL");
                    ApiError::forbidden(denied.0)
                })?;
        }
        let modules = self.lua_modules_for(&mut request)?;
        // A Lua module given `app=NAME` gets the app's definition and
        // credentials like git_deploy does (it may call git_deploy).
        let lua_app = !modules.is_empty()
            && request.fun != halite_proto::message::SYNC_MODULES
            && request.kwarg.get("app").is_some_and(|a| a.is_string());
        if crate::apps::needs_app(&request.fun) || lua_app {
            self.complete_app(&mut request, &accepted, &expected)?;
        }
        let timeout = request.timeout.unwrap_or(self.config.job_timeout.as_secs());
        if timeout == 0 || timeout > 7 * 86_400 {
            return Err(ApiError::bad_request("timeout must be 1 to 604800 seconds"));
        }
        for key in request.secret.keys() {
            if request.kwarg.contains_key(key) {
                return Err(ApiError::bad_request(format!(
                    "`{key}` is given both as a keyword argument and as a secret"
                )));
            }
        }
        let jid = self.jids.next();
        let issued_at = now_ms();
        let expires_at = issued_at + timeout * 1000;
        let secret = if request.secret.is_empty() {
            None
        } else {
            let plain = halite_proto::envelope::encode("secrets", &request.secret)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(
                self.session
                    .current()
                    .seal(jid.as_str().as_bytes(), &plain)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            )
        };
        let down: Vec<String> = expected
            .iter()
            .filter(|id| !self.presence.is_up(id))
            .cloned()
            .collect();
        if request.require_up && !down.is_empty() {
            return Err(ApiError::conflict(format!(
                "targeted minions are down: {}; nothing was published",
                down.join(", ")
            )));
        }
        let batch_size = match request.batch.as_deref() {
            Some(batch) => Some(crate::batch::parse_size(batch, expected.len())?),
            None => None,
        }
        .filter(|&size| size < expected.len());
        // A job in batches goes first to the first batch, by list; the
        // batch driver publishes the rest of the same jid, one batch at a time.
        let first: Vec<String> = match batch_size {
            Some(size) => expected[..size].to_vec(),
            None => expected.clone(),
        };
        let (tgt, tgt_type) = match batch_size {
            Some(_) => (first.join(","), halite_proto::TargetType::List),
            None => (request.target.clone(), request.tgt_type),
        };
        let job = Job {
            jid: jid.clone(),
            tgt,
            tgt_type,
            fun: request.fun.clone(),
            arg: request.arg.clone(),
            kwarg: request.kwarg.clone(),
            secret,
            timeout,
            issued_at,
            expires_at,
            master: self.config.id.clone(),
            user: user.to_owned(),
            modules,
        };
        let envelope = self
            .key
            .sign_message(&self.config.id, &job)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .to_bytes();
        let record = JobRecord {
            jid: jid.clone(),
            target: request.target,
            tgt_type: request.tgt_type,
            fun: request.fun,
            arg: request.arg,
            kwarg: request.kwarg,
            secret_keys: request.secret.into_keys().collect(),
            user: user.to_owned(),
            timeout,
            issued_at,
            expires_at,
            expected: expected.clone(),
            down,
            published_by: None,
            batch_size,
        };
        // A job in batches keeps its plan beside it, so a restarted master
        // goes on with the next batch.
        let plan = batch_size.map(|size| crate::batch::BatchPlan {
            rest: expected[size..]
                .chunks(size)
                .map(<[String]>::to_vec)
                .collect(),
            waiting_for: first.clone(),
            deadline: expires_at + RETURN_GRACE_MS,
            template: job.clone(),
        });
        self.store
            .put_job(&StoredJob {
                record,
                envelope: envelope.clone(),
            })
            .and_then(|()| match &plan {
                Some(plan) => self.store.put_batch(plan),
                None => Ok(()),
            })
            .and_then(|()| self.store.flush())
            .map_err(|e| ApiError::internal(e.to_string()))?;
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecentJob {
                expires_at,
                expected: first.clone(),
                envelope: Arc::new(envelope.clone()),
            });
        self.publisher.publish(TOPIC_JOB, envelope);
        if let Some(plan) = plan {
            if self.batches.send(plan).is_err() {
                tracing::error!(%jid, "the batch driver is not running; only the first batch was published");
            }
        }
        tracing::info!(%jid, fun = %job.fun, target = %job.tgt, user, expected = expected.len(), "job published");
        let entry = halite_api::types::BusEntry {
            id: 0,
            kind: "job/new".to_owned(),
            at: issued_at,
            jid: Some(jid.clone()),
            minion: None,
            data: serde_json::json!({
                "fun": job.fun, "target": job.tgt, "tgt_type": job.tgt_type,
                "user": user, "minions": expected,
            }),
        };
        if let Err(e) = self.store.publish(entry) {
            tracing::warn!(%jid, error = %e, "cannot publish the job on the event stream");
        }
        Ok(Submitted {
            jid,
            minions: expected,
        })
    }

    /// Fills in an app module's job from the app catalog (see
    /// [`crate::apps::Catalog::complete`]), with the app's `timeout` when
    /// the request gives none. Secrets given on the command line for the
    /// same names are refused rather than overridden.
    /// `accepted` are the accepted minions, `job_minions` those the job
    /// targets (computed once by `submit`).
    fn complete_app(
        &self,
        request: &mut JobRequest,
        accepted: &[String],
        job_minions: &[String],
    ) -> Result<(), ApiError> {
        let app_minions = |app: &halite_proto::app::AppSpec| {
            let theirs = Target::parse(app.tgt_type, &app.target)
                .map_err(|e| format!("app {}: target: {e}", app.name))?;
            Ok(self.presence.matching(accepted, &theirs))
        };
        let mut secret = BTreeMap::new();
        let app = self
            .config
            .apps()
            .complete(
                &mut request.kwarg,
                &mut secret,
                &request.target,
                job_minions,
                request.fun.split('.').next().unwrap_or_default(),
                app_minions,
            )
            .map_err(ApiError::bad_request)?;
        request.timeout.get_or_insert(app.timeout);
        for (key, value) in secret {
            if request.secret.insert(key.clone(), value).is_some() {
                return Err(ApiError::bad_request(format!(
                    "`{key}` comes from app {}'s credentials; do not pass it as well",
                    app.name
                )));
            }
        }
        Ok(())
    }

    /// The signed Lua modules a job carries: the one its function names
    /// (if the master has such a Lua module), or all of them for
    /// `saltutil.sync_modules`. `saltutil.list_modules` gets the master's
    /// versions as its `master` argument, so minions say which are current.
    fn lua_modules_for(
        &self,
        request: &mut JobRequest,
    ) -> Result<Vec<halite_proto::message::SignedModule>, ApiError> {
        use halite_proto::message::{LIST_MODULES, SYNC_MODULES};
        let catalog = self.config.lua_modules();
        let broken = |e: halite_proto::config::ConfigError| ApiError::internal(e.to_string());
        let wanted: Vec<(String, String)> = if request.fun == SYNC_MODULES {
            catalog.all().map_err(broken)?.into_iter().collect()
        } else if request.fun == LIST_MODULES {
            let versions: serde_json::Map<String, serde_json::Value> = catalog
                .all()
                .map_err(broken)?
                .into_iter()
                .map(|(name, source)| (name, halite_pki::sha256_hex(source.as_bytes()).into()))
                .collect();
            request.kwarg.insert("master".into(), versions.into());
            Vec::new()
        } else {
            let module = request.fun.split('.').next().unwrap_or_default();
            match catalog.get(module).map_err(broken)? {
                Some(source) => vec![(module.to_owned(), source)],
                None => Vec::new(),
            }
        };
        wanted
            .into_iter()
            .map(|(name, source)| {
                crate::lua_modules::sign(&self.key, &self.config.id, &name, source)
                    .map_err(|e| ApiError::internal(e.to_string()))
            })
            .collect()
    }

    /// A job with its returns, what is missing and whether it is done.
    pub fn job_view(&self, jid: &Jid) -> Result<halite_api::types::JobView, ApiError> {
        let job = self
            .store
            .job(jid)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .ok_or_else(|| ApiError::not_found(format!("no job {jid}")))?;
        let returns: BTreeMap<String, ReturnRecord> = self
            .store
            .returns(jid)
            .map_err(|e| ApiError::internal(e.to_string()))?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let missing: Vec<String> = job
            .record
            .expected
            .iter()
            .filter(|id| !returns.contains_key(*id))
            .cloned()
            .collect();
        let deadline = job.record.deadline();
        let done = missing.is_empty() || now_ms() >= deadline;
        Ok(halite_api::types::JobView {
            job: job.record,
            returns,
            missing,
            done,
        })
    }

    /// Records whether each accepted minion is reachable right now: a
    /// heartbeat acknowledged within `missed_heartbeats` intervals proves
    /// both directions of its connection. Kept `keep_checks` hours.
    pub fn check_connectivity(&self) {
        let now = now_ms();
        let all = self.presence.all();
        // One map, not a scan per minion: listing stays linear in fleet size.
        let records: std::collections::HashMap<&str, &crate::store::MinionRecord> =
            all.iter().map(|r| (r.id.as_str(), r)).collect();
        let checks: Vec<halite_api::types::CheckRecord> = self
            .keys
            .accepted_ids()
            .into_iter()
            .map(|id| {
                let record = records.get(id.as_str());
                halite_api::types::CheckRecord {
                    ok: self.presence.is_up(&id),
                    latency_ms: record.and_then(|r| r.rtt_ms),
                    last_seen: record.map(|r| r.last_seen).filter(|&t| t > 0),
                    at: now,
                    id,
                }
            })
            .collect();
        let failed = checks.iter().filter(|c| !c.ok).count();
        if failed > 0 {
            tracing::warn!(
                failed,
                checked = checks.len(),
                "connectivity check: minions unreachable"
            );
        }
        if let Err(e) = self.store.put_checks(&checks) {
            tracing::warn!(error = %e, "cannot record connectivity checks");
        }
    }

    /// Rotates the session key after a key was revoked, and tells minions
    /// through an immediate beacon.
    pub fn rotate_session(&self) {
        if let Err(e) = self.session.rotate() {
            tracing::error!(error = %e, "cannot rotate the session key");
        }
        self.beacon();
    }
}

/// SHA-256 of a token: what the store keeps instead of the token.
fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

/// The function name the ACL checks: a deploy module named alone means
/// its `deploy` function, so `git_deploy` needs the same grant as
/// `git_deploy.deploy`.
fn acl_function(fun: &str) -> String {
    if !fun.contains('.') && crate::apps::needs_app(fun) {
        format!("{fun}.deploy")
    } else {
        fun.to_owned()
    }
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

/// A sender name safe to log even when it failed validation.
fn printable(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
