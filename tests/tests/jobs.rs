//! Running jobs through real processes: targets, modules, output, exit
//! codes, JSON, async, job history.

use std::time::Duration;

use halite_tests::{Master, Minion};

struct Fleet {
    _dir: tempfile::TempDir,
    master: Master,
    _minions: Vec<Minion>,
}

/// A master with web01 (role web) and db01 (role db), both accepted.
fn fleet() -> Fleet {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let web = Minion::start(
        dir.path(),
        "web01",
        master.return_port,
        "[grains]\nrole = \"web\"",
    );
    let db = Minion::start(
        dir.path(),
        "db01",
        master.return_port,
        "[grains]\nrole = \"db\"",
    );
    halite_tests::eventually(Duration::from_secs(60), "both keys pending", || {
        master.key_status("web01").as_deref() == Some("pending")
            && master.key_status("db01").as_deref() == Some("pending")
    });
    let out = master.cli(&["keys", "accept", "--all"]);
    assert!(
        out.stdout.contains("Accepted key db01.") && out.stdout.contains("Accepted key web01."),
        "{out:?}"
    );
    master.wait_up("web01");
    master.wait_up("db01");
    Fleet {
        _dir: dir,
        master,
        _minions: vec![web, db],
    }
}

#[test]
fn targets_modules_and_exit_codes() {
    let fleet = fleet();
    let m = &fleet.master;

    let out = m.cli(&["run", "target=web*", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("web01:\n    True"), "{}", out.stdout);
    assert!(!out.stdout.contains("db01"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("1 succeeded, 0 failed, 0 did not return"),
        "{}",
        out.stdout
    );

    let out = m.cli(&[
        "run",
        "target=G@role:db or web01",
        "tgt_type=compound",
        "cmd.run",
        "echo hi from $(hostname >/dev/null; echo shell)",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["returns"]["web01"]["data"], "hi from shell");
    assert_eq!(doc["returns"]["db01"]["data"], "hi from shell");
    assert_eq!(doc["missing"], serde_json::json!([]));
    assert_eq!(doc["summary"]["succeeded"], 2);

    let out = m.cli(&[
        "run",
        "target=web01,db01",
        "tgt_type=list",
        "grains.get",
        "role",
        "--json",
    ]);
    assert_eq!(out.json()["returns"]["db01"]["data"], "db");

    let out = m.cli(&[
        "run",
        "target=G@role:web",
        "tgt_type=compound",
        "grains.items",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let grains = &out.json()["returns"]["web01"]["data"];
    assert_eq!(grains["id"], "web01");
    assert_eq!(grains["kernel"], "Linux");
    assert!(grains["os"].is_string(), "{grains}");
    assert!(grains["num_cpus"].as_u64().unwrap_or(0) >= 1, "{grains}");

    let out = m.cli(&[
        "run",
        "target=.*01",
        "tgt_type=pcre",
        "test.echo",
        "text=hello",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("db01:\n    hello") && out.stdout.contains("web01:\n    hello"),
        "{}",
        out.stdout
    );

    // A failing command fails the job and the exit code, on every minion.
    let out = m.cli(&[
        "run",
        "target=*",
        "cmd.run",
        "echo broken >&2; exit 3",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let doc = out.json();
    assert_eq!(doc["returns"]["web01"]["retcode"], 3);
    assert_eq!(doc["returns"]["web01"]["success"], false);
    assert_eq!(doc["summary"]["failed"], 2);

    // An unknown function is refused by the master before anything is
    // published, naming what there is; bad arguments come back as failed
    // returns.
    let out = m.cli(&["run", "target=web01", "nosuch.thing"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("unknown function `nosuch.thing`"),
        "{}",
        out.stderr
    );
    let listed = m.cli(&["jobs", "list", "--fun", "nosuch.*", "--json"]);
    assert_eq!(listed.json(), serde_json::json!([]), "{listed:?}");
    let out = m.cli(&[
        "run",
        "target=web01",
        "test.sleep",
        "seconds=soon",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let message = out.json()["returns"]["web01"]["data"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("seconds"), "{message}");
    let out = m.cli(&[
        "run",
        "target=web01",
        "cmd.run",
        "true",
        "colour=red",
        "--json",
    ]);
    assert_eq!(out.json()["returns"]["web01"]["retcode"], 2, "{out:?}");

    // The job timeout stops a long function and says so.
    let out = m.cli(&[
        "run",
        "target=web01",
        "test.sleep",
        "30",
        "--timeout",
        "1",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let ret = &out.json()["returns"]["web01"];
    assert_eq!(ret["retcode"], 124, "{ret}");
    assert!(
        ret["data"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out after 1s"),
        "{ret}"
    );

    // Nothing matched: a clear message and a failing exit code.
    let out = m.cli(&["run", "target=nomatch*", "test.ping"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("No minion matched"), "{out:?}");

    // Bad target syntax and usage errors are refused before publishing.
    let out = m.cli(&["run", "target=web* and", "tgt_type=compound", "test.ping"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("target"), "{out:?}");
    let out = m.cli(&["run", "test.ping"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn async_jobs_history_and_minions() {
    let fleet = fleet();
    let m = &fleet.master;

    let out = m.cli(&["run", "target=*", "test.sleep", "1", "--async"]);
    assert_eq!(out.code, 0, "{out:?}");
    // The jid alone, for `J=$(master-cli run ... --async)`.
    let jid = out.stdout.trim_end_matches('\n').to_owned();
    assert!(halite_proto::Jid::parse(&jid).is_ok(), "{out:?}");

    halite_tests::eventually(Duration::from_secs(60), "async job returns", || {
        let out = m.cli(&["jobs", "show", &jid, "--json"]);
        out.code == 0 && out.json()["missing"] == serde_json::json!([])
    });
    let out = m.cli(&["jobs", "show", &jid]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&format!("Job {jid}: test.sleep")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("2 succeeded"), "{}", out.stdout);

    let out = m.cli(&["jobs", "list"]);
    assert!(
        out.stdout.contains(&jid) && out.stdout.contains("2/2"),
        "{}",
        out.stdout
    );
    let out = m.cli(&["jobs", "list", "--json"]);
    let jobs = out.json();
    assert_eq!(jobs[0]["jid"], jid.as_str());
    assert_eq!(jobs[0]["returned"], 2);

    let out = m.cli(&["jobs", "show", "12345"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("jid"), "{out:?}");
    let out = m.cli(&["jobs", "show", "20000101000000000000"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no job"), "{out:?}");

    let out = m.cli(&["minions"]);
    assert!(
        out.stdout.contains("web01") && out.stdout.contains(" up "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("2 minions, 2 up, 0 down"),
        "{}",
        out.stdout
    );
    let doc = m.cli(&["minions", "--json"]).json();
    assert_eq!(doc[0]["os"], doc[0]["grains"]["os"]);
    assert!(doc[0]["os"].is_string());
    assert!(doc[0]["version"].is_string());
}

#[test]
fn output_lines_stream_live_as_events() {
    let fleet = fleet();
    let out = fleet.master.cli(&[
        "run",
        "target=web01",
        "cmd.run",
        "echo one; echo two",
        "--progress",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("[web01] stdout: one"), "{}", out.stdout);
    assert!(out.stdout.contains("[web01] stdout: two"), "{}", out.stdout);
}
