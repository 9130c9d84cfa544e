//! Protocol-level fakes for the trust tests: a master the test controls
//! (to publish forged, replayed and expired jobs to a real minion), and a
//! raw DEALER (to send forged returns and garbage to a real master).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use halite_pki::{KeyPair, SessionKey};
use halite_proto::message::{
    Auth, AuthReply, Catchup, CatchupReply, Heartbeat, HeartbeatAck, Job, KeyStatus, Return,
    ReturnAck, TOPIC_JOB,
};
use halite_proto::time::now_ms;
use halite_proto::{Envelope, Jid, JidGenerator, Kind, TargetType};
use zeromq::{DealerSocket, PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// A master whose every message the test decides.
pub struct FakeMaster {
    /// Its (trusted, pinned by the minion) key.
    pub key: Arc<KeyPair>,
    /// ROUTER port for the minion's config.
    pub return_port: u16,
    publisher: tokio::sync::Mutex<PubSocket>,
    /// Returns received (verified is the test's job: these are raw).
    pub returns: Arc<Mutex<Vec<Return>>>,
    /// How many catch-up requests arrived (one per minion session).
    pub catchups: Arc<Mutex<u32>>,
    /// How many auth requests arrived (a minion that refuses the answer
    /// asks again).
    pub auths: Arc<Mutex<u32>>,
    /// Woken whenever a return arrives.
    returned: Arc<tokio::sync::Notify>,
    jids: JidGenerator,
    /// The session key it grants: jobs are published sealed under it.
    session: SessionKey,
}

impl FakeMaster {
    /// Binds ROUTER and PUB on 127.0.0.1 and answers auth (accepted),
    /// heartbeats, catch-up (empty) and returns (acked) in the background.
    pub async fn start() -> FakeMaster {
        FakeMaster::start_with_key(Arc::new(KeyPair::generate().expect("key"))).await
    }

    /// Like [`FakeMaster::start`] with a given key: several fakes sharing
    /// one key stand for masters that share a key.
    pub async fn start_with_key(key: Arc<KeyPair>) -> FakeMaster {
        let session = SessionKey::generate(1).expect("session key");
        let publication_key = session.clone();
        let mut router = RouterSocket::new();
        let return_port = match router.bind("tcp://127.0.0.1:0").await.expect("bind router") {
            zeromq::Endpoint::Tcp(_, port) => port,
            other => panic!("unexpected endpoint {other}"),
        };
        let mut publisher = PubSocket::new();
        let publish_port = match publisher.bind("tcp://127.0.0.1:0").await.expect("bind pub") {
            zeromq::Endpoint::Tcp(_, port) => port,
            other => panic!("unexpected endpoint {other}"),
        };
        let returns = Arc::new(Mutex::new(Vec::new()));
        let catchups = Arc::new(Mutex::new(0));
        let auths = Arc::new(Mutex::new(0));
        let returned = Arc::new(tokio::sync::Notify::new());
        let task_returned = returned.clone();
        let (task_key, task_returns, task_catchups, task_auths) = (
            key.clone(),
            returns.clone(),
            catchups.clone(),
            auths.clone(),
        );
        tokio::spawn(async move {
            loop {
                let message = match router.recv().await {
                    Ok(message) => message,
                    // A peer that went away ends its stream only; the
                    // ROUTER serves the others (as the master's does).
                    Err(_) => {
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let frames = message.into_vec();
                let (Some(peer), Some(body)) = (frames.first(), frames.get(1)) else {
                    continue;
                };
                let Ok(envelope) = Envelope::from_bytes(body) else {
                    continue;
                };
                let reply = match envelope.kind {
                    Kind::Auth => {
                        let Ok(auth) = envelope.open::<Auth>() else {
                            continue;
                        };
                        if let Ok(mut n) = task_auths.lock() {
                            *n += 1;
                        }
                        let minion_pub =
                            halite_pki::PublicKey::from_bytes(&auth.pubkey).expect("minion key");
                        let transcript = halite_pki::transcript(
                            &auth.id,
                            &minion_pub,
                            &task_key.public(),
                            &auth.nonce,
                        );
                        // A probe ("who are you?") gets the key, no session.
                        let grant = (!auth.probe).then(|| {
                            halite_pki::grant(&session, None, &auth.eph_pub, &transcript)
                                .expect("grant")
                        });
                        task_key.sign_message(
                            "fake-master",
                            &AuthReply {
                                nonce: auth.nonce,
                                status: KeyStatus::Accepted,
                                master: "fake-master".into(),
                                master_pub: task_key.public().as_bytes().to_vec(),
                                publish_port,
                                heartbeat_interval: 1,
                                session: grant,
                                link_macs: false,
                            },
                        )
                    }
                    Kind::Heartbeat => {
                        let Ok(beat) = envelope.open::<Heartbeat>() else {
                            continue;
                        };
                        task_key.sign_message(
                            "fake-master",
                            &HeartbeatAck {
                                nonce: beat.nonce,
                                accepted: true,
                                session_epoch: 1,
                            },
                        )
                    }
                    Kind::Catchup => {
                        let Ok(catchup) = envelope.open::<Catchup>() else {
                            continue;
                        };
                        if let Ok(mut n) = task_catchups.lock() {
                            *n += 1;
                        }
                        task_key.sign_message(
                            "fake-master",
                            &CatchupReply {
                                nonce: catchup.nonce,
                                jobs: vec![],
                            },
                        )
                    }
                    Kind::Return => {
                        let Ok(ret) = envelope.open::<Return>() else {
                            continue;
                        };
                        let ack = ReturnAck {
                            jid: ret.jid.clone(),
                            id: ret.id.clone(),
                            nonce: ret.nonce.clone(),
                        };
                        if let Ok(mut returns) = task_returns.lock() {
                            returns.push(ret);
                        }
                        task_returned.notify_waiters();
                        task_key.sign_message("fake-master", &ack)
                    }
                    _ => continue,
                };
                let Ok(reply) = reply else { continue };
                let mut out = ZmqMessage::from(peer.clone());
                out.push_back(Bytes::from(reply.to_bytes()));
                let _ = router.send(out).await;
            }
        });
        FakeMaster {
            key,
            return_port,
            publisher: tokio::sync::Mutex::new(publisher),
            returns,
            catchups,
            auths,
            returned,
            jids: JidGenerator::new(),
            session: publication_key,
        }
    }

    /// A `test.echo` job for every minion, expiring in a minute.
    pub fn job(&self, text: &str) -> Job {
        let now = now_ms();
        Job {
            jid: self.jids.next(),
            tgt: "*".into(),
            tgt_type: TargetType::Glob,
            fun: "test.echo".into(),
            arg: vec![text.into()],
            kwarg: Default::default(),
            secret: None,
            secrets: Default::default(),
            timeout: 60,
            issued_at: now,
            expires_at: now + 60_000,
            master: "fake-master".into(),
            user: "test".into(),
            modules: Vec::new(),
            summary_signature: Vec::new(),
        }
    }

    /// Publishes `job` signed by `signer` (the fake master's key unless
    /// the test forges).
    pub async fn publish(&self, job: &Job, signer: &KeyPair) {
        let envelope = signer.sign_message("fake-master", job).expect("sign job");
        let sealed = halite_pki::seal_publication(&self.session, TOPIC_JOB, &envelope.to_bytes())
            .expect("seal job");
        let mut message = ZmqMessage::from(TOPIC_JOB);
        message.push_back(Bytes::from(sealed));
        self.publisher
            .lock()
            .await
            .send(message)
            .await
            .expect("publish");
    }

    /// Publishes raw frames (garbage, wrong kinds) as they are.
    pub async fn publish_raw(&self, frames: Vec<Vec<u8>>) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        let Ok(message) = ZmqMessage::try_from(frames) else {
            return;
        };
        self.publisher
            .lock()
            .await
            .send(message)
            .await
            .expect("publish");
    }

    /// Returns received for `jid`.
    pub fn returns_for(&self, jid: &Jid) -> Vec<Return> {
        self.returns
            .lock()
            .map(|r| r.iter().filter(|r| &r.jid == jid).cloned().collect())
            .unwrap_or_default()
    }

    /// Publishes `job` every 200 ms until its return arrives (the minion's
    /// subscription may still be propagating), for up to `timeout`.
    pub async fn publish_until_returned(&self, job: &Job, timeout: Duration) -> Return {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(ret) = self.returns_for(&job.jid).into_iter().next() {
                return ret;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no return for {} within {timeout:?}",
                job.jid
            );
            self.publish(job, &self.key).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (up to `timeout`) until a return for `jid` has arrived;
    /// woken by each arriving return, no polling.
    pub async fn wait_returned(&self, jid: &Jid, timeout: Duration) {
        let arrived = async {
            loop {
                let notified = self.returned.notified();
                tokio::pin!(notified);
                // Registered before the check, so a return in between wakes it.
                notified.as_mut().enable();
                if !self.returns_for(jid).is_empty() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, arrived)
            .await
            .unwrap_or_else(|_| panic!("no return for {jid} within {timeout:?}"));
    }

    /// Waits until `n` catch-up requests have arrived (a minion session
    /// is fully set up after its catch-up).
    pub async fn wait_catchups(&self, n: u32, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.catchups.lock().map(|c| *c).unwrap_or(0) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "minion did not connect within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends raw frames to a master's ROUTER, as a minion would.
pub struct RawDealer {
    socket: DealerSocket,
}

impl RawDealer {
    /// Connects to `127.0.0.1:port`.
    pub async fn connect(port: u16) -> RawDealer {
        let mut socket = DealerSocket::new();
        socket
            .connect(&format!("tcp://127.0.0.1:{port}"))
            .await
            .expect("connect to master");
        RawDealer { socket }
    }

    /// Sends one frame.
    pub async fn send(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(ZmqMessage::from(Bytes::from(bytes)))
            .await
            .expect("send");
    }

    /// Sends a self-signed `Auth` for a new id and waits (up to
    /// `timeout`) for the master's answer. The master handles one peer's
    /// messages in order, so once it answers, everything sent before was
    /// handled: a barrier for checking what the master did with them.
    pub async fn barrier(&mut self, id: &str, timeout: Duration) {
        let key = KeyPair::generate().expect("key");
        self.auth(&key, id, timeout).await;
    }

    /// Sends an `Auth` for `id` signed with `key` and waits (up to
    /// `timeout`) for the master's answer (the key is then pending, or
    /// accepted).
    pub async fn auth(&mut self, key: &KeyPair, id: &str, timeout: Duration) {
        let auth = Auth {
            id: id.into(),
            pubkey: key.public().as_bytes().to_vec(),
            nonce: vec![9; 16],
            eph_pub: vec![0; 32],
            version: "barrier".into(),
            grains: serde_json::json!({}),
            probe: false,
            link_macs: false,
        };
        self.send(key.sign_message(id, &auth).expect("sign").to_bytes())
            .await;
        tokio::time::timeout(timeout, self.socket.recv())
            .await
            .expect("the master answers the barrier in time")
            .expect("the master's answer");
    }
}

/// A signed return as `sender` would send it.
pub fn signed_return(signer: &KeyPair, sender: &str, jid: &Jid) -> Vec<u8> {
    signed_return_of(
        signer,
        sender,
        jid,
        "test.ping",
        serde_json::json!("forged"),
    )
}

/// A successful signed return of `fun` for `jid` carrying `data`, as
/// `sender` would send it to master `test-master`.
pub fn signed_return_of(
    signer: &KeyPair,
    sender: &str,
    jid: &Jid,
    fun: &str,
    data: serde_json::Value,
) -> Vec<u8> {
    let ret = return_of(sender, jid, fun, data);
    signer.sign_message(sender, &ret).expect("sign").to_bytes()
}

/// A successful return of `fun` for `jid` carrying `data`, from `sender`
/// for a job of master `test-master` (unsigned: change it, then sign).
pub fn return_of(sender: &str, jid: &Jid, fun: &str, data: serde_json::Value) -> Return {
    Return {
        jid: jid.clone(),
        id: sender.into(),
        fun: fun.into(),
        success: true,
        retcode: 0,
        data,
        started_at: now_ms(),
        finished_at: now_ms(),
        nonce: vec![7; 16],
        master: "test-master".into(),
        job: None,
    }
}
