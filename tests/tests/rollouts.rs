//! Rollouts for real: a master, minions and a git repository; an app
//! released in steps. A minion failing in step 2 puts the step-1 minions
//! back on their previous release; a minion that does not return stops a
//! rollout too; a manual gate waits for `rollout continue` (refused
//! without the grant) and a master restarted at the gate continues the
//! rollout without running its first step again.

use std::path::Path;
use std::time::Duration;

use halite_tests::api::Session;
use halite_tests::git::Shop;
use halite_tests::{eventually, Master};
use serde_json::{json, Value};

/// The shop app, its post_deploy hook failing where
/// `srv/<id>/shop/broken` exists and waiting for a line where
/// `srv/<id>/shop/gate` is a FIFO.
fn shop(dir: &Path) -> Shop {
    Shop::with(
        dir,
        "post_deploy = \"test ! -e ../../broken && { test ! -p ../../gate || cat ../../gate; }\"\n\
         stop_on_error = true\nauto_rollback = true\n",
    )
}

/// Waits until rollout `id` is in `state`; answers it.
fn wait_state(api: &Session, id: u64, state: &str) -> Value {
    let mut seen = Value::Null;
    eventually(
        Duration::from_secs(120),
        &format!("rollout {id} {state}"),
        || {
            seen = api.get(&format!("/v1/rollouts/{id}")).1;
            seen["state"] == state
        },
    );
    seen
}

/// Starts a rollout with `master-cli rollout start`; answers its id.
fn start(master: &Master, args: &[&str]) -> u64 {
    let mut all = vec!["rollout", "start", "shop", "--json"];
    all.extend_from_slice(args);
    let out = master.cli(&all);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()["id"].as_u64().expect("rollout id")
}

fn names(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn a_failed_step_puts_every_released_minion_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = shop(dir.path());
    let master = Master::start(dir.path(), "");
    let mut minions = master.start_minions(dir.path(), &["web1", "web2", "web3"]);
    let root = Session::root(&master);
    let (status, body) = root.post("/v1/apps/shop/deploy", json!({ "tag": "v1" }));
    assert_eq!(status, 202, "{body}");
    halite_tests::api::wait_done(&root.base, &root.token, body["jid"].as_str().unwrap());
    for id in ["web1", "web2", "web3"] {
        assert_eq!(app.live(id).as_deref(), Some("one"), "{id}");
    }

    // web3 fails its post_deploy hook. Step 1 is web1; step 2, web2 and
    // web3: web3 fails, so web1 and web2 (released by this rollout) go
    // back to v1.
    std::fs::write(dir.path().join("srv/web3/shop/broken"), "").expect("break web3");
    let id = start(
        &master,
        &["tag=v2", "--ramp", "1,100%", "--reason", "v2 out"],
    );
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(names(&rollout["steps"][0]["minions"]), ["web1"]);
    assert_eq!(rollout["steps"][0]["phase"], "passed", "{rollout}");
    assert_eq!(rollout["steps"][1]["phase"], "failed", "{rollout}");
    assert_eq!(names(&rollout["steps"][1]["failed"]), ["web3"], "{rollout}");
    assert_eq!(
        names(&rollout["rollback"]["rolled_back"]),
        ["web1", "web2"],
        "{rollout}"
    );
    assert!(rollout["rollback"]["not_rolled_back"]
        .as_array()
        .unwrap()
        .is_empty());
    for id in ["web1", "web2", "web3"] {
        assert_eq!(app.live(id).as_deref(), Some("one"), "{id}");
    }
    // What `rollout show` prints is the same record.
    let shown = master.cli(&["rollout", "show", &id.to_string(), "--json"]);
    assert_eq!(shown.json()["rollback"], rollout["rollback"]);

    // A minion that does not return stops the next rollout the same way
    // (max_missing 0), counted apart from failures.
    std::fs::remove_file(dir.path().join("srv/web3/shop/broken")).expect("mend web3");
    minions[2].proc.kill();
    let id = start(&master, &["tag=v2", "--ramp", "1,100%", "--timeout", "3"]);
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(
        names(&rollout["steps"][1]["missing"]),
        ["web3"],
        "{rollout}"
    );
    assert!(
        names(&rollout["steps"][1]["failed"]).is_empty(),
        "{rollout}"
    );
    assert_eq!(
        names(&rollout["rollback"]["rolled_back"]),
        ["web1", "web2"],
        "{rollout}"
    );
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    assert_eq!(app.live("web2").as_deref(), Some("one"));

    // With one missing minion tolerated, the same rollout goes through.
    let id = start(
        &master,
        &[
            "tag=v2",
            "--ramp",
            "1,100%",
            "--timeout",
            "3",
            "--max-missing",
            "1",
        ],
    );
    let rollout = wait_state(&root, id, "succeeded");
    assert_eq!(
        names(&rollout["steps"][1]["released"]),
        ["web2"],
        "{rollout}"
    );
    assert_eq!(app.live("web1").as_deref(), Some("two"));
    assert_eq!(app.live("web2").as_deref(), Some("two"));
}

#[test]
fn a_manual_gate_waits_and_a_restarted_master_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = shop(dir.path());
    let mut master = Master::start(
        dir.path(),
        "[acl]\ndev = [{ \"web1\" = [\"git_deploy.*\"] }]\n",
    );
    let _minions = master.start_minions(dir.path(), &["web1", "web2"]);
    let root = Session::root(&master);
    let dev = Session::new_user(&master, "dev");

    let id = start(&master, &["tag=v1", "--ramp", "1,100%", "--manual"]);
    let mut rollout = Value::Null;
    eventually(Duration::from_secs(60), "step 1 waits at the gate", || {
        rollout = root.get(&format!("/v1/rollouts/{id}")).1;
        rollout["steps"][0]["phase"] == "waiting"
    });
    let first_job = rollout["steps"][0]["jid"].clone();
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    assert_eq!(app.live("web2"), None, "step 2 waits");

    // dev may deploy web1 only: not let a rollout to web2 go on.
    let (status, body) = dev.post(&format!("/v1/rollouts/{id}/continue"), json!({}));
    assert_eq!(status, 403, "{body}");

    // The master dies at the gate; back, it still waits there.
    master.restart();
    let root = Session::root(&master);
    let (_, after) = root.get(&format!("/v1/rollouts/{id}"));
    assert_eq!(after["steps"][0]["phase"], "waiting", "{after}");
    let out = master.cli(&["rollout", "continue", &id.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let rollout = wait_state(&root, id, "succeeded");
    assert_eq!(app.live("web2").as_deref(), Some("one"));
    // Step 1 ran once: the same job, and two deploy jobs in all.
    assert_eq!(rollout["steps"][0]["jid"], first_job);
    assert_eq!(rollout["steps"][0]["continued_by"], "root");
    let (_, jobs) = root.get("/v1/jobs?fun=git_deploy.deploy&limit=50");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
    // The audit log says who let it go on, and who was refused.
    let (_, audit) = root.get("/v1/audit?limit=100");
    let continued: Vec<(String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == format!("/v1/rollouts/{id}/continue"))
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        continued.contains(&("dev".to_owned(), 403)),
        "{continued:?}"
    );
    assert!(
        continued.contains(&("root".to_owned(), 200)),
        "{continued:?}"
    );
    // Probes after each step: an HTTP probe answered 503 stops the
    // rollout after step 1 and puts web1 back.
    let probed = halite_tests::receiver::Receiver::start(1);
    let health = format!("{}/health", probed.url);
    let id = start(
        &master,
        &["tag=v2", "--ramp", "1,100%", "--probe-url", &health],
    );
    let rollout = wait_state(&root, id, "rolled_back");
    let gate = &rollout["steps"][0]["gates"][0];
    assert_eq!(gate["passed"], false, "{rollout}");
    assert_eq!(names(&rollout["rollback"]["rolled_back"]), ["web1"]);
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    assert_eq!(app.live("web2").as_deref(), Some("one"));
    // The same probe answering 200 and a command probe exiting 0 let it
    // through (a plan given through the API).
    let (status, body) = root.post(
        "/v1/rollouts",
        json!({
            "app": "shop",
            "version": { "tag": "v2" },
            "plan": {
                "ramp": ["1", "100%"],
                "probes": [{ "url": health }, { "command": ["test", "-d", dir.path()] }],
            },
        }),
    );
    assert_eq!(status, 201, "{body}");
    let rollout = wait_state(&root, body["id"].as_u64().unwrap(), "succeeded");
    assert_eq!(rollout["steps"][0]["gates"][1]["passed"], true, "{rollout}");
    assert_eq!(app.live("web2").as_deref(), Some("two"));
    // A malformed plan is refused, naming the field.
    let (status, body) = root.post(
        "/v1/rollouts",
        json!({ "app": "shop", "version": { "tag": "v2" }, "plan": { "ramp": [], "bake": 1 } }),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("ramp"), "{body}");

    // Aborted at its gate, a rollout puts step 1 back.
    let id = start(&master, &["tag=v1", "--ramp", "1,100%", "--manual"]);
    eventually(Duration::from_secs(60), "step 1 at the gate", || {
        root.get(&format!("/v1/rollouts/{id}")).1["steps"][0]["phase"] == "waiting"
    });
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    let out = master.cli(&["rollout", "abort", &id.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(names(&rollout["rollback"]["rolled_back"]), ["web1"]);
    assert_eq!(app.live("web1").as_deref(), Some("two"));

    // Aborted while a step's job is out (web1's hook waits on a FIFO),
    // the step is judged when the job is done, then all of it goes back.
    let gate = app.srv.join("web1/shop/gate");
    let made = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let id = start(&master, &["tag=v1", "--ramp", "100%"]);
    eventually(
        Duration::from_secs(60),
        "web2 released, web1 waiting",
        || app.live("web2").as_deref() == Some("one"),
    );
    let (status, aborted) = root.post(&format!("/v1/rollouts/{id}/abort"), json!({}));
    assert_eq!(status, 200, "{aborted}");
    assert_eq!(aborted["state"], "running", "{aborted}");
    assert_eq!(aborted["aborting"], "root", "{aborted}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&gate)
        .and_then(|mut fifo| std::io::Write::write_all(&mut fifo, b"go\n"))
        .expect("open the gate");
    std::fs::remove_file(&gate).expect("remove the gate");
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(
        names(&rollout["rollback"]["rolled_back"]),
        ["web1", "web2"],
        "{rollout}"
    );
    assert_eq!(app.live("web1").as_deref(), Some("two"));
    assert_eq!(app.live("web2").as_deref(), Some("two"));
}

#[test]
fn a_release_request_goes_out_as_its_environments_rollout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Shop::with(
        dir.path(),
        "[env.production]\ntarget = \"web2,web3\"\ntgt_type = \"list\"\n\
         requires_approval = true\napprovers = [\"lead\"]\n\
         [env.production.rollout]\nramp = [\"1\", \"100%\"]\ngate = \"manual\"\n",
    );
    let master = Master::start(
        dir.path(),
        "[acl]\ndev = [{ \"web*\" = [\"git_deploy.*\"] }]\nlead = [{ \"web*\" = [\"git_deploy.*\"] }]\n",
    );
    let _minions = master.start_minions(dir.path(), &["web2", "web3"]);
    let dev = Session::new_user(&master, "dev");
    let lead = Session::new_user(&master, "lead");

    // Production takes releases through requests only: a rollout started
    // by hand is refused like any direct deploy there.
    let (status, body) = lead.post(
        "/v1/rollouts",
        json!({ "app": "shop", "version": { "tag": "v1" }, "target": "web2" }),
    );
    assert_eq!(status, 403, "{body}");

    let (status, body) = dev.post(
        "/v1/requests",
        json!({ "app": "shop", "env": "production", "version": { "tag": "v1" }, "reason": "v1 out" }),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_u64().expect("request id");
    let (status, body) = lead.post(&format!("/v1/requests/{id}/approve"), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, request) = dev.post(&format!("/v1/requests/{id}/deploy"), json!({}));
    assert_eq!(status, 200, "{request}");
    assert_eq!(request["state"], "deploying", "{request}");
    let rollout_id = request["rollout"].as_u64().expect("deployed by a rollout");

    // Step 1 (web2) waits at the environment's manual gate; the request
    // is deploying until the lead lets the rollout go on.
    let mut rollout = Value::Null;
    eventually(Duration::from_secs(60), "step 1 at the gate", || {
        rollout = lead.get(&format!("/v1/rollouts/{rollout_id}")).1;
        rollout["steps"][0]["phase"] == "waiting"
    });
    assert_eq!(rollout["release_request"], id, "{rollout}");
    assert_eq!(app.live("web2").as_deref(), Some("one"));
    assert_eq!(app.live("web3"), None);
    assert_eq!(
        dev.get(&format!("/v1/requests/{id}")).1["state"],
        "deploying"
    );
    let (status, body) = lead.post(&format!("/v1/rollouts/{rollout_id}/continue"), json!({}));
    assert_eq!(status, 200, "{body}");
    lead.wait_state(id, "live");
    assert_eq!(app.live("web3").as_deref(), Some("one"));
}

#[test]
fn a_worse_canary_and_a_host_sick_after_the_bake_stop_the_rollout() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Healthy unless `srv/<id>/shop/sick-<what index.html says>` exists.
    let app = Shop::with(
        dir.path(),
        "[health]\ncommand = \"test ! -e ../../sick-$(cat index.html)\"\nretries = 1\ninterval = 0\n",
    );
    let master = Master::start(
        dir.path(),
        "[acl]\ndev = [{ \"web*\" = [\"git_deploy.*\"] }]\nops = [{ \"web*\" = [\"git_deploy.deploy\"] }]\n",
    );
    let ids = ["web1", "web2", "web3", "web4"];
    let _minions = master.start_minions(dir.path(), &ids);
    let root = Session::root(&master);
    let dev = Session::new_user(&master, "dev");
    let (status, body) = root.post("/v1/apps/shop/deploy", json!({ "tag": "v1" }));
    assert_eq!(status, 202, "{body}");
    halite_tests::api::wait_done(&root.base, &root.token, body["jid"].as_str().unwrap());

    // v2 answers in 50 (whatever unit the command prints), v1 in 10.
    let measure = "case $(cat index.html) in two) echo 50;; *) echo 10;; esac";
    let canary_plan = json!({
        "app": "shop",
        "version": { "tag": "v2" },
        "plan": { "ramp": ["1", "100%"], "canary": { "samples": 3, "cmd": measure } },
    });
    // A rollout that could not be put back does not start: ops may
    // deploy but not roll back.
    let ops = Session::new_user(&master, "ops");
    let (status, body) = ops.post(
        "/v1/rollouts",
        json!({ "app": "shop", "version": { "tag": "v2" } }),
    );
    assert_eq!(status, 403, "{body}");
    // A canary command runs on the minions: dev, who may deploy but not
    // run commands, is refused.
    let (status, body) = dev.post("/v1/rollouts", canary_plan.clone());
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("cmd.run"),
        "{body}"
    );

    // The canary (web1, on v2) measures 50 against its baseline's 10
    // (web2, not yet released): the rollout stops and web1 goes back.
    let (status, body) = root.post("/v1/rollouts", canary_plan);
    assert_eq!(status, 201, "{body}");
    let rollout = wait_state(&root, body["id"].as_u64().unwrap(), "rolled_back");
    let step = &rollout["steps"][0];
    assert_eq!(names(&step["baseline"]), ["web2"], "{rollout}");
    let gates = step["gates"].as_array().expect("gates");
    let canary = gates
        .iter()
        .find(|g| g["gate"] == "canary")
        .expect("canary");
    assert_eq!(canary["passed"], false, "{rollout}");
    let health = gates
        .iter()
        .find(|g| g["gate"] == "health check")
        .expect("health");
    assert_eq!(health["passed"], true, "{rollout}");
    assert_eq!(names(&rollout["rollback"]["rolled_back"]), ["web1"]);
    for id in ids {
        assert_eq!(app.live(id).as_deref(), Some("one"), "{id}");
    }

    // Timing the app's health check needs no command: dev may judge a
    // canary with it. The difference in milliseconds between two shells
    // is noise, so a large min_difference lets it through.
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &[
            "rollout",
            "start",
            "shop",
            "tag=v2",
            "--ramp",
            "1,100%",
            "--canary",
            "3",
            "--canary-min-difference",
            "10000",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let rollout = wait_state(&root, out.json()["id"].as_u64().unwrap(), "succeeded");
    let canary = &rollout["steps"][0]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "canary")
        .cloned()
        .expect("canary");
    assert_eq!(canary["passed"], true, "{rollout}");
    for id in ids {
        assert_eq!(app.live(id).as_deref(), Some("two"), "{id}");
    }

    // web1 falls sick while step 1 bakes: the health check after the bake
    // finds it, the rollout stops and web1 goes back to v2.
    let id = start(&master, &["tag=v1", "--ramp", "1,100%", "--bake", "5"]);
    eventually(Duration::from_secs(60), "step 1 baking", || {
        root.get(&format!("/v1/rollouts/{id}")).1["steps"][0]["phase"] == "baking"
    });
    std::fs::write(app.srv.join("web1/shop/sick-one"), "").expect("web1 sick");
    let rollout = wait_state(&root, id, "rolled_back");
    let gate = &rollout["steps"][0]["gates"][0];
    assert_eq!(gate["gate"], "health check", "{rollout}");
    assert_eq!(gate["passed"], false, "{rollout}");
    assert_eq!(rollout["steps"][0]["unhealthy"][0][0], "web1", "{rollout}");
    assert_eq!(names(&rollout["rollback"]["rolled_back"]), ["web1"]);
    for id in ids {
        assert_eq!(app.live(id).as_deref(), Some("two"), "{id}");
    }
    // The health check ran once more after the bake, a job of its own
    // (one per step that baked: four in this test).
    let (_, jobs) = root.get("/v1/jobs?fun=release.health&limit=50");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(4), "{jobs}");
    assert_eq!(jobs["jobs"][0]["target"], "web1", "{jobs}");
    assert_eq!(jobs["jobs"][0]["failed"], 1, "{jobs}");
}

#[test]
fn one_rollout_releases_two_apps_with_their_own_modules_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Group 1: shop (git_deploy) on web1, web2. Group 2: store
    // (java_tomcat, its WARs copied into each minion's own webapps
    // directory, no manager) on app1, app2, unhealthy where
    // `srv/<id>/store/broken` exists.
    let app = shop(dir.path());
    let wars = dir.path().join("wars");
    std::fs::create_dir_all(&wars).expect("wars");
    let war = |version: &str| {
        halite_tests::tomcat::war(
            &wars,
            &format!("store-{version}"),
            &[("index.html", version)],
        )
    };
    let (v1, v2) = (war("1"), war("2"));
    let files = halite_tests::git::static_files(&wars);
    let store = |war: &Path, version: &str| {
        json!({
            "url": format!("http://127.0.0.1:{}/{}", files.port, war.file_name().unwrap().to_string_lossy()),
            "sha256": halite_pki::sha256_hex(&std::fs::read(war).unwrap()),
            "version": version,
        })
    };
    std::fs::write(
        dir.path().join("master/apps.d/store.toml"),
        format!(
            "kind = \"tomcat\"\ntarget = \"app*\"\npath = \"{0}/srv/{{id}}/store\"\n\
             [tomcat]\ncontext = \"/store\"\nwebapps = \"{0}/tomcat/{{id}}/webapps\"\n\
             [health]\ncommand = \"test ! -e broken\"\nretries = 1\ninterval = 0\n",
            dir.path().display()
        ),
    )
    .expect("store.toml");
    // No Tomcat here (java_tomcat.rs runs the real one; the subject is
    // the rollout): what its autodeploy would unpack, each version's
    // directory, is there from the start, so a WAR copied in counts as
    // deployed at once.
    for id in ["app1", "app2"] {
        for version in ["1", "2"] {
            let unpacked = dir
                .path()
                .join(format!("tomcat/{id}/webapps/store##{version}"));
            std::fs::create_dir_all(unpacked).expect("webapps");
        }
    }
    let master = Master::start(dir.path(), "");
    let ids = ["web1", "web2", "app1", "app2"];
    let _minions = master.start_minions(dir.path(), &ids);
    let root = Session::root(&master);
    for (path, body) in [
        ("/v1/apps/shop/deploy", json!({ "tag": "v1" })),
        ("/v1/apps/store/deploy", store(&v1, "1")),
    ] {
        let (status, body) = root.post(path, body);
        assert_eq!(status, 202, "{body}");
        let done =
            halite_tests::api::wait_done(&root.base, &root.token, body["jid"].as_str().unwrap());
        assert!(
            done["returns"]
                .as_object()
                .unwrap()
                .values()
                .all(|r| r["success"] == true),
            "{done}"
        );
    }
    let webapps = |id: &str| -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path().join(format!("tomcat/{id}/webapps")))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|name| name.ends_with(".war"))
                        .collect()
                })
                .unwrap_or_default();
        names.sort();
        names
    };
    assert_eq!(webapps("app1"), ["store##1.war"]);

    // Both apps in one rollout, shop first; a step per minion.
    let then = format!(
        "store version=2 url={} sha256={}",
        store(&v2, "2")["url"].as_str().unwrap(),
        store(&v2, "2")["sha256"].as_str().unwrap()
    );
    let id = start(&master, &["tag=v2", "--ramp", "1,100%", "--then", &then]);
    let rollout = wait_state(&root, id, "succeeded");
    let steps = rollout["steps"].as_array().expect("steps");
    let order: Vec<(&str, u64)> = steps
        .iter()
        .map(|s| {
            (
                s["minions"][0].as_str().unwrap(),
                s["group"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        order,
        [("web1", 0), ("web2", 0), ("app1", 1), ("app2", 1)],
        "{rollout}"
    );
    // The groups went out in order: every shop step before any store step.
    let started: Vec<u64> = steps
        .iter()
        .map(|s| s["started_at"].as_u64().unwrap())
        .collect();
    assert!(started.windows(2).all(|w| w[0] <= w[1]), "{rollout}");
    assert_eq!(app.live("web2").as_deref(), Some("two"));
    assert_eq!(webapps("app1"), ["store##2.war"]);
    assert_eq!(webapps("app2"), ["store##2.war"]);
    let (_, jobs) = root.get("/v1/jobs?fun=java_tomcat.deploy&limit=50");
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(3), "{jobs}");

    // Back to v1 and version 1; app2 is unhealthy: its step fails, and
    // one rollback job per app puts web1, web2 (shop) and app1 (store)
    // back.
    std::fs::write(dir.path().join("srv/app2/store/broken"), "").expect("break app2");
    let then = format!(
        "store version=1 url={} sha256={}",
        store(&v1, "1")["url"].as_str().unwrap(),
        store(&v1, "1")["sha256"].as_str().unwrap()
    );
    let id = start(&master, &["tag=v1", "--ramp", "1,100%", "--then", &then]);
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(rollout["steps"][3]["phase"], "failed", "{rollout}");
    assert_eq!(names(&rollout["steps"][3]["failed"]), ["app2"], "{rollout}");
    assert_eq!(
        rollout["rollback"]["jobs"].as_array().map(Vec::len),
        Some(2),
        "{rollout}"
    );
    assert_eq!(
        names(&rollout["rollback"]["rolled_back"]),
        ["web1", "web2", "app1"],
        "{rollout}"
    );
    assert_eq!(app.live("web1").as_deref(), Some("two"));
    assert_eq!(app.live("web2").as_deref(), Some("two"));
    assert_eq!(webapps("app1"), ["store##2.war"]);
    assert_eq!(webapps("app2"), ["store##2.war"]);

    // A minion in two groups is refused up front.
    let (status, body) = root.post(
        "/v1/rollouts",
        json!({ "app": "shop", "version": { "tag": "v1" },
                "then": [{ "app": "store", "version": store(&v1, "1"), "target": "web1 or app1" }] }),
    );
    assert_eq!(status, 400, "{body}");
}

/// A Lua deploy module of the master's: git_deploy, then a line in
/// `<path>/../deploys.log`; its rollback is git_deploy's.
const SITE_MODULE: &str = r#"
local M = {}
local function git_args(k, extra)
  local args = { app = k.app }
  for key, value in pairs(extra) do args[key] = value end
  return args
end
function M.deploy(job)
  local k = job.kwargs
  local r = halite.call("git_deploy.deploy", git_args(k, { tag = k.tag }))
  if not r.success then
    error("git_deploy: " .. tostring(type(r.data) == "table" and r.data.error or r.data), 0)
  end
  return { app = k.app.name, release = r.data.release, result = "live" }
end
function M.rollback(job)
  local k = job.kwargs
  local r = halite.call("git_deploy.rollback", git_args(k, {}))
  if not r.success then
    error("git_deploy.rollback: " .. tostring(type(r.data) == "table" and r.data.error or r.data), 0)
  end
  return { app = k.app.name, release = r.data.release, result = "rolled_back" }
end
return M
"#;

#[test]
fn a_lua_deploy_module_rolls_out_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = shop(dir.path());
    let modules = dir.path().join("master/lua-modules");
    std::fs::create_dir_all(&modules).expect("lua-modules");
    std::fs::write(modules.join("site.lua"), SITE_MODULE).expect("site.lua");
    let master = Master::start(dir.path(), "");
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).expect("srv");
    let lua = format!("[lua]\nroots = [\"{}\"]\n", srv.display());
    let _minions: Vec<halite_tests::Minion> = ["web1", "web2"]
        .iter()
        .map(|id| halite_tests::Minion::start(dir.path(), id, master.return_port, &lua))
        .collect();
    master.accept("web1");
    master.accept("web2");
    let root = Session::root(&master);
    let (status, body) = root.post("/v1/apps/shop/deploy", json!({ "tag": "v1" }));
    assert_eq!(status, 202, "{body}");
    halite_tests::api::wait_done(&root.base, &root.token, body["jid"].as_str().unwrap());

    // A module that is neither the app's own nor a Lua module: refused.
    let (status, body) = root.post(
        "/v1/rollouts",
        json!({ "app": "shop", "version": { "tag": "v2" }, "module": "nope" }),
    );
    assert_eq!(status, 400, "{body}");

    // web2's deploy fails: site.rollback puts web1 back.
    std::fs::write(srv.join("web2/shop/broken"), "").expect("break web2");
    let id = start(&master, &["tag=v2", "module=site", "--ramp", "1,100%"]);
    let rollout = wait_state(&root, id, "rolled_back");
    assert_eq!(rollout["fun"], "site.deploy", "{rollout}");
    assert_eq!(names(&rollout["steps"][1]["failed"]), ["web2"], "{rollout}");
    assert_eq!(
        names(&rollout["rollback"]["rolled_back"]),
        ["web1"],
        "{rollout}"
    );
    let rollback_jid = rollout["rollback"]["jid"].as_str().expect("rollback job");
    let (_, job) = root.get(&format!("/v1/jobs/{rollback_jid}"));
    assert_eq!(job["fun"], "site.rollback", "{job}");
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    assert_eq!(app.live("web2").as_deref(), Some("one"));

    // Mended, the same rollout goes through.
    std::fs::remove_file(srv.join("web2/shop/broken")).expect("mend web2");
    let id = start(&master, &["tag=v2", "module=site", "--ramp", "1,100%"]);
    wait_state(&root, id, "succeeded");
    assert_eq!(app.live("web1").as_deref(), Some("two"));
    assert_eq!(app.live("web2").as_deref(), Some("two"));
}
