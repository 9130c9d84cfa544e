//! salt-api parity against a real master and real minions: the requests
//! of a transcript captured from Salt 3008.3's salt-api
//! (`tests/fixtures/salt-api-transcript.md`) replayed against halite, the
//! answers compared with Salt's shape by shape (keys, nesting, types) and
//! value by value where values are stable; the real `pepper` CLI driving
//! the wheel and runner clients and the functions Salt tools call; and
//! `/events` in Salt's shape.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use halite_tests::api::{call, http};
use halite_tests::{eventually, Master, Minion};
use serde_json::{json, Value};

/// The transcript's user, with the grants it had on Salt.
const ACL: &str = r#"
[acl]
saltdev = [".*", "@wheel", "@runner", "@jobs"]
"#;

/// The transcript's password for `saltdev` (a throwaway bench secret).
const PASSWORD: &str = "bench-shared-secret";

/// One request of the transcript and Salt's answer.
#[derive(Debug)]
struct Exchange {
    title: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
    content_type: String,
    answer: String,
}

/// Reads the transcript's ```http request and response blocks.
fn transcript() -> Vec<Exchange> {
    let text = include_str!("../fixtures/salt-api-transcript.md");
    let mut exchanges = Vec::new();
    let mut title = String::new();
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("### ") {
            title = t.to_owned();
            blocks.clear();
        } else if line == "```http" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push(block);
            if blocks.len() == 2 {
                let (request, response) = (&blocks[0], &blocks[1]);
                let split = |block: &[&str]| -> (Vec<(String, String)>, String) {
                    let end = block
                        .iter()
                        .position(|l| l.is_empty())
                        .unwrap_or(block.len());
                    let headers = block[1..end]
                        .iter()
                        .filter_map(|h| h.split_once(": "))
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
                        .collect();
                    let body = block.get(end + 1..).unwrap_or(&[]).join("\n");
                    (headers, body.trim_end().to_owned())
                };
                let mut first = request[0].split(' ');
                let (method, path) = (first.next().unwrap(), first.next().unwrap());
                let (headers, body) = split(request);
                let (response_headers, answer) = split(response);
                let status = response[0].split(' ').nth(1).unwrap().parse().unwrap();
                let content_type = response_headers
                    .iter()
                    .find(|(k, _)| k == "content-type")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                exchanges.push(Exchange {
                    title: title.clone(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers,
                    body,
                    status,
                    content_type,
                    answer,
                });
                blocks.clear();
            }
        }
    }
    exchanges
}

/// `text` with every run of 20 digits (a jid) blanked.
fn without_jids(text: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            out.push_str(if digits.len() == 20 { "<jid>" } else { &digits });
            digits.clear();
        }
        if c != '\0' {
            out.push(c);
        }
    }
    out
}

fn is_jid(text: &str) -> bool {
    text.len() == 20 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Keys whose values change on every run (or name this master's own
/// files): only their type is compared.
const UNSTABLE: &[&str] = &[
    "token",
    "start",
    "expire",
    "jid",
    "_stamp",
    "StartTime",
    "tag",
    "ts",
    "local",
];

/// Where Salt's answer and halite's differ in shape, and why. Each is
/// listed in docs/api.md.
const KNOWN_DIFFERENCES: &[(&str, &str)] = &[
    (
        "POST / — client local, function not available",
        "halite refuses an unknown function with 400 before publishing; Salt publishes and each minion answers",
    ),
    (
        "GET /events",
        "a stream: its events are compared in salt_events_have_salts_tags_and_stamps",
    ),
];

/// Compares `ours` with Salt's `theirs` at `path`; differences go to
/// `problems`.
fn compare(theirs: &Value, ours: &Value, path: &str, problems: &mut Vec<String>) {
    let key = path.rsplit('.').next().unwrap_or("");
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    if kind(theirs) != kind(ours) {
        problems.push(format!("{path}: Salt has {theirs}, halite {ours}"));
        return;
    }
    if UNSTABLE.contains(&key) {
        return;
    }
    match (theirs, ours) {
        (Value::Object(t), Value::Object(o)) => {
            // Grains: Salt's were cut to a few keys in the transcript.
            if t.contains_key("...") {
                for (k, v) in t.iter().filter(|(k, _)| *k != "...") {
                    if let Some(mine) = o.get(k) {
                        compare(v, mine, &format!("{path}.{k}"), problems);
                    }
                }
                return;
            }
            // Objects keyed by jids (job listings): every one of ours
            // shaped like Salt's first.
            if !t.is_empty() && t.keys().all(|k| is_jid(k)) {
                let sample = t.values().next().expect("not empty");
                for (k, v) in o {
                    if !is_jid(k) {
                        problems.push(format!("{path}: {k} is not a jid"));
                    }
                    let mut shape = Vec::new();
                    compare(sample, v, &format!("{path}.<jid>"), &mut shape);
                    // Values differ job by job; the keys and types may not.
                    problems.extend(
                        shape
                            .into_iter()
                            .filter(|p| p.contains(" has ") || p.contains("keys")),
                    );
                }
                return;
            }
            let (mut tk, mut ok): (Vec<&String>, Vec<&String>) =
                (t.keys().collect(), o.keys().collect());
            tk.sort();
            ok.sort();
            if tk != ok {
                problems.push(format!("{path}: keys {tk:?} in Salt, {ok:?} in halite"));
            }
            for (k, v) in t {
                if let Some(mine) = o.get(k) {
                    compare(v, mine, &format!("{path}.{k}"), problems);
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            if path.ends_with(".clients") {
                // Salt lists every client it has; halite those it serves.
                return;
            }
            if t.len() != o.len() {
                problems.push(format!(
                    "{path}: {} items in Salt, {} in halite",
                    t.len(),
                    o.len()
                ));
            }
            for (n, (v, mine)) in t.iter().zip(o).enumerate() {
                compare(v, mine, &format!("{path}[{n}]"), problems);
            }
        }
        (Value::String(t), Value::String(o)) => {
            // Fingerprints differ (other keys); jids inside text (links)
            // are this run's.
            let fingerprint = t.bytes().filter(|b| *b == b':').count() > 8;
            if !fingerprint && without_jids(t) != without_jids(o) {
                problems.push(format!("{path}: Salt says {t:?}, halite {o:?}"));
            }
        }
        (t, o) => {
            if t != o {
                problems.push(format!("{path}: Salt says {t}, halite {o}"));
            }
        }
    }
}

/// Records the jids Salt's answer names and halite's names at the same
/// place, so later requests can ask halite about its own.
fn map_jids(theirs: &Value, ours: &Value, jids: &mut HashMap<String, String>) {
    match (theirs, ours) {
        (Value::String(t), Value::String(o)) if is_jid(t) && is_jid(o) => {
            jids.insert(t.clone(), o.clone());
        }
        (Value::Object(t), Value::Object(o)) => {
            for (k, v) in t {
                if let Some(mine) = o.get(k) {
                    map_jids(v, mine, jids);
                }
            }
        }
        (Value::Array(t), Value::Array(o)) => {
            for (v, mine) in t.iter().zip(o) {
                map_jids(v, mine, jids);
            }
        }
        _ => {}
    }
}

fn fleet(dir: &std::path::Path) -> (Master, Vec<Minion>) {
    let master = Master::start(dir, ACL);
    let minions: Vec<Minion> = ["web01", "web02"]
        .iter()
        .map(|id| Minion::start(dir, id, master.return_port, ""))
        .collect();
    for id in ["web01", "web02"] {
        master.accept(id);
    }
    let out = master.cli_input(&["users", "add", "saltdev"], &format!("{PASSWORD}\n"));
    assert_eq!(out.code, 0, "{out:?}");
    (master, minions)
}

#[test]
fn the_salt_api_transcript_replays_with_salts_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _minions) = fleet(dir.path());
    let base = master.api_url();
    let root = master.root_token();
    let client = http();
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut jids: HashMap<String, String> = HashMap::new();
    let mut problems = Vec::new();
    let exchanges = transcript();
    assert!(
        exchanges.len() >= 25,
        "the transcript was read: {}",
        exchanges.len()
    );
    for exchange in &exchanges {
        let substitute = |text: &str| -> String {
            let mut text = text.to_owned();
            for (theirs, ours) in tokens.iter().chain(jids.iter()) {
                text = text.replace(theirs, ours);
            }
            text
        };
        let path = substitute(&exchange.path);
        let body = substitute(&exchange.body);
        // A job this request asks about is finished first, as it was
        // when Salt answered.
        for ours in jids.values().filter(|j| path.contains(j.as_str())) {
            eventually(Duration::from_secs(60), &format!("job {ours} done"), || {
                call(
                    client.get(format!("{base}/v1/jobs/{ours}")),
                    Some(&root),
                    None,
                )
                .1["done"]
                    == true
            });
        }
        let mut request = client.request(
            exchange.method.parse().expect("method"),
            format!("{base}{path}"),
        );
        for (name, value) in &exchange.headers {
            if !matches!(name.as_str(), "host" | "content-length" | "user-agent") {
                request = request.header(name, substitute(value));
            }
        }
        if exchange.path == "/events" {
            // Only the answer's start: the stream itself is the next test's.
            let response = request.send().expect("events");
            assert_eq!(response.status().as_u16(), 200);
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"));
            continue;
        }
        let response = request.body(body).send().expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let login_header = response.headers().contains_key("x-auth-token");
        let text = response.text().expect("body");
        let title = &exchange.title;
        if let Some((_, why)) = KNOWN_DIFFERENCES.iter().find(|(t, _)| t == title) {
            eprintln!("{title}: not compared ({why})");
            continue;
        }
        if status != exchange.status {
            problems.push(format!(
                "{title}: status {status}, Salt {}: {text}",
                exchange.status
            ));
            continue;
        }
        let media = |ct: &str| ct.split(';').next().unwrap_or("").to_owned();
        if media(&content_type) != media(&exchange.content_type) {
            problems.push(format!(
                "{title}: {content_type}, Salt {}",
                exchange.content_type
            ));
            continue;
        }
        if exchange.content_type.starts_with("application/x-yaml")
            || exchange.content_type.starts_with("text/html")
        {
            if exchange.content_type.starts_with("application/x-yaml")
                && text.trim_end() != exchange.answer
            {
                problems.push(format!(
                    "{title}: YAML {text:?}, Salt {:?}",
                    exchange.answer
                ));
            }
            continue;
        }
        let theirs: Value = serde_json::from_str(&exchange.answer).expect("Salt's JSON");
        let ours: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("{title}: not JSON ({e}): {text}"));
                continue;
            }
        };
        if exchange.path == "/login" {
            assert!(login_header, "{title}: the token as a header too");
            let (t, o) = (&theirs["return"][0]["token"], &ours["return"][0]["token"]);
            tokens.insert(
                t.as_str().unwrap().to_owned(),
                o.as_str().unwrap().to_owned(),
            );
        }
        map_jids(&theirs, &ours, &mut jids);
        compare(&theirs, &ours, title, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Reads `(data)` of SSE events until `until` says stop (60 s at most).
fn read_events(
    response: reqwest::blocking::Response,
    mut until: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reader = BufReader::new(response);
    let (mut events, mut line) = (Vec::new(), String::new());
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).expect("SSE line") == 0 {
            break;
        }
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            events.push(serde_json::from_str(data.trim()).expect("JSON data"));
            if until(&events) {
                break;
            }
        }
    }
    events
}

#[test]
fn salt_events_have_salts_tags_and_stamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _minions) = fleet(dir.path());
    let base = master.api_url();
    let (_, login) = call(
        http().post(format!("{base}/login")),
        None,
        Some(json!({ "username": "saltdev", "password": PASSWORD, "eauth": "pam" })),
    );
    let token = login["return"][0]["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let stream = http()
        .get(format!("{base}/events"))
        .header("X-Auth-Token", &token)
        .timeout(Duration::from_secs(120))
        .send()
        .expect("events");
    // A new minion knocks, is accepted and starts; a job runs.
    let _web03 = Minion::start(dir.path(), "web03", master.return_port, "");
    master.accept("web03");
    let (_, started) = call(
        http().post(format!("{base}/")),
        Some(&token),
        Some(json!([{ "client": "local_async", "tgt": "web*", "fun": "test.ping" }])),
    );
    let jid = started["return"][0]["jid"]
        .as_str()
        .expect("jid")
        .to_owned();
    let tags = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| e["tag"].as_str().map(str::to_owned))
            .collect()
    };
    let events = read_events(stream, |events| {
        let tags = tags(events);
        ["web01", "web02", "web03"]
            .iter()
            .all(|id| tags.contains(&format!("salt/job/{jid}/ret/{id}")))
    });
    let tags = tags(&events);
    for wanted in [
        "salt/auth".to_owned(),
        "salt/minion/web03/start".to_owned(),
        "salt/presence/change".to_owned(),
        "salt/presence/present".to_owned(),
        format!("salt/job/{jid}/new"),
    ] {
        assert!(tags.contains(&wanted), "{wanted} in {tags:?}");
    }
    let acts: Vec<&Value> = events
        .iter()
        .filter(|e| e["tag"] == "salt/auth" && e["data"]["id"] == "web03")
        .map(|e| &e["data"]["act"])
        .collect();
    assert_eq!(acts, [&json!("pend"), &json!("accept")], "{events:?}");
    let new = events
        .iter()
        .find(|e| e["tag"] == format!("salt/job/{jid}/new"))
        .unwrap();
    assert_eq!(new["data"]["fun"], "test.ping");
    assert_eq!(new["data"]["tgt"], "web*");
    assert_eq!(new["data"]["minions"], json!(["web01", "web02", "web03"]));
    let ret = events
        .iter()
        .find(|e| e["tag"] == format!("salt/job/{jid}/ret/web01"))
        .unwrap();
    assert_eq!(ret["data"]["return"], true);
    assert_eq!(ret["data"]["id"], "web01");
    let present = events
        .iter()
        .rev()
        .find(|e| e["tag"] == "salt/presence/present")
        .unwrap();
    assert!(present["data"]["present"]
        .as_array()
        .unwrap()
        .contains(&json!("web03")));
    // Every stamp is Salt's ISO form: a date a client reads as today.
    for event in &events {
        let stamp = event["data"]["_stamp"]
            .as_str()
            .unwrap_or_else(|| panic!("_stamp in {event}"));
        let ms = halite_proto::time::parse_time_ms(stamp).unwrap_or_else(|| panic!("{stamp}"));
        let now = halite_proto::time::now_ms();
        assert!(ms <= now && now - ms < 600_000, "{stamp}");
        assert!(stamp.ends_with("+00:00"), "{stamp}");
    }
}

#[test]
fn pepper_drives_wheel_runner_and_the_functions_salt_tools_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (master, _minions) = fleet(dir.path());
    let _web03 = Minion::start(dir.path(), "web03", master.return_port, "");
    let base = master.api_url();
    let pepper = halite_tests::api::Pepper {
        base: base.clone(),
        home: dir.path().join("home"),
        user: "saltdev".into(),
        password: PASSWORD.into(),
        eauth: "sharedsecret".into(),
    };
    let pepper = |args: &[&str]| pepper.run(args);
    let wheel = |args: &[&str]| -> Value {
        let mut argv = vec!["--client", "wheel"];
        argv.extend_from_slice(args);
        let out = pepper(&argv);
        assert_eq!(out["return"][0]["data"]["success"], true, "{out}");
        out["return"][0]["data"]["return"].clone()
    };
    let runner = |args: &[&str]| -> Value {
        let mut argv = vec!["--client", "runner"];
        argv.extend_from_slice(args);
        // pepper asks runners for `full_return`: Salt's ret event.
        let out = pepper(&argv);
        assert_eq!(out["return"][0]["data"]["success"], true, "{out}");
        out["return"][0]["data"]["return"].clone()
    };

    // Keys through the wheel client.
    eventually(Duration::from_secs(60), "web03 pending", || {
        wheel(&["key.list_all"])["minions_pre"] == json!(["web03"])
    });
    let all = wheel(&["key.list_all"]);
    assert_eq!(all["minions"], json!(["web01", "web02"]));
    assert_eq!(
        wheel(&["key.list", "match=acc"]),
        json!({ "minions": ["web01", "web02"] })
    );
    assert_eq!(
        wheel(&["key.accept", "match=web03"]),
        json!({ "minions": ["web03"] })
    );
    master.wait_up("web03");
    let finger = wheel(&["key.finger", "match=web01"]);
    let (_, keys) = call(
        http().get(format!("{base}/v1/keys")),
        Some(&master.root_token()),
        None,
    );
    let web01 = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == "web01")
        .unwrap();
    assert_eq!(finger["minions"]["web01"], web01["fingerprint"]);
    let printed = wheel(&["key.print", "match=web01"]);
    assert!(printed["minions"]["web01"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN"));
    assert_eq!(
        wheel(&["minions.connected"]),
        json!(["web01", "web02", "web03"])
    );
    let values = wheel(&["config.values"]);
    assert_eq!(values["ret_port"], master.return_port);
    let text = values.to_string();
    for private in ["pki", "users", "secrets", "data_dir"] {
        assert!(
            !text.contains(private),
            "config.values shows no {private}: {text}"
        );
    }

    // Fleet state through the runner client.
    assert_eq!(runner(&["manage.up"]), json!(["web01", "web02", "web03"]));
    assert_eq!(
        runner(&["manage.status"]),
        json!({ "up": ["web01", "web02", "web03"], "down": [] })
    );
    assert_eq!(
        runner(&["manage.versions"])["Up to date"]["web01"],
        env!("CARGO_PKG_VERSION")
    );

    // A running job: jobs.active and saltutil.running/find_job see it.
    let slow = pepper(&["--client", "local_async", "web01", "test.sleep", "30"]);
    let slow_jid = slow["return"][0]["jid"].as_str().unwrap().to_owned();
    let active = runner(&["jobs.active"]);
    assert_eq!(active[&slow_jid]["Function"], "test.sleep", "{active}");
    assert_eq!(active[&slow_jid]["Running"], json!([{ "web01": 0 }]));
    let running = pepper(&["web01", "saltutil.running"]);
    let listed = &running["return"][0]["web01"]["ret"];
    assert_eq!(listed[0]["jid"], slow_jid.as_str(), "{running}");
    assert_eq!(listed[0]["fun"], "test.sleep");
    let found = pepper(&["web01", "saltutil.find_job", &slow_jid]);
    assert_eq!(found["return"][0]["web01"]["ret"]["jid"], slow_jid.as_str());
    let (status, _) = call(
        http().post(format!("{base}/v1/jobs/{slow_jid}/cancel")),
        Some(&master.root_token()),
        None,
    );
    assert_eq!(status, 200);

    // A finished job through jobs.list_job, and list_jobs' filters.
    let echo = pepper(&["--client", "local_async", "web*", "test.echo", "hello"]);
    let echo_jid = echo["return"][0]["jid"].as_str().unwrap().to_owned();
    let mut job = Value::Null;
    eventually(Duration::from_secs(60), "the echo job done", || {
        job = runner(&["jobs.list_job", &format!("jid={echo_jid}")]);
        job["Result"].as_object().is_some_and(|r| r.len() == 3)
    });
    assert_eq!(job["Function"], "test.echo");
    assert_eq!(job["Arguments"], json!(["hello"]));
    assert_eq!(job["Result"]["web02"]["return"], "hello");
    assert_eq!(job["Result"]["web02"]["success"], true);
    let echoes = runner(&["jobs.list_jobs", "search_function=test.echo"]);
    let listed: Vec<&String> = echoes.as_object().unwrap().keys().collect();
    assert_eq!(listed, [&echo_jid], "{echoes}");
    let none = runner(&["jobs.list_jobs", "search_target=db*"]);
    assert_eq!(none, json!({}));
    let later = runner(&["jobs.list_jobs", "start_time=2099-01-01"]);
    assert_eq!(later, json!({}));

    // The execution functions Salt tools assume.
    let grains = pepper(&["web01", "grains.item", "os", "nosuch"]);
    let item = &grains["return"][0]["web01"]["ret"];
    assert!(item["os"].is_string(), "{grains}");
    assert_eq!(item["nosuch"], "");
    let version = pepper(&["web01", "test.version"]);
    assert_eq!(
        version["return"][0]["web01"]["ret"],
        env!("CARGO_PKG_VERSION")
    );
    let report = pepper(&["web01", "test.versions_report"]);
    let report = report["return"][0]["web01"]["ret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(report.starts_with("Salt Version:\n"), "{report}");
    assert!(report.contains(&format!("halite: {}", env!("CARGO_PKG_VERSION"))));
    let functions = pepper(&["web01", "sys.list_functions", "test"]);
    let functions = functions["return"][0]["web01"]["ret"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        functions.contains(&json!("test.ping"))
            && functions
                .iter()
                .all(|f| f.as_str().unwrap().starts_with("test."))
    );
    let doc = pepper(&["web01", "sys.doc", "test.versions_report"]);
    assert!(doc["return"][0]["web01"]["ret"]["test.versions_report"]
        .as_str()
        .is_some_and(|d| d.contains("version")));
}
