//! Presence: the master notices a minion going down and coming back,
//! records both with their time, shows latency, refuses `--require-up`
//! jobs while a target is down, tells "down before the job" apart from
//! "did not return", and a minion that comes back in time still runs the
//! job it missed (catch-up).

use std::time::Duration;

use halite_tests::{eventually, Master, Minion};

fn status(master: &Master, id: &str) -> serde_json::Value {
    let out = master.cli(&["minions", "--json"]);
    out.json()
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == id).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn down_minions_are_noticed_reported_and_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "missed_heartbeats = 2\ncheck_interval = 1");
    let _web = Minion::start(dir.path(), "web01", master.return_port, "");
    let mut db = Minion::start(dir.path(), "db01", master.return_port, "");
    master.accept("web01");
    master.accept("db01");

    eventually(Duration::from_secs(60), "latency measured", || {
        status(&master, "web01")["latency_ms"].is_u64()
    });
    assert!(master.cli(&["minions"]).stdout.contains(" ms  "));

    db.proc.kill();
    eventually(Duration::from_secs(60), "db01 shown down", || {
        status(&master, "db01")["status"] == "down"
    });
    let events = master.cli(&["minions", "--events", "--json"]).json();
    let down = events
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["id"] == "db01" && e["event"] == "minion/down")
                .cloned()
        })
        .expect("minion/down recorded");
    assert!(down["at"].as_u64().unwrap_or(0) > 0);
    assert!(master
        .cli(&["minions", "--events"])
        .stdout
        .contains("minion/down"));

    // The periodic check keeps the failure: "which servers failed a check".
    eventually(
        Duration::from_secs(60),
        "a failed check of db01 recorded",
        || {
            let failed = master
                .cli(&["minions", "--checks", "--failed", "--json"])
                .json();
            failed
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["id"] == "db01" && c["ok"] == false))
        },
    );
    let failed = master
        .cli(&["minions", "--checks", "--failed", "--json"])
        .json();
    // (web01 may have failed one before it first connected; not since.)
    let down_at = down["at"].as_u64().unwrap_or(0);
    assert!(
        failed.as_array().is_some_and(|cs| cs
            .iter()
            .filter(|c| c["at"].as_u64() > Some(down_at))
            .all(|c| c["id"] == "db01")),
        "{failed}"
    );
    let out = master.cli(&["minions", "--checks", "--since", "1"]);
    assert!(
        out.stdout
            .contains("Failed checks in the last 1 h:\n  db01: "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("web01") && out.stdout.contains(" ok "),
        "{}",
        out.stdout
    );

    // --require-up refuses and publishes nothing.
    let jobs_before = master
        .cli(&["jobs", "list", "--json"])
        .json()
        .as_array()
        .map(Vec::len);
    let out = master.cli(&["run", "target=*", "test.ping", "--require-up"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("down: db01"), "{out:?}");
    let jobs_after = master
        .cli(&["jobs", "list", "--json"])
        .json()
        .as_array()
        .map(Vec::len);
    assert_eq!(jobs_before, jobs_after, "a refused job was published");

    // Without it, the summary separates "down before the job".
    let out = master.cli(&["run", "target=*", "test.ping", "--timeout", "1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("db01:\n    Minion was down before the job"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("1 did not return (1 down before the job)"),
        "{}",
        out.stdout
    );

    // A job published while db01 is down reaches it when it comes back.
    let out = master.cli(&[
        "run",
        "target=db01",
        "test.echo",
        "caught up",
        "--timeout",
        "60",
        "--async",
        "--json",
    ]);
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();
    let out = master.cli(&["jobs", "show", &jid, "--json"]);
    assert_eq!(out.json()["down_before_job"], serde_json::json!(["db01"]));
    db.restart();
    eventually(
        Duration::from_secs(60),
        "missed job run after the minion came back",
        || {
            master.cli(&["jobs", "show", &jid, "--json"]).json()["returns"]["db01"]["data"]
                == "caught up"
        },
    );
    eventually(
        Duration::from_secs(60),
        "minion/up recorded after the down",
        || {
            let events = master.cli(&["minions", "--events", "--json"]).json();
            let newest_db = events
                .as_array()
                .and_then(|es| es.iter().find(|e| e["id"] == "db01").cloned());
            newest_db.is_some_and(|e| e["event"] == "minion/up")
        },
    );
    let out = master.cli(&["run", "target=*", "test.ping", "--require-up"]);
    assert_eq!(out.code, 0, "{out:?}");
}
