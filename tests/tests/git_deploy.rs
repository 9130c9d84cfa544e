//! git_deploy through real processes: a master with apps in its
//! `apps_dir`, minions that fetch with gix from real git servers (`git
//! http-backend` over HTTPS with basic auth, `git daemon`), hooks, health
//! checks, rollback, the master's release records, and every failure
//! leaving the live release as it was.

use std::path::{Path, PathBuf};

use halite_tests::git::{self, Repo};
use halite_tests::{Master, Minion};

const TOKEN: &str = "tok-3f9a-never-in-a-log";

fn live(path: &Path) -> String {
    std::fs::read_to_string(path.join("current/index.html")).unwrap_or_default()
}

/// The tag or branch live for `app` on `minion`, as git_deploy.status says.
fn live_reference(master: &Master, minion: &str, app: &str) -> String {
    let target = format!("target={minion}");
    let app = format!("app={app}");
    let out = master.cli(&["run", &target, "git_deploy.status", &app, "--json"]);
    out.json()["returns"][minion]["data"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file()
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn deploy_over_https_with_a_token_rollback_and_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let shop = Repo::create(dir.path(), &root, "shop", &[("v1", "one"), ("v2", "two")]);
    let ca = git::test_ca(&dir.path().join("ca"));
    let server = git::http(&root, Some(&ca), Some(&format!("deploy:{TOKEN}")));
    let path = dir.path().join("srv/shop");

    let master_dir = dir.path().join("master");
    write(
        &master_dir.join("apps.d/shop.toml"),
        &format!(
            "repo = \"https://127.0.0.1:{}/shop.git\"\ntarget = \"web*\"\npath = \"{}\"\nshared = [\"storage\"]\ncredentials = \"shop-git\"\nca_file = \"{}\"\npost_deploy = \"echo reloaded $HALITE_REF\"\n[health]\ncommand = \"test -f index.html\"\nretries = 2\ninterval = 0\n",
            server.port,
            path.display(),
            ca.ca.display()
        ),
    );
    let secrets = master_dir.join("secrets.toml");
    write(
        &secrets,
        &format!("[shop-git]\nusername = \"deploy\"\ntoken = \"{TOKEN}\"\n"),
    );
    let master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");

    // The command from the issue, as written: the one app on web* is picked.
    let out = master.cli(&["run", "target=web*", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("[web01] stage prepare started"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("[web01] stage post_deploy succeeded"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("reloaded v1"),
        "hook output live: {}",
        out.stdout
    );
    assert!(out.stdout.contains("deploy shop v1 ("), "{}", out.stdout);
    assert_eq!(live(&path), "one");

    // Redeploying what is live is a no-op, said so.
    let out = master.cli(&["run", "target=web*", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("already live"), "{}", out.stdout);

    // A new tag pushed after the first fetch.
    shop.commit_tag("v3", "three");
    let out = master.cli(&[
        "run",
        "target=web*",
        "git_deploy.deploy",
        "tag=v3",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let v3_jid = out.json()["jid"].as_str().expect("jid").to_owned();
    assert_eq!(live(&path), "three");

    // The stages are stored with the job.
    let out = master.cli(&["jobs", "show", &v3_jid, "--events", "--json"]);
    // No --timeout given: the app's (900 s), not the master's 60 s.
    assert_eq!(out.json()["job"]["timeout"], 900, "{out:?}");
    let stages: Vec<String> = out.json()["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "stage")
        .map(|e| {
            format!(
                "{}:{}",
                e["stage"].as_str().unwrap_or(""),
                e["status"].as_str().unwrap_or("")
            )
        })
        .collect();
    // Stored in the order the minion sent them (the master handles one
    // peer's messages in order).
    let expected: Vec<String> = ["prepare", "pre_deploy", "deploy", "post_deploy"]
        .iter()
        .flat_map(|s| [format!("{s}:started"), format!("{s}:succeeded")])
        .collect();
    assert_eq!(stages, expected);

    // Rollback without fetching, then forward again by tag.
    let out = master.cli(&["run", "target=web*", "git_deploy.rollback"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(live(&path), "one");
    let out = master.cli(&["run", "target=web*", "git_deploy.rollback", "to=v3"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(live(&path), "three");

    // Wrong credentials: a clear failure, nothing changes.
    write(
        &secrets,
        "[shop-git]\nusername = \"deploy\"\ntoken = \"wrong\"\n",
    );
    let out = master.cli(&["run", "target=web*", "git_deploy", "tag=v2"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("prepare failed: cannot fetch"),
        "{}",
        out.stdout
    );
    assert_eq!(live(&path), "three");
    write(
        &secrets,
        &format!("[shop-git]\nusername = \"deploy\"\ntoken = \"{TOKEN}\"\n"),
    );

    // Unknown tag: named, with what exists.
    let out = master.cli(&["run", "target=web*", "git_deploy", "tag=v9"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("tag v9 not found"), "{}", out.stdout);
    assert!(out.stdout.contains("tags: v1, v2, v3"), "{}", out.stdout);
    assert_eq!(live(&path), "three");

    // What is live where, and the history, on the master.
    let out = master.cli(&["releases", "shop", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let view = out.json();
    assert_eq!(view["live"][0]["minion"], "web01", "{view}");
    assert_eq!(view["live"][0]["reference"], "v3", "{view}");
    assert_eq!(
        view["live"][0]["revision"],
        shop.rev("v3").as_str(),
        "{view}"
    );
    let history = view["history"].as_array().expect("history");
    assert!(history.len() >= 7, "{view}");
    assert!(
        history
            .iter()
            .any(|r| r["result"] == "failed" && r["reference"] == "v9"),
        "{view}"
    );
    let out = master.cli(&["releases", "shop"]);
    assert!(
        out.stdout.contains("web01") && out.stdout.contains("v3"),
        "{}",
        out.stdout
    );
    let out = master.cli(&["releases", "shop", "--history"]);
    assert!(out.stdout.contains("rollback"), "{}", out.stdout);
    let out = master.cli(&["apps"]);
    assert!(
        out.stdout.contains("shop") && out.stdout.contains("web*"),
        "{}",
        out.stdout
    );

    // The token is nowhere but the secrets file: not in the store, logs,
    // minion spool, release tree or git cache.
    let leaks: Vec<PathBuf> = files_containing(dir.path(), TOKEN.as_bytes())
        .into_iter()
        .filter(|p| p != &secrets)
        .collect();
    assert!(leaks.is_empty(), "token found in {leaks:?}");
}

#[test]
fn git_daemon_lock_and_failures_keep_the_live_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let blog = Repo::create(dir.path(), &root, "blog", &[("v1", "one"), ("v2", "two")]);
    let big = Repo::create(dir.path(), &root, "big", &[("v1", "small")]);
    // v2 of "big" does not fit the 1 MiB filesystem it is deployed to
    // (it compresses well, so the fetch fits and the export does not).
    std::fs::write(big.work.join("big.bin"), vec![0u8; 3 * 1024 * 1024]).expect("big file");
    big.commit_tag("v2", "large");
    let daemon = git::daemon(&root);
    let blog_path = dir.path().join("srv/blog");
    let full = dir.path().join("full");
    let ro = dir.path().join("ro");
    std::fs::create_dir_all(&full).expect("mkdir");
    std::fs::create_dir_all(&ro).expect("mkdir");

    let master_dir = dir.path().join("master");
    let url = |name: &str| format!("git://127.0.0.1:{}/{name}.git", daemon.port);
    write(
        &master_dir.join("apps.d/blog.toml"),
        &format!(
            "repo = \"{}\"\ntarget = \"blog01\"\npath = \"{}\"\nlock = \"refuse\"\npre_deploy = \"sleep 3\"\n",
            url("blog"),
            blog_path.display()
        ),
    );
    write(
        &master_dir.join("apps.d/big.toml"),
        &format!(
            "repo = \"{}\"\ntarget = \"box01\"\npath = \"{}\"\n",
            url("big"),
            full.join("big").display()
        ),
    );
    write(
        &master_dir.join("apps.d/frozen.toml"),
        &format!(
            "repo = \"{}\"\ntarget = \"box01\"\npath = \"{}\"\n",
            url("blog"),
            ro.join("blog").display()
        ),
    );
    let master = Master::start(dir.path(), "");
    let _blog01 = Minion::start(dir.path(), "blog01", master.return_port, "");
    let setup = format!(
        "mount -t tmpfs -o size=1m tmpfs {} && mount -t tmpfs -o size=1m tmpfs {}",
        full.display(),
        ro.display()
    );
    let box01 = Minion::start_in(dir.path(), "box01", master.return_port, "", Some(&setup));
    master.accept("blog01");
    master.accept("box01");

    // git:// transport.
    let out = master.cli(&["run", "target=blog01", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(live(&blog_path), "one");

    // A second deploy while one runs is refused, naming the running job.
    let out = master.cli(&[
        "run",
        "target=blog01",
        "git_deploy",
        "tag=v2",
        "--async",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let first = out.json()["jid"].as_str().expect("jid").to_owned();
    halite_tests::eventually(
        std::time::Duration::from_secs(30),
        "first deploy running",
        || blog_path.join(".halite/lock").exists(),
    );
    let out = master.cli(&["run", "target=blog01", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!("job {first}")),
        "{}",
        out.stdout
    );
    halite_tests::eventually(
        std::time::Duration::from_secs(60),
        "first deploy done",
        || master.cli(&["jobs", "show", &first]).code == 0,
    );
    assert_eq!(live(&blog_path), "two");
    let _ = blog.rev("v2");

    // Several apps on one target: the job must name one.
    let out = master.cli(&["run", "target=box01", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("several apps (big, frozen)"), "{out:?}");
    // A minion outside the app's target is refused before anything is published.
    let out = master.cli(&["run", "target=*", "git_deploy", "app=big", "tag=v1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("blog01 not in app big's target"),
        "{out:?}"
    );

    // A full filesystem: the export fails, the live release stays.
    let out = master.cli(&["run", "target=box01", "git_deploy", "app=big", "tag=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = master.cli(&["run", "target=box01", "git_deploy", "app=big", "tag=v2"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("prepare failed"), "{}", out.stdout);
    assert!(
        out.stdout.contains("No space left on device"),
        "{}",
        out.stdout
    );
    assert_eq!(live_reference(&master, "box01", "big"), "v1");

    // A path that turns read-only after a deploy: refused clearly, and
    // the live release stays. (The filesystem exists only in the minion's
    // mount namespace, so it is remounted there.)
    let out = master.cli(&["run", "target=box01", "git_deploy", "app=frozen", "tag=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let remount = std::process::Command::new("nsenter")
        .args([
            "-t",
            &box01.proc.pid().to_string(),
            "-m",
            "mount",
            "-o",
            "remount,ro",
        ])
        .arg(&ro)
        .status()
        .expect("nsenter runs");
    assert!(remount.success(), "remount read-only");
    let out = master.cli(&["run", "target=box01", "git_deploy", "app=frozen", "tag=v2"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("Read-only file system"),
        "{}",
        out.stdout
    );
    assert_eq!(live_reference(&master, "box01", "frozen"), "v1");

    // An unreachable remote.
    write(
        &master_dir.join("apps.d/blog.toml"),
        &format!(
            "repo = \"git://127.0.0.1:{}/blog.git\"\ntarget = \"blog01\"\npath = \"{}\"\n",
            halite_tests::free_port(),
            blog_path.display()
        ),
    );
    let out = master.cli(&["run", "target=blog01", "git_deploy", "tag=v1"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout
            .contains("prepare failed: cannot fetch git://127.0.0.1:"),
        "{}",
        out.stdout
    );
    assert_eq!(live(&blog_path), "two");
    // ... while rollback needs no remote at all.
    let out = master.cli(&["run", "target=blog01", "git_deploy.rollback", "to=v1"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(live(&blog_path), "one");
}

#[test]
fn a_master_restart_mid_deploy_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let _repo = Repo::create(dir.path(), &root, "shop", &[("v1", "one")]);
    let daemon = git::daemon(&root);
    let path = dir.path().join("srv/shop");
    write(
        &dir.path().join("master/apps.d/shop.toml"),
        &format!(
            "repo = \"git://127.0.0.1:{}/shop.git\"\ntarget = \"web01\"\npath = \"{}\"\npre_deploy = \"sleep 3\"\n",
            daemon.port,
            path.display()
        ),
    );
    let mut master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");
    let out = master.cli(&[
        "run",
        "target=web01",
        "git_deploy",
        "tag=v1",
        "--async",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();
    halite_tests::eventually(std::time::Duration::from_secs(30), "deploy running", || {
        path.join(".halite/lock").exists()
    });
    master.restart();
    halite_tests::eventually(
        std::time::Duration::from_secs(60),
        "deploy return stored",
        || master.cli(&["jobs", "show", &jid]).code == 0,
    );
    assert_eq!(live(&path), "one");
    // Recorded once, with its stages, on the restarted master.
    let out = master.cli(&["releases", "shop", "--json"]);
    let history = out.json()["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(history.len(), 1, "{out:?}");
    assert_eq!(history[0]["jid"], jid.as_str());
    let out = master.cli(&["jobs", "show", &jid, "--events", "--json"]);
    let events = out.json()["events"].as_array().cloned().unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| e["stage"] == "post_deploy" && e["status"] == "succeeded"),
        "{out:?}"
    );
}

/// Two minions on one host deploy the same app to their own paths when
/// the app's path names `{id}`, and each rolls back on its own.
#[test]
fn two_minions_on_one_host_keep_apart_with_id_in_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let _site = Repo::create(dir.path(), &root, "site", &[("v1", "one"), ("v2", "two")]);
    let daemon = git::daemon(&root);
    let master_dir = dir.path().join("master");
    let srv = dir.path().join("srv");
    write(
        &master_dir.join("apps.d/site.toml"),
        &format!(
            "repo = \"git://127.0.0.1:{}/site.git\"\ntarget = \"lab*\"\npath = \"{}/{{id}}/site\"\n",
            daemon.port,
            srv.display()
        ),
    );
    let master = Master::start(dir.path(), "");
    let _lab1 = Minion::start(dir.path(), "lab1", master.return_port, "");
    let _lab2 = Minion::start(dir.path(), "lab2", master.return_port, "");
    master.accept("lab1");
    master.accept("lab2");
    for tag in ["tag=v1", "tag=v2"] {
        let out = master.cli(&["run", "target=lab*", "git_deploy", "app=site", tag]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    assert_eq!(live(&srv.join("lab1/site")), "two");
    assert_eq!(live(&srv.join("lab2/site")), "two");
    // One rolls back; the other's release is untouched.
    let out = master.cli(&["run", "target=lab1", "git_deploy.rollback", "app=site"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(live(&srv.join("lab1/site")), "one");
    assert_eq!(live(&srv.join("lab2/site")), "two");
    assert!(!srv.join("{id}").exists());
}
