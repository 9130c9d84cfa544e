//! What a new user meets in their first hour, with real processes: keys
//! that wait for acceptance, a wrong master fingerprint, master-cli
//! without a config flag, a broken app file, grants edited while the
//! master runs.

use std::process::Command;
use std::time::Duration;

use halite_tests::api::{call, http, login};
use halite_tests::{bin, eventually, CliOutput, Master, Minion};
use serde_json::json;

/// Accepting a key lets the waiting minion run jobs at once: the master
/// answers the minion's pending auth again, so nothing waits for the
/// minion's next attempt (here an hour away).
#[test]
fn an_accepted_minion_runs_jobs_without_waiting_for_its_next_auth() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let _minion = Minion::start(dir.path(), "web01", master.return_port, "auth_retry = 3600");
    eventually(Duration::from_secs(60), "web01 pending", || {
        master.key_status("web01").as_deref() == Some("pending")
    });
    // While it waits, a job finds nobody, and says which keys wait.
    let out = master.cli(&["run", "target=*", "test.ping"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("web01") && out.stderr.contains("master-cli keys accept"),
        "{out:?}"
    );
    assert_eq!(master.cli(&["keys", "accept", "web01"]).code, 0);
    master.wait_up("web01");
    let out = master.cli(&["run", "target=web01", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["returns"]["web01"]["data"], true, "{out:?}");
}

/// A minion whose `master_fingerprint` names another key checks the
/// master before handing over its own key: the wrong master never lists
/// it, nothing is pinned, and the minion stops with an error.
#[test]
fn a_wrong_master_fingerprint_stops_the_minion_before_it_is_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let other = halite_pki::KeyPair::generate().expect("key").public();
    let mut minion = Minion::start(
        dir.path(),
        "web01",
        master.return_port,
        &format!("master_fingerprint = \"{}\"", other.fingerprint()),
    );
    eventually(Duration::from_secs(60), "the minion to stop", || {
        minion.proc.exited()
    });
    assert_eq!(master.key_status("web01"), None);
    assert!(!minion.dir.join("pki/masters").exists());

    // The right fingerprint: pending as usual, and pinned once accepted.
    let right = master.cli(&["keys", "fingerprint", "--json"]).json()["master_fingerprint"]
        .as_str()
        .expect("master fingerprint")
        .to_owned();
    let _good = Minion::start(
        dir.path(),
        "web02",
        master.return_port,
        &format!("master_fingerprint = \"{right}\""),
    );
    master.accept("web02");
}

fn master_cli(env_config: Option<&std::path::Path>, args: &[&str]) -> CliOutput {
    let mut command = Command::new(bin("master-cli"));
    command.env_remove("HALITE_CONFIG");
    if let Some(config) = env_config {
        command.env("HALITE_CONFIG", config);
    }
    CliOutput::from(command.args(args).output().expect("master-cli runs"))
}

/// `HALITE_CONFIG` names the master's config for master-cli; without it
/// or `--config`, the error says both ways.
#[test]
fn master_cli_takes_its_config_from_halite_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let out = master_cli(Some(&master.config), &["keys", "list", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let missing = dir.path().join("nowhere/master.toml");
    let out = master_cli(Some(&missing), &["keys", "list"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("--config") && out.stderr.contains("HALITE_CONFIG"),
        "{out:?}"
    );
}

/// An app file broken while the master runs: a 409 naming the file by
/// its absolute path, not a 500.
#[test]
fn a_broken_app_file_is_a_client_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = dir.path().join("master/apps.d");
    std::fs::create_dir_all(&apps).expect("apps.d");
    let app = apps.join("shop.toml");
    std::fs::write(
        &app,
        "repo = \"https://git.invalid/shop.git\"\ntarget = \"web*\"\npath = \"/srv/shop\"\n",
    )
    .expect("app");
    let master = Master::start(dir.path(), "");
    std::fs::write(
        &app,
        "repo = \"https://git.invalid/shop.git\"\ntarget = [\n",
    )
    .expect("app");
    let (status, body) = call(
        http().get(format!("{}/v1/apps", master.api_url())),
        Some(&master.root_token()),
        None,
    );
    assert_eq!(status, 409, "{body}");
    let absolute = std::fs::canonicalize(&app).expect("app path");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains(absolute.to_str().expect("utf-8 path"))),
        "{body}"
    );
}

/// Grants edited in the master's config take effect on the next request,
/// without a restart.
#[test]
fn acl_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "[acl]\nalice = [{ \"db*\" = [\"test.*\"] }]");
    let _minion = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");
    let out = master.cli_input(&["users", "add", "alice"], "alice-pw-123\n");
    assert_eq!(out.code, 0, "{out:?}");
    let (status, body) = login(&master.api_url(), "alice", "alice-pw-123");
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    let ping = || {
        call(
            http().post(format!("{}/v1/jobs", master.api_url())),
            Some(&token),
            Some(json!({"target": "web01", "fun": "test.ping"})),
        )
        .0
    };
    assert_eq!(ping(), 403);
    let text = std::fs::read_to_string(&master.config).expect("config");
    std::fs::write(&master.config, text.replace("\"db*\"", "\"web*\"")).expect("config");
    assert_eq!(ping(), 202);
    // A config broken meanwhile keeps the grants as they were.
    let text = std::fs::read_to_string(&master.config).expect("config");
    std::fs::write(&master.config, format!("{text}\nnot toml [[\n")).expect("config");
    assert_eq!(ping(), 202);
}
