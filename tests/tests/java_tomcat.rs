//! java_tomcat against a real Tomcat 10 (Debian's packages, our own
//! CATALINA_BASE on a free port): WARs built with `jar`, served over HTTP,
//! deployed through a real minion with parallel versions; a version whose
//! health check fails is undeployed and the old one keeps serving;
//! rollback from the artifact cache; bad hash, unreachable manager and
//! wrong credentials each fail naming the problem and change nothing.

use std::path::{Path, PathBuf};

use halite_tests::git::static_files;
use halite_tests::tomcat::{war, Tomcat};
use halite_tests::{Master, Minion};
use serde_json::Value;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn sha256(path: &Path) -> String {
    halite_pki::sha256_hex(&std::fs::read(path).expect("war"))
}

/// `java_tomcat.deploy` of `app` on web1 from the WAR at `url`, plus
/// `extra` command-line words.
fn deploy(
    master: &Master,
    app: &str,
    url: &str,
    sha256: &str,
    version: &str,
    extra: &[&str],
) -> (i32, Value) {
    let (app, url) = (format!("app={app}"), format!("url={url}"));
    let (sha256, version) = (format!("sha256={sha256}"), format!("version={version}"));
    let mut args = vec![
        "run",
        "target=web1",
        "java_tomcat.deploy",
        &app,
        &url,
        &sha256,
        &version,
    ];
    args.extend_from_slice(extra);
    run(master, &args)
}

fn run(master: &Master, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = master.cli(&all);
    let doc = out.json();
    (out.code, doc["returns"]["web1"].clone())
}

/// `dir/wars` with two WARs of `app` that pass the health check, whose
/// pages say "APP v1" and "APP v2": (the directory, v1, v2).
fn healthy_wars(dir: &Path, app: &str) -> (PathBuf, PathBuf, PathBuf) {
    let wars = dir.join("wars");
    std::fs::create_dir_all(&wars).expect("wars dir");
    let [v1, v2] = ["v1", "v2"].map(|v| {
        war(
            &wars,
            &format!("{app}-{v}"),
            &[("index.html", &format!("{app} {v}")), ("health.html", "ok")],
        )
    });
    (wars, v1, v2)
}

fn app(name: &str, path: &Path, manager: &str, credentials: &str, health_port: u16) -> String {
    format!(
        "kind = \"tomcat\"\ntarget = \"web*\"\npath = \"{}\"\ncredentials = \"{credentials}\"\n[tomcat]\nmanager_url = \"{manager}\"\ncontext = \"/{name}\"\n[health]\nurl = \"http://127.0.0.1:{health_port}/{name}/health.html\"\nretries = 3\ninterval = 1\n",
        path.display()
    )
}

#[test]
fn deploy_switch_failed_health_rollback_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tomcat = Tomcat::start(dir.path(), "deployer", "s3cret-manager");
    let (wars, v1, v2) = healthy_wars(dir.path(), "shop");
    let v3 = war(&wars, "shop-v3", &[("index.html", "shop v3 (broken)")]);
    let files = static_files(&wars);
    let url = |name: &str| format!("http://127.0.0.1:{}/{name}.war", files.port);

    let manager = format!("http://127.0.0.1:{}/manager/text", tomcat.port);
    let apps = dir.path().join("master/apps.d");
    write(
        &apps.join("shop.toml"),
        &app(
            "shop",
            &dir.path().join("srv/shop"),
            &manager,
            "tomcat",
            tomcat.port,
        ),
    );
    write(
        &apps.join("badcreds.toml"),
        &app(
            "badcreds",
            &dir.path().join("srv/bad"),
            &manager,
            "wrong",
            tomcat.port,
        ),
    );
    let closed = halite_tests::free_port();
    write(
        &apps.join("nomanager.toml"),
        &app(
            "nomanager",
            &dir.path().join("srv/nm"),
            &format!("http://127.0.0.1:{closed}/manager/text"),
            "tomcat",
            tomcat.port,
        ),
    );
    write(
        &dir.path().join("master/secrets.toml"),
        "[tomcat]\nusername = \"deployer\"\npassword = \"s3cret-manager\"\n[wrong]\nusername = \"deployer\"\npassword = \"guess\"\n",
    );
    let master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web1", master.return_port, "");
    master.accept("web1");

    let deploy_war = |app: &str, name: &str, sum: &str, version: &str| {
        deploy(&master, app, &url(name), sum, version, &[])
    };

    let (code, ret) = deploy_war("shop", "shop-v1", &sha256(&v1), "v1");
    assert_eq!(code, 0, "{ret}");
    assert_eq!(tomcat.get("/shop/index.html"), (200, "shop v1".into()));
    let stages = halite_tests::stage_names(&ret["data"]);
    assert_eq!(stages, ["fetch", "prepare", "deploy", "verify"]);

    let (code, ret) = deploy_war("shop", "shop-v2", &sha256(&v2), "v2");
    assert_eq!(code, 0, "{ret}");
    assert_eq!(tomcat.get("/shop/index.html"), (200, "shop v2".into()));
    assert_eq!(ret["data"]["undeployed"], serde_json::json!(["v1"]));

    // v3 fails its health check: undeployed, v2 serves on.
    let (code, ret) = deploy_war("shop", "shop-v3", &sha256(&v3), "v3");
    assert_eq!(code, 1, "{ret}");
    assert_eq!(ret["data"]["failed_stage"], "verify", "{ret}");
    assert_eq!(ret["data"]["result"], "rolled_back");
    assert_eq!(tomcat.get("/shop/index.html"), (200, "shop v2".into()));
    let (_, status) = run(
        &master,
        &["run", "target=web1", "java_tomcat.status", "app=shop"],
    );
    let versions: Vec<&str> = status["data"]["deployed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v2"], "{status}");
    assert_eq!(status["data"]["live"], "v2");

    // Rollback: v1 again, from the artifact cache (the file server is gone).
    drop(files);
    let (code, ret) = run(
        &master,
        &["run", "target=web1", "java_tomcat.rollback", "app=shop"],
    );
    assert_eq!(code, 0, "{ret}");
    assert_eq!(tomcat.get("/shop/index.html"), (200, "shop v1".into()));
    let out = master.cli(&["releases", "shop", "--json"]);
    assert_eq!(out.json()["live"][0]["release"], "v1", "{}", out.stdout);

    // A hash mismatch fails the prepare stage and changes nothing.
    let files = static_files(&wars);
    let url2 = format!("http://127.0.0.1:{}/shop-v2.war", files.port);
    let (code, ret) = deploy(&master, "shop", &url2, &"ab".repeat(32), "v9", &[]);
    assert_eq!(code, 1);
    assert_eq!(ret["data"]["failed_stage"], "prepare", "{ret}");
    assert!(
        ret["data"]["error"].as_str().unwrap().contains("SHA-256"),
        "{ret}"
    );
    assert_eq!(tomcat.get("/shop/index.html"), (200, "shop v1".into()));

    // Wrong credentials and an unreachable manager: prepare fails, named.
    let (code, ret) = deploy(&master, "badcreds", &url2, &sha256(&v2), "v2", &[]);
    assert_eq!(code, 1, "{ret}");
    assert!(
        ret["data"]["error"]
            .as_str()
            .unwrap()
            .contains("refused the credentials"),
        "{ret}"
    );
    assert!(
        !ret.to_string().contains("guess"),
        "the password never shows: {ret}"
    );
    let (code, ret) = deploy(&master, "nomanager", &url2, &sha256(&v2), "v2", &[]);
    assert_eq!(code, 1, "{ret}");
    assert!(
        ret["data"]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{ret}"
    );
    assert_eq!(
        tomcat.get("/badcreds/index.html").0,
        404,
        "nothing half-deployed"
    );

    // The app kind decides the module.
    let out = master.cli(&[
        "run",
        "target=web1",
        "git_deploy.deploy",
        "app=shop",
        "tag=v1",
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("java_tomcat"), "{out:?}");
}

#[test]
fn without_the_manager_the_war_goes_into_webapps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tomcat = Tomcat::start(dir.path(), "deployer", "unused-here");
    let (wars, v1, v2) = healthy_wars(dir.path(), "blog");
    let files = static_files(&wars);
    write(
        &dir.path().join("master/apps.d/blog.toml"),
        &format!(
            "kind = \"tomcat\"\ntarget = \"web*\"\npath = \"{}\"\n[tomcat]\ncontext = \"/blog\"\nwebapps = \"{}\"\nautodeploy_wait = 60\n[health]\nurl = \"http://127.0.0.1:{}/blog/health.html\"\nretries = 60\ninterval = 1\n",
            dir.path().join("srv/blog").display(),
            tomcat.base.join("webapps").display(),
            tomcat.port
        ),
    );
    let master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web1", master.return_port, "");
    master.accept("web1");
    for (war, version, page) in [(&v1, "v1", "blog v1"), (&v2, "v2", "blog v2")] {
        let name = war.file_stem().unwrap().to_string_lossy().into_owned();
        let url = format!("http://127.0.0.1:{}/{name}.war", files.port);
        let (code, ret) = deploy(
            &master,
            "blog",
            &url,
            &sha256(war),
            version,
            &["--timeout", "180"],
        );
        assert_eq!(code, 0, "{ret}");
        assert_eq!(tomcat.get("/blog/index.html"), (200, page.into()));
    }
    assert!(tomcat.base.join("webapps/blog##v2.war").exists());
    assert!(
        !tomcat.base.join("webapps/blog##v1.war").exists(),
        "the old version's WAR is removed"
    );
}
