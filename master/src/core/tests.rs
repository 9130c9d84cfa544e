//! The centre in-process: a `Core` on a temp store with the in-memory
//! transport, minions played by keys the test holds.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use halite_model::JobRequest;
use halite_pki::KeyPair;
use halite_proto::message::{Event, EventBody, Job, Return, ReturnAck, KILL_JOB, TOPIC_JOB};
use halite_proto::{Envelope, Jid, Message};
use tokio::sync::mpsc;

use super::{Core, CoreError, CoreParts, PendingReturn};
use crate::transport::{MemoryOutbound, Sent};

/// A master centre with its sent messages and queued returns in reach.
struct Harness {
    core: Arc<Core>,
    sent: mpsc::UnboundedReceiver<Sent>,
    returns: mpsc::Receiver<PendingReturn>,
    minions: Vec<(String, KeyPair)>,
    _dir: tempfile::TempDir,
}

fn config(dir: &Path) -> crate::Config {
    let text = format!(
        "id = \"m1\"\ninterface = \"127.0.0.1\"\npublish_port = 0\nreturn_port = 0\n\
         api_bind = \"127.0.0.1:0\"\npki_dir = \"{0}/pki\"\ndata_dir = \"{0}/data\"\n",
        dir.display()
    );
    crate::Config::from_toml(&dir.join("master.toml"), &text).expect("test config")
}

/// Builds a centre on `dir`'s store (so a second one is a restart).
fn core_on(
    dir: &Path,
) -> (
    Arc<Core>,
    mpsc::UnboundedReceiver<Sent>,
    mpsc::Receiver<PendingReturn>,
) {
    let config = config(dir);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let (key, _) = KeyPair::load_or_generate(&config.pki_dir, "master").unwrap();
    let keys = halite_pki::KeyStore::open(&config.pki_dir).unwrap();
    let store = crate::store::Store::open(&config.data_dir.join("store")).unwrap();
    let (outbound, sent) = MemoryOutbound::new();
    let (returns_tx, returns) = mpsc::channel(64);
    let core = Core::new(CoreParts {
        config,
        key,
        keys,
        store,
        outbound: Arc::new(outbound),
        returns: returns_tx,
        publish_port: 4505,
        cli_token: "cli-token".into(),
    })
    .unwrap();
    (Arc::new(core), sent, returns)
}

impl Harness {
    /// A centre with `ids` accepted.
    fn new(ids: &[&str]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (core, sent, returns) = core_on(dir.path());
        let minions = ids
            .iter()
            .map(|id| {
                let key = KeyPair::generate().unwrap();
                core.keys.submit(id, &key.public(), false).unwrap();
                core.keys.accept(id).unwrap();
                (id.to_string(), key)
            })
            .collect();
        Harness {
            core,
            sent,
            returns,
            minions,
            _dir: dir,
        }
    }

    fn key(&self, id: &str) -> &KeyPair {
        &self.minions.iter().find(|(m, _)| m == id).unwrap().1
    }

    /// `id` sends `message` over the peer identity `id`.
    async fn send<M: Message>(&self, id: &str, message: &M) {
        let envelope = self.key(id).sign_message(id, message).unwrap();
        self.core
            .handle(Bytes::from(id.to_owned()), Bytes::from(envelope.to_bytes()))
            .await;
    }

    fn submit(&self, target: &str, fun: &str) -> Result<halite_model::Submitted, CoreError> {
        self.core.submit(
            halite_pki::users::ROOT,
            JobRequest {
                target: target.into(),
                fun: fun.into(),
                ..JobRequest::default()
            },
        )
    }

    /// Everything sent so far.
    fn drain_sent(&mut self) -> Vec<Sent> {
        let mut all = Vec::new();
        while let Ok(sent) = self.sent.try_recv() {
            all.push(sent);
        }
        all
    }

    /// Jobs published so far, opened as a minion holding the session key
    /// opens them (they are sealed: plain bytes are no envelope).
    fn published_jobs(&mut self) -> Vec<Job> {
        let key = self.core.session.current();
        self.drain_sent()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::Published { topic, body } if topic == TOPIC_JOB => {
                    assert!(
                        Envelope::from_bytes(&body).is_err(),
                        "a job published in clear"
                    );
                    let plain = halite_pki::open_publication(
                        |epoch| (epoch == key.epoch()).then(|| key.clone()),
                        TOPIC_JOB,
                        &body,
                    )
                    .unwrap();
                    Some(Envelope::from_bytes(&plain).unwrap().open().unwrap())
                }
                _ => None,
            })
            .collect()
    }

    /// Stores whatever returns the inbound side queued, as the collector does.
    fn collect(&mut self) -> usize {
        let mut batch = Vec::new();
        while let Ok(pending) = self.returns.try_recv() {
            batch.push(pending);
        }
        let n = batch.len();
        if n > 0 {
            self.core.store_returns(batch);
        }
        n
    }
}

fn ret(jid: &Jid, id: &str, master: &str) -> Return {
    Return {
        jid: jid.clone(),
        id: id.into(),
        fun: "test.ping".into(),
        success: true,
        retcode: 0,
        data: serde_json::Value::Bool(true),
        started_at: 1,
        finished_at: 2,
        nonce: vec![7; 16],
        master: master.into(),
        job: None,
    }
}

fn acks(sent: &[Sent]) -> Vec<ReturnAck> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Replied { body, .. } => {
                let envelope = Envelope::from_bytes(body).unwrap();
                envelope.open::<ReturnAck>().ok()
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn an_expected_return_is_stored_before_it_is_acked() {
    let mut h = Harness::new(&["web1", "web2"]);
    let jid = h.submit("web*", "test.ping").unwrap().jid;
    h.send("web1", &ret(&jid, "web1", "m1")).await;
    assert!(
        acks(&h.drain_sent()).is_empty(),
        "acked before it was stored"
    );
    assert_eq!(h.collect(), 1);
    let acked = acks(&h.drain_sent());
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0].id, "web1");
    let view = h.core.job_view(&jid).unwrap();
    assert!(view.returns.contains_key("web1"));
    assert_eq!(view.missing, vec!["web2".to_string()]);
}

#[tokio::test]
async fn a_return_for_an_unknown_jid_is_acked_and_never_stored() {
    let mut h = Harness::new(&["web1"]);
    let jid = Jid::from_unix_us(1_700_000_000_000_000);
    h.send("web1", &ret(&jid, "web1", "m1")).await;
    assert_eq!(h.collect(), 0, "queued for storing");
    assert_eq!(
        acks(&h.drain_sent()).len(),
        1,
        "the minion would re-send forever"
    );
    assert!(h.core.store.returns(&jid).unwrap().is_empty());
    assert!(!h.core.store.has_job(&jid).unwrap());
}

#[tokio::test]
async fn a_return_from_a_minion_the_job_did_not_expect_is_not_stored() {
    let mut h = Harness::new(&["web1", "db1"]);
    let jid = h.submit("web1", "test.ping").unwrap().jid;
    h.send("db1", &ret(&jid, "db1", "m1")).await;
    assert_eq!(h.collect(), 0);
    let view = h.core.job_view(&jid).unwrap();
    assert!(view.returns.is_empty(), "{:?}", view.returns);
    // Also after the job left the in-memory catch-up list (a restart):
    // the store's record decides.
    h.core.recent.write().unwrap().clear();
    h.send("db1", &ret(&jid, "db1", "m1")).await;
    assert_eq!(h.collect(), 0);
    h.send("web1", &ret(&jid, "web1", "m1")).await;
    assert_eq!(h.collect(), 1);
}

#[tokio::test]
async fn an_event_for_a_job_not_sent_to_that_minion_is_dropped() {
    let h = Harness::new(&["web1", "db1"]);
    let jid = h.submit("web1", "test.ping").unwrap().jid;
    let event = |id: &str, line: &str| Event {
        jid: jid.clone(),
        id: id.into(),
        seq: 0,
        at: 1,
        body: EventBody::Progress {
            line: line.into(),
            stream: "stdout".into(),
        },
    };
    h.send("db1", &event("db1", "forged")).await;
    h.send("web1", &event("web1", "real")).await;
    let events = h.core.job_events(&jid, None).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].id, "web1");
    // And for a jid that never existed, nothing is created.
    let ghost = Jid::from_unix_us(1_700_000_000_000_000);
    h.send(
        "web1",
        &Event {
            jid: ghost.clone(),
            ..event("web1", "ghost")
        },
    )
    .await;
    assert!(h.core.store.events(&ghost, None).unwrap().is_empty());
}

/// `m2`'s signed summary of a `test.ping` job on `tgt`.
fn vouched(m2: &KeyPair, jid: &Jid, tgt: &str) -> halite_proto::message::VouchedJob {
    let summary = halite_proto::message::JobSummary {
        jid: jid.clone(),
        master: "m2".into(),
        tgt: tgt.into(),
        tgt_type: halite_proto::TargetType::Glob,
        fun: "test.ping".into(),
        arg: Vec::new(),
        kwarg: Default::default(),
        user: "ops-on-m2".into(),
        timeout: 30,
        issued_at: 5,
        expires_at: 30_005,
    };
    halite_proto::message::VouchedJob {
        signature: m2.sign_job_summary(&summary),
        summary,
    }
}

#[tokio::test]
async fn another_masters_job_is_recorded_from_its_signed_summary_only() {
    let mut h = Harness::new(&["web1"]);
    let m2 = KeyPair::generate().unwrap();
    let jid = Jid::from_unix_us(1_700_000_000_000_000);
    let foreign = |job| Return {
        job,
        ..ret(&jid, "web1", "m2")
    };
    // The minion's word alone, or m2's word before m2 is trusted here.
    h.send("web1", &foreign(None)).await;
    h.send("web1", &foreign(Some(vouched(&m2, &jid, "web*"))))
        .await;
    assert_eq!(h.collect(), 0);
    assert!(h.core.job_view(&jid).is_err());
    // Unvouched: acked (dropped for good); untrusted master: kept by the
    // minion for when the operator trusts it.
    assert_eq!(acks(&h.drain_sent()).len(), 1);

    let peers = h.core.config.pki_dir.join("peers");
    std::fs::create_dir_all(&peers).unwrap();
    m2.public().write_file(&peers.join("m2.pub")).unwrap();
    // Signed by someone else, or for a target without this minion.
    let forger = KeyPair::generate().unwrap();
    h.send("web1", &foreign(Some(vouched(&forger, &jid, "web*"))))
        .await;
    h.send("web1", &foreign(Some(vouched(&m2, &jid, "db*"))))
        .await;
    assert_eq!(h.collect(), 0);
    assert!(h.core.job_view(&jid).is_err());

    h.send("web1", &foreign(Some(vouched(&m2, &jid, "web*"))))
        .await;
    assert_eq!(h.collect(), 1);
    let view = h.core.job_view(&jid).unwrap();
    assert_eq!(view.job.published_by.as_deref(), Some("m2"));
    assert_eq!(
        (
            view.job.target.as_str(),
            view.job.user.as_str(),
            view.job.issued_at
        ),
        ("web*", "ops-on-m2", 5)
    );
    assert!(view.returns.contains_key("web1"));
}

#[tokio::test]
async fn a_job_in_batches_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jid = {
        let (core, _sent, _returns) = core_on(dir.path());
        for id in ["web1", "web2", "web3"] {
            let key = KeyPair::generate().unwrap();
            core.keys.submit(id, &key.public(), false).unwrap();
            core.keys.accept(id).unwrap();
        }
        let plans = core.take_batch_plans().unwrap();
        let submitted = core
            .submit(
                halite_pki::users::ROOT,
                JobRequest {
                    target: "web*".into(),
                    fun: "test.ping".into(),
                    batch: Some("1".into()),
                    ..JobRequest::default()
                },
            )
            .unwrap();
        assert_eq!(submitted.minions.len(), 3);
        drop(plans);
        submitted.jid
    };
    // A new centre on the same store: the plan comes back.
    let (core, _sent, _returns) = core_on(dir.path());
    assert_eq!(core.resume_batches().unwrap(), 1);
    let mut plans = core.take_batch_plans().unwrap();
    let plan = plans.try_recv().unwrap();
    assert_eq!(plan.template.jid, jid);
    assert_eq!(plan.waiting_for, vec!["web1".to_string()]);
    assert_eq!(
        plan.rest,
        vec![vec!["web2".to_string()], vec!["web3".to_string()]]
    );
}

#[tokio::test]
async fn cancel_sends_kill_job_to_the_minions_that_have_not_returned() {
    let mut h = Harness::new(&["web1", "web2"]);
    let jid = h.submit("web*", "test.sleep").unwrap().jid;
    h.send("web1", &ret(&jid, "web1", "m1")).await;
    h.collect();
    h.drain_sent();
    let answer = h.core.cancel(halite_pki::users::ROOT, &jid).unwrap();
    assert_eq!(answer["minions"], serde_json::json!(["web2"]));
    let kills = h.published_jobs();
    assert_eq!(kills.len(), 1);
    assert_eq!(kills[0].fun, KILL_JOB);
    assert_eq!(kills[0].tgt, "web2");
    assert_eq!(kills[0].arg, vec![serde_json::json!(jid.to_string())]);
    assert!(h.core.is_cancelled(&jid));
    let stream = h.core.stream(0, Some(&jid), 100).unwrap();
    assert!(stream.iter().any(|e| e.kind == "job/cancel"), "{stream:?}");
    // Once every minion has returned there is nothing left to cancel.
    h.send("web2", &ret(&jid, "web2", "m1")).await;
    h.collect();
    assert!(matches!(
        h.core.cancel(halite_pki::users::ROOT, &jid),
        Err(CoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn a_bad_request_is_refused_before_anything_is_published() {
    let mut h = Harness::new(&["web1"]);
    assert!(matches!(
        h.submit("web1", "not a function"),
        Err(CoreError::Invalid(_))
    ));
    for request in [
        JobRequest {
            timeout: Some(0),
            ..JobRequest::default()
        },
        JobRequest {
            batch: Some("ten".into()),
            ..JobRequest::default()
        },
    ] {
        let request = JobRequest {
            target: "web1".into(),
            fun: "test.ping".into(),
            ..request
        };
        let refused = h.core.submit(halite_pki::users::ROOT, request);
        assert!(matches!(refused, Err(CoreError::Invalid(_))), "{refused:?}");
    }
    assert!(h.published_jobs().is_empty());
    assert!(h.core.store.jobs(10, None).unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_function_is_refused_with_what_there_is() {
    let mut h = Harness::new(&["web1"]);
    for (fun, says) in [
        ("nosuch.thing", "the minion has modules: cmd, dotnet_iis"),
        (
            "test.nope",
            "the minion has: test.arg, test.echo, test.fail, test.ping",
        ),
        ("cmd", "is a module without a default function"),
    ] {
        match h.submit("web1", fun) {
            Err(CoreError::Invalid(message)) => assert!(message.contains(says), "{message}"),
            other => panic!("{fun}: {other:?}"),
        }
    }
    assert!(h.published_jobs().is_empty());
    for fun in ["git_deploy.status", "saltutil.sync_modules", "test.ping"] {
        let refused = h.submit("web1", fun);
        assert!(
            !matches!(refused, Err(CoreError::Invalid(ref m)) if m.contains("unknown")),
            "{fun}: {refused:?}"
        );
    }
}

/// Authenticates `id` as a minion that checks link MACs, the way
/// `minion::link` does, and returns its link key.
async fn auth_with_link_macs(h: &mut Harness, id: &str) -> halite_pki::LinkKey {
    use halite_proto::message::{Auth, AuthReply};
    let (ephemeral, eph_pub) = halite_pki::Ephemeral::generate().unwrap();
    let key = h.key(id);
    let auth = Auth {
        id: id.into(),
        pubkey: key.public().as_bytes().to_vec(),
        nonce: vec![4; 16],
        eph_pub,
        version: "test".into(),
        grains: serde_json::json!({}),
        probe: false,
        link_macs: true,
    };
    let transcript = halite_pki::transcript(id, &key.public(), &h.core.master_pub, &auth.nonce);
    h.send(id, &auth).await;
    let reply: AuthReply = replies(&h.drain_sent())
        .into_iter()
        .find_map(|envelope| envelope.open().ok())
        .expect("an auth reply");
    assert!(reply.link_macs);
    let (_, personal) = ephemeral
        .accept(reply.session.as_ref().unwrap(), &transcript)
        .unwrap();
    halite_pki::LinkKey::derive(&personal.expect("a personal key")).unwrap()
}

fn replies(sent: &[Sent]) -> Vec<Envelope> {
    sent.iter()
        .filter_map(|s| match s {
            Sent::Replied { body, .. } => Envelope::from_bytes(body).ok(),
            _ => None,
        })
        .collect()
}

fn heartbeat(id: &str, at: u64) -> halite_proto::message::Heartbeat {
    halite_proto::message::Heartbeat {
        id: id.into(),
        nonce: vec![at as u8; 16],
        at,
        version: "test".into(),
        session_epoch: 0,
        running: vec![],
        rtt_ms: None,
    }
}

async fn send_envelope(h: &Harness, id: &str, envelope: Envelope) {
    h.core
        .handle(Bytes::from(id.to_owned()), Bytes::from(envelope.to_bytes()))
        .await;
}

#[tokio::test]
async fn heartbeats_and_acks_travel_under_the_link_key_and_only_under_it() {
    use halite_proto::message::HeartbeatAck;
    let mut h = Harness::new(&["web1", "web2"]);
    let link = auth_with_link_macs(&mut h, "web1").await;

    // A heartbeat with web1's link MAC is heard, and its ack carries the
    // same key's MAC (no signature to check).
    let beat = link.seal_message("web1", &heartbeat("web1", 10)).unwrap();
    send_envelope(&h, "web1", beat).await;
    let sent = replies(&h.drain_sent());
    assert_eq!(sent.len(), 1);
    assert!(halite_pki::LinkKey::carries_mac(&sent[0]));
    link.verify(&sent[0])
        .expect("the ack under web1's link key");
    let ack: HeartbeatAck = sent[0].open().unwrap();
    assert!(ack.accepted && ack.nonce == vec![10; 16]);

    // A return's ack too.
    let jid = h.submit("web1", "test.ping").unwrap().jid;
    h.drain_sent();
    h.send("web1", &ret(&jid, "web1", "m1")).await;
    assert_eq!(h.collect(), 1);
    let sent = replies(&h.drain_sent());
    assert_eq!(sent.len(), 1);
    link.verify(&sent[0])
        .expect("the return ack under web1's link key");

    // Another key's MAC, or web1's MAC claimed by web2, is dropped
    // unanswered.
    let stranger =
        halite_pki::LinkKey::derive(&halite_pki::SessionKey::generate(1).unwrap()).unwrap();
    send_envelope(
        &h,
        "web1",
        stranger
            .seal_message("web1", &heartbeat("web1", 11))
            .unwrap(),
    )
    .await;
    send_envelope(
        &h,
        "web2",
        link.seal_message("web2", &heartbeat("web2", 12)).unwrap(),
    )
    .await;
    let sent = replies(&h.drain_sent());
    assert!(
        sent.iter().all(|e| e
            .open::<HeartbeatAck>()
            .map(|a| !a.accepted)
            .unwrap_or(true)),
        "a forged heartbeat was acked as accepted: {sent:?}"
    );
    // A replay of the heard heartbeat is not acked again.
    send_envelope(
        &h,
        "web1",
        link.seal_message("web1", &heartbeat("web1", 10)).unwrap(),
    )
    .await;
    assert!(replies(&h.drain_sent()).is_empty());

    // A return is never taken on a link MAC.
    let mut forged = Envelope::unsigned("web1", &ret(&jid, "web1", "m1")).unwrap();
    forged.sig = vec![0; halite_pki::link_key::MAC_LEN];
    send_envelope(&h, "web1", forged).await;
    assert_eq!(h.collect(), 0);

    // Rejected: the link key goes with the personal key, and web1 is told
    // (signed) to authenticate again.
    h.core
        .change_keys(super::views::KeyChange::Reject("web1".into()))
        .unwrap();
    h.drain_sent();
    send_envelope(
        &h,
        "web1",
        link.seal_message("web1", &heartbeat("web1", 13)).unwrap(),
    )
    .await;
    let sent = replies(&h.drain_sent());
    assert_eq!(sent.len(), 1);
    halite_pki::verify_envelope(&sent[0], &h.core.master_pub).expect("a signed answer");
    assert!(!sent[0].open::<HeartbeatAck>().unwrap().accepted);
}
