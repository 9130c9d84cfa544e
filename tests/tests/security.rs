//! Hostile peers on loopback (issue 13): raw ZMTP clients and rogue
//! endpoints against real master and minion processes. Each test failed
//! on the code before its fix.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use halite_tests::api::{call, http, login};
use halite_tests::{Master, Minion};
use serde_json::{json, Value};

/// A ZMTP 3.0 greeting (NULL mechanism) as a client sends it.
fn greeting() -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    g.extend_from_slice(&mechanism);
    g.push(0); // as-server
    g.resize(64, 0);
    g
}

/// A long command frame header announcing a 64 GiB body, and no body.
fn huge_frame_header() -> Vec<u8> {
    let mut header = vec![0b0000_0110];
    header.extend_from_slice(&(64u64 << 30).to_be_bytes());
    header
}

/// Reads until the peer closes the connection (or the cap passes, which
/// fails the test): the observable sign that the peer dropped us.
fn read_until_closed(stream: &mut TcpStream, cap: Duration) {
    stream.set_read_timeout(Some(cap)).expect("read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the peer kept the connection open ({e})"),
        }
    }
}

fn master_with_minion(dir: &std::path::Path) -> (Master, Minion) {
    let master = Master::start(dir, "");
    let minion = Minion::start(dir, "web01", master.return_port, "");
    master.accept("web01");
    (master, minion)
}

fn assert_serves(master: &mut Master) {
    assert!(
        !master.proc.exited(),
        "the master died; its log:\n{}",
        master.log()
    );
    let out = master.cli(&["run", "target=web01", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// 73 bytes — a greeting and a header announcing 64 GiB — on the ROUTER
/// and on the PUB port: the master drops that connection without
/// allocating and keeps serving its minions.
#[test]
fn a_huge_frame_header_crashes_neither_port_of_the_master() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut master, _minion) = master_with_minion(dir.path());
    for port in [master.return_port, master.publish_port] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let mut bytes = greeting();
        bytes.extend(huge_frame_header());
        assert_eq!(bytes.len(), 73);
        stream.write_all(&bytes).expect("send");
        read_until_closed(&mut stream, Duration::from_secs(60));
        assert_serves(&mut master);
    }
}

/// A peer that connects and never completes the handshake is
/// disconnected (within `HANDSHAKE_TIMEOUT`, 10 s).
#[test]
fn a_silent_peer_is_disconnected_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut master, _minion) = master_with_minion(dir.path());
    for port in [master.return_port, master.publish_port] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        read_until_closed(&mut stream, Duration::from_secs(60));
    }
    assert_serves(&mut master);
}

/// A rogue endpoint in the minion's master list answers with the same
/// 73 bytes: the minion drops that link (before any key check) and
/// keeps serving its real master.
#[test]
fn a_rogue_master_endpoint_does_not_crash_the_minion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut master = Master::start(dir.path(), "");
    let rogue = TcpListener::bind("127.0.0.1:0").expect("bind rogue");
    let rogue_port = rogue.local_addr().expect("addr").port();
    let served = std::thread::spawn(move || {
        // The minion's first connection; later reconnects are refused
        // once this listener is dropped.
        let (mut stream, _) = rogue.accept().expect("accept");
        let mut bytes = greeting();
        bytes[32] = 1; // as-server
        bytes.extend(huge_frame_header());
        stream.write_all(&bytes).expect("send");
        read_until_closed(&mut stream, Duration::from_secs(60));
    });
    let mut minion = Minion::start(
        dir.path(),
        "web01",
        master.return_port,
        &format!(
            "masters = [\"127.0.0.1:{}\", \"127.0.0.1:{rogue_port}\"]\nmaster_type = \"hot\"",
            master.return_port
        ),
    );
    master.accept("web01");
    served.join().expect("the rogue endpoint served the minion");
    assert!(
        !minion.proc.exited(),
        "the minion died; its log:\n{}",
        minion.log()
    );
    assert_serves(&mut master);
}

const NARROW_ACL: &str = r#"
[acl]
deployer = [{ "web*" = ["php_app.*"] }]
ops = [{ "web*" = ["php_app.*", "cmd.run"] }]
"#;

/// A master with the shipped php_app module, an app `shop` on `web*`,
/// minion web1 accepted and users `deployer` (php_app only) and `ops`
/// (php_app and cmd.run); answers their tokens.
fn narrow_grants(dir: &std::path::Path) -> (Master, Minion, String, String) {
    let modules = dir.join("master/lua-modules");
    std::fs::create_dir_all(&modules).expect("lua-modules");
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lua-modules/php_app.lua"),
    )
    .expect("shipped module");
    std::fs::write(modules.join("php_app.lua"), source).expect("module");
    std::fs::create_dir_all(dir.join("master/apps.d")).expect("apps.d");
    std::fs::write(
        dir.join("master/apps.d/shop.toml"),
        format!(
            "repo = \"https://git.invalid/shop.git\"\ntarget = \"web*\"\npath = \"{}\"\n",
            dir.join("srv/shop").display()
        ),
    )
    .expect("app");
    let master = Master::start(dir, NARROW_ACL);
    let minion = Minion::start(dir, "web1", master.return_port, "");
    master.accept("web1");
    let base = master.api_url();
    let mut tokens = Vec::new();
    for (user, password) in [("deployer", "deploy-pw-1"), ("ops", "ops-pw-12")] {
        let out = master.cli_input(&["users", "add", user], &format!("{password}\n"));
        assert_eq!(out.code, 0, "{out:?}");
        let (status, body) = login(&base, user, password);
        assert_eq!(status, 200, "{body}");
        tokens.push(body["token"].as_str().expect("token").to_owned());
    }
    let ops = tokens.pop().expect("ops token");
    let deployer = tokens.pop().expect("deployer token");
    (master, minion, deployer, ops)
}

fn submit(master: &Master, token: &str, fun: &str, kwarg: Value) -> (u16, Value) {
    call(
        http().post(format!("{}/v1/jobs", master.api_url())),
        Some(token),
        Some(json!({ "target": "web1", "fun": fun, "kwarg": kwarg })),
    )
}

/// The jobs of `fun` the master stored (as root sees them).
fn stored_jobs(master: &Master, fun: &str) -> usize {
    let (status, page) = call(
        http().get(format!("{}/v1/jobs?fun={fun}", master.api_url())),
        Some(&master.root_token()),
        None,
    );
    assert_eq!(status, 200, "{page}");
    page["jobs"].as_array().map_or(0, Vec::len)
}

/// A user allowed only `php_app.*` on `web*` cannot make it a shell:
/// not with a command keyword (`reload_cmd`), not with an app definition
/// of their own instead of an app's name. With a grant for `cmd.run`
/// too, the command argument is theirs to give.
#[test]
fn a_deploy_grant_stays_a_deploy_grant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _web1, deployer, ops) = narrow_grants(dir.path());
    let pwned = dir.path().join("pwned");
    let shell = format!("touch {}", pwned.display());

    let (status, body) = submit(
        &master,
        &deployer,
        "php_app.deploy",
        json!({ "app": "shop", "tag": "v1", "reload_cmd": shell }),
    );
    assert_eq!(status, 403, "{body}");

    let own_app = json!({
        "name": "shop", "repo": "https://git.invalid/x.git", "target": "*",
        "path": dir.path().join("srv/x").display().to_string(), "pre_deploy": shell,
    });
    let (status, body) = submit(
        &master,
        &deployer,
        "php_app.deploy",
        json!({ "app": own_app, "tag": "v1" }),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = submit(
        &master,
        &deployer,
        "git_deploy.deploy",
        json!({ "app": own_app, "tag": "v1" }),
    );
    assert!(status == 400 || status == 403, "{status} {body}");
    assert_eq!(
        stored_jobs(&master, "php_app.*"),
        0,
        "nothing was published"
    );

    // The same grant deploys by name; a user who may run commands there
    // may give one.
    let (status, body) = submit(
        &master,
        &deployer,
        "php_app.status",
        json!({ "app": "shop" }),
    );
    assert_eq!(status, 202, "{body}");
    let (status, body) = submit(
        &master,
        &ops,
        "php_app.status",
        json!({ "app": "shop", "reload_cmd": "true" }),
    );
    assert_eq!(status, 202, "{body}");
    assert!(!pwned.exists());
}

fn token_works(master: &Master, token: &str) -> bool {
    let (status, body) = call(
        http().get(format!("{}/v1/minions", master.api_url())),
        Some(token),
        None,
    );
    assert!(status == 200 || status == 401, "{status} {body}");
    status == 200
}

fn login_token(master: &Master, user: &str, password: &str) -> String {
    let (status, body) = login(&master.api_url(), user, password);
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Tokens die on logout (both APIs), `users revoke`, a new password and
/// the user's deletion; short passwords are refused; failed logins are
/// throttled with 429 and `Retry-After`.
#[test]
fn tokens_die_when_they_should_and_logins_are_throttled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "[acl]\nalice = [\"test.*\"]\n");
    let base = master.api_url();
    let out = master.cli_input(&["users", "add", "alice"], "short\n");
    assert_ne!(out.code, 0, "a 5-character password is refused: {out:?}");
    let out = master.cli_input(&["users", "add", "alice"], "alice-pw-1\n");
    assert_eq!(out.code, 0, "{out:?}");

    let token = login_token(&master, "alice", "alice-pw-1");
    assert!(token_works(&master, &token));
    let (status, body) = call(http().post(format!("{base}/v1/logout")), Some(&token), None);
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&master, &token), "logged out");

    let token = login_token(&master, "alice", "alice-pw-1");
    let (status, body) = call(http().post(format!("{base}/logout")), Some(&token), None);
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&master, &token), "salt-api logout");

    let token = login_token(&master, "alice", "alice-pw-1");
    assert_eq!(master.cli(&["users", "revoke", "alice"]).code, 0);
    assert!(!token_works(&master, &token), "revoked");

    let token = login_token(&master, "alice", "alice-pw-1");
    assert!(token_works(&master, &token));
    assert_eq!(master.cli(&["users", "delete", "alice"]).code, 0);
    assert!(!token_works(&master, &token), "deleted");

    // Throttling: a name's failures, then 429 before any password check.
    let out = master.cli_input(&["users", "add", "bob"], "bob-pw-123\n");
    assert_eq!(out.code, 0, "{out:?}");
    for _ in 0..5 {
        assert_eq!(login(&base, "bob", "wrong-pw").0, 401);
    }
    let response = http()
        .post(format!("{base}/v1/login"))
        .json(&json!({ "username": "bob", "password": "bob-pw-123" }))
        .send()
        .expect("login");
    assert_eq!(response.status().as_u16(), 429);
    let wait: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&wait), "{wait}");
}

/// salt-api: a lowstate list whose second chunk the ACL refuses runs
/// nothing, not even its first chunk.
#[test]
fn a_lowstate_list_is_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "[acl]\nsalt = [\"test.*\"]\n");
    let _web1 = Minion::start(dir.path(), "web1", master.return_port, "");
    master.accept("web1");
    let out = master.cli_input(&["users", "add", "salt"], "pepper-pw\n");
    assert_eq!(out.code, 0, "{out:?}");
    let token = login_token(&master, "salt", "pepper-pw");
    let (status, body) = call(
        http().post(format!("{}/", master.api_url())),
        Some(&token),
        Some(json!([
            { "client": "local_async", "tgt": "web1", "fun": "test.ping" },
            { "client": "local_async", "tgt": "web1", "fun": "cmd.run", "arg": ["id"] },
        ])),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        stored_jobs(&master, "test.*"),
        0,
        "the first chunk never ran"
    );
    assert_eq!(stored_jobs(&master, "cmd.*"), 0);
}

/// Reads follow the ACL: a user reads the jobs they ran and jobs whose
/// minions are all within their grants; other jobs, every job's events
/// and the audit log need `@jobs` / `@wheel`.
#[test]
fn reads_follow_the_acl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = "[acl]\nweb = [{ \"web*\" = [\"test.*\"] }]\ndb = [{ \"db*\" = [\"test.*\"] }]\nauditor = [\"@jobs\", \"@wheel\"]\n";
    let master = Master::start(dir.path(), acl);
    let _web1 = Minion::start(dir.path(), "web1", master.return_port, "");
    master.accept("web1");
    let mut tokens = std::collections::HashMap::new();
    for user in ["web", "db", "auditor"] {
        let password = format!("{user}-password");
        let out = master.cli_input(&["users", "add", user], &format!("{password}\n"));
        assert_eq!(out.code, 0, "{out:?}");
        tokens.insert(user, login_token(&master, user, &password));
    }
    let out = master.cli(&["run", "target=web1", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no jid in {}", out.stdout));
    let base = master.api_url();
    let get = |user: &str, path: &str| {
        call(
            http().get(format!("{base}{path}")),
            Some(&tokens[user]),
            None,
        )
    };
    assert_eq!(get("web", &format!("/v1/jobs/{jid}")).0, 200);
    assert_eq!(get("auditor", &format!("/v1/jobs/{jid}")).0, 200);
    assert_eq!(get("db", &format!("/v1/jobs/{jid}")).0, 403);
    assert_eq!(get("db", &format!("/v1/jobs/{jid}/events")).0, 403);
    let (status, page) = get("db", "/v1/jobs");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(0), "{page}");
    let (status, page) = get("web", "/v1/jobs");
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(get("web", "/v1/audit").0, 403);
    assert_eq!(get("auditor", "/v1/audit").0, 200);
}

fn minion_status(master: &Master, id: &str) -> String {
    let out = master.cli(&["minions", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
        .as_array()
        .and_then(|all| all.iter().find(|m| m["id"] == id))
        .and_then(|m| m["status"].as_str())
        .unwrap_or("unknown")
        .to_owned()
}

/// A heartbeat recorded off the wire and replayed after its minion died
/// keeps nothing up: liveness needs a heartbeat newer than the last one.
#[test]
fn a_replayed_heartbeat_does_not_keep_a_dead_minion_up() {
    use halite_proto::message::Heartbeat;
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let mut web01 = Minion::start(dir.path(), "web01", master.return_port, "");
    master.accept("web01");
    // What web01 sends, as an observer would record it.
    let (key, _) = halite_pki::KeyPair::load_or_generate(&web01.dir.join("pki"), "minion")
        .expect("the minion's key");
    let recorded = key
        .sign_message(
            "web01",
            &Heartbeat {
                id: "web01".into(),
                nonce: vec![1; 16],
                at: halite_proto::time::now_ms(),
                version: "0.1.0".into(),
                session_epoch: 0,
                running: Vec::new(),
                rtt_ms: None,
            },
        )
        .expect("sign")
        .to_bytes();
    rt.block_on(async {
        let mut raw = halite_tests::fake::RawDealer::connect(master.return_port).await;
        raw.send(recorded.clone()).await;
        raw.barrier("barrier-1", Duration::from_secs(60)).await;
    });
    web01.proc.kill();
    halite_tests::eventually(Duration::from_secs(60), "web01 down", || {
        minion_status(&master, "web01") == "down"
    });
    rt.block_on(async {
        let mut raw = halite_tests::fake::RawDealer::connect(master.return_port).await;
        raw.send(recorded).await;
        raw.barrier("barrier-2", Duration::from_secs(60)).await;
    });
    assert_eq!(minion_status(&master, "web01"), "down");
    let out = master.cli(&["run", "target=web01", "test.ping", "--require-up"]);
    assert_ne!(
        out.code, 0,
        "--require-up published to a dead minion: {out:?}"
    );
}

/// 300 connections to the API that never finish their request headers
/// (half of them send nothing, half a partial request) are all closed by
/// the master, which keeps answering.
#[test]
fn half_open_api_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let api = master.api_url().trim_start_matches("http://").to_owned();
    let mut connections: Vec<TcpStream> = (0..300)
        .map(|i| {
            let mut stream = TcpStream::connect(&api).expect("connect to the API");
            if i % 2 == 1 {
                stream
                    .write_all(b"GET /v1/health HTTP/1.1\r\nHost: halite\r\n")
                    .expect("partial request");
            }
            stream
        })
        .collect();
    for stream in &mut connections {
        read_until_closed(stream, Duration::from_secs(60));
    }
    let (status, body) = call(
        http().get(format!("{}/v1/health", master.api_url())),
        None,
        None,
    );
    assert_eq!(status, 200, "{body}");
}

/// Past `max_pending_keys`, keys of new ids are refused (and nothing is
/// written); ids already pending keep their place.
#[test]
fn pending_keys_are_capped() {
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "max_pending_keys = 3");
    rt.block_on(async {
        let mut raw = halite_tests::fake::RawDealer::connect(master.return_port).await;
        for i in 0..3 {
            raw.barrier(&format!("flood{i}"), Duration::from_secs(60))
                .await;
        }
        // The fourth new id gets no answer: send it, then a known id's
        // auth (answered) as the barrier that it was handled.
        let key = halite_pki::KeyPair::generate().expect("key");
        let auth = halite_proto::message::Auth {
            id: "flood3".into(),
            pubkey: key.public().as_bytes().to_vec(),
            nonce: vec![3; 16],
            eph_pub: vec![0; 32],
            version: "flood".into(),
            grains: json!({}),
            probe: false,
            link_macs: false,
        };
        raw.send(key.sign_message("flood3", &auth).expect("sign").to_bytes())
            .await;
    });
    halite_tests::eventually(Duration::from_secs(60), "three keys pending", || {
        ["flood0", "flood1", "flood2"]
            .iter()
            .all(|id| master.key_status(id).as_deref() == Some("pending"))
    });
    let mut minion = Minion::start(dir.path(), "web01", master.return_port, "");
    // web01 is refused too while the list is full; accepting one makes room.
    assert_eq!(master.cli(&["keys", "accept", "flood0"]).code, 0);
    halite_tests::eventually(Duration::from_secs(60), "web01 pending", || {
        master.key_status("web01").as_deref() == Some("pending")
    });
    assert_eq!(
        master.key_status("flood3"),
        None,
        "the refused id left nothing"
    );
    assert!(!minion.proc.exited());
}

/// A compromised minion targeted by a deploy of `blog` cannot write
/// release history for `shop` ("live at v666"); its report for the app
/// its job was for is recorded.
/// A raw DEALER authenticated as minion `id` with a key of its own,
/// accepted by `master`: an accepted minion the test speaks for.
fn accepted_raw_minion(
    rt: &tokio::runtime::Runtime,
    master: &Master,
    id: &str,
) -> (halite_pki::KeyPair, halite_tests::fake::RawDealer) {
    let key = halite_pki::KeyPair::generate().expect("key");
    let raw = rt.block_on(async {
        let mut raw = halite_tests::fake::RawDealer::connect(master.return_port).await;
        raw.auth(&key, id, Duration::from_secs(60)).await;
        raw
    });
    assert_eq!(master.cli(&["keys", "accept", id]).code, 0);
    (key, raw)
}

#[test]
fn a_minion_cannot_forge_release_history_for_another_app() {
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("master/apps.d")).expect("apps.d");
    for (app, target) in [("shop", "web1"), ("blog", "web2")] {
        std::fs::write(
            dir.path().join(format!("master/apps.d/{app}.toml")),
            format!(
                "repo = \"https://git.invalid/{app}.git\"\ntarget = \"{target}\"\npath = \"/srv/{app}\"\n"
            ),
        )
        .expect("app");
    }
    let master = Master::start(dir.path(), "");
    let (key, mut raw) = accepted_raw_minion(&rt, &master, "web2");
    let report = |app: &str, version: &str| {
        json!({
            "app": app, "action": "deploy", "result": "live", "revision": "abc",
            "reference": version, "release": version, "previous": null,
            "stages": [], "duration_ms": 1,
        })
    };
    for (app, version) in [("shop", "v666"), ("blog", "v1")] {
        let out = master.cli(&[
            "run",
            "target=web2",
            "git_deploy.deploy",
            "app=blog",
            "tag=v1",
            "--async",
            "--json",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let jid = halite_proto::Jid::parse(out.json()["jid"].as_str().expect("jid")).expect("jid");
        let bytes = halite_tests::fake::signed_return_of(
            &key,
            "web2",
            &jid,
            "git_deploy.deploy",
            report(app, version),
        );
        rt.block_on(async {
            raw.send(bytes).await;
            raw.barrier(&format!("barrier-{app}"), Duration::from_secs(60))
                .await;
        });
    }
    let releases = |app: &str| {
        let (status, body) = call(
            http().get(format!("{}/v1/apps/{app}/releases", master.api_url())),
            Some(&master.root_token()),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    // The collector stores in batches: blog's record shows it ran.
    halite_tests::eventually(Duration::from_secs(60), "blog's release recorded", || {
        releases("blog")["live"]
            .as_array()
            .is_some_and(|live| !live.is_empty())
    });
    let shop = releases("shop");
    assert_eq!(shop["live"], json!([]), "{shop}");
    assert_eq!(shop["history"], json!([]), "{shop}");
}

/// Hot and failover minions send returns to every master; a master
/// records another master's job only from that master's signed summary,
/// and only for a minion its target names. Before, naming another master
/// in a return was enough to create a job record, or to add a return to a
/// job of this master that never targeted the minion.
#[test]
fn a_minion_cannot_speak_for_another_master() {
    use halite_proto::message::{JobSummary, VouchedJob};
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let (key, mut raw) = accepted_raw_minion(&rt, &master, "web2");
    // Another master of the same minions, trusted as operators do.
    let peer = halite_pki::KeyPair::generate().expect("key");
    std::fs::create_dir_all(master.dir.join("pki/peers")).expect("peers");
    peer.public()
        .write_file(&master.dir.join("pki/peers/master-x.pub"))
        .expect("peer key");
    let vouched = |signer: &halite_pki::KeyPair, jid: &halite_proto::Jid, tgt: &str| {
        let summary = JobSummary {
            jid: jid.clone(),
            master: "master-x".into(),
            tgt: tgt.into(),
            tgt_type: halite_proto::TargetType::Glob,
            fun: "test.ping".into(),
            arg: Vec::new(),
            kwarg: Default::default(),
            user: "ops-on-x".into(),
            timeout: 60,
            issued_at: halite_proto::time::now_ms(),
            expires_at: halite_proto::time::now_ms() + 60_000,
        };
        VouchedJob {
            signature: signer.sign_job_summary(&summary),
            summary,
        }
    };
    let claim = |jid: &halite_proto::Jid, job: Option<VouchedJob>| {
        let mut ret = halite_tests::fake::return_of("web2", jid, "test.ping", json!("from web2"));
        ret.master = "master-x".into();
        ret.job = job;
        key.sign_message("web2", &ret).expect("sign").to_bytes()
    };
    // A job of this master for web1 only.
    let out = master.cli(&["run", "target=web1", "test.ping", "--async", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let own = halite_proto::Jid::parse(out.json()["jid"].as_str().expect("jid")).expect("jid");
    let ids = halite_proto::JidGenerator::new();
    let (invented, forged, elsewhere, real) = (ids.next(), ids.next(), ids.next(), ids.next());
    rt.block_on(async {
        // Its word alone: for this master's own job, and for a new jid.
        raw.send(claim(&own, None)).await;
        raw.send(claim(&invented, None)).await;
        // A summary it signed itself, and master-x's summary of a job
        // for other minions.
        raw.send(claim(&forged, Some(vouched(&key, &forged, "web*"))))
            .await;
        raw.send(claim(&elsewhere, Some(vouched(&peer, &elsewhere, "db*"))))
            .await;
        // What a real hot minion sends: recorded.
        raw.send(claim(&real, Some(vouched(&peer, &real, "web*"))))
            .await;
    });
    let show = |jid: &halite_proto::Jid| master.cli(&["jobs", "show", jid.as_str(), "--json"]);
    // Returns are stored in order: once the last is in, the rest were handled.
    halite_tests::eventually(Duration::from_secs(60), "the vouched job recorded", || {
        show(&real).code == 0
    });
    let recorded = show(&real).json();
    assert_eq!(recorded["published_by"], "master-x", "{recorded}");
    assert_eq!(recorded["target"], "web*", "{recorded}");
    assert!(recorded["returns"]["web2"].is_object(), "{recorded}");
    for jid in [&invented, &forged, &elsewhere] {
        let out = show(jid);
        assert_ne!(out.code, 0, "{jid} recorded: {out:?}");
    }
    let own_job = show(&own).json();
    assert!(own_job["returns"].get("web2").is_none(), "{own_job}");
}

/// A plain SUB socket on the PUB port, with no key, sees that jobs go
/// out, not what they are: function, arguments and user are sealed under
/// the session key only authenticated minions hold.
#[test]
fn job_publications_are_not_readable_without_a_session_key() {
    use zeromq::{Socket, SocketRecv};
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _web01) = master_with_minion(dir.path());
    let mut sub = rt.block_on(async {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&format!("tcp://127.0.0.1:{}", master.publish_port))
            .await
            .expect("connect");
        sub.subscribe("").await.expect("subscribe");
        // A beacon (every second) shows the subscription is in place.
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), sub.recv())
                .await
                .expect("a beacon in time")
                .expect("message");
            if message.get(0).is_some_and(|t| t.as_ref() == b"beacon") {
                break sub;
            }
        }
    });
    let marker = "SECRET-MARKER-4242";
    let out = master.cli(&["run", "target=web01", "cmd.run", &format!("echo {marker}")]);
    assert_eq!(out.code, 0, "{out:?}");
    let publication = rt.block_on(async {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(60), sub.recv())
                .await
                .expect("the job's publication in time")
                .expect("message");
            if message.get(0).is_some_and(|t| t.as_ref() == b"job") {
                break message.get(1).expect("body").to_vec();
            }
        }
    });
    let text = String::from_utf8_lossy(&publication);
    assert!(!text.contains(marker), "the job's arguments are readable");
    assert!(!text.contains("cmd.run"), "the job's function is readable");
    assert!(
        halite_proto::Envelope::from_bytes(&publication).is_err(),
        "a plain signed envelope on the wire"
    );
}

/// An accepted minion (a compromised low-value server, here the test)
/// reads the jobs published to everyone, but not the secret arguments of
/// a job sent to another minion: those are sealed to each target's own
/// key, given at its auth.
#[test]
fn an_accepted_minion_cannot_open_another_minions_secrets() {
    use halite_proto::message::{Auth, AuthReply, Job, KeyStatus};
    use zeromq::{Socket, SocketRecv, SocketSend};
    let rt = halite_tests::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _web01) = master_with_minion(dir.path());
    let mole = halite_pki::KeyPair::generate().expect("key");
    // The full auth a minion makes, twice: pending, then accepted.
    let auth_once = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let mut dealer = zeromq::DealerSocket::new();
            dealer
                .connect(&format!("tcp://127.0.0.1:{}", master.return_port))
                .await
                .expect("connect");
            let (ephemeral, eph_pub) = halite_pki::Ephemeral::generate().expect("ephemeral");
            let nonce = vec![8; 16];
            let auth = Auth {
                id: "mole".into(),
                pubkey: mole.public().as_bytes().to_vec(),
                nonce: nonce.clone(),
                eph_pub,
                version: "0.1.0".into(),
                grains: json!({}),
                probe: false,
                link_macs: false,
            };
            let bytes = mole.sign_message("mole", &auth).expect("sign").to_bytes();
            dealer
                .send(zeromq::ZmqMessage::from(bytes::Bytes::from(bytes)))
                .await
                .expect("send");
            let answer = tokio::time::timeout(Duration::from_secs(60), dealer.recv())
                .await
                .expect("answer in time")
                .expect("answer");
            let envelope =
                halite_proto::Envelope::from_bytes(&answer.into_vec()[0]).expect("envelope");
            let reply: AuthReply = envelope.open().expect("auth reply");
            let master_pub = halite_pki::PublicKey::from_bytes(&reply.master_pub).expect("key");
            match (reply.status, reply.session) {
                (KeyStatus::Accepted, Some(grant)) => {
                    let transcript =
                        halite_pki::transcript("mole", &mole.public(), &master_pub, &nonce);
                    Some(ephemeral.accept(&grant, &transcript).expect("grant opens"))
                }
                _ => None,
            }
        })
    };
    assert!(auth_once(&rt).is_none(), "pending first");
    assert_eq!(master.cli(&["keys", "accept", "mole"]).code, 0);
    let (session, personal) = auth_once(&rt).expect("accepted: keys granted");
    let personal = personal.expect("a key of its own");
    let mut sub = rt.block_on(async {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&format!("tcp://127.0.0.1:{}", master.publish_port))
            .await
            .expect("connect");
        sub.subscribe("job").await.expect("subscribe");
        sub
    });
    // The subscription needs a moment to reach the master: publish until
    // the mole has seen a job (each publication is a new job).
    let secret = "s3cret-of-web01";
    let job: Job = loop {
        let out = master.cli(&[
            "run",
            "target=web01",
            "test.ping",
            "--secret",
            &format!("token={secret}"),
            "--async",
            "--json",
        ]);
        assert_eq!(out.code, 0, "{out:?}");
        let seen =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), sub.recv()).await });
        if let Ok(Ok(message)) = seen {
            let body = message.get(1).expect("body").to_vec();
            let plain = halite_pki::open_publication(
                |epoch| (epoch == session.epoch()).then(|| session.clone()),
                "job",
                &body,
            )
            .expect("an accepted minion reads the publication");
            break halite_proto::Envelope::from_bytes(&plain)
                .expect("envelope")
                .open()
                .expect("job");
        }
    };
    assert!(
        job.secret
            .as_ref()
            .is_none_or(|shared| session.open(job.jid.as_str().as_bytes(), shared).is_err()),
        "the secrets open with the shared session key"
    );
    assert!(!job.secrets.contains_key("mole"));
    let sealed = job.secrets.get("web01").expect("sealed for web01");
    assert!(halite_pki::open_for_minion(&personal, job.jid.as_str(), "web01", sealed).is_err());
    assert!(halite_pki::open_for_minion(&session, job.jid.as_str(), "web01", sealed).is_err());
}
