//! Several masters: failover (kill -9 of the active master during a job,
//! failback) and hot mode (jobs from either master, returns in both
//! stores), with real processes on loopback.

use std::path::Path;
use std::time::Duration;

use halite_tests::{eventually, Master, Minion};

/// Seconds a failover minion waits for a silent master.
const ALIVE: u64 = 3;

fn two_masters(dir: &Path) -> (Master, Master) {
    // auto_accept keeps these tests about moving between masters;
    // `failover_without_auto_accept` shows the operator's way (keys
    // presented to every master at start, accepted on each).
    let a = Master::start(&dir.join("a"), "id = \"master-a\"\nauto_accept = true");
    let b = Master::start(&dir.join("b"), "id = \"master-b\"\nauto_accept = true");
    a.trust_peer(&b, "master-b");
    b.trust_peer(&a, "master-a");
    (a, b)
}

fn minion_config(a: &Master, b: &Master, extra: &str) -> String {
    format!(
        "masters = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nmaster_alive_interval = {ALIVE}\n{extra}",
        a.return_port, b.return_port
    )
}

/// Ids listed `up` by a master.
fn up(master: &Master) -> Vec<String> {
    let out = master.cli(&["minions", "--json"]);
    if out.code != 0 {
        return Vec::new();
    }
    out.json()
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["status"] == "up")
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns a master stored for `jid`, by minion.
fn returns(master: &Master, jid: &str) -> serde_json::Value {
    let out = master.cli(&["jobs", "show", jid, "--json"]);
    if out.code != 0 {
        // Not there yet (a master learns of another's job with its first return).
        return serde_json::Value::Null;
    }
    out.json()["returns"].clone()
}

#[test]
fn failover_after_kill_9_keeps_every_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b) = two_masters(dir.path());
    let ids: Vec<String> = (1..=20).map(|i| format!("fo{i:02}")).collect();
    let config = minion_config(&a, &b, "master_type = \"failover\"");
    let minions: Vec<Minion> = ids
        .iter()
        .map(|id| Minion::start(dir.path(), id, a.return_port, &config))
        .collect();
    eventually(Duration::from_secs(90), "20 minions up on master-a", || {
        up(&a).len() == 20
    });
    assert!(
        up(&b).is_empty(),
        "failover minions use one master at a time"
    );

    // A job that is still running when the master dies.
    let out = a.cli(&["run", "target=fo*", "test.sleep", "3", "--async", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();
    // Killed once every minion runs it (each keeps a marker from a job's
    // start to its spooled return).
    eventually(
        Duration::from_secs(60),
        "the job running everywhere",
        || {
            minions
                .iter()
                .all(|m| m.dir.join("data/running").join(&jid).exists())
        },
    );
    a.proc.kill();

    // How fast they move is measured by `halite-bench failover`.
    eventually(Duration::from_secs(60), "20 minions up on master-b", || {
        up(&b).len() == 20
    });
    // The interrupted job's returns reach the master that is left.
    eventually(Duration::from_secs(60), "20 returns on master-b", || {
        returns(&b, &jid).as_object().is_some_and(|r| r.len() == 20)
    });
    let out = b.cli(&["jobs", "show", &jid, "--json"]);
    assert_eq!(out.json()["published_by"], "master-a", "{out:?}");
    // What the job was comes from master-a's signed summary.
    assert_eq!(out.json()["target"], "fo*", "{out:?}");
    let out = b.cli(&["jobs", "show", &jid]);
    assert!(
        out.stdout.contains("published by master master-a"),
        "{}",
        out.stdout
    );

    // master-a comes back: without failback the minions stay on master-b,
    // still heartbeating it well past master_alive_interval.
    a.restart();
    let back = halite_proto::time::now_ms();
    eventually(
        Duration::from_secs(60),
        "minions heard on master-b long after master-a came back",
        || {
            let seen = last_seen(&b);
            seen.len() == 20 && seen.iter().all(|&t| t > back + (ALIVE + 1) * 1000)
        },
    );
    assert!(up(&a).is_empty(), "{:?}", up(&a));
}

/// When a master last heard from each of its minions (unix ms).
fn last_seen(master: &Master) -> Vec<u64> {
    let out = master.cli(&["minions", "--json"]);
    if out.code != 0 {
        return Vec::new();
    }
    out.json()
        .as_array()
        .map(|ms| ms.iter().filter_map(|m| m["last_seen"].as_u64()).collect())
        .unwrap_or_default()
}

#[test]
fn failback_returns_to_the_first_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b) = two_masters(dir.path());
    let config = minion_config(&a, &b, "master_type = \"failover\"\nmaster_failback = true");
    let _m1 = Minion::start(dir.path(), "fb01", a.return_port, &config);
    let _m2 = Minion::start(dir.path(), "fb02", a.return_port, &config);
    eventually(Duration::from_secs(60), "both up on master-a", || {
        up(&a).len() == 2
    });
    a.proc.kill();
    eventually(Duration::from_secs(60), "both up on master-b", || {
        up(&b).len() == 2
    });
    a.restart();
    eventually(Duration::from_secs(60), "both back on master-a", || {
        up(&a).len() == 2
    });
    let out = a.cli(&["run", "target=fb*", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn hot_minions_run_jobs_from_either_master_once_and_both_store_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, b) = two_masters(dir.path());
    let config = minion_config(&a, &b, "master_type = \"hot\"");
    let ids = ["hot01", "hot02", "hot03"];
    let minions: Vec<Minion> = ids
        .iter()
        .map(|id| Minion::start(dir.path(), id, a.return_port, &config))
        .collect();
    eventually(Duration::from_secs(60), "up on both masters", || {
        up(&a).len() == 3 && up(&b).len() == 3
    });
    let ran = dir.path().join("ran.txt");
    for (publisher, other, name) in [(&a, &b, "master-a"), (&b, &a, "master-b")] {
        // Each minion appends "<master> <its pid>": one line per minion.
        let out = publisher.cli(&[
            "run",
            "target=hot*",
            "cmd.run",
            &format!("echo {name} $PPID >> {}", ran.display()),
            "--json",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let jid = out.json()["jid"].as_str().expect("jid").to_owned();
        assert_eq!(out.json()["returns"].as_object().map(|r| r.len()), Some(3));
        eventually(
            Duration::from_secs(30),
            "returns in the other store",
            || {
                returns(other, &jid)
                    .as_object()
                    .is_some_and(|r| r.len() == 3)
            },
        );
    }
    let lines = std::fs::read_to_string(&ran).expect("ran.txt");
    for name in ["master-a", "master-b"] {
        let pids: std::collections::BTreeSet<&str> =
            lines.lines().filter_map(|l| l.strip_prefix(name)).collect();
        let count = lines.lines().filter(|l| l.starts_with(name)).count();
        assert_eq!((count, pids.len()), (3, 3), "{lines}");
    }
    // Every spool emptied: each master acknowledged each return.
    for minion in &minions {
        eventually(Duration::from_secs(30), "spools empty", || {
            walk_count(&minion.dir.join("data/spool")) == 0
        });
    }

    // master-a is gone while master-b runs a job: each minion keeps the
    // return for master-a and delivers it when master-a is back.
    a.proc.kill();
    let out = b.cli(&["run", "target=hot*", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();
    for minion in &minions {
        // master-b's copy goes when its ack arrives (after the CLI saw the
        // return stored); master-a's stays, since master-a is down.
        eventually(Duration::from_secs(30), "only master-a's copy left", || {
            walk_count(&minion.dir.join("data/spool")) == 1
        });
    }
    a.restart();
    eventually(
        Duration::from_secs(60),
        "returns delivered to master-a",
        || returns(&a, &jid).as_object().is_some_and(|r| r.len() == 3),
    );
    for minion in &minions {
        eventually(Duration::from_secs(30), "spools empty again", || {
            walk_count(&minion.dir.join("data/spool")) == 0
        });
    }
}

/// Spooled returns under `dir`, in every master's spool.
/// Returns waiting in every spool under `dir` (one per master in hot mode).
fn walk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let here = halite_minion::spool::waiting_in(dir).expect("read a spool");
    here + entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| walk_count(&e.path()))
        .sum::<usize>()
}

#[test]
fn a_job_relayed_by_two_masters_runs_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = std::sync::Arc::new(halite_pki::KeyPair::generate().expect("key"));
        let one = halite_tests::fake::FakeMaster::start_with_key(key.clone()).await;
        let two = halite_tests::fake::FakeMaster::start_with_key(key.clone()).await;
        let config = format!(
            "masters = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nmaster_type = \"hot\"",
            one.return_port, two.return_port
        );
        let _minion = Minion::start(dir.path(), "relay01", one.return_port, &config);
        one.wait_catchups(1, Duration::from_secs(60)).await;
        two.wait_catchups(1, Duration::from_secs(60)).await;

        let ran = dir.path().join("ran.txt");
        let mut job = one.job("unused");
        job.fun = "cmd.run".into();
        job.arg = vec![format!("echo once >> {}", ran.display()).into()];
        // Both masters publish the same signed job, several times.
        for _ in 0..3 {
            one.publish(&job, &key).await;
            two.publish(&job, &key).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let limit = Duration::from_secs(60);
        one.wait_returned(&job.jid, limit).await;
        two.wait_returned(&job.jid, limit).await;
        // A later job through both masters: once its returns are in, the
        // copies published before it have been handled (refused).
        let mut barrier = one.job("unused");
        barrier.fun = "cmd.run".into();
        barrier.arg = vec![format!("echo barrier >> {}", ran.display()).into()];
        one.publish(&barrier, &key).await;
        two.publish(&barrier, &key).await;
        one.wait_returned(&barrier.jid, limit).await;
        two.wait_returned(&barrier.jid, limit).await;
        assert_eq!(
            std::fs::read_to_string(&ran).expect("ran.txt"),
            "once\nbarrier\n"
        );
    });
}

#[test]
fn a_hung_master_is_left_after_master_alive_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = two_masters(dir.path());
    let config = minion_config(&a, &b, "master_type = \"failover\"");
    let _m1 = Minion::start(dir.path(), "hang01", a.return_port, &config);
    let _m2 = Minion::start(dir.path(), "hang02", a.return_port, &config);
    eventually(Duration::from_secs(60), "both up on master-a", || {
        up(&a).len() == 2
    });
    // SIGSTOP: master-a's connections stay open but it says nothing more
    // (no beacons, no acks), as a hung process or a black-holed network.
    let pid = a.proc.pid().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let stopped = halite_proto::time::now_ms();
    eventually(Duration::from_secs(60), "both up on master-b", || {
        up(&b).len() == 2
    });
    signal("-CONT");
    // They left for the silence: master-b recorded them up only after
    // master_alive_interval had passed (how fast is `halite-bench failover`'s).
    let out = b.cli(&["minions", "--events", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let arrived: Vec<u64> = out
        .json()
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["event"] == "minion/up")
                .filter_map(|e| e["at"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(arrived.len(), 2, "{out:?}");
    for at in arrived {
        assert!(
            at >= stopped + (ALIVE - 1) * 1000,
            "up on master-b {} ms after master-a stopped: not for silence",
            at.saturating_sub(stopped)
        );
    }
}

/// Without auto_accept: a failover minion presents its key to every
/// master of its list at start, so the operator accepts it on each while
/// all are up; when the active master dies, the standby already trusts
/// the minion and runs its jobs.
#[test]
fn failover_without_auto_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Master::start(&dir.path().join("a"), "id = \"master-a\"");
    let b = Master::start(&dir.path().join("b"), "id = \"master-b\"");
    let config = minion_config(&a, &b, "master_type = \"failover\"");
    let _web = Minion::start(dir.path(), "web01", a.return_port, &config);
    for master in [&a, &b] {
        eventually(
            Duration::from_secs(60),
            "the key pending on both masters",
            || master.key_status("web01").as_deref() == Some("pending"),
        );
    }
    for master in [&a, &b] {
        assert_eq!(master.cli(&["keys", "accept", "web01"]).code, 0);
    }
    a.wait_up("web01");
    a.proc.kill();
    b.wait_up("web01");
    let out = b.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
}
