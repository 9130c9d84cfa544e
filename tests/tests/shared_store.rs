//! Several masters on one PostgreSQL store (`store = "postgres://…"`):
//! a real cluster started for the test, real masters and minions on
//! loopback.

use std::path::Path;
use std::time::Duration;

use halite_master::store::throwaway::Cluster;
use halite_tests::{eventually, Master, Minion};

/// A throwaway PostgreSQL with a new database (it stops when dropped),
/// and the config line of the masters that share it.
fn shared_database() -> (Cluster, String) {
    let cluster = Cluster::start().expect("start PostgreSQL");
    let url = cluster.database().expect("a database");
    (cluster, format!("store = \"{url}\""))
}

/// Master `master-NAME` under `dir/NAME`, `config` added to its config.
fn master_on(dir: &Path, name: &str, config: &str) -> Master {
    Master::start(
        &dir.join(name),
        &format!("id = \"master-{name}\"\n{config}"),
    )
}

/// The jids `master` lists.
fn listed(master: &Master) -> Vec<String> {
    let out = master.cli(&["jobs", "list", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|job| job["jid"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn two_masters_on_one_postgres_show_each_others_jobs_and_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, store) = shared_database();
    let a = master_on(dir.path(), "a", &store);
    let b = master_on(dir.path(), "b", &store);
    // Minions split across the masters, each knowing only its own.
    let _on_a: Vec<Minion> = a.start_minions(&dir.path().join("a"), &["pga01"]);
    let _on_b: Vec<Minion> = b.start_minions(&dir.path().join("b"), &["pgb01"]);

    // A live event stream on master-b, opened before either job.
    let events = halite_tests::api::http()
        .get(format!("{}/v1/events", b.api_url()))
        .header("X-Auth-Token", b.root_token())
        .send()
        .expect("GET /v1/events");
    assert!(events.status().is_success(), "{events:?}");

    let mut jids = Vec::new();
    for (master, minion) in [(&a, "pga01"), (&b, "pgb01")] {
        let out = master.cli(&["run", &format!("target={minion}"), "test.ping", "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.json()["returns"][minion]["data"], true, "{out:?}");
        jids.push((out.json()["jid"].as_str().expect("jid").to_owned(), minion));
    }

    // master-b's clients saw both returns live, master-a's too, in the
    // order of their ids.
    let seen = halite_tests::api::read_sse(events, |seen| {
        jids.iter().all(|(jid, _)| {
            seen.iter()
                .any(|(_, _, entry)| entry["kind"] == "job/return" && entry["jid"] == jid.as_str())
        })
    });
    for (jid, minion) in &jids {
        assert!(
            seen.iter()
                .any(|(_, _, entry)| entry["kind"] == "job/return"
                    && entry["jid"] == jid.as_str()
                    && entry["minion"] == *minion),
            "no live return of {jid} from {minion}: {seen:?}"
        );
    }
    let ids: Vec<u64> = seen.iter().filter_map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Both jobs, with their returns, through either master.
    for master in [&a, &b] {
        let listed = listed(master);
        for (jid, minion) in &jids {
            assert!(listed.contains(jid), "{jid} not in {listed:?}");
            let out = master.cli(&["jobs", "show", jid, "--json"]);
            assert_eq!(out.code, 0, "{out:?}");
            let returns = out.json()["returns"].clone();
            assert_eq!(
                returns.as_object().map(|r| r.keys().collect::<Vec<_>>()),
                Some(vec![&minion.to_string()]),
                "{out:?}"
            );
            assert_eq!(returns[*minion]["data"], true, "{out:?}");
        }
    }

    // A master restarted on the shared store finds both jobs again.
    let mut a = a;
    a.restart();
    eventually(
        Duration::from_secs(30),
        "both jobs listed after a restart",
        || {
            let listed = listed(&a);
            jids.iter().all(|(jid, _)| listed.contains(jid))
        },
    );
}

/// Whether `master` drives rollouts now (its `halite_driving` gauge).
fn driving(master: &Master) -> bool {
    master
        .metrics()
        .lines()
        .any(|line| line.trim() == "halite_driving 1")
}

#[test]
fn a_rollout_goes_on_when_the_master_driving_it_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, store) = shared_database();
    let config = |metrics: u16| {
        format!("{store}\nauto_accept = true\nmetrics_bind = \"127.0.0.1:{metrics}\"\n")
    };
    let mut a = master_on(dir.path(), "a", &config(halite_tests::free_port()));
    eventually(Duration::from_secs(30), "master-a drives", || driving(&a));
    let b = master_on(dir.path(), "b", &config(halite_tests::free_port()));
    a.trust_peer(&b, "master-b");
    b.trust_peer(&a, "master-a");
    assert!(!driving(&b), "one master drives at a time");
    // The app, defined on both masters; its minions serve both (hot).
    let app = halite_tests::git::Shop::with(&dir.path().join("a"), "");
    std::fs::create_dir_all(dir.path().join("b/master/apps.d")).expect("apps.d");
    std::fs::copy(
        dir.path().join("a/master/apps.d/shop.toml"),
        dir.path().join("b/master/apps.d/shop.toml"),
    )
    .expect("copy shop.toml");
    let minion_config = format!(
        "masters = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\nmaster_type = \"hot\"\n",
        a.return_port, b.return_port
    );
    let _minions: Vec<Minion> = ["web1", "web2"]
        .iter()
        .map(|id| Minion::start(dir.path(), id, a.return_port, &minion_config))
        .collect();
    for master in [&a, &b] {
        for id in ["web1", "web2"] {
            master.wait_up(id);
        }
    }

    // Started through master-b, driven by master-a: step 1 waits at its
    // gate.
    let out = b.cli(&[
        "rollout", "start", "shop", "tag=v1", "--ramp", "1,100%", "--manual", "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.json()["id"].as_u64().expect("rollout id").to_string();
    let rollout = |master: &Master| {
        let out = master.cli(&["rollout", "show", &id, "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
    };
    eventually(Duration::from_secs(60), "step 1 at the gate", || {
        rollout(&b)["steps"][0]["phase"] == "waiting"
    });
    let first_job = rollout(&b)["steps"][0]["jid"].clone();
    assert_eq!(app.live("web1").as_deref(), Some("one"));

    // Actions asked on master-b are applied by master-a, the one master
    // writing rollouts, and answered on master-b as applied or refused.
    let out = b.cli(&["rollout", "pause", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(rollout(&a)["state"], "paused");
    let out = b.cli(&["rollout", "pause", &id]);
    assert_ne!(
        out.code, 0,
        "a second pause is refused by the driver: {out:?}"
    );
    let out = b.cli(&["rollout", "resume", &id, "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["state"], "running");
    assert_eq!(rollout(&a)["state"], "running");
    assert!(driving(&a) && !driving(&b));

    // master-a dies; master-b takes the lease once it runs out and
    // finishes the rollout, without running step 1 again.
    a.proc.kill();
    let out = b.cli(&["rollout", "continue", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    eventually(
        Duration::from_secs(90),
        "the rollout done by master-b",
        || rollout(&b)["state"] == "succeeded",
    );
    assert!(driving(&b));
    assert_eq!(app.live("web2").as_deref(), Some("one"));
    assert_eq!(rollout(&b)["steps"][0]["jid"], first_job);
}

#[test]
fn a_key_decided_on_one_master_is_decided_on_every_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, store) = shared_database();
    let a = master_on(dir.path(), "a", &store);
    let b = master_on(dir.path(), "b", &store);
    // web1 knows master-a only; its key waits there, and on master-b.
    let _web1 = Minion::start(dir.path(), "web1", a.return_port, "");
    for master in [&a, &b] {
        eventually(Duration::from_secs(60), "web1 pending", || {
            master.key_status("web1").as_deref() == Some("pending")
        });
    }
    // Accepted on master-b, the minion waiting on master-a is let in.
    let out = b.cli(&["keys", "accept", "web1"]);
    assert_eq!(out.code, 0, "{out:?}");
    a.wait_up("web1");
    assert_eq!(a.key_status("web1").as_deref(), Some("accepted"));
    let out = a.cli(&["run", "target=web1", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["returns"]["web1"]["data"], true, "{out:?}");
    // Rejected on master-a: rejected on master-b too.
    let out = a.cli(&["keys", "reject", "web1"]);
    assert_eq!(out.code, 0, "{out:?}");
    eventually(Duration::from_secs(30), "web1 rejected on master-b", || {
        b.key_status("web1").as_deref() == Some("rejected")
    });
    // Deleted on master-b, gone from master-a; a third master joining
    // later learns every decision at its start.
    let out = b.cli(&["keys", "delete", "web1"]);
    assert_eq!(out.code, 0, "{out:?}");
    // (web1 keeps asking master-a, so it is pending there again.)
    eventually(Duration::from_secs(30), "web1 deleted on master-a", || {
        a.key_status("web1").as_deref() != Some("rejected")
    });
    let c = master_on(dir.path(), "c", &store);
    eventually(Duration::from_secs(30), "master-c agrees", || {
        let here = c.key_status("web1");
        here.is_some() && here == a.key_status("web1")
    });
}

/// Does `token` still authenticate on `master`?
fn token_works(master: &Master, token: &str) -> bool {
    let (status, body) = halite_tests::api::call(
        halite_tests::api::http().get(format!("{}/v1/minions", master.api_url())),
        Some(token),
        None,
    );
    assert!(status == 200 || status == 401, "{status} {body}");
    status == 200
}

/// Can `user` log in on `master` with `password`? The login token if so.
fn logs_in(master: &Master, user: &str, password: &str) -> Option<String> {
    let (status, body) = halite_tests::api::login(&master.api_url(), user, password);
    assert!(status == 200 || status == 401, "{status} {body}");
    (status == 200).then(|| body["token"].as_str().expect("token").to_owned())
}

/// `user`'s password hash in `master`'s users file (what logins check;
/// polled instead of logins, which are throttled).
fn hash_of(master: &Master, user: &str) -> Option<String> {
    let users = halite_pki::users::Users::new(master.dir.join("users.toml"));
    let records = users.records().expect("a users file that reads");
    records.get(user).map(|record| record.hash.clone())
}

#[test]
fn a_user_changed_on_one_master_is_changed_on_every_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, store) = shared_database();
    let acl = "[acl]\nalice = [\"test.*\"]\nbob = [\"test.*\"]\ncarol = [\"test.*\"]\n";
    let config = format!("{store}\n{acl}");
    let a = master_on(dir.path(), "a", &config);
    let b = master_on(dir.path(), "b", &config);
    let shared = |user: &str, masters: &[&Master]| {
        eventually(
            Duration::from_secs(30),
            "the same user on every master",
            || {
                let hash = hash_of(masters[0], user);
                masters.iter().all(|master| hash_of(master, user) == hash)
            },
        )
    };

    // Added on master-a's host: alice logs in on master-b, and a token
    // from master-a works there.
    let out = a.cli_input(&["users", "add", "alice"], "alice-pw-1\n");
    assert_eq!(out.code, 0, "{out:?}");
    shared("alice", &[&a, &b]);
    assert!(logs_in(&b, "alice", "alice-pw-1").is_some());
    let token = logs_in(&a, "alice", "alice-pw-1").expect("alice on master-a");
    assert!(token_works(&b, &token));

    // A new password on master-b: master-a takes it, and the token
    // issued under the old one dies on both.
    let old = hash_of(&b, "alice");
    let out = b.cli_input(&["users", "passwd", "alice"], "alice-pw-2\n");
    assert_eq!(out.code, 0, "{out:?}");
    eventually(
        Duration::from_secs(30),
        "the new password on master-a",
        || hash_of(&a, "alice") != old,
    );
    shared("alice", &[&a, &b]);
    assert!(logs_in(&a, "alice", "alice-pw-2").is_some());
    assert!(logs_in(&a, "alice", "alice-pw-1").is_none());
    assert!(!token_works(&a, &token) && !token_works(&b, &token));

    // A master that starts later has every user, and a user added on it
    // reaches the others.
    let out = a.cli_input(&["users", "add", "bob"], "bob-pw-123\n");
    assert_eq!(out.code, 0, "{out:?}");
    shared("bob", &[&a, &b]);
    let c = master_on(dir.path(), "c", &config);
    eventually(Duration::from_secs(30), "alice and bob on master-c", || {
        hash_of(&c, "alice").is_some() && hash_of(&c, "bob").is_some()
    });
    shared("alice", &[&a, &b, &c]);
    assert!(logs_in(&c, "bob", "bob-pw-123").is_some());
    let out = c.cli_input(&["users", "add", "carol"], "carol-pw-1\n");
    assert_eq!(out.code, 0, "{out:?}");
    eventually(Duration::from_secs(30), "carol on master-a", || {
        hash_of(&a, "carol").is_some()
    });
    assert!(logs_in(&a, "carol", "carol-pw-1").is_some());

    // Deleted on master-a: gone everywhere.
    let out = a.cli(&["users", "delete", "alice"]);
    assert_eq!(out.code, 0, "{out:?}");
    eventually(Duration::from_secs(30), "alice deleted everywhere", || {
        [&b, &c]
            .iter()
            .all(|master| hash_of(master, "alice").is_none())
    });
    assert!(logs_in(&b, "alice", "alice-pw-2").is_none());
}

/// `halite-master copy-store` with the master's config.
fn copy_store(master: &Master, to: &str) -> halite_tests::CliOutput {
    halite_tests::CliOutput::from(
        std::process::Command::new(halite_tests::bin("halite-master"))
            .arg("--config")
            .arg(&master.config)
            .args(["copy-store", "--to", to])
            .output()
            .expect("run halite-master copy-store"),
    )
}

#[test]
fn a_master_moved_from_its_embedded_store_to_postgres_keeps_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start().expect("start PostgreSQL");
    let url = cluster.database().expect("a database");
    let mut master = master_on(dir.path(), "a", "");
    let _web1 = master.start_minions(dir.path(), &["web1"]);
    let out = master.cli(&["run", "target=web1", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();

    // Refused while the master runs (it holds its store), the database
    // left empty.
    let out = copy_store(&master, &url);
    assert_ne!(out.code, 0, "{out:?}");

    master.proc.stop();
    let out = copy_store(&master, &url);
    assert_eq!(out.code, 0, "{out:?}");
    // Only into a new database.
    let again = copy_store(&master, &url);
    assert_ne!(again.code, 0, "{again:?}");

    // The same master on the database (its ports are new): its job and
    // return are there, and new jobs go on.
    let moved = master_on(dir.path(), "a", &format!("store = \"{url}\"\n"));
    assert_eq!(listed(&moved), [jid.as_str()]);
    let out = moved.cli(&["jobs", "show", &jid, "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["returns"]["web1"]["data"], true, "{out:?}");
    let _web2 = moved.start_minions(dir.path(), &["web2"]);
    let out = moved.cli(&["run", "target=web2", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(listed(&moved).len(), 2);
}
