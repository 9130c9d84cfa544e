//! Nothing is lost: returns survive a master restart mid-job and a minion
//! restart with unacknowledged returns; jobs survive a master restart.

use std::time::Duration;

use halite_tests::{eventually, eventually_or, Master, Minion};

fn jid_of(out: &halite_tests::CliOutput) -> String {
    out.json()["jid"].as_str().expect("jid").to_owned()
}

/// Has every minion of `jid` returned (successfully or not: the exit
/// code says which, the callers check the data)?
fn returned(master: &Master, jid: &str) -> bool {
    let out = master.cli(&["jobs", "show", jid, "--json"]);
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .is_ok_and(|doc| doc["missing"] == serde_json::json!([]))
}

#[test]
fn master_restart_mid_job_loses_no_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut master = Master::start(dir.path(), "");
    let web = Minion::start(dir.path(), "web01", master.return_port, "");
    let db = Minion::start(dir.path(), "db01", master.return_port, "");
    master.accept("web01");
    master.accept("db01");

    let out = master.cli(&["run", "target=*", "test.sleep", "2", "--async", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = jid_of(&out);
    eventually(
        Duration::from_secs(60),
        "both minions running the job",
        || [&web, &db].iter().all(|m| running(m, &jid)),
    );
    // The minions are running it; the master dies hard and comes back.
    master.restart();
    eventually(
        Duration::from_secs(60),
        "both returns stored after the restart",
        || returned(&master, &jid),
    );
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(doc["summary"]["succeeded"], 2, "{doc}");
    assert_eq!(doc["fun"], "test.sleep");
    // And the master serves new jobs to the reconnected minions; the job
    // catch-up re-offered after the restart did not run again.
    let out = master.cli(&["run", "target=*", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!running(&web, &jid) && !running(&db, &jid));
    let again = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(again["returns"], doc["returns"], "a return changed");
}

/// Is `jid` running on `minion` (its marker lives from a job's start to
/// its spooled return)?
fn running(minion: &Minion, jid: &str) -> bool {
    minion.dir.join("data/running").join(jid).exists()
}

#[test]
fn spooled_returns_survive_both_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut master = Master::start(dir.path(), "");
    let mut web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");

    let out = master.cli(&[
        "run",
        "target=web01",
        "cmd.run",
        "sleep 1; echo done",
        "--async",
        "--json",
    ]);
    let jid = jid_of(&out);
    // Kill the master only once the job has reached the minion (before
    // that it is only in the master's store, and catch-up would deliver
    // it after the restart: another test).
    eventually(Duration::from_secs(60), "job started on the minion", || {
        running(&web, &jid)
    });
    master.proc.kill();
    // The job finishes while no master listens: the return waits on disk.
    eventually(Duration::from_secs(60), "return spooled", || {
        web.spooled() == 1
    });
    // Restarted with no master to send to: the return's only copy is the
    // spool, so its delivery below proves the spool outlived the restart.
    web.restart();
    master.restart();
    eventually_or(
        Duration::from_secs(60),
        "spooled return delivered",
        || returned(&master, &jid),
        || format!("master log:\n{}\nminion log:\n{}", master.log(), web.log()),
    );
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(doc["returns"]["web01"]["data"], "done", "{doc}");
    eventually(
        Duration::from_secs(60),
        "spool emptied after the ack",
        || web.spooled() == 0,
    );
}

#[test]
fn secrets_travel_sealed_and_rotation_locks_out_removed_minions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let web = Minion::start(dir.path(), "web01", master.return_port, "");
    let db = Minion::start(dir.path(), "db01", master.return_port, "");
    master.accept("web01");
    master.accept("db01");
    let secret = "s3cret-Value-4711";

    let run = |target: &str| {
        master.cli(&[
            "run",
            &format!("target={target}"),
            "cmd.run",
            "wc -c",
            "--secret",
            &format!("stdin={secret}"),
            "--json",
        ])
    };
    let out = run("web01");
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert_eq!(
        doc["returns"]["web01"]["data"],
        secret.len().to_string(),
        "{doc}"
    );
    let shown = master
        .cli(&[
            "jobs",
            "show",
            doc["jid"].as_str().unwrap_or_default(),
            "--json",
        ])
        .stdout;
    assert!(!shown.contains(secret));

    // Deleting db01's key rotates the session key; web01 fetches the new
    // one and still opens secrets.
    assert_eq!(master.cli(&["keys", "delete", "db01"]).code, 0);
    master.wait_up("web01");
    // A secret sealed under the new key opens once web01 has fetched it.
    let mut out = run("web01");
    eventually(
        Duration::from_secs(60),
        "web01 opens secrets sealed under the new session key",
        || {
            out = run("web01");
            out.code == 0
        },
    );
    assert_eq!(
        out.json()["returns"]["web01"]["data"],
        secret.len().to_string()
    );

    // The secret is nowhere in clear: not in the store, not in any log.
    for root in [master.dir.clone(), web.dir.clone(), db.dir.clone()] {
        for path in files_under(&root) {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret in clear in {}",
                path.display()
            );
        }
    }
}

fn files_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn a_minion_killed_mid_job_reports_the_interruption_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let mut web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");

    let out = master.cli(&[
        "run",
        "target=web01",
        "test.sleep",
        "30",
        "--async",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = jid_of(&out);
    let marker = web.dir.join("data/running").join(&jid);
    eventually(Duration::from_secs(60), "the job running", || {
        marker.exists()
    });
    // kill -9 and start again: the job cannot finish, and catch-up must
    // not run it a second time.
    web.restart();
    eventually(Duration::from_secs(60), "the interruption reported", || {
        // A failed return makes `jobs show` exit 1: read the document.
        let out = master.cli(&["jobs", "show", &jid, "--json"]);
        !out.stdout.is_empty() && out.json()["returns"]["web01"].is_object()
    });
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    let ret = &doc["returns"]["web01"];
    assert_eq!(ret["success"], false, "{doc}");
    assert!(
        ret["data"]
            .as_str()
            .is_some_and(|d| d.starts_with("interrupted: the minion stopped")),
        "{doc}"
    );
    assert!(!marker.exists());
    // Exactly once: nothing more arrives, and the minion serves new jobs.
    let out = master.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(
        doc["returns"].as_object().map(|r| r.len()),
        Some(1),
        "{doc}"
    );
    assert_eq!(web.spooled(), 0);
}

#[test]
fn a_minion_cut_off_runs_the_missed_job_once_when_reconnected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "missed_heartbeats = 2");
    // The minion reaches the master only through a proxy the test can cut.
    let proxy = halite_tests::proxy::Proxy::start(&[master.return_port, master.publish_port]);
    let masters = format!("masters = [\"127.0.0.2:{}\"]", master.return_port);
    let web = Minion::start(dir.path(), "web01", master.return_port, &masters);
    master.accept("web01");

    proxy.cut();
    eventually(Duration::from_secs(60), "web01 shown down", || {
        let out = master.cli(&["minions", "--json"]);
        out.code == 0 && out.json()[0]["status"] == "down"
    });
    let out = master.cli(&[
        "run",
        "target=web01",
        "test.echo",
        "missed",
        "--async",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = jid_of(&out);
    proxy.restore();
    eventually(Duration::from_secs(60), "the missed job's return", || {
        returned(&master, &jid)
    });
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(
        doc["down_before_job"],
        serde_json::json!(["web01"]),
        "{doc}"
    );
    assert_eq!(doc["returns"]["web01"]["data"], "missed", "{doc}");
    assert_eq!(doc["returns"].as_object().map(|r| r.len()), Some(1));
    // Ran once: the catch-up after every reconnect does not run it again.
    // Another cut and reconnect, then a later job as a barrier: by its
    // return, the re-offered job has been handled.
    proxy.cut();
    eventually(Duration::from_secs(60), "web01 shown down again", || {
        let out = master.cli(&["minions", "--json"]);
        out.code == 0 && out.json()[0]["status"] == "down"
    });
    proxy.restore();
    master.wait_up("web01");
    let out = master.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!running(&web, &jid));
    let again = master.cli(&["jobs", "show", &jid, "--json"]).json();
    assert_eq!(again["returns"], doc["returns"], "the missed job ran again");
}

#[test]
fn a_job_in_batches_goes_on_after_a_master_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut master = Master::start(dir.path(), "");
    let ids = ["web01", "web02", "web03"];
    let minions: Vec<Minion> = ids
        .iter()
        .map(|id| Minion::start(dir.path(), id, master.return_port, ""))
        .collect();
    for id in ids {
        master.accept(id);
    }
    let out = master.cli(&[
        "run",
        "target=web*",
        "test.sleep",
        "2",
        "--batch",
        "1",
        "--async",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = jid_of(&out);
    // Killed while the first batch runs: the plan is in the store.
    eventually(Duration::from_secs(60), "the first batch running", || {
        minions.iter().any(|m| running(m, &jid))
    });
    master.restart();
    eventually(
        Duration::from_secs(90),
        "every batch ran after the restart",
        || returned(&master, &jid),
    );
    let doc = master.cli(&["jobs", "show", &jid, "--json"]).json();
    halite_tests::assert_batches_in_turn(&doc, &ids);
}

/// A minion that cannot record a job before running it (its running
/// marker cannot be written: here `data/running` is a file, as good as a
/// full disk) does not run it and says so in a failed return.
#[test]
fn a_minion_that_cannot_record_a_job_refuses_it_in_a_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");
    let running = web.dir.join("data/running");
    let _ = std::fs::remove_dir_all(&running);
    std::fs::write(&running, "not a directory").expect("block the marker dir");
    let touched = dir.path().join("ran");
    let command = format!("touch {}", touched.display());
    let out = master.cli(&["run", "target=web01", "cmd.run", &command, "--json"]);
    let doc = out.json();
    assert_eq!(doc["returns"]["web01"]["success"], false, "{doc}");
    assert!(!touched.exists(), "the job ran unrecorded");
}

/// A return nested deeper than readers parse is kept with its outcome,
/// its data replaced by a note, and `master-cli` shows the job; one nested
/// deeper than the decoder follows is dropped without harm to the master.
#[test]
fn deeply_nested_returns_are_kept_or_dropped_never_a_crash() {
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut master = Master::start(dir.path(), "");
    let key = std::sync::Arc::new(halite_pki::KeyPair::generate().expect("key"));
    let mut raw = rt.block_on(async {
        let mut raw = halite_tests::fake::RawDealer::connect(master.return_port).await;
        raw.auth(&key, "web02", Duration::from_secs(60)).await;
        raw
    });
    assert_eq!(master.cli(&["keys", "accept", "web02"]).code, 0);
    let mut jids = Vec::new();
    for levels in [126, 600] {
        let out = master.cli(&["run", "target=web02", "test.ping", "--async", "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let jid = jid_of(&out);
        // Built, signed and dropped on a thread with room for the
        // recursion serde does on the way (the master has no such room).
        let signer = std::sync::Arc::clone(&key);
        let parsed = halite_proto::Jid::parse(&jid).expect("jid");
        let bytes = std::thread::Builder::new()
            .stack_size(256 * 1024 * 1024)
            .spawn(move || {
                let mut data = serde_json::json!("bottom");
                for _ in 0..levels {
                    data = serde_json::json!([data]);
                }
                halite_tests::fake::signed_return_of(&signer, "web02", &parsed, "test.ping", data)
            })
            .expect("thread")
            .join()
            .expect("signed");
        rt.block_on(async {
            raw.send(bytes).await;
            raw.barrier(&format!("barrier-{levels}"), Duration::from_secs(60))
                .await;
        });
        jids.push(jid);
    }
    eventually(Duration::from_secs(60), "the first return kept", || {
        returned(&master, &jids[0])
    });
    let out = master.cli(&["jobs", "show", &jids[0], "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["returns"]["web02"]["success"], true);
    assert!(!master.proc.exited(), "the master survived");
    assert!(
        !returned(&master, &jids[1]),
        "the undecodable one was dropped"
    );
}
