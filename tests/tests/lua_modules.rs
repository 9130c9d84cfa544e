//! Lua modules through real processes: written on the master, sent to the
//! minion signed (automatically with a job, or by `master-cli sync`),
//! updated when the master's file changes, listed per minion, refused
//! when tampered with on the minion, stopped by the limits while the
//! minion keeps serving, and the modules shipped in `lua-modules/` run
//! end to end (php_app over a real git repository, nginx_conf,
//! maintenance).

use std::path::Path;
use std::time::Duration;

use halite_tests::git::Repo;
use halite_tests::{eventually, Master, Minion};
use serde_json::Value;

const HELLO: &str = r#"local M = {}
function M.greet(job)
  halite.stage("greet", "started")
  halite.progress("greeting " .. tostring(job.kwargs.name))
  halite.stage("greet", "succeeded")
  return { hello = job.kwargs.name, version = 1, first = job.args[1] }
end
return M
"#;

const RUNAWAY: &str = r#"local M = {}
function M.spin() while true do end end
function M.hog() local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 4096) .. i end end
function M.boom() local x = 1
  error("disk full") end
return M
"#;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn lua_config(root: &Path) -> String {
    format!(
        "[lua]\nroots = [\"{}\"]\ninstructions = 50000000\nmemory_mb = 16\n",
        root.display()
    )
}

fn ret(master: &Master, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = master.cli(&all);
    let doc = out.json();
    (out.code, doc)
}

/// `master-cli run target=web1 FUN ARGS --json`.
fn on_web1(master: &Master, fun: &str, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["run", "target=web1", fun];
    all.extend_from_slice(args);
    ret(master, &all)
}

#[test]
fn sync_run_update_list_and_tamper() {
    let dir = tempfile::tempdir().expect("tempdir");
    let modules = dir.path().join("master/lua-modules");
    write(&modules.join("hello.lua"), HELLO);
    write(&modules.join("runaway.lua"), RUNAWAY);
    let master = Master::start(dir.path(), "");
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let mut web = Minion::start(dir.path(), "web1", master.return_port, &lua_config(&srv));
    master.accept("web1");

    // A job naming a Lua module brings it along; it runs like a Rust module.
    let (code, doc) = on_web1(&master, "hello.greet", &["first", "name=web"]);
    assert_eq!(code, 0, "{doc}");
    let data = &doc["returns"]["web1"]["data"];
    assert_eq!(data["hello"], "web", "{doc}");
    assert_eq!(data["first"], "first");
    let out = master.cli(&["run", "target=web1", "hello.greet", "name=x"]);
    assert!(out.stdout.contains("greet"), "stages shown live: {out:?}");

    // An edit on the master reaches the minion with the next job.
    write(
        &modules.join("hello.lua"),
        &HELLO.replace("version = 1", "version = 2"),
    );
    let (_, doc) = on_web1(&master, "hello.greet", &["name=web"]);
    assert_eq!(doc["returns"]["web1"]["data"]["version"], 2, "{doc}");

    let (code, doc) = ret(&master, &["modules", "list", "target=web1"]);
    assert_eq!(code, 0, "{doc}");
    let listed = &doc["returns"]["web1"]["data"];
    assert_eq!(listed["hello"]["status"], "current", "{doc}");
    assert_eq!(listed["runaway"]["status"], "missing", "{doc}");
    let out = master.cli(&["modules", "list"]);
    assert!(
        out.stdout.contains("web1") && out.stdout.contains("current"),
        "{out:?}"
    );

    // sync sends everything and removes what the master dropped.
    std::fs::remove_file(modules.join("hello.lua")).unwrap();
    write(
        &modules.join("extra.lua"),
        "return { f = function() return 1 end }",
    );
    let (code, doc) = ret(&master, &["sync", "target=web1"]);
    assert_eq!(code, 0, "{doc}");
    let synced = &doc["returns"]["web1"]["data"];
    assert_eq!(synced["removed"], serde_json::json!(["hello"]), "{doc}");
    assert!(synced["installed"].as_array().unwrap().len() == 2, "{doc}");
    // The master no longer has it: a job for it is refused before it is
    // published (the minion, which removed it, would refuse it too).
    let out = master.cli(&["run", "target=web1", "hello.greet"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unknown function"), "{out:?}");

    // Limits: each runaway fails with the reason; the minion serves on.
    for (fun, needle) in [
        ("runaway.spin", "instruction budget"),
        ("runaway.hog", "memory limit"),
        ("runaway.boom", "runaway.lua:5: disk full"),
    ] {
        let (code, doc) = on_web1(&master, fun, &[]);
        assert_eq!(code, 1, "{fun}: {doc}");
        let message = doc["returns"]["web1"]["data"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(needle), "{fun}: {message}");
    }
    let (code, _) = on_web1(&master, "test.ping", &[]);
    assert_eq!(code, 0);

    // Tampered on the minion's disk: refused at the next start.
    let stored = web.dir.join("data/lua_modules/extra.lua");
    std::fs::write(&stored, "return { f = function() return 'owned' end }").unwrap();
    web.restart();
    master.wait_up("web1");
    let mut doc = serde_json::Value::Null;
    eventually(
        Duration::from_secs(30),
        "the minion refuses the tampered module",
        || {
            doc = ret(&master, &["modules", "list", "target=web1"]).1;
            doc["returns"]["web1"]["data"]["extra"]["status"] == "refused"
        },
    );
    let extra = &doc["returns"]["web1"]["data"]["extra"];
    assert_eq!(extra["status"], "refused", "{doc}");
    assert!(
        extra["error"]
            .as_str()
            .unwrap()
            .contains("does not match the signed"),
        "{doc}"
    );
    // The master's signed copy, sent with the next job, replaces it.
    let (code, doc) = on_web1(&master, "extra.f", &[]);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["returns"]["web1"]["data"], 1);
}

#[test]
fn shipped_modules_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let modules = dir.path().join("master/lua-modules");
    for name in ["php_app", "nginx_conf", "maintenance"] {
        let source = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../lua-modules/{name}.lua")),
        )
        .expect("shipped module");
        write(&modules.join(format!("{name}.lua")), &source);
    }
    let srv = dir.path().join("srv");
    let shop = srv.join("shop");
    let root = dir.path().join("git");
    let repo = Repo::create(dir.path(), &root, "shop", &[("v1", "one"), ("v2", "two")]);
    write(
        &dir.path().join("master/apps.d/shop.toml"),
        &format!(
            "repo = \"{}\"\ntarget = \"web*\"\npath = \"{}\"\nshared = [\"var\"]\n",
            repo.bare.display(),
            shop.display()
        ),
    );
    let master = Master::start(dir.path(), "");
    std::fs::create_dir_all(&srv).unwrap();
    let _web = Minion::start(dir.path(), "web1", master.return_port, &lua_config(&srv));
    master.accept("web1");
    let http = halite_tests::git::static_files(&srv);
    let port = http.port;
    let reloads = srv.join("reloads.log");
    let reload_cmd = format!("reload_cmd=echo reloaded >> {}", reloads.display());

    // php_app: deploy, caches emptied, reload, health checked.
    let cache = shop.join("shared/var/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("stale.php"), "old").unwrap();
    let health = format!("health_url=http://127.0.0.1:{port}/shop/current/index.html");
    let (code, doc) = on_web1(
        &master,
        "php_app.deploy",
        &[
            "app=shop",
            "tag=v1",
            &reload_cmd,
            &health,
            "cache_dirs=[\"var/cache\"]",
        ],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        std::fs::read_to_string(shop.join("current/index.html")).unwrap(),
        "one"
    );
    assert!(!cache.join("stale.php").exists(), "cache emptied");
    let (code, doc) = on_web1(
        &master,
        "php_app.deploy",
        &["app=shop", "tag=v2", &reload_cmd, &health],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        std::fs::read_to_string(shop.join("current/index.html")).unwrap(),
        "two"
    );
    assert_eq!(
        std::fs::read_to_string(&reloads).unwrap().lines().count(),
        2
    );

    // A release whose health check fails goes back to the previous one.
    repo.commit_tag("v3", "three");
    let bad_health = format!("health_url=http://127.0.0.1:{port}/shop/current/missing.html");
    let (code, doc) = on_web1(
        &master,
        "php_app.deploy",
        &[
            "app=shop",
            "tag=v3",
            &reload_cmd,
            &bad_health,
            "health_retries=2",
            "health_interval=0",
        ],
    );
    assert_eq!(code, 1, "{doc}");
    let message = doc["returns"]["web1"]["data"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("health check") && message.contains("rolled back"),
        "{message}"
    );
    assert_eq!(
        std::fs::read_to_string(shop.join("current/index.html")).unwrap(),
        "two"
    );

    // nginx_conf: a valid file goes in and is reloaded; an invalid one is
    // refused and the previous file stays.
    let conf = srv.join("nginx/shop.conf");
    let validate = format!("validate_cmd=grep -q 'server {{' {}", conf.display());
    let path = format!("path={}", conf.display());
    let deploy_conf = |content: &str| {
        let content = format!("content={content}");
        on_web1(
            &master,
            "nginx_conf.deploy",
            &[&path, &content, &validate, &reload_cmd],
        )
    };
    let (code, doc) = deploy_conf("server { listen 8080; }");
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["returns"]["web1"]["data"]["changed"], true);
    let (code, doc) = deploy_conf("listen garbage");
    assert_eq!(code, 1, "{doc}");
    assert!(
        doc["returns"]["web1"]["data"]
            .as_str()
            .unwrap()
            .contains("previous one restored"),
        "{doc}"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "server { listen 8080; }"
    );
    let reloads_before = std::fs::read_to_string(&reloads).unwrap().lines().count();
    let (code, doc) = deploy_conf("server { listen 9090; }");
    assert_eq!(code, 0, "{doc}");
    let (code, doc) = on_web1(
        &master,
        "nginx_conf.rollback",
        &[&path, &validate, &reload_cmd],
    );
    assert_eq!(code, 0, "{doc}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "server { listen 8080; }"
    );
    assert_eq!(
        std::fs::read_to_string(&reloads).unwrap().lines().count(),
        reloads_before + 2
    );
    // Outside the allowed roots: refused, nothing written.
    let (code, doc) = on_web1(
        &master,
        "nginx_conf.deploy",
        &["path=/etc/halite-test.conf", "content=server {}", &validate],
    );
    assert_eq!(code, 1, "{doc}");
    assert!(
        doc["returns"]["web1"]["data"]
            .as_str()
            .unwrap()
            .contains("outside the allowed roots"),
        "{doc}"
    );

    // maintenance: up, status, down.
    let docroot = format!("docroot={}", shop.join("current").display());
    let (code, doc) = on_web1(
        &master,
        "maintenance.on",
        &[&docroot, "message=Back at two"],
    );
    assert_eq!(code, 0, "{doc}");
    let page = std::fs::read_to_string(shop.join("current/maintenance.html")).unwrap();
    assert!(page.contains("Back at two"), "{page}");
    let (_, doc) = on_web1(&master, "maintenance.status", &[&docroot]);
    assert_eq!(doc["returns"]["web1"]["data"]["enabled"], true);
    let (_, doc) = on_web1(&master, "maintenance.off", &[&docroot]);
    assert_eq!(doc["returns"]["web1"]["data"]["removed"], true);
    assert!(!shop.join("current/maintenance.html").exists());
}

#[test]
fn bad_module_files_and_lua_settings_stop_the_daemons_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("lua-modules/Deploy-App.lua"), "return {}");
    let config = dir.path().join("master.toml");
    std::fs::write(
        &config,
        "id = \"m\"\npki_dir = \"pki\"\ndata_dir = \"data\"\napi_bind = \"127.0.0.1:0\"\npublish_port = 0\nreturn_port = 0\n",
    )
    .unwrap();
    let out = halite_tests::config_error("halite-master", &config);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("Deploy-App.lua"), "{out:?}");

    for (extra, key) in [
        ("[lua]\nmemory_mb = 0\n", "lua.memory_mb"),
        ("[lua]\ncolour = 1\n", "colour"),
        (
            "[lua.modules.Bad-Name]\nroots = []\n",
            "lua.modules.Bad-Name",
        ),
    ] {
        let config = dir.path().join("minion.toml");
        std::fs::write(
            &config,
            format!("id = \"web1\"\nmasters = [\"127.0.0.1:1\"]\npki_dir = \"pki\"\ndata_dir = \"data\"\n{extra}"),
        )
        .unwrap();
        let out = halite_tests::config_error("halite-minion", &config);
        assert_eq!(out.code, 78, "{extra}: {out:?}");
        assert!(
            out.stderr.contains(key) && out.stderr.contains("minion.toml"),
            "{extra}: {out:?}"
        );
    }
}

/// A pattern that backtracks on a long subject runs in C, out of the
/// instruction hook's sight: it still ends at the job's deadline with a
/// failed return, the core is free again, and the minion then stops
/// cleanly on SIGTERM instead of hanging on the runaway thread.
#[test]
fn a_backtracking_pattern_ends_at_the_deadline_and_the_minion_stops_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let modules = dir.path().join("master/lua-modules");
    write(
        &modules.join("slow.lua"),
        "local M = {}\nfunction M.find() return string.find(string.rep('a', 100000), '.-.-.-.-b') end\nreturn M\n",
    );
    let master = Master::start(dir.path(), "");
    let srv = dir.path().join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let mut web = Minion::start(dir.path(), "web1", master.return_port, &lua_config(&srv));
    master.accept("web1");
    let (code, doc) = on_web1(&master, "slow.find", &["--timeout", "3"]);
    assert_ne!(code, 0, "{doc}");
    assert_eq!(doc["returns"]["web1"]["success"], false, "{doc}");
    let (code, doc) = on_web1(&master, "test.ping", &[]);
    assert_eq!(code, 0, "{doc}");
    let status = web.proc.stop().expect("the minion ran");
    assert_eq!(status.code(), Some(0), "stopped cleanly, not killed");
}
