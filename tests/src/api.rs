//! The master's HTTP API from a test: a client, JSON calls, login, and
//! waiting for a job through the API.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::eventually;

/// A blocking HTTP client (60 s timeout) with the TLS provider installed.
pub fn http() -> reqwest::blocking::Client {
    halite_pki::install_tls_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// A JSON request; answers the status and the body.
pub fn call(
    request: reqwest::blocking::RequestBuilder,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = request;
    if let Some(token) = token {
        request = request.header("X-Auth-Token", token);
    }
    if let Some(body) = body {
        request = request
            .header("Content-Type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    let body = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(_) => Value::String(text),
    };
    (status, body)
}

/// The real `pepper` (salt-api's CLI) as `user` against `base`, its login
/// token cached under `home` (one login for many calls: a test that
/// polls stays under the login throttle). Answers the JSON it prints;
/// fails the test when pepper fails.
pub struct Pepper {
    /// The master's API URL.
    pub base: String,
    /// A HOME of the test's own (pepper writes its token cache there).
    pub home: std::path::PathBuf,
    /// salt-api user and password.
    pub user: String,
    /// Its password.
    pub password: String,
    /// What pepper sends as `eauth` (halite accepts any).
    pub eauth: String,
}

impl Pepper {
    /// Runs `pepper --make-token ARGS`.
    pub fn run(&self, args: &[&str]) -> Value {
        std::fs::create_dir_all(&self.home).expect("pepper's HOME");
        let out = std::process::Command::new(crate::test_tool("pepper", "pepper/bin/pepper"))
            .arg("--make-token")
            .args(args)
            .env("HOME", &self.home)
            .env("SALTAPI_URL", &self.base)
            .env("SALTAPI_USER", &self.user)
            .env("SALTAPI_PASS", &self.password)
            .env("SALTAPI_EAUTH", &self.eauth)
            .output()
            .expect("pepper runs (scripts/test.sh installs it under target/test-tools/)");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "pepper {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("pepper {args:?} printed no JSON ({e}): {stdout}"))
    }
}

/// `POST /v1/login`: status and body.
pub fn login(base: &str, user: &str, password: &str) -> (u16, Value) {
    call(
        http().post(format!("{base}/v1/login")),
        None,
        Some(json!({ "username": user, "password": password })),
    )
}

/// Waits until the job is done; answers its view.
pub fn wait_done(base: &str, token: &str, jid: &str) -> Value {
    let mut view = Value::Null;
    eventually(Duration::from_secs(60), &format!("job {jid} done"), || {
        let (status, body) = call(
            http().get(format!("{base}/v1/jobs/{jid}")),
            Some(token),
            None,
        );
        view = body;
        status == 200 && view["done"] == true
    });
    view
}

/// An API user's session: the master's address and their token.
pub struct Session {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The login token.
    pub token: String,
}

impl Session {
    /// Adds `name` to the master's users (password `pw-of-NAME`) and logs in.
    pub fn new_user(master: &crate::Master, name: &str) -> Session {
        let out = master.cli_input(&["users", "add", name], &format!("pw-of-{name}\n"));
        assert_eq!(out.code, 0, "{out:?}");
        let base = master.api_url();
        let (status, body) = login(&base, name, &format!("pw-of-{name}"));
        assert_eq!(status, 200, "{body}");
        Session {
            token: body["token"].as_str().expect("token").to_owned(),
            base,
        }
    }

    /// The root user's session (the CLI token).
    pub fn root(master: &crate::Master) -> Session {
        Session {
            base: master.api_url(),
            token: master.root_token(),
        }
    }

    /// `POST` with a JSON body.
    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        call(
            http().post(format!("{}{path}", self.base)),
            Some(&self.token),
            Some(body),
        )
    }

    /// `GET`.
    pub fn get(&self, path: &str) -> (u16, Value) {
        call(
            http().get(format!("{}{path}", self.base)),
            Some(&self.token),
            None,
        )
    }

    /// Waits until release request `id` is in `state`; answers it.
    pub fn wait_state(&self, id: u64, state: &str) -> Value {
        let mut seen = Value::Null;
        eventually(
            Duration::from_secs(90),
            &format!("request {id} {state}"),
            || {
                seen = self.get(&format!("/v1/requests/{id}")).1;
                seen["state"] == state
            },
        );
        seen
    }
}

/// Reads SSE blocks from `response` until `until` says stop (or 60 s):
/// `(id, event, data)` each.
pub fn read_sse(
    response: reqwest::blocking::Response,
    mut until: impl FnMut(&[(Option<u64>, String, Value)]) -> bool,
) -> Vec<(Option<u64>, String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reader = BufReader::new(response);
    let mut events = Vec::new();
    let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
    let mut line = String::new();
    while Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).expect("SSE line") == 0 {
            break;
        }
        let text = line.trim_end();
        if text.is_empty() {
            if !data.is_empty() {
                let value = serde_json::from_str(&data).expect("SSE data is JSON");
                events.push((
                    id.take(),
                    std::mem::replace(&mut kind, "message".into()),
                    value,
                ));
                data.clear();
                if until(&events) {
                    break;
                }
            }
        } else if let Some(v) = text.strip_prefix("id:") {
            id = v.trim().parse().ok();
        } else if let Some(v) = text.strip_prefix("event:") {
            kind = v.trim().to_owned();
        } else if let Some(v) = text.strip_prefix("data:") {
            data.push_str(v.trim());
        }
    }
    events
}
