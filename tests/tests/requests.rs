//! Release requests for real: a master with an app in two environments
//! (staging deployed on request, production approved by a lead and
//! promoted from staging), two minions, a git repository, two users.
//! The whole way from request to live, self-approval refused, one request
//! at a time, promotion order, a tag moved after approval refused, and
//! the requests kept across a master restart.

use halite_tests::api::Session as Api;
use halite_tests::git::{git, TwoEnvShop};
use halite_tests::Master;
use serde_json::{json, Value};

const ACL: &str = r#"
[acl]
dev = [{ "web*" = ["git_deploy.*"] }]
lead = [{ "web*" = ["git_deploy.*"] }]
"#;

fn user(master: &Master, name: &str) -> Api {
    Api::new_user(master, name)
}

/// Makes a request for `tag` of shop in `env`.
fn request(api: &Api, env: &str, tag: &str) -> (u16, Value) {
    api.post(
        "/v1/requests",
        json!({ "app": "shop", "env": env, "version": { "tag": tag }, "reason": format!("{tag} to {env}") }),
    )
}

#[test]
fn a_release_goes_from_request_to_live_as_the_environments_rules_say() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TwoEnvShop::create(dir.path());
    let shop = &app.repo;
    let mut master = Master::start(dir.path(), ACL);
    let _minions = master.start_minions(dir.path(), &["web1", "web2"]);
    let dev = user(&master, "dev");
    let lead = user(&master, "lead");
    let live = |id: &str| app.live(id);

    // Production takes releases through requests only: a deploy straight
    // to its minions is refused, by the app route and by a plain job;
    // staging, without rules, may still be deployed directly.
    let (status, body) = dev.post(
        "/v1/apps/shop/deploy",
        json!({ "tag": "v1", "target": "web2" }),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("production"),
        "{body}"
    );
    let (status, body) = dev.post(
        "/v1/jobs",
        json!({ "target": "web*", "fun": "git_deploy.deploy", "kwarg": { "app": "shop", "tag": "v1" } }),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = dev.post(
        "/v1/jobs",
        json!({ "target": "web2", "fun": "git_deploy.status", "kwarg": { "app": "shop" } }),
    );
    assert_eq!(status, 202, "reading is not releasing: {body}");

    // Production takes only what is live on staging.
    let (status, body) = request(&dev, "production", "v1");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not live on staging"),
        "{body}"
    );

    // Staging needs no approval: requested, deployed, live.
    let (status, staged) = request(&dev, "staging", "v1");
    assert_eq!(status, 201, "{staged}");
    assert_eq!(staged["revision"], shop.rev("v1"), "bound to the commit");
    let id = staged["id"].as_u64().unwrap();
    let (status, body) = dev.post(&format!("/v1/requests/{id}/deploy"), json!({}));
    assert_eq!(status, 200, "{body}");
    dev.wait_state(id, "live");
    assert_eq!(live("web1").as_deref(), Some("one"));
    assert_eq!(live("web2"), None, "production untouched");

    // Production: one request at a time, approved by someone else.
    let (status, prod) = request(&dev, "production", "v1");
    assert_eq!(status, 201, "{prod}");
    let prod_id = prod["id"].as_u64().unwrap();
    let (status, body) = request(&dev, "production", "v1");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("request {prod_id}")),
        "{body}"
    );
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/deploy"), json!({}));
    assert_eq!(status, 409, "not approved yet: {body}");
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/approve"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("may not approve"),
        "{body}"
    );
    let (status, body) = lead.post(&format!("/v1/requests/{prod_id}/approve"), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/deploy"), json!({}));
    assert_eq!(status, 200, "{body}");
    let done = dev.wait_state(prod_id, "live");
    assert_eq!(live("web2").as_deref(), Some("one"));
    let steps: Vec<(&str, &str)> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["state"].as_str().unwrap(), t["by"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("requested", "dev"),
            ("approved", "lead"),
            ("deploying", "dev"),
            ("live", "master")
        ]
    );

    // v2 through staging, approved, then its tag moves: refused.
    let (_, staged) = request(&dev, "staging", "v2");
    let staged_id = staged["id"].as_u64().unwrap();
    dev.post(&format!("/v1/requests/{staged_id}/deploy"), json!({}));
    dev.wait_state(staged_id, "live");
    let (status, prod) = request(&dev, "production", "v2");
    assert_eq!(status, 201, "{prod}");
    let prod_id = prod["id"].as_u64().unwrap();
    // The lead approves from the command line, as themselves.
    let out = master.cli_as(
        "lead",
        "pw-of-lead",
        &["requests", "approve", &prod_id.to_string()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &["requests", "approve", &prod_id.to_string()],
    );
    assert_ne!(out.code, 0, "already approved: {out:?}");
    std::fs::write(shop.work.join("index.html"), "unreviewed").unwrap();
    git(&shop.work, &["commit", "-qam", "sneaky"]);
    git(&shop.work, &["tag", "-f", "v2"]);
    git(
        &shop.work,
        &["push", "-q", "--force", "origin", "main", "--tags"],
    );
    let (status, body) = dev.post(&format!("/v1/requests/{prod_id}/deploy"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("was approved"),
        "{body}"
    );
    assert_eq!(
        live("web2").as_deref(),
        Some("one"),
        "nothing unreviewed went out"
    );

    // Everything is still there after a restart.
    master.restart();
    let out = master.cli_as(
        "dev",
        "pw-of-dev",
        &[
            "requests",
            "list",
            "--app",
            "shop",
            "--env",
            "production",
            "--json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let listed = out.json();
    let states: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["approved", "live"]);
}
