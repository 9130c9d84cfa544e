//! The release workflow around requests, for real: a master with a
//! freeze window on production, an approver group, a notification
//! receiver, a seconds-level schedule, an app deployed automatically to
//! staging by signed webhooks and another whose new tags are found by
//! polling; two minions and git repositories.
//!
//! Seen through the API and the CLI: versions and change sets, a freeze
//! refusal and an audited override, webhooks with valid and forged
//! signatures, polling, a rollback request, notifications signed and
//! retried, a schedule firing, paused and kept across a restart.

use std::time::Duration;

use halite_tests::api::{http, Session as Api};
use halite_tests::git::Repo;
use halite_tests::receiver::Receiver;
use halite_tests::{eventually, Master};
use serde_json::{json, Value};

fn user(master: &Master, name: &str) -> Api {
    Api::new_user(master, name)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(ring::hmac::sign(&key, body).as_ref())
}

/// POSTs a webhook with the given headers, no token.
fn hook(base: &str, app: &str, headers: &[(&str, String)], body: &Value) -> (u16, Value) {
    let mut request = http()
        .post(format!("{base}/v1/hooks/{app}"))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body.to_string()).send().expect("hook");
    let status = response.status().as_u16();
    let text = response.text().expect("hook body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn triggers_freezes_schedules_and_notifications_work_on_real_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("git");
    let shop = Repo::create(dir.path(), &root, "shop", &[("v1", "one")]);
    let blog = Repo::create(dir.path(), &root, "blog", &[("b1", "first post")]);
    let srv = dir.path().join("srv");
    let receiver = Receiver::start(1);
    let master_dir = dir.path().join("master");
    let apps = master_dir.join("apps.d");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        master_dir.join("secrets.toml"),
        "[shop-hook]\ntoken = \"hook-secret\"\n[notify]\ntoken = \"notify-secret\"\n",
    )
    .unwrap();
    std::fs::write(
        apps.join("shop.toml"),
        format!(
            "repo = \"{}\"\ntarget = \"web*\"\npath = \"{}/{{id}}/shop\"\n\
             [env.staging]\ntarget = \"web1\"\nauto_deploy = true\n\
             [env.production]\ntarget = \"web2\"\nrequires_approval = true\napprovers = [\"leads%\"]\npromote_from = \"staging\"\n\
             [trigger]\nenv = \"staging\"\nsecret = \"shop-hook\"\ntags = \"v*\"\n",
            shop.bare.display(),
            srv.display()
        ),
    )
    .unwrap();
    std::fs::write(
        apps.join("blog.toml"),
        format!(
            "repo = \"{}\"\ntarget = \"web1\"\npath = \"{}/{{id}}/blog\"\n\
             [env.staging]\ntarget = \"web1\"\n\
             [trigger]\nenv = \"staging\"\npoll = 1\n",
            blog.bare.display(),
            srv.display()
        ),
    )
    .unwrap();
    let config = format!(
        r#"
[acl]
dev = [{{ "web*" = ["git_deploy.*", "test.ping"] }}]
"leads%" = [{{ "web*" = ["git_deploy.*"] }}, "@freeze_override"]

[groups]
leads = ["lead"]

[[freeze]]
name = "release freeze"
from = "2020-01-01"
until = "2099-01-01"
envs = ["production"]

[[notify]]
url = "{url}/signed"
secret = "notify"

[[notify]]
url = "{url}/chat"
format = "slack"
events = ["live"]

[[schedule]]
name = "ping-web1"
cron = "*/2 * * * * *"
job = {{ target = "web1", fun = "test.ping" }}
"#,
        url = receiver.url
    );
    let mut master = Master::start(dir.path(), &config);
    let _minions = master.start_minions(dir.path(), &["web1", "web2"]);
    let dev = user(&master, "dev");
    let lead = user(&master, "lead");
    let live = |id: &str, app: &str| {
        std::fs::read_to_string(srv.join(id).join(app).join("current/index.html")).ok()
    };

    // A signed GitHub push of tag v1 makes a staging request, deployed at
    // once (staging has auto_deploy).
    let push = |tag: &str| json!({ "ref": format!("refs/tags/{tag}"), "after": "1".repeat(40), "pusher": { "name": "carol" } });
    let body = push("v1");
    let signed = |body: &Value| {
        format!(
            "sha256={}",
            hmac_hex("hook-secret", body.to_string().as_bytes())
        )
    };
    // A push signed as GitHub signs it.
    let github_push = |body: &Value| {
        hook(
            &master.api_url(),
            "shop",
            &[
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", signed(body)),
            ],
            body,
        )
    };
    let (status, answer) = github_push(&body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["source"], "github");
    let staged = answer["request"]["id"].as_u64().expect("a request");
    assert_eq!(answer["request"]["requester"], "webhook:github");
    dev.wait_state(staged, "live");
    assert_eq!(live("web1", "shop").as_deref(), Some("one"));

    // Forged: a signature under another secret, a body changed under a
    // real signature, a wrong GitLab token. Nothing is requested.
    let forged = push("v9");
    for headers in [
        vec![
            ("x-github-event", "push".to_owned()),
            (
                "x-hub-signature-256",
                format!(
                    "sha256={}",
                    hmac_hex("guess", forged.to_string().as_bytes())
                ),
            ),
        ],
        vec![
            ("x-github-event", "push".to_owned()),
            ("x-hub-signature-256", signed(&body)),
        ],
        vec![
            ("x-gitlab-event", "Tag Push Hook".to_owned()),
            ("x-gitlab-token", "guess".to_owned()),
        ],
        vec![("x-gitea-event", "push".to_owned())],
    ] {
        let (status, answer) = hook(&master.api_url(), "shop", &headers, &forged);
        assert_eq!(status, 401, "{headers:?}: {answer}");
    }
    let (_, listed) = dev.get("/v1/requests?app=shop");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    // A ping is answered and ignored.
    let ping = json!({ "zen": "hi" });
    let (status, answer) = hook(
        &master.api_url(),
        "shop",
        &[
            ("x-github-event", "ping".into()),
            ("x-hub-signature-256", signed(&ping)),
        ],
        &ping,
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer["ignored"].is_string(), "{answer}");

    // A paused trigger answers a signed push and asks for nothing; the
    // pause is kept until resumed (here with the CLI).
    let (status, paused) = dev.post("/v1/apps/shop/trigger/pause", json!({}));
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"]["by"], "dev", "{paused}");
    let (status, answer) = github_push(&body);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["ignored"].is_string() && answer["request"].is_null(),
        "{answer}"
    );
    let (_, listed) = dev.get("/v1/requests?app=shop");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let out = master.cli_as("dev", "pw-of-dev", &["triggers", "list", "--json"]);
    let shop_trigger = out
        .json()
        .as_array()
        .and_then(|all| all.iter().find(|t| t["app"] == "shop").cloned())
        .expect("shop's trigger listed");
    assert_eq!(shop_trigger["paused"]["by"], "dev", "{out:?}");
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &["triggers", "resume", "shop", "--json"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.json()[0]["paused"].is_null(), "{out:?}");

    // v2 by a GitLab tag hook (token): staging goes to v2.
    shop.commit_tag("v2", "two");
    let gitlab = json!({ "ref": "refs/tags/v2", "after": "2".repeat(40), "user_username": "dave" });
    let (status, answer) = hook(
        &master.api_url(),
        "shop",
        &[
            ("x-gitlab-event", "Tag Push Hook".into()),
            ("x-gitlab-token", "hook-secret".into()),
        ],
        &gitlab,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["source"], "gitlab");
    let staged_v2 = answer["request"]["id"].as_u64().expect("a request");
    dev.wait_state(staged_v2, "live");
    assert_eq!(live("web1", "shop").as_deref(), Some("two"));

    // Versions: tags newest first, then branches.
    let (status, versions) = dev.get("/v1/apps/shop/versions");
    assert_eq!(status, 200, "{versions}");
    let names: Vec<(&str, &str)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["kind"].as_str().unwrap(), v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("tag", "v2"), ("tag", "v1"), ("branch", "main")]);

    // Production: nothing live, so v1 to production... is refused by
    // promotion (v1 is no longer live on staging); v2 is.
    let (status, body) = dev.post(
        "/v1/requests",
        json!({ "app": "shop", "env": "production", "version": { "tag": "v1" }, "reason": "old" }),
    );
    assert_eq!(status, 400, "{body}");
    let (status, prod) = dev.post(
        "/v1/requests",
        json!({ "app": "shop", "env": "production", "version": { "tag": "v2" }, "reason": "ship two" }),
    );
    assert_eq!(status, 201, "{prod}");
    let prod_id = prod["id"].as_u64().unwrap();
    // What it changes: from nothing live, the two commits and the file.
    let (status, changes) = dev.get(&format!("/v1/requests/{prod_id}/changes"));
    assert_eq!(status, 200, "{changes}");
    let subjects: Vec<&str> = changes["commits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["v2", "v1"]);
    assert_eq!(changes["files"][0]["path"], "index.html");
    assert_eq!(changes["files"][0]["change"], "added");
    // The lead approves through the group.
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/approve"), json!({}));
    assert_eq!(status, 409, "dev is not a lead: {body}");
    let (status, body) = lead.post(&format!("/v1/requests/{prod_id}/approve"), json!({}));
    assert_eq!(status, 200, "{body}");

    // Production is frozen: refused naming the window; dev may not
    // override; the lead may, and the override is audited.
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/deploy"), json!({}));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("release freeze"),
        "{body}"
    );
    let (status, body) = dev.post(
        &format!("/v1/requests/{prod_id}/deploy"),
        json!({ "override_freeze": true }),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("@freeze_override"),
        "{body}"
    );
    let (status, body) = dev.post(
        "/v1/jobs",
        json!({ "target": "web2", "fun": "git_deploy.status", "kwarg": { "app": "shop" } }),
    );
    assert_eq!(
        status, 202,
        "reading is not releasing, frozen or not: {body}"
    );
    let out = master.cli_as(
        "lead",
        "pw-of-lead",
        &[
            "requests",
            "deploy",
            &prod_id.to_string(),
            "--override-freeze",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let done = lead.wait_state(prod_id, "live");
    assert_eq!(live("web2", "shop").as_deref(), Some("two"));
    let deploying = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["state"] == "deploying")
        .cloned()
        .unwrap();
    assert_eq!(deploying["by"], "lead");
    assert!(
        deploying["reason"]
            .as_str()
            .unwrap()
            .contains("release freeze"),
        "{deploying}"
    );
    let (_, audit) = Api::root(&master).get("/v1/audit?limit=200");
    let overridden = audit.as_array().unwrap().iter().any(|r| {
        r["user"] == "lead"
            && r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("freeze window"))
    });
    assert!(overridden, "{audit}");
    let hooked = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v1/hooks/shop" && r["status"] == 401)
        .count();
    assert_eq!(hooked, 4, "every forged hook audited: {audit}");

    // A rollback is a request too: staging goes back to v1, and the v2
    // release there is marked rolled back.
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &[
            "requests",
            "rollback",
            "shop",
            "staging",
            "--reason",
            "v2 breaks checkout",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let rollback = out.json()["id"].as_u64().unwrap();
    // Deployed twice at once (a double click): one job, one refusal.
    let path = format!("/v1/requests/{rollback}/deploy");
    let mut statuses: Vec<u16> = std::thread::scope(|scope| {
        let both = [
            scope.spawn(|| dev.post(&path, json!({}))),
            scope.spawn(|| dev.post(&path, json!({}))),
        ];
        both.map(|t| t.join().unwrap().0).to_vec()
    });
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    dev.wait_state(rollback, "live");
    dev.wait_state(staged_v2, "rolled_back");
    assert_eq!(live("web1", "shop").as_deref(), Some("one"));
    // Staging runs v1 again: going to v2 is one commit, one line changed.
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &["changes", "shop", "staging", "tag=v2", "--json"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let changes = out.json();
    assert_eq!(changes["from"], shop.rev("v1"));
    assert_eq!(changes["commits"].as_array().unwrap().len(), 1, "{changes}");
    assert_eq!(
        changes["files"],
        json!([{ "path": "index.html", "change": "modified", "added": 1, "removed": 1 }])
    );
    let out = master.cli_as("dev", "pw-of-dev", &["versions", "shop"]);
    assert_eq!(out.code, 0, "{out:?}");

    // Polling: the blog's first poll records the tags there are (its
    // cache holds b1 then); a new tag makes a request.
    let cache = dir.path().join("master/data/git/blog.git");
    eventually(Duration::from_secs(60), "the blog polled once", || {
        cache.join("refs/tags/b1").exists() || cache.join("packed-refs").exists()
    });
    blog.commit_tag("b2", "second post");
    let mut polled = Value::Null;
    eventually(
        Duration::from_secs(60),
        "a request for the new blog tag",
        || {
            polled = dev.get("/v1/requests?app=blog").1;
            polled.as_array().is_some_and(|l| {
                l.iter()
                    .any(|r| r["version"]["tag"] == "b2" && r["requester"] == "poll")
            })
        },
    );

    // Notifications: every event, signed, with one retry (the receiver
    // refused the first); the Slack-shaped one only for `live`.
    eventually(
        Duration::from_secs(60),
        "notifications of the production release",
        || {
            receiver.received().iter().any(|r| {
                r.path == "/signed"
                    && r.accepted
                    && r.headers.get("x-halite-event").map(String::as_str) == Some("live")
                    && serde_json::from_slice::<Value>(&r.body)
                        .is_ok_and(|b| b["request"]["id"] == prod_id)
            })
        },
    );
    let received = receiver.received();
    assert!(
        received.iter().any(|r| !r.accepted),
        "the first was refused"
    );
    let refused = received.iter().find(|r| !r.accepted).unwrap();
    assert!(
        received
            .iter()
            .any(|r| r.accepted && r.body == refused.body),
        "the refused one was sent again"
    );
    for r in received.iter().filter(|r| r.path == "/signed") {
        let expected = format!("sha256={}", hmac_hex("notify-secret", &r.body));
        assert_eq!(r.headers.get("x-halite-signature-256"), Some(&expected));
    }
    let events: Vec<String> = received
        .iter()
        .filter(|r| r.path == "/signed" && r.accepted)
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body).is_ok_and(|b| b["request"]["id"] == prod_id)
        })
        .map(|r| r.headers["x-halite-event"].clone())
        .collect();
    for event in ["created", "approved", "deploying", "live"] {
        assert!(events.iter().any(|e| e == event), "{event} in {events:?}");
    }
    let chat: Vec<Value> = received
        .iter()
        .filter(|r| r.path == "/chat")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(!chat.is_empty());
    for message in &chat {
        assert_eq!(message.as_object().unwrap().len(), 1, "{message}");
        assert!(
            message["text"].as_str().unwrap().contains("live"),
            "{message}"
        );
    }

    // The schedule fires, each run a job; dev may not schedule cmd.run.
    let mut schedule = Value::Null;
    eventually(Duration::from_secs(30), "two scheduled runs", || {
        schedule = dev.get("/v1/schedules/ping-web1").1;
        schedule["runs"]
            .as_array()
            .is_some_and(|r| r.iter().filter(|r| r["jid"].is_string()).count() >= 2)
    });
    let jid = schedule["runs"][0]["jid"].as_str().unwrap().to_owned();
    let (status, job) = dev.get(&format!("/v1/jobs/{jid}"));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["fun"], "test.ping");
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &[
            "schedules",
            "add",
            "nightly-shell",
            "0 2 * * *",
            "target=web1",
            "cmd.run",
            "true",
        ],
    );
    assert_ne!(out.code, 0, "dev has no cmd.run: {out:?}");
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &[
            "schedules",
            "add",
            "dev-ping",
            "*/3 * * * * *",
            "target=web1",
            "test.ping",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["owner"], "dev");

    // Paused, it stops; the state and runs survive a restart, no due
    // time runs twice, and resumed it runs again.
    let out = master.cli(&["schedules", "pause", "ping-web1", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["paused"], true);
    let before = Api::root(&master).get("/v1/schedules/ping-web1").1["runs"].clone();
    master.restart();
    let root = Api::root(&master);
    let after = root.get("/v1/schedules/ping-web1").1;
    assert_eq!(after["paused"], true);
    assert_eq!(after["runs"], before, "paused: no run, and none lost");
    let out = master.cli(&["schedules", "resume", "ping-web1"]);
    assert_eq!(out.code, 0, "{out:?}");
    let count = before.as_array().unwrap().len();
    let mut resumed = Value::Null;
    eventually(Duration::from_secs(30), "a run after resuming", || {
        resumed = root.get("/v1/schedules/ping-web1").1;
        resumed["runs"].as_array().is_some_and(|r| r.len() > count)
    });
    let dues: Vec<u64> = resumed["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["due"].as_u64().unwrap())
        .collect();
    let mut unique = dues.clone();
    unique.dedup();
    assert_eq!(unique, dues, "no time ran twice");
    let out = master.cli(&["schedules", "list", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let listed = out.json();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev-ping", "ping-web1"]);
    let out = master.cli(&["schedules", "remove", "ping-web1"]);
    assert_ne!(
        out.code, 0,
        "a config schedule is removed from the config: {out:?}"
    );
}
