//! dotnet_iis against a double of appcmd that keeps IIS's state: the
//! whole release flow with its ordering, the failures (unknown site, a
//! pool that never stops, a failing health check, a bad zip, a wrong
//! hash) leaving IIS as it was, and the administration functions.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::fake::FakeAppcmd;
use super::unpack::tests::zip_of;
use super::*;
use crate::call::tests::call;

/// Serves `files` over HTTP on loopback (what an artifact server does).
async fn serve(files: HashMap<String, Vec<u8>>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let files = Arc::new(files);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let (status, body) = match files.get(&path) {
                    Some(body) => ("200 OK", body.clone()),
                    None => ("404 Not Found", Vec::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}")
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    initial: std::path::PathBuf,
    fake: Arc<FakeAppcmd>,
    module: DotnetIisModule,
    base: String,
    sums: HashMap<String, String>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("sites/shop");
    let initial = dir.path().join("inetpub/shop");
    std::fs::create_dir_all(&initial).unwrap();
    let mut files = HashMap::new();
    let mut sums = HashMap::new();
    for (name, entries) in [
        (
            "v1",
            vec![("index.html", "shop v1"), ("bin/Shop.dll", "MZ1")],
        ),
        (
            "v2",
            vec![("index.html", "shop v2"), ("bin/Shop.dll", "MZ2")],
        ),
        ("broken", vec![("bin/Shop.dll", "MZ3")]),
        ("evil", vec![("../../escaped.txt", "x")]),
    ] {
        let zip = dir.path().join(format!("{name}.zip"));
        zip_of(&zip, &entries);
        let bytes = std::fs::read(&zip).unwrap();
        sums.insert(name.to_owned(), halite_pki::sha256_hex(&bytes));
        files.insert(format!("{name}.zip"), bytes);
    }
    let base = serve(files).await;
    let fake = Arc::new(FakeAppcmd::with_site(
        "Shop",
        "ShopPool",
        &initial.display().to_string(),
    ));
    let module = DotnetIisModule { tool: fake.clone() };
    Setup {
        _dir: dir,
        root,
        initial,
        fake,
        module,
        base,
        sums,
    }
}

impl Setup {
    fn app(&self, site: &str, pool_wait: u64) -> Value {
        json!({
            "name": "shop", "kind": "iis", "target": "web*", "path": self.root,
            "iis": { "site": site, "app_pool": "ShopPool", "app_offline": true, "pool_wait": pool_wait },
            "health": { "command": "test -f index.html", "retries": 1, "interval": 0 },
        })
    }

    async fn deploy(&self, name: &str, version: &str, app: Value) -> Outcome {
        let kwargs = json!({
            "app": app, "url": format!("{}/{name}.zip", self.base),
            "sha256": self.sums[name], "version": version,
        });
        self.run("deploy", kwargs).await
    }

    /// `dotnet_iis.FUN` with these keyword arguments.
    async fn run(&self, fun: &str, kwargs: Value) -> Outcome {
        self.module
            .call(fun, call(&format!("dotnet_iis.{fun}"), vec![], kwargs))
            .await
    }

    fn path(&self) -> String {
        self.fake.state.lock().unwrap().vdirs["Shop/"].clone()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn release_flow_in_order_and_rollback() {
    let s = setup().await;
    let out = s.deploy("v1", "v1", s.app("Shop", 5)).await;
    assert!(out.success, "{out:?}");
    let v1 = s.root.join("releases/v1");
    assert_eq!(s.path(), v1.display().to_string());
    assert_eq!(
        std::fs::read_to_string(v1.join("bin/Shop.dll")).unwrap(),
        "MZ1"
    );
    assert!(
        !s.initial.join(APP_OFFLINE).exists(),
        "app_offline taken down"
    );
    assert_eq!(
        s.fake.state.lock().unwrap().pools["ShopPool"].state,
        "Started"
    );
    let log = s.fake.state.lock().unwrap().log.clone();
    let at = |needle: &str| {
        log.iter()
            .position(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} not in {log:?}"))
    };
    assert!(
        at("stop apppool") < at("set vdir") && at("set vdir") < at("start apppool"),
        "{log:?}"
    );
    let stages = crate::kit::stage_names(&out.data);
    assert_eq!(stages, ["fetch", "prepare", "deploy", "verify"]);

    let out = s.deploy("v2", "v2", s.app("Shop", 5)).await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.data["previous"], "v1");
    assert!(s.path().ends_with("v2"));
    let again = s.deploy("v2", "v2", s.app("Shop", 5)).await;
    assert_eq!(again.data["result"], "unchanged", "{again:?}");

    let out = s.run("rollback", json!({ "app": s.app("Shop", 5) })).await;
    assert!(out.success, "{out:?}");
    assert!(s.path().ends_with("v1"), "{}", s.path());
    let status = s.run("status", json!({ "app": s.app("Shop", 5) })).await;
    assert_eq!(status.data["live"], "v1", "{status:?}");
    assert_eq!(status.data["releases"], json!(["v1", "v2"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_health_check_switches_back() {
    let s = setup().await;
    assert!(s.deploy("v1", "v1", s.app("Shop", 5)).await.success);
    let out = s.deploy("broken", "v3", s.app("Shop", 5)).await;
    assert!(!out.success);
    assert_eq!(out.data["failed_stage"], "verify", "{out:?}");
    assert_eq!(out.data["result"], "rolled_back");
    assert!(
        out.data["error"]
            .as_str()
            .unwrap()
            .contains("switched back"),
        "{out:?}"
    );
    assert!(s.path().ends_with("v1"));
    assert_eq!(
        s.fake.state.lock().unwrap().pools["ShopPool"].state,
        "Started"
    );
    assert!(!s.root.join("releases/v1").join(APP_OFFLINE).exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_before_the_switch_change_nothing() {
    let s = setup().await;
    let before = s.path();
    // A pool that never stops: bounded wait, nothing switched, pool started.
    s.fake
        .state
        .lock()
        .unwrap()
        .pools
        .get_mut("ShopPool")
        .unwrap()
        .stop_delay = u32::MAX;
    let out = s.deploy("v1", "v1", s.app("Shop", 1)).await;
    assert_eq!(out.data["failed_stage"], "deploy", "{out:?}");
    assert!(
        out.data["error"]
            .as_str()
            .unwrap()
            .contains("nothing was switched"),
        "{out:?}"
    );
    assert_eq!(s.path(), before);
    assert_eq!(
        s.fake.state.lock().unwrap().pools["ShopPool"].state,
        "Started"
    );
    assert!(!s.initial.join(APP_OFFLINE).exists());
    s.fake
        .state
        .lock()
        .unwrap()
        .pools
        .get_mut("ShopPool")
        .unwrap()
        .stop_delay = 0;

    let out = s.deploy("v1", "v1", s.app("Nope", 5)).await;
    assert_eq!(out.data["failed_stage"], "prepare");
    assert!(
        out.data["error"]
            .as_str()
            .unwrap()
            .contains("Cannot find SITE object with identifier \"Nope\""),
        "{out:?}"
    );

    let out = s.deploy("evil", "v9", s.app("Shop", 5)).await;
    assert_eq!(out.data["failed_stage"], "prepare");
    assert!(
        out.data["error"].as_str().unwrap().contains("zip-slip"),
        "{out:?}"
    );

    let kwargs = json!({ "app": s.app("Shop", 5), "url": format!("{}/v1.zip", s.base), "sha256": "0".repeat(64), "version": "v1" });
    let out = s.run("deploy", kwargs).await;
    assert_eq!(out.data["failed_stage"], "prepare", "{out:?}");
    assert!(
        out.data["error"].as_str().unwrap().contains("SHA-256"),
        "{out:?}"
    );
    assert_eq!(s.path(), before);
    let log = s.fake.state.lock().unwrap().log.clone();
    assert!(!log.iter().any(|l| l.starts_with("set vdir")), "{log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn administration() {
    let s = setup().await;
    let run = |fun: &'static str, kwargs: Value| s.run(fun, kwargs);
    let out = run("create_apppool", json!({ "name": "ApiPool", "runtime": "", "pipeline": "Integrated", "identity": "NetworkService" })).await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        s.fake.state.lock().unwrap().pools["ApiPool"].identity,
        "NetworkService"
    );
    let out = run("create_site", json!({ "name": "Api", "bindings": "http/*:8081:", "physical_path": "C:\\sites\\api", "app_pool": "ApiPool" })).await;
    assert!(out.success, "{out:?}");
    assert_eq!(s.fake.state.lock().unwrap().apps["Api/"], "ApiPool");
    let out = run(
        "bindings",
        json!({ "site": "Api", "add": ["https/*:443:api.example"], "remove": "http/*:8081:" }),
    )
    .await;
    assert_eq!(
        out.data["bindings"],
        json!(["https/*:443:api.example"]),
        "{out:?}"
    );
    let sites = run("list_sites", json!({})).await;
    assert_eq!(sites.data.as_array().unwrap().len(), 2, "{sites:?}");
    let pools = run("list_apppools", json!({})).await;
    assert!(
        pools
            .data
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["APPPOOL.NAME"] == "ApiPool"),
        "{pools:?}"
    );
    let out = run("apppool_stop", json!({ "name": "ApiPool" })).await;
    assert!(out.success, "{out:?}");
    let out = run("apppool_start", json!({ "name": "ApiPool" })).await;
    assert_eq!(out.data["state"], "Started");
    assert!(
        run("apppool_recycle", json!({ "name": "ApiPool" }))
            .await
            .success
    );
    let out = run("site_stop", json!({ "name": "Api" })).await;
    assert_eq!(out.data["state"], "Stopped");

    for (fun, kwargs, needle) in [
        (
            "apppool_start",
            json!({ "name": "Ghost" }),
            "Cannot find APPPOOL",
        ),
        ("site_start", json!({ "name": "Ghost" }), "Cannot find SITE"),
        (
            "create_site",
            json!({ "name": "X", "bindings": "ftp/*:21:", "physical_path": "C:\\x" }),
            "binding",
        ),
        (
            "create_site",
            json!({ "name": "Api", "bindings": "http/*:9:", "physical_path": "C:\\x" }),
            "duplicate",
        ),
        (
            "create_apppool",
            json!({ "name": "P", "identity": "Admin" }),
            "identity",
        ),
        (
            "create_apppool",
            json!({ "name": "P", "runtime": "v9" }),
            "runtime",
        ),
        (
            "bindings",
            json!({ "site": "Api", "remove": "http/*:1234:" }),
            "Cannot find",
        ),
        (
            "apppool_stop",
            json!({ "name": "ApiPool", "force": true }),
            "unknown argument",
        ),
    ] {
        let out = run(fun, kwargs.clone()).await;
        assert!(!out.success, "{fun} {kwargs}");
        assert!(
            out.data.as_str().unwrap().contains(needle),
            "{fun} {kwargs}: {out:?}"
        );
    }
}

#[test]
fn bindings_are_checked() {
    assert_eq!(parse_binding("http/*:80:").unwrap(), ("http", "*:80:"));
    assert!(parse_binding("http/*:0:").is_err());
    assert!(parse_binding("http:80").is_err());
}
