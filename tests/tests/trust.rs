//! Trust: only jobs signed by the pinned master key run, once, before they
//! expire; only returns signed by an accepted minion key are stored; bad
//! bytes are dropped with a log line and crash nothing.

use std::time::Duration;

use halite_pki::KeyPair;
use halite_tests::fake::{signed_return, FakeMaster, RawDealer};
use halite_tests::{eventually, Master, Minion};

/// Forged, replayed (also across a restart) and expired jobs do not run.
#[test]
fn minion_runs_only_signed_fresh_unseen_jobs() {
    let rt = halite_tests::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let master = FakeMaster::start().await;
        let mut minion = Minion::start(dir.path(), "web01", master.return_port, "clock_skew = 1");
        master.wait_catchups(1, Duration::from_secs(60)).await;

        // A good job runs, exactly once, however often it is published.
        let good = master.job("good");
        let ret = master
            .publish_until_returned(&good, Duration::from_secs(60))
            .await;
        assert_eq!(ret.data, serde_json::json!("good"));
        assert!(ret.success);

        // Forged: same master id, another key.
        let forger = KeyPair::generate().expect("key");
        let forged = master.job("forged");
        master.publish(&forged, &forger).await;
        // Replayed: the good job again.
        master.publish(&good, &master.key).await;
        // Expired: past expires_at plus the minion's clock skew (1 s).
        let mut expired = master.job("expired");
        expired.expires_at = halite_proto::time::now_ms() - 5_000;
        master.publish(&expired, &master.key).await;
        // Garbage on the job topic, a non-job envelope there, an unknown topic.
        master
            .publish_raw(vec![b"job".to_vec(), b"\x00\xffnot msgpack".to_vec()])
            .await;
        master.publish_raw(vec![b"job".to_vec()]).await;
        let heartbeat_as_job = master
            .key
            .sign_message(
                "fake-master",
                &halite_proto::message::Beacon {
                    master: "x".into(),
                    at: 0,
                    session_epoch: 1,
                },
            )
            .expect("sign");
        master
            .publish_raw(vec![b"job".to_vec(), heartbeat_as_job.to_bytes()])
            .await;
        // PUB is ordered: once this sentinel returns, the three above were
        // seen and refused.
        let sentinel = master.job("sentinel");
        master
            .publish_until_returned(&sentinel, Duration::from_secs(60))
            .await;
        assert!(master.returns_for(&forged.jid).is_empty(), "forged job ran");
        assert!(
            master.returns_for(&expired.jid).is_empty(),
            "expired job ran"
        );
        assert_eq!(
            master.returns_for(&good.jid).len(),
            1,
            "replayed job ran twice"
        );
        // And the garbage crashed nothing: the sentinel ran after it.

        // After a restart the replay guard still holds.
        minion.restart();
        master.wait_catchups(2, Duration::from_secs(60)).await;
        master.publish(&good, &master.key).await;
        let after = master.job("after restart");
        master
            .publish_until_returned(&after, Duration::from_secs(60))
            .await;
        assert_eq!(
            master.returns_for(&good.jid).len(),
            1,
            "job replayed after restart ran"
        );
    });
}

/// A minion pinned to one master key refuses a master presenting another.
#[test]
fn minion_refuses_a_master_with_another_key() {
    let rt = halite_tests::runtime();
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let impostor = FakeMaster::start().await;
        let real = KeyPair::generate().expect("key");
        let minion = Minion::start(
            dir.path(),
            "web01",
            impostor.return_port,
            &format!("master_fingerprint = \"{}\"", real.public().fingerprint()),
        );
        // It asks who the master is before handing over its key, judges
        // the answer and stops: the impostor never gets a real auth.
        let mut minion = minion;
        eventually(Duration::from_secs(60), "the minion to stop", || {
            minion.proc.exited()
        });
        assert_eq!(
            *impostor.auths.lock().expect("lock"),
            1,
            "one probe, no auth"
        );
        let job = impostor.job("should not run");
        impostor.publish(&job, &impostor.key).await;
        assert_eq!(
            *impostor.catchups.lock().expect("lock"),
            0,
            "minion subscribed to an untrusted master"
        );
        assert!(impostor.returns_for(&job.jid).is_empty());
    });
}

/// Returns under an unaccepted id, or signed by the wrong key, are
/// dropped; garbage is dropped; the master keeps working.
#[test]
fn master_stores_only_returns_signed_by_accepted_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");
    let out = master.cli(&[
        "run",
        "target=web01",
        "test.sleep",
        "2",
        "--async",
        "--json",
    ]);
    let jid =
        halite_proto::Jid::parse(out.json()["jid"].as_str().expect("jid")).expect("valid jid");

    let rt = halite_tests::runtime();
    rt.block_on(async {
        let mut dealer = RawDealer::connect(master.return_port).await;
        let stranger = KeyPair::generate().expect("key");
        dealer.send(signed_return(&stranger, "ghost", &jid)).await;
        dealer.send(signed_return(&stranger, "web01", &jid)).await;
        dealer.send(b"\x93\x01\x02garbage".to_vec()).await;
        dealer.send(vec![0xc1; 64]).await;
        // An envelope claiming one id whose return names another.
        let web_key = KeyPair::generate().expect("key");
        let mut mismatched = signed_return(&web_key, "ghost", &jid);
        mismatched.truncate(mismatched.len() / 2);
        dealer.send(mismatched).await;
        // Once the master answers this peer's next message, it has
        // handled (dropped) everything above.
        dealer.barrier("barrier01", Duration::from_secs(60)).await;
    });
    assert_eq!(master.key_status("barrier01").as_deref(), Some("pending"));
    // The real return still arrives, and only it is stored.
    eventually(Duration::from_secs(60), "real return stored", || {
        master.cli(&["jobs", "show", jid.as_str(), "--json"]).json()["missing"]
            == serde_json::json!([])
    });
    let doc = master.cli(&["jobs", "show", jid.as_str(), "--json"]).json();
    assert_eq!(doc["returns"]["web01"]["data"], true, "{doc}");
    assert!(doc["returns"].get("ghost").is_none(), "{doc}");
    let out = master.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 0, "master stopped working: {out:?}");
}

/// Pending and rejected minions run nothing; a second key for an
/// accepted id is denied and never replaces it.
#[test]
fn key_states_gate_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let web = Minion::start(dir.path(), "web01", master.return_port, "");
    eventually(Duration::from_secs(60), "web01 pending", || {
        master.key_status("web01").as_deref() == Some("pending")
    });
    // Pending: not expected, and it cannot receive jobs.
    let out = master.cli(&["run", "target=*", "test.ping"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("No minion matched"), "{out:?}");

    let out = master.cli(&["keys", "list"]);
    assert!(
        out.stdout.contains("Unaccepted Keys:\nweb01"),
        "{}",
        out.stdout
    );
    let out = master.cli(&["keys", "fingerprint"]);
    let minion_fp = KeyPair::load_or_generate(&web.dir.join("pki"), "minion")
        .expect("key")
        .0
        .public()
        .fingerprint();
    assert!(out.stdout.contains(&minion_fp), "{}", out.stdout);

    master.accept("web01");
    assert_eq!(master.cli(&["run", "target=web01", "test.ping"]).code, 0);
    // The master fingerprint shown is the one the minion pinned.
    let pinned = std::fs::read_dir(web.dir.join("pki/masters"))
        .expect("pin dir")
        .next()
        .expect("pin")
        .expect("entry")
        .path();
    let pinned_fp = halite_pki::PublicKey::read_file(&pinned)
        .expect("pinned key")
        .fingerprint();
    assert!(master
        .cli(&["keys", "fingerprint"])
        .stdout
        .contains(&pinned_fp));

    // An impostor with the same id and another key: denied, web01 unaffected.
    let impostor_dir = dir.path().join("impostor");
    let _impostor = Minion::start(&impostor_dir, "web01", master.return_port, "");
    eventually(Duration::from_secs(60), "impostor denied", || {
        master
            .cli(&["keys", "list"])
            .stdout
            .contains("Denied Keys:\nweb01")
    });
    let out = master.cli(&["run", "target=web01", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");

    // Rejected: the master stops trusting it at once.
    let out = master.cli(&["keys", "reject", "web01"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(master.key_status("web01").as_deref(), Some("rejected"));
    let out = master.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 1, "rejected minion was targeted: {out:?}");

    let out = master.cli(&["keys", "delete", "web01"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = master.cli(&["keys", "accept", "nobody"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("nobody"), "{out:?}");
    let out = master.cli(&["keys", "accept", "../etc"]);
    assert_eq!(out.code, 1, "{out:?}");
}
