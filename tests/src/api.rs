//! The master's HTTP API from a test: a client, JSON calls, login, and
//! waiting for a job through the API.

use std::time::Duration;

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
