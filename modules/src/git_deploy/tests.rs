//! git_deploy against a real repository on disk (built with the system
//! `git`, which only the test needs; fetching a local path makes gix run
//! `git-upload-pack`). Network transports are covered by the whole-system
//! tests in `tests/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::*;
use crate::Registry;

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?}");
}

/// A repository with tags v1 (index.html = "one", run.sh executable, a
/// symlink) and v2 (index.html = "two").
fn source_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("src");
    std::fs::create_dir_all(repo.join("lib")).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("index.html"), "one").expect("write");
    std::fs::write(repo.join("lib/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        repo.join("lib/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("index.html", repo.join("link.html")).expect("symlink");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("index.html"), "two").expect("write");
    git(&repo, &["commit", "-q", "-am", "two"]);
    git(&repo, &["tag", "-a", "v2", "-m", "annotated"]);
    repo
}

fn app(repo: &Path, path: &Path, extra: Value) -> Value {
    let mut app = json!({
        "name": "shop",
        "repo": repo.display().to_string(),
        "target": "*",
        "path": path.display().to_string(),
        "shared": ["storage", ".env"],
    });
    if let (Some(map), Value::Object(more)) = (app.as_object_mut(), extra) {
        map.extend(more);
    }
    app
}

async fn run(fun: &str, kwargs: Value) -> (Outcome, Vec<EventBody>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut call = crate::call::tests::call(fun, vec![], kwargs);
    call.events = EventSink::new(tx);
    let outcome = Registry::with_builtins().run(call).await;
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (outcome, events)
}

use halite_proto::message::EventBody;

fn kw(app: &Value, more: Value) -> Value {
    let mut map = Map::new();
    map.insert("app".into(), app.clone());
    if let Value::Object(more) = more {
        map.extend(more);
    }
    Value::Object(map)
}

fn live(path: &Path) -> String {
    std::fs::read_to_string(path.join("current/index.html")).expect("current/index.html")
}

#[tokio::test]
async fn deploy_redeploy_rollback_and_stages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = source_repo(dir.path());
    let path = dir.path().join("srv/shop");
    let app = app(&repo, &path, json!({}));

    let (out, events) = run("git_deploy", kw(&app, json!({"tag": "v1"}))).await;
    assert!(out.success, "{:?}", out.data);
    assert_eq!(out.data["result"], "live");
    assert_eq!(live(&path), "one");
    let stages: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            EventBody::Stage { stage, status, .. } => Some((stage.clone(), status.clone())),
            _ => None,
        })
        .collect();
    let expected: Vec<(String, String)> = ["prepare", "pre_deploy", "deploy", "post_deploy"]
        .iter()
        .flat_map(|s| {
            [
                (s.to_string(), "started".to_string()),
                (s.to_string(), "succeeded".to_string()),
            ]
        })
        .collect();
    assert_eq!(stages, expected);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path.join("current/lib/run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        std::fs::read_link(path.join("current/link.html")).expect("symlink"),
        PathBuf::from("index.html")
    );
    assert!(std::fs::symlink_metadata(path.join("current/storage"))
        .expect("shared")
        .file_type()
        .is_symlink());

    // The same revision again: a no-op, said so.
    let (out, _) = run("git_deploy.deploy", kw(&app, json!({"tag": "v1"}))).await;
    assert!(out.success);
    assert_eq!(out.data["result"], "unchanged", "{:?}", out.data);

    // v2 (an annotated tag), then back.
    let (out, _) = run("git_deploy.deploy", kw(&app, json!({"tag": "v2"}))).await;
    assert!(out.success, "{:?}", out.data);
    assert_eq!(live(&path), "two");
    let v2_release = out.data["release"].as_str().expect("release").to_owned();
    let (out, _) = run("git_deploy.rollback", kw(&app, json!({}))).await;
    assert!(out.success, "{:?}", out.data);
    assert_eq!(live(&path), "one");
    // Forward again by tag, from the cache.
    let (out, _) = run("git_deploy.rollback", kw(&app, json!({"to": "v2"}))).await;
    assert!(out.success, "{:?}", out.data);
    assert_eq!(out.data["release"], v2_release.as_str());
    assert_eq!(live(&path), "two");

    let (out, _) = run("git_deploy.releases", kw(&app, json!({}))).await;
    assert!(out.success);
    assert_eq!(out.data["live"], v2_release.as_str());
    assert_eq!(out.data["releases"].as_array().map(Vec::len), Some(2));
    let (out, _) = run("git_deploy.status", kw(&app, json!({}))).await;
    assert_eq!(out.data["live"], v2_release.as_str(), "{:?}", out.data);
    assert_eq!(out.data["reference"], "v2");

    // A branch and a commit id.
    let (out, _) = run("git_deploy.deploy", kw(&app, json!({"branch": "main"}))).await;
    assert_eq!(
        out.data["result"], "unchanged",
        "main is v2: {:?}",
        out.data
    );
    let v1_rev = {
        let out = Command::new("git")
            .args(["rev-parse", "v1^{commit}"])
            .current_dir(&repo)
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (out, _) = run("git_deploy.deploy", kw(&app, json!({"rev": &v1_rev[..8]}))).await;
    assert!(out.success, "{:?}", out.data);
    assert_eq!(live(&path), "one");
}

#[tokio::test]
async fn failures_name_the_stage_and_keep_the_live_release() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = source_repo(dir.path());
    let path = dir.path().join("srv/shop");
    let plain = app(&repo, &path, json!({}));
    let (out, _) = run("git_deploy", kw(&plain, json!({"tag": "v1"}))).await;
    assert!(out.success);

    // Unknown tag: prepare fails, listing what exists.
    let (out, _) = run("git_deploy", kw(&plain, json!({"tag": "v9"}))).await;
    assert!(!out.success);
    let error = out.data["error"].as_str().expect("error");
    assert!(
        error.starts_with("prepare failed: tag v9 not found"),
        "{error}"
    );
    assert!(error.contains("tags: v1, v2"), "{error}");
    assert_eq!(live(&path), "one");

    // pre_deploy fails: nothing switched, the half-built release is gone.
    let failing = app(
        &repo,
        &path,
        json!({"pre_deploy": "echo building; echo broken >&2; exit 3"}),
    );
    let (out, events) = run("git_deploy", kw(&failing, json!({"tag": "v2"}))).await;
    assert!(!out.success);
    assert_eq!(out.data["failed_stage"], "pre_deploy");
    assert!(
        out.data["error"]
            .as_str()
            .is_some_and(|e| e.contains("exited 3") && e.contains("broken")),
        "{:?}",
        out.data
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, EventBody::Progress { line, .. } if line == "building")));
    assert_eq!(live(&path), "one");
    assert_eq!(
        std::fs::read_dir(path.join("releases"))
            .expect("releases")
            .count(),
        1
    );

    // Health check fails after the switch: auto_rollback switches back.
    let unhealthy = app(
        &repo,
        &path,
        json!({"health": {"command": "test \"$(cat index.html)\" = one", "retries": 2, "interval": 0}}),
    );
    let (out, _) = run("git_deploy", kw(&unhealthy, json!({"tag": "v2"}))).await;
    assert!(!out.success);
    assert_eq!(out.data["failed_stage"], "post_deploy");
    assert!(
        out.data["error"]
            .as_str()
            .is_some_and(|e| e.contains("auto_rollback switched back")),
        "{:?}",
        out.data
    );
    assert_eq!(live(&path), "one");
    // ... and a plain rollback never goes to the bad release.
    let (out, _) = run("git_deploy.rollback", kw(&plain, json!({}))).await;
    assert!(!out.success, "{:?}", out.data);

    // Without auto_rollback the new release stays live, and the return says so.
    let kept = app(
        &repo,
        &path,
        json!({"auto_rollback": false, "post_deploy": "exit 1"}),
    );
    let (out, _) = run("git_deploy", kw(&kept, json!({"tag": "v2"}))).await;
    assert!(!out.success);
    assert!(
        out.data["error"]
            .as_str()
            .is_some_and(|e| e.contains("stays live")),
        "{:?}",
        out.data
    );
    assert_eq!(live(&path), "two");
}

#[tokio::test]
async fn a_held_lock_is_refused_naming_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = source_repo(dir.path());
    let path = dir.path().join("srv/shop");
    let app = app(&repo, &path, json!({"lock": "refuse"}));
    let releases = Releases::open(&path).expect("open");
    let _held = releases.lock("20260101000000000099", None).expect("lock");
    let (out, _) = run("git_deploy", kw(&app, json!({"tag": "v1"}))).await;
    assert!(!out.success);
    let error = out.data["error"].as_str().expect("error");
    assert!(error.contains("job 20260101000000000099"), "{error}");
    let (out, _) = run("git_deploy.status", kw(&app, json!({}))).await;
    assert_eq!(
        out.data["locked_by"]["jid"], "20260101000000000099",
        "{:?}",
        out.data
    );
}

#[tokio::test]
async fn bad_arguments_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("srv/shop");
    let app = app(Path::new("/nonexistent"), &path, json!({}));
    for (kwargs, needle) in [
        (json!({"tag": "v1"}), "no app definition"),
        (
            kw(&app, json!({"tag": "v1", "branch": "main"})),
            "not several",
        ),
        (kw(&app, json!({})), "no default tag or branch"),
        (kw(&app, json!({"rev": "zz"})), "commit id"),
        (kw(&app, json!({"tag": "a..b"})), "not a valid git ref"),
        (
            kw(&json!({"name": "x"}), json!({"tag": "v1"})),
            "app definition",
        ),
    ] {
        let (out, _) = run("git_deploy", kwargs).await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS, "{:?}", out.data);
        assert!(
            out.data.to_string().contains(needle),
            "{needle}: {:?}",
            out.data
        );
    }
    assert!(!path.exists(), "nothing created for refused arguments");
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).expect("stat"))
}

#[tokio::test]
async fn unchanged_files_are_shared_and_rollback_restores_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = source_repo(dir.path());
    let path = dir.path().join("srv/shop");
    let app = app(&repo, &path, json!({}));
    let (out, _) = run("git_deploy", kw(&app, json!({"tag": "v1"}))).await;
    let v1 = path
        .join("releases")
        .join(out.data["release"].as_str().expect("release"));
    let (out, events) = run("git_deploy", kw(&app, json!({"tag": "v2"}))).await;
    assert!(out.success, "{:?}", out.data);
    let v2 = path
        .join("releases")
        .join(out.data["release"].as_str().expect("release"));
    assert!(
        events.iter().any(|e| matches!(e, EventBody::Progress { line, .. } if line.contains("1 unchanged files shared"))),
        "{events:?}"
    );
    // run.sh did not change between v1 and v2: one file, two names.
    assert_eq!(inode(&v1.join("lib/run.sh")), inode(&v2.join("lib/run.sh")));
    assert_ne!(inode(&v1.join("index.html")), inode(&v2.join("index.html")));

    // Someone edits the live copy in place, which also changes v1's.
    std::fs::write(path.join("current/lib/run.sh"), "#!/bin/sh\necho edited\n").expect("edit");
    let (out, events) = run("git_deploy.rollback", kw(&app, json!({}))).await;
    assert!(out.success, "{:?}", out.data);
    assert!(
        events.iter().any(
            |e| matches!(e, EventBody::Progress { line, .. } if line.contains("restored 1 file(s)"))
        ),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read_to_string(path.join("current/lib/run.sh")).expect("read"),
        "#!/bin/sh\necho hi\n"
    );
    // The next deploy does not link from the edited copy.
    let (out, _) = run("git_deploy.rollback", kw(&app, json!({"to": "v2"}))).await;
    assert!(out.success, "{:?}", out.data);

    // Opting out writes every file.
    let other = dir.path().join("srv/plain");
    let plain = app_with_path(&repo, &other, json!({"link_unchanged": false}));
    let (out, _) = run("git_deploy", kw(&plain, json!({"tag": "v1"}))).await;
    let p1 = other
        .join("releases")
        .join(out.data["release"].as_str().expect("release"));
    let (out, _) = run("git_deploy", kw(&plain, json!({"tag": "v2"}))).await;
    let p2 = other
        .join("releases")
        .join(out.data["release"].as_str().expect("release"));
    assert_ne!(inode(&p1.join("lib/run.sh")), inode(&p2.join("lib/run.sh")));
}

fn app_with_path(repo: &Path, path: &Path, extra: Value) -> Value {
    app(repo, path, extra)
}

#[tokio::test]
async fn a_waiting_deploy_starts_when_the_lock_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = source_repo(dir.path());
    let path = dir.path().join("srv/shop");
    let app = app(&repo, &path, json!({"lock": "wait", "lock_wait": 30}));
    let releases = Releases::open(&path).expect("open");
    let held = releases.lock("20260101000000000077", None).expect("lock");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(held);
    });
    let started = std::time::Instant::now();
    let (out, events) = run("git_deploy", kw(&app, json!({"tag": "v1"}))).await;
    release.join().expect("thread");
    assert!(out.success, "{:?}", out.data);
    assert!(started.elapsed() >= std::time::Duration::from_millis(600));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventBody::Progress { line, .. }
            if line.contains("waiting up to 30s for job 20260101000000000077"))),
        "{events:?}"
    );
    assert_eq!(live(&path), "one");
}
