//! The HTTP API as a release portal uses it, against a real master and
//! real minions: users and login tokens, the ACL, the audit log, live
//! events over Server-Sent Events with resume, job cancel, batches,
//! filters, minion history, app actions and statistics, TLS, and
//! salt-api compatibility driven by the real `pepper` CLI.

use std::path::Path;
use std::time::Duration;

use halite_tests::api::{call, http, login, read_sse, wait_done};
use halite_tests::git::Repo;
use halite_tests::{eventually, Master, Minion};
use serde_json::{json, Value};

const ACL: &str = r#"
[acl]
deployer = [{ "web*" = ["test.*", "git_deploy.*"] }]
viewer = ["@jobs"]
salt = [".*", "@jobs"]
"#;

fn start_fleet(dir: &Path, extra: &str, ids: &[&str]) -> (Master, Vec<Minion>) {
    let master = Master::start(dir, extra);
    let minions: Vec<Minion> = ids
        .iter()
        .map(|id| Minion::start(dir, id, master.return_port, ""))
        .collect();
    for id in ids {
        master.accept(id);
    }
    (master, minions)
}

#[test]
fn users_acl_audit_events_cancel_and_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, minions) = start_fleet(dir.path(), ACL, &["web1", "db1"]);
    let base = master.api_url();

    // Users: written by the CLI (password on stdin), checked on login.
    let out = master.cli_input(&["users", "add", "deployer"], "s3cret-pw\n");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        master
            .cli_input(&["users", "add", "viewer"], "view-pw-1\n")
            .code,
        0
    );
    let out = master.cli_input(&["users", "add", "deployer"], "again\n");
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("exists"), "{out:?}");
    let users = std::fs::read_to_string(master.dir.join("users.toml")).expect("users file");
    assert!(
        !users.contains("s3cret-pw") && users.contains("pbkdf2-sha256$"),
        "{users}"
    );

    let (status, body) = login(&base, "deployer", "wrong");
    assert_eq!(status, 401, "{body}");
    let (status, body) = login(&base, "nobody", "s3cret-pw");
    assert_eq!(status, 401, "{body}");
    let (status, body) = login(&base, "deployer", "s3cret-pw");
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    assert!(body["expires_at"].as_u64().unwrap() > body["issued_at"].as_u64().unwrap());
    assert_eq!(
        body["perms"][0],
        json!({ "web*": ["test.*", "git_deploy.*"] })
    );

    // The ACL: allowed on web1; refused when the target reaches db1, and
    // then nothing is published.
    let submit = |token: &str, target: &str, fun: &str, arg: Value| {
        call(
            http().post(format!("{base}/v1/jobs")),
            Some(token),
            Some(json!({ "target": target, "fun": fun, "arg": arg })),
        )
    };
    let (status, body) = submit(&token, "web*", "test.ping", json!([]));
    assert_eq!(status, 202, "{body}");
    let ping_jid = body["jid"].as_str().unwrap().to_owned();
    let (status, body) = submit(&token, "*", "test.ping", json!([]));
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("db1"), "{body}");
    let (status, body) = submit(&token, "web1", "cmd.run", json!(["id"]));
    assert_eq!(status, 403, "{body}");
    let (_, page) = call(
        http().get(format!("{base}/v1/jobs?fun=test.*")),
        Some(&token),
        None,
    );
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    let (status, _) = call(
        http().post(format!("{base}/v1/keys/db1/reject")),
        Some(&token),
        None,
    );
    assert_eq!(status, 403);
    assert_eq!(master.key_status("db1").as_deref(), Some("accepted"));

    // Live events: the whole job from the start, ending with `done`.
    let view = wait_done(&base, &token, &ping_jid);
    assert_eq!(view["returns"]["web1"]["data"], true);
    let response = http()
        .get(format!("{base}/v1/jobs/{ping_jid}/events"))
        .header("Accept", "text/event-stream")
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .expect("SSE");
    assert_eq!(response.status(), 200);
    let events = read_sse(response, |e| {
        e.last().is_some_and(|(_, kind, _)| kind == "done")
    });
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, event, data)| data["kind"].as_str().unwrap_or(event))
        .collect();
    assert_eq!(kinds.first(), Some(&"job/new"), "{events:?}");
    assert!(kinds.contains(&"job/return"), "{events:?}");
    assert_eq!(kinds.last(), Some(&"done"));

    // A running job, followed live on /v1/events, then cancelled.
    let head_response = http()
        .get(format!("{base}/v1/events?token={token}"))
        .header("Accept", "text/event-stream")
        .send()
        .expect("SSE");
    let (status, body) = submit(&token, "web1", "test.sleep", json!([30]));
    assert_eq!(status, 202, "{body}");
    let sleep_jid = body["jid"].as_str().unwrap().to_owned();
    let live = read_sse(head_response, |e| {
        e.iter()
            .any(|(_, _, d)| d["kind"] == "job/new" && d["jid"] == sleep_jid.as_str())
    });
    let new_id = live
        .last()
        .and_then(|(id, _, _)| *id)
        .expect("ids on the stream");
    // Cancelled while it runs (the minion keeps a marker for a running job).
    let marker = minions[0].dir.join("data/running").join(&sleep_jid);
    halite_tests::eventually(Duration::from_secs(60), "the job running on web1", || {
        marker.exists()
    });
    let (status, body) = call(
        http().post(format!("{base}/v1/jobs/{sleep_jid}/cancel")),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["minions"], json!(["web1"]));
    // A 30 s sleep that returns failed was stopped by the cancel.
    let view = wait_done(&base, &token, &sleep_jid);
    assert_eq!(view["returns"]["web1"]["success"], false, "{view}");

    // Resume after the job/new entry: the rest arrives (cancel, return).
    let response = http()
        .get(format!("{base}/v1/events"))
        .header("Accept", "text/event-stream")
        .header("X-Auth-Token", &token)
        .header("Last-Event-ID", new_id.to_string())
        .send()
        .expect("SSE");
    let resumed = read_sse(response, |e| {
        e.iter()
            .any(|(_, _, d)| d["kind"] == "job/return" && d["jid"] == sleep_jid.as_str())
    });
    assert!(resumed.iter().all(|(id, _, _)| id.unwrap() > new_id));
    assert!(
        resumed.iter().any(|(_, _, d)| d["kind"] == "job/cancel"),
        "{resumed:?}"
    );

    // Filters, minion detail and history.
    let (_, page) = call(
        http().get(format!("{base}/v1/jobs?result=failed")),
        Some(&token),
        None,
    );
    let failed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jid"].as_str().unwrap())
        .collect();
    assert!(
        failed.contains(&sleep_jid.as_str()) && !failed.contains(&ping_jid.as_str()),
        "{page}"
    );
    let (_, page) = call(
        http().get(format!("{base}/v1/jobs?user=deployer&limit=1")),
        Some(&token),
        None,
    );
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, page2) = call(
        http().get(format!(
            "{base}/v1/jobs?user=deployer&limit=1&before={next}"
        )),
        Some(&token),
        None,
    );
    assert_ne!(page2["jobs"][0]["jid"], page["jobs"][0]["jid"]);
    let (status, minion) = call(
        http().get(format!("{base}/v1/minions/web1")),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(minion["status"], "up");
    assert!(minion["grains"]["os"].is_string(), "{minion}");
    let (_, history) = call(
        http().get(format!("{base}/v1/minions/web1/jobs")),
        Some(&token),
        None,
    );
    assert!(history["jobs"].as_array().unwrap().len() >= 3, "{history}");
    let (status, body) = call(
        http().get(format!("{base}/v1/minions/ghost")),
        Some(&token),
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        http().get(format!("{base}/v1/jobs/99991231235959999999")),
        Some(&token),
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = call(
        http().post(format!("{base}/v1/jobs")),
        Some(&token),
        Some(json!({ "target": "web1", "fun": "test.ping", "colour": "red" })),
    );
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("colour"), "{body}");

    // The audit log: who did what, from where, with what outcome. Only
    // for admins (@wheel; root here): the deployer may not read it.
    let (status, _) = call(http().get(format!("{base}/v1/audit")), Some(&token), None);
    assert_eq!(status, 403);
    let root = master.root_token();
    let (status, audit) = call(http().get(format!("{base}/v1/audit")), Some(&root), None);
    assert_eq!(status, 200);
    let rows: Vec<(String, String, u64)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
            )
        })
        .collect();
    for expected in [
        ("deployer".to_owned(), "/login".to_owned(), 401),
        ("deployer".to_owned(), "/login".to_owned(), 200),
        ("deployer".to_owned(), "/v1/jobs".to_owned(), 202),
        ("deployer".to_owned(), "/v1/jobs".to_owned(), 403),
        ("deployer".to_owned(), "/v1/keys/db1/reject".to_owned(), 403),
        (
            "deployer".to_owned(),
            format!("/v1/jobs/{sleep_jid}/cancel"),
            200,
        ),
        ("root".to_owned(), "/v1/audit".to_owned(), 200),
    ] {
        assert!(rows.contains(&expected), "{expected:?} not in {rows:?}");
    }
    assert!(
        audit[0]["from"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{audit}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["detail"] == "users add deployer"),
        "user changes made with master-cli are audited: {audit}"
    );

    // A new password: the old one and the tokens issued under it stop
    // working (issue 13); a login with the new one works.
    assert_eq!(
        master
            .cli_input(&["users", "passwd", "deployer"], "n3w-pw-22\n")
            .code,
        0
    );
    assert_eq!(login(&base, "deployer", "s3cret-pw").0, 401);
    assert_eq!(
        call(http().get(format!("{base}/v1/minions")), Some(&token), None).0,
        401
    );
    let (status, body) = login(&base, "deployer", "n3w-pw-22");
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().expect("token").to_owned();
    assert_eq!(
        call(http().get(format!("{base}/v1/minions")), Some(&token), None).0,
        200
    );
    assert_eq!(
        call(
            http().get(format!("{base}/v1/minions")),
            Some("forged"),
            None
        )
        .0,
        401
    );
    let out = master.cli(&["users", "list", "--json"]);
    assert_eq!(out.json(), json!(["deployer", "viewer"]));
}

#[test]
fn api_over_tls_and_jobs_in_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = halite_tests::git::test_ca(&dir.path().join("ca"));
    // The chain file carries the CA too, so master-cli trusts it.
    let chain = dir.path().join("ca/chain.pem");
    let mut pem = std::fs::read(&ca.cert).expect("cert");
    pem.extend(std::fs::read(&ca.ca).expect("ca"));
    std::fs::write(&chain, pem).expect("chain");
    let extra = format!(
        "api_tls_cert = \"{}\"\napi_tls_key = \"{}\"\n",
        chain.display(),
        ca.key.display()
    );
    let (master, _minions) = start_fleet(dir.path(), &extra, &["web1", "web2", "web3"]);
    let base = master.api_url();
    assert!(base.starts_with("https://"), "{base}");
    let plain = base.replacen("https://", "http://", 1);
    assert!(
        http().get(format!("{plain}/v1/health")).send().is_err() || {
            // Some stacks answer plain HTTP on a TLS port with garbage, never 200.
            http()
                .get(format!("{plain}/v1/health"))
                .send()
                .map(|r| r.status() != 200)
                .unwrap_or(true)
        }
    );
    let trusting = reqwest::blocking::Client::builder()
        .tls_certs_merge(
            reqwest::Certificate::from_pem_bundle(&std::fs::read(&ca.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let (status, _) = call(
        trusting.get(format!("{base}/v1/minions")),
        Some(&master.root_token()),
        None,
    );
    assert_eq!(status, 200);

    // Batches of one: each minion starts after the previous one returned.
    let out = master.cli(&[
        "run",
        "target=web*",
        "test.sleep",
        "1",
        "--batch",
        "1",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    halite_tests::assert_batches_in_turn(&out.json(), &["web1", "web2", "web3"]);
    let out = master.cli(&["run", "target=web*", "test.ping", "--batch", "0%"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("batch"), "{out:?}");
}

#[test]
fn pepper_speaks_to_halite_as_to_salt_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let shop = Repo::create(dir.path(), &root, "shop", &[("v1", "one"), ("v2", "two")]);
    let path = dir.path().join("srv/shop");
    let apps = dir.path().join("master/apps.d");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        apps.join("shop.toml"),
        format!(
            "repo = \"{}\"\ntarget = \"web*\"\npath = \"{}\"\n",
            shop.bare.display(),
            path.display()
        ),
    )
    .unwrap();
    let (master, _minions) = start_fleet(dir.path(), ACL, &["web1"]);
    assert_eq!(
        master
            .cli_input(&["users", "add", "salt"], "pepper-pw\n")
            .code,
        0
    );
    let base = master.api_url();
    let pepper = halite_tests::api::Pepper {
        base: base.clone(),
        home: dir.path().join("home"),
        user: "salt".into(),
        password: "pepper-pw".into(),
        eauth: "pam".into(),
    };
    let pepper = |args: &[&str]| pepper.run(args);

    let ping = pepper(&["web*", "test.ping"]);
    assert_eq!(ping["return"][0]["web1"]["ret"], true, "{ping}");
    let deployed = pepper(&["web*", "git_deploy", "tag=v1"]);
    assert_eq!(deployed["return"][0]["web1"]["retcode"], 0, "{deployed}");
    assert_eq!(
        std::fs::read_to_string(path.join("current/index.html")).unwrap(),
        "one"
    );

    let started = pepper(&["--client", "local_async", "web*", "test.echo", "hello"]);
    let jid = started["return"][0]["jid"]
        .as_str()
        .expect("jid")
        .to_owned();
    assert_eq!(started["return"][0]["minions"], json!(["web1"]));
    let mut looked_up = Value::Null;
    eventually(
        Duration::from_secs(30),
        "lookup_jid finds the return",
        || {
            looked_up = pepper(&[
                "--client",
                "runner",
                "jobs.lookup_jid",
                &format!("jid={jid}"),
            ]);
            // pepper asks runners for `full_return`: Salt's ret event.
            looked_up["return"][0]["data"]["return"]["web1"] == "hello"
        },
    );
    let listed = pepper(&["--client", "runner", "jobs.list_jobs"]);
    assert_eq!(
        listed["return"][0]["data"]["return"][&jid]["Function"], "test.echo",
        "{listed}"
    );

    // The native app action and the statistics see the same deploys.
    let token = master.root_token();
    let (status, body) = call(
        http().post(format!("{base}/v1/apps/shop/deploy")),
        Some(&token),
        Some(json!({ "tag": "v2" })),
    );
    assert_eq!(status, 202, "{body}");
    wait_done(&base, &token, body["jid"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(path.join("current/index.html")).unwrap(),
        "two"
    );
    let (status, stats) = call(http().get(format!("{base}/v1/stats")), Some(&token), None);
    assert_eq!(status, 200);
    assert_eq!(stats["total"], 2, "{stats}");
    assert_eq!(stats["success_rate"], 1.0);
    assert_eq!(stats["per_app_day"][0]["app"], "shop");
    assert_eq!(stats["per_app_day"][0]["deploys"], 2);
    let (status, body) = call(
        http().post(format!("{base}/v1/apps/shop/rollback")),
        Some(&token),
        Some(json!({ "target": 3 })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("target"), "{body}");
    let (status, body) = call(
        http().post(format!("{base}/v1/apps/shop/rollback")),
        Some(&token),
        Some(json!({})),
    );
    assert_eq!(status, 202, "{body}");
    wait_done(&base, &token, body["jid"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(path.join("current/index.html")).unwrap(),
        "one"
    );
    let (_, releases) = call(
        http().get(format!("{base}/v1/apps/shop/releases")),
        Some(&token),
        None,
    );
    assert_eq!(releases["live"][0]["action"], "rollback", "{releases}");
}

#[test]
fn a_broken_acl_or_certificate_stops_the_master_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (extra, needle) in [
        ("[acl]\nbob = [\"@admin\"]\n", "acl.bob[0]"),
        ("[acl]\nbob = [{ \"web*\" = [\"(\"] }]\n", "acl.bob[0].web*"),
        ("api_tls_cert = \"nope.pem\"\n", "api_tls_key"),
    ] {
        let config = dir.path().join("master.toml");
        std::fs::write(
            &config,
            format!("id = \"m\"\npki_dir = \"pki\"\ndata_dir = \"data\"\napi_bind = \"127.0.0.1:0\"\npublish_port = 0\nreturn_port = 0\n{extra}"),
        )
        .unwrap();
        let out = halite_tests::config_error("halite-master", &config);
        assert_eq!(out.code, 78, "{out:?}");
        assert!(
            out.stderr.contains(needle) && out.stderr.contains("master.toml"),
            "{needle}: {out:?}"
        );
    }
    let config = dir.path().join("master.toml");
    std::fs::write(
        &config,
        "id = \"m\"\npki_dir = \"pki\"\ndata_dir = \"data\"\napi_bind = \"127.0.0.1:0\"\npublish_port = 0\nreturn_port = 0\napi_tls_cert = \"missing.pem\"\napi_tls_key = \"missing.key\"\n",
    )
    .unwrap();
    let out = halite_tests::config_error("halite-master", &config);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("missing.pem"), "{out:?}");
}
