//! The minion's connection to one master, supervised.
//!
//! With several masters, hot mode runs one `Link` per master ([`Link::run`]),
//! failover mode runs them one at a time ([`run_failover`]).
//!
//! A session is: connect a DEALER, authenticate (pinning or checking the
//! master key, receiving the session key), subscribe to the PUB socket,
//! ask for missed jobs, re-send unacknowledged returns, then serve until
//! something says the connection is gone. zeromq's DEALER does not
//! reconnect by itself after a master restart, so any of these ends the
//! session and a new one starts with a fresh socket: a monitor
//! `Disconnected`, a failed send, heartbeat acks missing for three
//! intervals, or a newer session epoch (re-auth to fetch the key).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use halite_pki::{Ephemeral, KeyPair, LinkKey, PublicKey, SessionKey};
use halite_proto::message::{
    Auth, AuthReply, Beacon, Catchup, CatchupReply, Heartbeat, HeartbeatAck, Job, KeyStatus,
    Return, ReturnAck, TOPIC_BEACON, TOPIC_JOB,
};
use halite_proto::time::now_ms;
use halite_proto::{Envelope, Jid, Kind};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, SubSocket, ZmqMessage};

use crate::config::MasterAddr;
use crate::executor::{nonce, Executor, JobSource, SessionKeys};
use crate::outbox::Queue;
use crate::spool::Spool;
use crate::trust::MasterTrust;

/// Envelopes larger than this are dropped undecoded (the sockets refuse
/// larger messages from their frame headers, before allocating).
const MAX_FRAME: usize = halite_proto::envelope::MAX_MESSAGE_BYTES;
/// How long to wait for a TCP connection or an auth reply.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat acks that may go missing before the connection is renewed.
const MISSED_ACKS: u32 = 3;
/// How often unacknowledged returns are re-sent while connected.
const RESEND_EVERY: Duration = Duration::from_secs(10);

/// Why a session ended abnormally (logged; the link retries).
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error(
        "cannot connect to {0}: connection refused (is halite-master running there, on that port?)"
    )]
    Refused(String),
    #[error("{0} is the master's publish port: `masters` lists its return_port (4506 unless the master's config changes it)")]
    PublishPort(String),
    #[error("zeromq: {0}")]
    Zmq(#[from] zeromq::ZmqError),
    #[error("no auth reply within {0:?}")]
    AuthTimeout(Duration),
    #[error("bad auth reply: {0}")]
    Proto(#[from] halite_proto::ProtoError),
    #[error("{0}")]
    Pki(#[from] halite_pki::PkiError),
    #[error("{0}")]
    Trust(#[from] crate::trust::TrustError),
    #[error("the master accepted the key but sent no session key")]
    NoSession,
}

/// How a session ended.
enum Next {
    Shutdown,
    /// Connect to the same master again (key rotated, key refused).
    Reconnect(&'static str),
    /// The master stopped answering: in failover mode, try the next one.
    Lost(String),
}

/// Everything the link shares with the rest of the minion.
#[derive(Clone)]
pub struct Link {
    /// Master address.
    pub addr: MasterAddr,
    /// Pin for this master.
    pub trust: MasterTrust,
    /// Minion id.
    pub id: String,
    /// Minion key.
    pub key: Arc<KeyPair>,
    /// Grains sent at auth.
    pub grains: Arc<Value>,
    /// Runs jobs.
    pub executor: Arc<Executor>,
    /// Where session keys are published for the executor.
    pub session_tx: watch::Sender<SessionKeys>,
    /// Signed returns and events to send (shared by a failover group).
    pub out_rx: Queue,
    /// Returns this master has not acknowledged yet.
    pub spool: Spool,
    /// Pause between auth attempts while not accepted.
    pub auth_retry: Duration,
    /// A master silent this long (no beacon, no heartbeat ack) is lost.
    pub alive: Duration,
    /// Epoch of the session key this link published, replaced on re-auth.
    pub epoch: Option<u64>,
    /// Set (with the reason) when the minion must stop: a master that
    /// fails `master_fingerprint`. Cancels `stop`.
    pub fatal: Arc<std::sync::OnceLock<String>>,
    /// The whole minion's shutdown, fired on a fatal error.
    pub stop: CancellationToken,
}

/// An auth the master answered with "pending": kept so the master's
/// later "accepted" for the same request (sent when an operator accepts
/// the key) completes it without a new round.
struct Waiting {
    ephemeral: Ephemeral,
    nonce: Vec<u8>,
}

/// What an auth came to.
enum AuthOutcome {
    Accepted(Accepted),
    /// Not accepted (yet); `Some` while the master may still accept this
    /// very request.
    NotAccepted(KeyStatus, Option<Waiting>),
}

/// An accepted auth.
struct Accepted {
    master_pub: PublicKey,
    master: String,
    publish_port: u16,
    heartbeat: Duration,
    session: SessionKey,
    /// This minion's own key from this master, if it gave one.
    personal: Option<SessionKey>,
    /// The key of this link's heartbeats and acks (from `personal`), when
    /// the master checks link MACs (`halite_pki::link_key`).
    link_key: Option<LinkKey>,
}

impl Link {
    /// Keeps a session with the master alive until `shutdown` (one master,
    /// or one of a hot group).
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let result = self.session(&shutdown).await;
            let pause = match result {
                Ok(Next::Shutdown) => return,
                Ok(Next::Reconnect(why)) => {
                    tracing::info!(master = %self.addr, reason = why, "reconnecting");
                    backoff = Duration::from_millis(500);
                    Duration::from_millis(200)
                }
                Ok(Next::Lost(why)) => {
                    tracing::warn!(master = %self.addr, reason = %why, "master lost; reconnecting");
                    backoff = Duration::from_millis(500);
                    Duration::from_millis(200)
                }
                Err(e) => {
                    tracing::warn!(master = %self.addr, error = %e, retry_in = ?backoff, "master session failed");
                    let pause = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    pause
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn session(&mut self, shutdown: &CancellationToken) -> Result<Next, LinkError> {
        let mut dealer = DealerSocket::with_options(halite_daemon::socket_options());
        let mut monitor = dealer.monitor();
        let endpoint = self.addr.endpoint(self.addr.port);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Next::Shutdown),
            connected = connect_dealer(&self.addr, &mut dealer, &endpoint) => connected?,
        }
        let (mut tx, mut rx) = dealer.split();

        let accepted = loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return Ok(Next::Shutdown),
                answer = self.auth(&mut tx, &mut rx) => answer?,
            };
            match answer {
                AuthOutcome::Accepted(accepted) => break accepted,
                AuthOutcome::NotAccepted(status, waiting) => {
                    match status {
                        KeyStatus::Pending => tracing::info!(
                            master = %self.addr,
                            minion = %self.id,
                            fingerprint = %self.key.public().fingerprint(),
                            "key not yet accepted by the master; waiting (master-cli keys accept {})",
                            self.id
                        ),
                        other => tracing::error!(
                            master = %self.addr,
                            minion = %self.id,
                            status = ?other,
                            "the master refuses this minion's key; no jobs will run"
                        ),
                    }
                    // The master answers this same request again when an
                    // operator accepts the key: no need to wait for the
                    // next round to start running jobs.
                    let accepted_meanwhile = async {
                        match waiting {
                            Some(waiting) => self.await_acceptance(&mut rx, waiting).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(Next::Shutdown),
                        _ = tokio::time::sleep(self.auth_retry) => {}
                        accepted = accepted_meanwhile => {
                            if let Some(accepted) = accepted? {
                                break accepted;
                            }
                        }
                    }
                }
            }
        };
        let epoch = accepted.session.epoch();
        let previous = self.epoch.replace(epoch);
        self.session_tx.send_modify(|keys| {
            if let Some(old) = previous {
                keys.shared.remove(&old);
            }
            keys.shared.insert(epoch, accepted.session.clone());
            match &accepted.personal {
                Some(personal) => keys
                    .personal
                    .insert(accepted.master.clone(), personal.clone()),
                None => keys.personal.remove(&accepted.master),
            };
        });
        tracing::info!(master = %accepted.master, addr = %self.addr, "authenticated");

        let mut sub = SubSocket::with_options(halite_daemon::socket_options());
        let pub_endpoint = self.addr.endpoint(accepted.publish_port);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Next::Shutdown),
            connected = tokio::time::timeout(CONNECT_TIMEOUT, sub.connect(&pub_endpoint)) => {
                connected.map_err(|_| LinkError::ConnectTimeout(pub_endpoint.clone()))??;
            }
        }
        sub.subscribe(TOPIC_JOB).await?;
        sub.subscribe(TOPIC_BEACON).await?;

        // In a failover group only the active link drains the queue.
        let mut out_rx = self.out_rx.clone().lock_owned().await;
        let mut awaiting: HashMap<Jid, Vec<u8>> = HashMap::new();
        let catchup = self.sign(&Catchup {
            id: self.id.clone(),
            nonce: nonce(),
        })?;
        tx.send(frame(catchup)).await?;
        self.resend_spool(&mut tx, &mut awaiting).await?;

        let mut heartbeat = tokio::time::interval(accepted.heartbeat);
        let mut resend = tokio::time::interval_at(Instant::now() + RESEND_EVERY, RESEND_EVERY);
        let mut last_ack = Instant::now();
        let mut last_beat_at = 0u64;
        // Heartbeats still awaiting their ack (nonce, sent at): an ack that
        // arrives after the next heartbeat went out still counts.
        let mut in_flight: VecDeque<(Vec<u8>, Instant)> =
            VecDeque::with_capacity(MISSED_ACKS as usize);
        let mut rtt_ms = None;
        // Last sign of life from the master: a beacon or a heartbeat ack.
        let mut last_contact = Instant::now();
        // A SUB subscription takes effect at the PUB some time after it is
        // sent: a job published in between (after the catch-up above was
        // answered) would be lost. The first beacon proves the subscription
        // is live; one more catch-up then covers that gap.
        let mut subscription_proven = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(Next::Shutdown),
                event = monitor.next() => {
                    if matches!(event, Some(SocketEvent::Disconnected(_)) | None) {
                        return Ok(Next::Lost("connection to the master lost".into()));
                    }
                }
                message = rx.recv() => {
                    let Some(envelope) = self.reply_from_master(message?, &accepted.master_pub, accepted.link_key.as_ref()) else { continue };
                    match envelope.kind {
                        Kind::ReturnAck => {
                            let Ok(ack) = envelope.open::<ReturnAck>() else { continue };
                            if ack.id == self.id && awaiting.get(&ack.jid) == Some(&ack.nonce) {
                                awaiting.remove(&ack.jid);
                                self.spool.remove(&ack.jid);
                                tracing::debug!(jid = %ack.jid, "return acknowledged");
                            }
                        }
                        Kind::HeartbeatAck => {
                            let Ok(ack) = envelope.open::<HeartbeatAck>() else { continue };
                            let Some(index) = in_flight.iter().position(|(n, _)| *n == ack.nonce) else { continue };
                            let (_, sent) = in_flight[index];
                            in_flight.drain(..=index);
                            last_ack = Instant::now();
                            last_contact = last_ack;
                            rtt_ms = Some(sent.elapsed().as_millis() as u64);
                            if !ack.accepted {
                                // Rejected or deleted, or the master no
                                // longer holds this link's key: a new auth
                                // says which.
                                return Ok(Next::Reconnect("the master asks for a new auth"));
                            }
                            if ack.session_epoch > epoch {
                                return Ok(Next::Reconnect("session key rotated"));
                            }
                        }
                        Kind::CatchupReply => {
                            let Ok(reply) = envelope.open::<CatchupReply>() else { continue };
                            tracing::debug!(jobs = reply.jobs.len(), "catch-up reply");
                            for job in reply.jobs {
                                self.on_published(TOPIC_JOB, &job, &accepted.master_pub, JobSource::Catchup);
                            }
                        }
                        _ => {}
                    }
                }
                message = sub.recv() => {
                    let mut frames = message?.into_vec().into_iter();
                    let (Some(topic), Some(body)) = (frames.next(), frames.next()) else { continue };
                    let topic = String::from_utf8_lossy(&topic).into_owned();
                    if let Some(beacon_epoch) =
                        self.on_published(&topic, &body, &accepted.master_pub, JobSource::Published)
                    {
                        last_contact = Instant::now();
                        if beacon_epoch > epoch {
                            return Ok(Next::Reconnect("session key rotated"));
                        }
                        if !subscription_proven {
                            subscription_proven = true;
                            let catchup = self.sign(&Catchup {
                                id: self.id.clone(),
                                nonce: nonce(),
                            })?;
                            tx.send(frame(catchup)).await?;
                        }
                    }
                }
                outgoing = out_rx.recv() => {
                    let Some(outgoing) = outgoing else { return Ok(Next::Shutdown) };
                    if let Some((jid, nonce)) = outgoing.ack {
                        awaiting.insert(jid, nonce);
                    }
                    if let Err(e) = tx.send(frame(outgoing.bytes)).await {
                        tracing::warn!(error = %e, "send to master failed");
                        return Ok(Next::Lost(format!("send failed: {e}")));
                    }
                }
                _ = heartbeat.tick() => {
                    if last_ack.elapsed() > accepted.heartbeat * MISSED_ACKS {
                        return Ok(Next::Lost("heartbeat acks missing".into()));
                    }
                    if last_contact.elapsed() > self.alive {
                        return Ok(Next::Lost(format!("no beacon or ack for {:?}", self.alive)));
                    }
                    let heartbeat_nonce = nonce();
                    // Strictly increasing: the master takes a heartbeat
                    // not newer than the last as a replay.
                    last_beat_at = now_ms().max(last_beat_at + 1);
                    let beat = self.sign_linked(accepted.link_key.as_ref(), &Heartbeat {
                        id: self.id.clone(),
                        nonce: heartbeat_nonce.clone(),
                        at: last_beat_at,
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        session_epoch: epoch,
                        running: self.executor.running(),
                        rtt_ms,
                    })?;
                    if in_flight.len() == MISSED_ACKS as usize {
                        in_flight.pop_front();
                    }
                    in_flight.push_back((heartbeat_nonce, Instant::now()));
                    tx.send(frame(beat)).await?;
                }
                _ = resend.tick() => self.resend_spool(&mut tx, &mut awaiting).await?,
            }
        }
    }

    /// Sends Auth and waits for the matching, verified reply.
    /// `Ok(Err(status))` means the master answered but does not accept us.
    async fn auth(
        &self,
        tx: &mut zeromq::DealerSendHalf,
        rx: &mut zeromq::DealerRecvHalf,
    ) -> Result<AuthOutcome, LinkError> {
        if self.trust.needs_probe() {
            // A required fingerprint and no pin yet: learn the master's
            // key before handing it ours, so a wrong master never even
            // lists this minion as pending.
            let probe_nonce = nonce();
            self.send_auth(tx, &probe_nonce, Vec::new(), true).await?;
            let (envelope, reply) = self.auth_reply(rx, &probe_nonce).await?;
            self.trusted_master(&envelope, &reply)?;
        }
        let (ephemeral, eph_pub) = Ephemeral::generate()?;
        let auth_nonce = nonce();
        self.send_auth(tx, &auth_nonce, eph_pub, false).await?;
        let (envelope, reply) = self.auth_reply(rx, &auth_nonce).await?;
        let waiting = Waiting {
            ephemeral,
            nonce: auth_nonce,
        };
        self.outcome(&envelope, reply, waiting)
    }

    async fn send_auth(
        &self,
        tx: &mut zeromq::DealerSendHalf,
        nonce: &[u8],
        eph_pub: Vec<u8>,
        probe: bool,
    ) -> Result<(), LinkError> {
        let auth = self.sign(&Auth {
            id: self.id.clone(),
            pubkey: self.key.public().as_bytes().to_vec(),
            nonce: nonce.to_vec(),
            eph_pub,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            grains: (*self.grains).clone(),
            probe,
            link_macs: true,
        })?;
        tx.send(frame(auth)).await?;
        Ok(())
    }

    /// The master's answer to the auth with `nonce` (other messages are
    /// skipped), within the auth timeout.
    async fn auth_reply(
        &self,
        rx: &mut zeromq::DealerRecvHalf,
        nonce: &[u8],
    ) -> Result<(Envelope, AuthReply), LinkError> {
        let deadline = Instant::now() + CONNECT_TIMEOUT * 2;
        tokio::time::timeout_at(deadline, self.next_auth_reply(rx, nonce))
            .await
            .map_err(|_| LinkError::AuthTimeout(CONNECT_TIMEOUT * 2))?
    }

    async fn next_auth_reply(
        &self,
        rx: &mut zeromq::DealerRecvHalf,
        nonce: &[u8],
    ) -> Result<(Envelope, AuthReply), LinkError> {
        loop {
            let message = rx.recv().await?;
            let Some(body) = message.into_vec().into_iter().next() else {
                continue;
            };
            if body.len() > MAX_FRAME {
                continue;
            }
            let Ok(envelope) = Envelope::from_bytes(&body) else {
                continue;
            };
            if envelope.kind != Kind::AuthReply {
                continue;
            }
            let reply: AuthReply = envelope.open()?;
            if reply.nonce == nonce {
                return Ok((envelope, reply));
            }
        }
    }

    /// Checks that the reply is signed by the key it carries and that the
    /// key is the one pinned (or configured) for this master. A key that
    /// fails `master_fingerprint` stops the minion: it names both
    /// fingerprints and never authenticates.
    fn trusted_master(
        &self,
        envelope: &Envelope,
        reply: &AuthReply,
    ) -> Result<PublicKey, LinkError> {
        let master_pub = PublicKey::from_bytes(&reply.master_pub)?;
        halite_pki::verify_envelope(envelope, &master_pub)?;
        if let Err(e) = self.trust.check(&master_pub) {
            if matches!(e, crate::trust::TrustError::Fingerprint { .. }) {
                tracing::error!(master = %self.addr, error = %e, "this master is not the one master_fingerprint names; the minion stops (a wrong address, or a man in the middle)");
                let _ = self.fatal.set(format!("master {}: {e}", self.addr));
                self.stop.cancel();
            }
            return Err(e.into());
        }
        Ok(master_pub)
    }

    fn outcome(
        &self,
        envelope: &Envelope,
        reply: AuthReply,
        waiting: Waiting,
    ) -> Result<AuthOutcome, LinkError> {
        let master_pub = self.trusted_master(envelope, &reply)?;
        if reply.status != KeyStatus::Accepted {
            let waiting = (reply.status == KeyStatus::Pending).then_some(waiting);
            return Ok(AuthOutcome::NotAccepted(reply.status, waiting));
        }
        let grant = reply.session.as_ref().ok_or(LinkError::NoSession)?;
        let transcript =
            halite_pki::transcript(&self.id, &self.key.public(), &master_pub, &waiting.nonce);
        let (session, personal) = waiting.ephemeral.accept(grant, &transcript)?;
        let link_key = match (&personal, reply.link_macs) {
            (Some(personal), true) => Some(LinkKey::derive(personal)?),
            _ => None,
        };
        Ok(AuthOutcome::Accepted(Accepted {
            master_pub,
            master: reply.master,
            publish_port: reply.publish_port,
            heartbeat: Duration::from_secs(reply.heartbeat_interval.max(1)),
            session,
            personal,
            link_key,
        }))
    }

    /// Waits for the master to answer a pending auth again with
    /// "accepted" (it does when an operator accepts the key). `None` if it
    /// answers otherwise (rejected).
    async fn await_acceptance(
        &self,
        rx: &mut zeromq::DealerRecvHalf,
        waiting: Waiting,
    ) -> Result<Option<Accepted>, LinkError> {
        let (envelope, reply) = self.next_auth_reply(rx, &waiting.nonce.clone()).await?;
        match self.outcome(&envelope, reply, waiting)? {
            AuthOutcome::Accepted(accepted) => Ok(Some(accepted)),
            AuthOutcome::NotAccepted(..) => Ok(None),
        }
    }

    /// Decodes and verifies a DEALER reply from the master: signed by its
    /// key, or (acks) with this link's MAC; logs and drops anything else.
    fn reply_from_master(
        &self,
        message: ZmqMessage,
        master_pub: &PublicKey,
        link_key: Option<&LinkKey>,
    ) -> Option<Envelope> {
        let body = message.into_vec().into_iter().next()?;
        match link_key {
            Some(link_key) => {
                let envelope = self.decode_master(&body)?;
                if !LinkKey::carries_mac(&envelope) {
                    return self.verified_master(envelope, master_pub);
                }
                if let Err(e) = link_key.verify(&envelope) {
                    if let Some(suppressed) = self.drop_logged() {
                        tracing::warn!(master = %self.addr, kind = ?envelope.kind, error = %e, suppressed, "dropped a message without this link's MAC");
                    }
                    return None;
                }
                Some(envelope)
            }
            None => self.verify_master(&body, master_pub),
        }
    }

    fn verify_master(&self, body: &[u8], master_pub: &PublicKey) -> Option<Envelope> {
        let envelope = self.decode_master(body)?;
        self.verified_master(envelope, master_pub)
    }

    fn decode_master(&self, body: &[u8]) -> Option<Envelope> {
        if body.len() > MAX_FRAME {
            if let Some(suppressed) = self.drop_logged() {
                tracing::warn!(master = %self.addr, bytes = body.len(), suppressed, "dropped an oversized message");
            }
            return None;
        }
        match Envelope::from_bytes(body) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                if let Some(suppressed) = self.drop_logged() {
                    tracing::warn!(master = %self.addr, error = %e, suppressed, "dropped a malformed message");
                }
                None
            }
        }
    }

    fn verified_master(&self, envelope: Envelope, master_pub: &PublicKey) -> Option<Envelope> {
        if let Err(e) = halite_pki::verify_envelope(&envelope, master_pub) {
            if let Some(suppressed) = self.drop_logged() {
                tracing::warn!(master = %self.addr, kind = ?envelope.kind, error = %e, suppressed, "dropped a message not signed by the master key");
            }
            return None;
        }
        Some(envelope)
    }

    /// May a line about a message dropped from this master go to the log
    /// now (one per interval per master; `Some` counts those suppressed)?
    fn drop_logged(&self) -> Option<u64> {
        static DROPS: std::sync::LazyLock<halite_daemon::LogThrottle> =
            std::sync::LazyLock::new(|| halite_daemon::LogThrottle::new(Duration::from_secs(10)));
        DROPS.allow(&self.addr.to_string())
    }

    /// Handles a PUB message (or a job from catch-up). Returns a beacon's
    /// session epoch.
    fn on_published(
        &self,
        topic: &str,
        body: &[u8],
        master_pub: &PublicKey,
        source: JobSource,
    ) -> Option<u64> {
        // Jobs travel sealed under the session key (only authenticated
        // minions read them); beacons are signed, in clear.
        let opened;
        let body = if topic == TOPIC_JOB {
            let keys = self.session_tx.borrow().clone();
            match halite_pki::open_publication(
                |epoch| keys.shared.get(&epoch).cloned(),
                topic,
                body,
            ) {
                Ok(plain) => {
                    opened = plain;
                    opened.as_slice()
                }
                Err(e) => {
                    if let Some(suppressed) = self.drop_logged() {
                        tracing::warn!(master = %self.addr, error = %e, suppressed, "dropped a job this minion cannot open (sealed under another session key, or not sealed)");
                    }
                    return None;
                }
            }
        } else {
            body
        };
        let envelope = self.verify_master(body, master_pub)?;
        match (topic, envelope.kind) {
            (TOPIC_JOB, Kind::Job) => match envelope.open::<Job>() {
                Ok(job) => {
                    let _ = self.executor.accept(job, source);
                    None
                }
                Err(e) => {
                    if let Some(suppressed) = self.drop_logged() {
                        tracing::warn!(error = %e, suppressed, "dropped a malformed job");
                    }
                    None
                }
            },
            (TOPIC_BEACON, Kind::Beacon) => envelope.open::<Beacon>().ok().map(|b| b.session_epoch),
            (topic, kind) => {
                if let Some(suppressed) = self.drop_logged() {
                    tracing::warn!(
                        topic,
                        ?kind,
                        suppressed,
                        "dropped a message on an unexpected topic"
                    );
                }
                None
            }
        }
    }

    async fn resend_spool(
        &self,
        tx: &mut zeromq::DealerSendHalf,
        awaiting: &mut HashMap<Jid, Vec<u8>>,
    ) -> Result<(), LinkError> {
        for (jid, bytes) in self.spool.all() {
            if let Some((_, nonce)) = return_nonce(&bytes) {
                awaiting.insert(jid.clone(), nonce);
            }
            tracing::debug!(%jid, "re-sending unacknowledged return");
            tx.send(frame(bytes)).await?;
        }
        Ok(())
    }

    /// Can this master be reached and does it accept this minion right
    /// now? A full auth on a throwaway connection (the failback probe).
    async fn answers(&self) -> bool {
        self.key_status().await == Some(KeyStatus::Accepted)
    }

    /// What this master says of this minion's key, from a full auth on a
    /// throwaway connection (which also submits the key if the master has
    /// never seen it); `None` if it cannot be reached or does not answer.
    async fn key_status(&self) -> Option<KeyStatus> {
        let mut dealer = DealerSocket::with_options(halite_daemon::socket_options());
        let endpoint = self.addr.endpoint(self.addr.port);
        match tokio::time::timeout(CONNECT_TIMEOUT, dealer.connect(&endpoint)).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
        let (mut tx, mut rx) = dealer.split();
        match self.auth(&mut tx, &mut rx).await {
            Ok(AuthOutcome::Accepted(_)) => Some(KeyStatus::Accepted),
            Ok(AuthOutcome::NotAccepted(status, _)) => Some(status),
            Err(_) => None,
        }
    }

    /// Makes this minion's key known to a master it does not use yet (a
    /// failover minion talks to one master at a time), so its operator
    /// can accept the key before that master is needed: an auth, again
    /// every `auth_retry` until the master answers, or until shutdown.
    async fn introduce(self, shutdown: CancellationToken) {
        loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = self.key_status() => answer,
            };
            if let Some(status) = answer {
                tracing::info!(master = %self.addr, ?status, "key presented to a standby master");
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.auth_retry.max(Duration::from_secs(1))) => {}
            }
        }
    }

    fn sign<M: halite_proto::Message>(&self, message: &M) -> Result<Vec<u8>, LinkError> {
        Ok(self.key.sign_message(&self.id, message)?.to_bytes())
    }

    /// With this link's MAC when there is a link key, else signed.
    fn sign_linked<M: halite_proto::Message>(
        &self,
        link_key: Option<&LinkKey>,
        message: &M,
    ) -> Result<Vec<u8>, LinkError> {
        match link_key {
            Some(link_key) => Ok(link_key.seal_message(&self.id, message)?.to_bytes()),
            None => self.sign(message),
        }
    }
}

/// Connects the DEALER, telling the usual mistakes apart: nothing
/// listening (refused at once, where zeromq would retry until the
/// timeout) and the master's publish port instead of its return port.
async fn connect_dealer(
    addr: &MasterAddr,
    dealer: &mut DealerSocket,
    endpoint: &str,
) -> Result<(), LinkError> {
    let address = (addr.host.as_str(), addr.port);
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(LinkError::Refused(endpoint.to_owned()))
        }
        // Anything else (a slow network, a name that resolves later)
        // is zeromq's to retry.
        _ => {}
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, dealer.connect(endpoint)).await {
        Err(_) => Err(LinkError::ConnectTimeout(endpoint.to_owned())),
        Ok(Err(zeromq::ZmqError::IncompatibleSocket {
            theirs: zeromq::SocketType::PUB | zeromq::SocketType::XPUB,
            ..
        })) => Err(LinkError::PublishPort(endpoint.to_owned())),
        Ok(result) => Ok(result?),
    }
}

fn frame(bytes: Vec<u8>) -> ZmqMessage {
    ZmqMessage::from(Bytes::from(bytes))
}

/// The (jid, nonce) of a spooled return read back from disk, to match
/// its ack.
fn return_nonce(bytes: &[u8]) -> Option<(Jid, Vec<u8>)> {
    let envelope = Envelope::from_bytes(bytes).ok()?;
    if envelope.kind != Kind::Return {
        return None;
    }
    let ret: Return = envelope.open().ok()?;
    Some((ret.jid, ret.nonce))
}

/// Where a failover minion starts: the first master, or with
/// `random_master` a random one, so a fleet spreads over its masters.
fn first_master(count: usize, random: bool, rng: &mut impl rand::Rng) -> usize {
    if random && count > 1 {
        rng.gen_range(0..count)
    } else {
        0
    }
}

/// Failover: one master at a time, in order (from a random one with
/// `random_start`). A master that is lost (connection gone, silent for
/// `alive`, or unreachable) is left for the next at once; after a whole
/// round without success the minion waits (500 ms, doubling to 30 s)
/// before the next round. With `failback`, while on another master the
/// first one is probed every `alive` and the minion moves back as soon as
/// it accepts this minion again.
pub async fn run_failover(
    mut links: Vec<Link>,
    random_start: bool,
    failback: bool,
    shutdown: CancellationToken,
) {
    if links.is_empty() {
        return;
    }
    let count = links.len();
    let mut current = first_master(count, random_start, &mut rand::thread_rng());
    // Every other master learns this minion's key now, not when it is
    // needed (with nobody there to accept it).
    for (index, link) in links.iter().enumerate() {
        if index != current {
            tokio::spawn(link.clone().introduce(shutdown.clone()));
        }
    }
    let mut failed_in_a_row = 0usize;
    let mut backoff = Duration::from_millis(500);
    loop {
        let (first, rest) = links.split_at_mut(1);
        let (link, probe) = if current == 0 {
            (&mut first[0], None)
        } else {
            (&mut rest[current - 1], failback.then_some(&first[0]))
        };
        tracing::info!(master = %link.addr, "using master");
        let alive = link.alive;
        let probe_first = async {
            match probe {
                None => std::future::pending::<()>().await,
                Some(first) => loop {
                    tokio::time::sleep(alive).await;
                    if first.answers().await {
                        return;
                    }
                },
            }
        };
        let outcome = tokio::select! {
            result = link.session(&shutdown) => Some(result),
            () = probe_first => None,
        };
        match outcome {
            None => {
                tracing::info!(from = %link.addr, "the first master answers again; failing back");
                current = 0;
                failed_in_a_row = 0;
                continue;
            }
            Some(Ok(Next::Shutdown)) => return,
            Some(Ok(Next::Reconnect(why))) => {
                tracing::info!(master = %link.addr, reason = why, "reconnecting");
                failed_in_a_row = 0;
                backoff = Duration::from_millis(500);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            // "Failing over" only when there is another master to go to.
            Some(Ok(Next::Lost(why))) => {
                match count {
                    1 => {
                        tracing::warn!(master = %link.addr, reason = %why, "master lost; reconnecting")
                    }
                    _ => {
                        tracing::warn!(master = %link.addr, reason = %why, "master lost; failing over")
                    }
                }
                failed_in_a_row = 1;
                backoff = Duration::from_millis(500);
            }
            Some(Err(e)) => {
                match count {
                    1 => {
                        tracing::warn!(master = %link.addr, error = %e, retry_in = ?backoff, "master unavailable")
                    }
                    _ => {
                        tracing::warn!(master = %link.addr, error = %e, "master unavailable; failing over")
                    }
                }
                failed_in_a_row += 1;
            }
        }
        current = (current + 1) % count;
        if failed_in_a_row >= count {
            failed_in_a_row = 0;
            if count > 1 {
                tracing::warn!(retry_in = ?backoff, "no master answers");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn loopback(port: u16) -> MasterAddr {
        MasterAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_at_once_and_a_publish_port_is_named() {
        // Nothing listening: refused, not a timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let addr = loopback(port);
        let mut dealer = DealerSocket::with_options(halite_daemon::socket_options());
        let refused = connect_dealer(&addr, &mut dealer, &addr.endpoint(port)).await;
        assert!(matches!(refused, Err(LinkError::Refused(_))), "{refused:?}");

        // A PUB socket where the return port should be.
        let mut publisher = zeromq::PubSocket::new();
        let bound = publisher.bind("tcp://127.0.0.1:0").await.unwrap();
        let zeromq::Endpoint::Tcp(_, port) = bound else {
            panic!("{bound:?}")
        };
        let addr = loopback(port);
        let mut dealer = DealerSocket::with_options(halite_daemon::socket_options());
        let wrong = connect_dealer(&addr, &mut dealer, &addr.endpoint(port)).await;
        assert!(matches!(wrong, Err(LinkError::PublishPort(_))), "{wrong:?}");
    }

    #[test]
    fn random_master_spreads_a_fleet_and_order_does_not() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[first_master(3, true, &mut rng)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(first_master(3, false, &mut rng), 0);
        assert_eq!(first_master(1, true, &mut rng), 0);
    }

    #[test]
    fn spooled_returns_are_matched_by_jid_and_nonce() {
        assert_eq!(return_nonce(b"not an envelope"), None);
    }
}
