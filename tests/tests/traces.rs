//! OpenTelemetry traces: a real master and minion post their spans to a
//! collector (OTLP over HTTP, JSON) that this test serves on loopback, and
//! one job's spans form one trace whose id is the jid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_tests::{eventually, Master, Minion};
use serde_json::Value;

/// An OTLP/HTTP receiver: every request body posted to `/v1/traces`,
/// answered 200. Serves until the test process ends.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Collector { url, bodies }
    }

    /// Every span received: (service.name, span).
    fn spans(&self) -> Vec<(String, Value)> {
        let bodies = self.bodies.lock().expect("bodies");
        let mut out = Vec::new();
        for body in bodies.iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = resource["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

/// Reads HTTP/1.1 requests off one connection (kept alive) and keeps the
/// JSON body of each POST to `/v1/traces`.
fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("POST /v1/traces ") {
            if let Ok(json) = serde_json::from_slice(&body) {
                kept.lock().expect("bodies").push(json);
            }
        }
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_jobs_spans_on_master_and_minion_form_one_trace_named_by_its_jid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start();
    let otel = format!("otel_endpoint = \"{}\"", collector.url);
    let master = Master::start(dir.path(), &otel);
    let _web = Minion::start(dir.path(), "web01", master.return_port, &otel);
    master.accept("web01");
    master.wait_up("web01");

    let out = master.cli(&["run", "target=web01", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let jid = out.json()["jid"].as_str().expect("jid").to_owned();
    let trace_id = format!("{jid:0>32}");

    let of_job = |spans: &[(String, Value)], name: &str| {
        spans
            .iter()
            .find(|(_, span)| span["traceId"] == trace_id.as_str() && span["name"] == name)
            .cloned()
    };
    eventually(Duration::from_secs(30), "the job's three spans", || {
        let spans = collector.spans();
        ["job test.ping", "minion web01", "run test.ping"]
            .iter()
            .all(|name| of_job(&spans, name).is_some())
    });
    let spans = collector.spans();
    let (service, job) = of_job(&spans, "job test.ping").expect("job span");
    assert_eq!(service, "halite-master");
    assert!(
        job.get("parentSpanId").is_none(),
        "the job is the root: {job}"
    );
    let (service, waited) = of_job(&spans, "minion web01").expect("minion span");
    assert_eq!(service, "halite-master");
    assert_eq!(waited["parentSpanId"], job["spanId"]);
    let (service, run) = of_job(&spans, "run test.ping").expect("run span");
    assert_eq!(service, "halite-minion");
    assert_eq!(run["parentSpanId"], waited["spanId"]);
    assert!(run["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .any(|a| a["key"] == "halite.jid" && a["value"]["stringValue"] == jid.as_str()));
    // Each span once, whatever the batching.
    let ours = spans
        .iter()
        .filter(|(_, s)| s["traceId"] == trace_id.as_str())
        .count();
    assert_eq!(ours, 3, "{spans:?}");
}
