//! The portal in a real browser: headless Chromium driven through
//! WebDriver against a real master with two minions and a git
//! repository. A developer releases to staging and watches the console,
//! requests production, cannot approve it themselves; a lead approves and
//! deploys; a rollback with a reason; the dashboard, statistics and the
//! other screens; a user without the grant neither sees nor can force a
//! deploy; nothing in the browser console; usable on a phone's width.
//!
//! A second test works the portal from the keyboard alone and follows a
//! job's console across a master restart.
//!
//! Every screen is saved as a PNG under `target/portal-screenshots/`; with
//! `HALITE_UPDATE_SCREENSHOTS=1` they also replace `docs/portal/`.

use std::path::{Path, PathBuf};

use halite_tests::api::Session;
use halite_tests::browser::Browser;
use halite_tests::git::TwoEnvShop;
use halite_tests::{Master, Minion};
use serde_json::json;

/// Runs blocking work (the harness's HTTP client, process calls) from
/// the async test without stalling the runtime.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// A form body, as a browser sends it.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

const ACL: &str = r#"
[acl]
dev = [{ "web*" = ["git_deploy.*"] }]
lead = [{ "web*" = ["git_deploy.*"] }, "@wheel"]
viewer = [{ "db*" = ["git_deploy.*"] }]
"#;

/// Where screenshots go.
fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/portal-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(browser: &Browser, name: &str) {
    let path = shots().join(format!("{name}.png"));
    browser.screenshot(&path).await;
    if std::env::var_os("HALITE_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/portal");
        std::fs::create_dir_all(&docs).expect("docs/portal");
        std::fs::copy(&path, docs.join(format!("{name}.png"))).expect("copy screenshot");
    }
}

async fn log_in(browser: &Browser, base: &str, user: &str) {
    browser.open(&format!("{base}/")).await;
    browser.fill("#username", user).await;
    browser.fill("#password", &format!("pw-of-{user}")).await;
    browser.click("#login").await;
    assert_eq!(browser.text("#user").await, user);
}

async fn log_out(browser: &Browser) {
    browser.click(".who button").await;
    browser.wait_for("#username").await;
}

/// The job id of the console page the browser is on.
async fn console_jid(browser: &Browser) -> String {
    let console = browser.wait_for("#console").await;
    console
        .attr("data-jid")
        .await
        .expect("attr")
        .expect("data-jid")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_through_the_portal_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = TwoEnvShop::create(dir.path());
    // Staging also polls the repository (hourly: only the first poll,
    // which records the tags, runs here).
    let definition = dir.path().join("master/apps.d/shop.toml");
    let mut toml = std::fs::read_to_string(&definition).expect("shop.toml");
    toml.push_str("[trigger]\nenv = \"staging\"\npoll = 3600\n");
    std::fs::write(&definition, toml).expect("shop.toml");
    let (master, _minions) = blocking(|| {
        let master = Master::start(dir.path(), ACL);
        let minions = master.start_minions(dir.path(), &["web1", "web2"]);
        for user in ["dev", "lead", "viewer"] {
            Session::new_user(&master, user);
        }
        (master, minions)
    });
    let root_api = Session::root(&master);
    let base = master.api_url();
    let live = |id: &str| app.live(id);
    let browser = Browser::start(dir.path()).await;

    // The developer logs in (a browser at / is sent to the portal).
    browser.open(&format!("{base}/")).await;
    browser.wait_for("#username").await;
    shot(&browser, "login").await;
    log_in(&browser, &base, "dev").await;
    shot(&browser, "dashboard-empty").await;

    // Staging needs no approval: Deploy, then the console shows the
    // stages completing.
    browser.open(&format!("{base}/ui/apps/shop")).await;
    browser.select("#version-staging", "tag:v1").await;
    browser.fill("#reason-staging", "first release").await;
    shot(&browser, "app").await;
    browser.click("#release-staging").await;
    let jid = console_jid(&browser).await;
    browser.wait_for("#job-state.state-done").await;
    browser
        .wait_for(r#".lane[data-minion="web1"] .lane-state.state-succeeded"#)
        .await;
    let deploy_stage = browser
        .text(r#".lane[data-minion="web1"] [data-stage="deploy"] .status"#)
        .await;
    assert_eq!(deploy_stage, "succeeded");
    shot(&browser, "console").await;
    assert_eq!(live("web1").as_deref(), Some("one"));
    let (_, job) = blocking(|| root_api.get(&format!("/v1/jobs/{jid}")));
    assert_eq!(job["done"], true, "{job}");

    // Production: a request, which its requester cannot approve.
    browser.open(&format!("{base}/ui/apps/shop")).await;
    browser.select("#version-production", "tag:v1").await;
    browser.fill("#reason-production", "ship one").await;
    browser.click("#release-production").await;
    browser.wait_for("#state.state-requested").await;
    let url = browser.client.current_url().await.unwrap();
    let request_path = url.path().to_owned();
    let request_id: u64 = request_path.rsplit('/').next().unwrap().parse().unwrap();
    browser.click("#approve").await;
    let notice = browser.text("#notice.error").await;
    assert!(notice.contains("may not approve"), "{notice}");
    browser.wait_for("#state.state-requested").await;
    log_out(&browser).await;

    // The lead approves and deploys it.
    log_in(&browser, &base, "lead").await;
    browser.open(&format!("{base}{request_path}")).await;
    shot(&browser, "request").await;
    browser.click("#approve").await;
    browser.wait_for("#state.state-approved").await;
    browser.click("#deploy").await;
    console_jid(&browser).await;
    browser.wait_for("#job-state.state-done").await;
    browser
        .wait_for(r#".lane[data-minion="web2"] .lane-state.state-succeeded"#)
        .await;
    assert_eq!(live("web2").as_deref(), Some("one"));
    let (_, request) = blocking(|| root_api.get(&format!("/v1/requests/{request_id}")));
    blocking(|| root_api.wait_state(request_id, "live"));
    assert_eq!(request["history"][1]["by"], "lead");

    // v2 to staging, then rolled back with a reason.
    browser.open(&format!("{base}/ui/apps/shop")).await;
    browser.select("#version-staging", "tag:v2").await;
    browser.fill("#reason-staging", "second release").await;
    browser.click("#release-staging").await;
    browser.wait_for("#job-state.state-done").await;
    assert_eq!(live("web1").as_deref(), Some("two"));
    browser.open(&format!("{base}/ui/apps/shop")).await;
    browser
        .fill("#rollback-reason-staging", "two breaks checkout")
        .await;
    browser.click("#rollback-staging").await;
    browser.wait_for("#job-state.state-done").await;
    assert_eq!(live("web1").as_deref(), Some("one"));
    let (_, listed) = blocking(|| root_api.get("/v1/requests?app=shop&env=staging"));
    let rollback = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "rollback")
        .cloned()
        .expect("a rollback request");
    assert_eq!(rollback["reason"], "two breaks checkout");
    blocking(|| root_api.wait_state(rollback["id"].as_u64().unwrap(), "live"));

    // The dashboard shows where each environment is; the statistics
    // count the deploys; the other screens render.
    browser.open(&format!("{base}/ui/")).await;
    let table = browser.text("#dashboard").await;
    assert!(
        table.contains("staging") && table.contains("production"),
        "{table}"
    );
    assert!(table.contains("tag v1"), "{table}");
    shot(&browser, "dashboard").await;
    browser.open(&format!("{base}/ui/stats")).await;
    let totals = browser.text("#totals").await;
    assert!(!totals.contains("Deploys\n0"), "{totals}");
    browser.wait_for("svg.chart rect").await;
    let per_env = browser.text("#per-env").await;
    assert!(
        per_env.contains("production") && per_env.contains("staging"),
        "{per_env}"
    );
    shot(&browser, "stats").await;
    for (path, css, name) in [
        ("/ui/jobs", "#jobs", "jobs"),
        ("/ui/minions", "#minions", "minions"),
        ("/ui/audit", "#audit", "audit"),
        ("/ui/schedules", "#schedules", "schedules"),
    ] {
        browser.open(&format!("{base}{path}")).await;
        browser.wait_for(css).await;
        shot(&browser, name).await;
    }
    // The trigger pauses and resumes from the schedules page.
    browser.click("#trigger-shop").await;
    browser.wait_for(".trigger-state.state-paused").await;
    let (_, triggers) = blocking(|| root_api.get("/v1/triggers"));
    assert_eq!(triggers[0]["paused"]["by"], "lead", "{triggers}");
    browser.click("#trigger-shop").await;
    browser.wait_for(".trigger-state.state-live").await;
    browser
        .open(&format!("{base}/ui/jobs?fun=git_deploy.*&app=shop"))
        .await;
    let jobs = browser.text("#jobs").await;
    assert!(jobs.contains("git_deploy.deploy"), "{jobs}");
    browser.assert_no_console_errors().await;

    // On a phone's width nothing runs off the side.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.open(&format!("{base}/ui/")).await;
    browser.wait_for("#dashboard").await;
    let fits = browser
        .client
        .execute(
            "return document.body.scrollWidth <= window.innerWidth + 1",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true));
    shot(&browser, "dashboard-phone").await;
    browser.client.set_window_size(1280, 800).await.unwrap();
    log_out(&browser).await;

    // A user without a grant on the app's minions sees no release form,
    // and a release forged by hand with their session is refused.
    log_in(&browser, &base, "viewer").await;
    browser.open(&format!("{base}/ui/apps/shop")).await;
    browser.wait_for("#env-staging").await;
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css("#release-staging"))
            .await
            .is_err(),
        "no release form for the viewer"
    );
    let csrf = browser
        .wait_for(r#".who input[name="csrf"]"#)
        .await
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let cookie = browser
        .client
        .get_named_cookie("halite_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    let before = blocking(|| root_api.get("/v1/requests?app=shop")).1;
    let session = format!("halite_session={}", cookie.value());
    let post = |path: &str, body: String| {
        blocking(|| {
            let answer = halite_tests::api::http()
                .post(format!("{base}{path}"))
                .header("cookie", &session)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .expect("post");
            (answer.status().as_u16(), answer.url().to_string())
        })
    };
    let (_, landed) = post(
        "/ui/apps/shop/release",
        form(&[
            ("csrf", csrf.as_str()),
            ("env", "staging"),
            ("version", "tag:v2"),
            ("reason", "forged"),
            ("kind", "deploy"),
        ]),
    );
    assert!(landed.contains("error="), "refused: {landed}");
    assert_eq!(
        blocking(|| root_api.get("/v1/requests?app=shop")).1,
        before,
        "no request made for the viewer"
    );
    assert_eq!(live("web1").as_deref(), Some("one"), "nothing released");
    // Without the session's CSRF token, a form is refused outright.
    let (status, _) = post(
        "/ui/schedules/none/pause",
        form(&[("csrf", &"0".repeat(32))]),
    );
    assert_eq!(status, 403);

    // A deploy made outside any request still shows as staging's state.
    let (status, body) = blocking(|| {
        root_api.post(
            "/v1/apps/shop/deploy",
            json!({ "tag": "v2", "target": "web1" }),
        )
    });
    assert_eq!(status, 202, "{body}");
    let jid = body["jid"].as_str().expect("jid").to_owned();
    blocking(|| halite_tests::api::wait_done(&root_api.base, &root_api.token, &jid));
    browser.open(&format!("{base}/ui/")).await;
    let cell = browser
        .text(&format!(r#"a.cell.state-live[href="/ui/jobs/{jid}"]"#))
        .await;
    assert!(cell.contains("v2"), "{cell}");
}

/// The portal from the keyboard alone (autofocus, Tab, Enter, the skip
/// link, visible focus), then a job's console that loses its stream when
/// the master restarts mid-job: the browser reconnects with
/// Last-Event-ID and shows every output line exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn the_keyboard_works_and_the_console_loses_nothing_across_a_master_restart() {
    use fantoccini::key::Key;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut master, _minion, ops) = blocking(|| {
        let master = Master::start(
            dir.path(),
            "[acl]\nops = [{ \"web*\" = [\"cmd.run\", \"test.*\"] }]\n",
        );
        let minion = Minion::start(dir.path(), "web1", master.return_port, "");
        master.accept("web1");
        let ops = Session::new_user(&master, "ops");
        (master, minion, ops)
    });
    let base = master.api_url();
    let browser = Browser::start(dir.path()).await;

    // Log in without the mouse: the user field has the focus, Tab moves
    // on, Enter submits.
    browser.open(&format!("{base}/")).await;
    browser.wait_for("#username").await;
    assert_eq!(browser.focused().await, "username");
    browser.type_text("ops").await;
    browser.press(Key::Tab).await;
    assert_eq!(browser.focused().await, "password");
    browser.type_text("pw-of-ops").await;
    browser.press(Key::Enter).await;
    assert_eq!(browser.text("#user").await, "ops");

    // The first Tab reaches the skip link, drawn with a focus ring; Enter
    // puts the focus on the content.
    browser.press(Key::Tab).await;
    assert_eq!(browser.focused().await, "a:Skip to content");
    assert!(
        browser.focus_is_visible().await,
        "the skip link shows focus"
    );
    browser.press(Key::Enter).await;
    assert_eq!(browser.focused().await, "main");
    // From the top, the menu: skip link, brand, Dashboard, Jobs.
    browser.open(&format!("{base}/ui/")).await;
    browser.wait_for("#dashboard").await;
    for _ in 0..4 {
        browser.press(Key::Tab).await;
    }
    assert_eq!(browser.focused().await, "a:Jobs");
    assert!(browser.focus_is_visible().await, "the menu shows focus");
    browser.press(Key::Enter).await;
    browser.wait_for("#jobs").await;
    // Tab to the function filter, type, Enter: the list is filtered.
    let mut tabs = 0;
    while browser.focused().await != "f-fun" {
        assert!(tabs < 30, "Tab never reached the function filter");
        browser.press(Key::Tab).await;
        tabs += 1;
    }
    browser.type_text("cmd.*").await;
    browser.press(Key::Enter).await;
    browser.wait_for("#f-fun[value='cmd.*']").await;

    // A job that prints two lines, waits for the test, prints two more.
    let gate = dir.path().join("gate");
    let made = std::process::Command::new("mkfifo")
        .arg(&gate)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let script = format!(
        "printf 'one\\ntwo\\n'; read go < '{}'; printf 'three\\nfour\\n'",
        gate.display()
    );
    let (status, submitted) = blocking(|| {
        ops.post(
            "/v1/jobs",
            json!({ "target": "web1", "fun": "cmd.run", "arg": [script] }),
        )
    });
    assert_eq!(status, 202, "{submitted}");
    let jid = submitted["jid"].as_str().expect("jid").to_owned();
    browser.open(&format!("{base}/ui/jobs/{jid}")).await;
    let lines = r#".lane[data-minion="web1"] .lines"#;
    browser
        .wait_for(&format!(r#"{lines}[data-count="2"]"#))
        .await;

    // The master dies under the open stream and comes back; once the
    // minion is connected again, the job goes on.
    blocking(|| {
        master.restart();
        halite_tests::eventually(
            std::time::Duration::from_secs(60),
            "the minion answers the restarted master",
            || master.cli(&["run", "target=web1", "test.ping"]).code == 0,
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(&gate)
            .and_then(|mut fifo| std::io::Write::write_all(&mut fifo, b"go\n"))
            .expect("open the gate");
    });
    browser.wait_for("#job-state.state-done").await;
    browser
        .wait_for(r#".lane[data-minion="web1"] .lane-state.state-succeeded"#)
        .await;
    assert_eq!(browser.text(lines).await, "one\ntwo\nthree\nfour");
}

/// A rollout in the portal: the app's plan waits at its manual gate, the
/// page shows the steps, Continue lets it go on, and the page (reloading
/// itself while the rollout moves) shows it succeeded.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_continues_from_the_portal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = halite_tests::git::Shop::with(
        dir.path(),
        "[rollout]\nramp = [\"1\", \"100%\"]\ngate = \"manual\"\n",
    );
    let (master, _minions, ops) = blocking(|| {
        let master = Master::start(
            dir.path(),
            "[acl]\nops = [{ \"web*\" = [\"git_deploy.*\"] }]\n",
        );
        let minions = master.start_minions(dir.path(), &["web1", "web2"]);
        let ops = Session::new_user(&master, "ops");
        (master, minions, ops)
    });
    let base = master.api_url();
    let (status, rollout) = blocking(|| {
        ops.post(
            "/v1/rollouts",
            json!({ "app": "shop", "version": { "tag": "v1" }, "reason": "v1 in steps" }),
        )
    });
    assert_eq!(status, 201, "{rollout}");
    let id = rollout["id"].as_u64().expect("rollout id");
    let browser = Browser::start(dir.path()).await;
    log_in(&browser, &base, "ops").await;
    browser.open(&format!("{base}/ui/rollouts/{id}")).await;
    browser.wait_for("#step-1.phase-waiting").await;
    assert_eq!(app.live("web1").as_deref(), Some("one"));
    assert_eq!(app.live("web2"), None);
    shot(&browser, "rollout").await;
    browser.click("#continue").await;
    browser.wait_for("#state.state-succeeded").await;
    browser.wait_for("#step-2.phase-passed").await;
    assert_eq!(app.live("web2").as_deref(), Some("one"));
    browser.open(&format!("{base}/ui/rollouts")).await;
    let list = browser.text("#rollouts").await;
    assert!(list.contains("succeeded"), "{list}");
    browser.assert_no_console_errors().await;
}
