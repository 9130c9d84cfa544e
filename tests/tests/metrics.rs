//! `/metrics` on `metrics_bind`: what a Prometheus scrape sees after real
//! jobs through real minions, in the OpenMetrics text format.

use std::time::Duration;

use halite_tests::{eventually, Master};

/// The value of the sample named exactly `series` (name and labels as
/// rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[test]
fn a_scrape_counts_jobs_returns_minions_and_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "metrics_bind = \"127.0.0.1:0\"");
    let _minions = master.start_minions(dir.path(), &["web01", "web02"]);
    master.wait_up("web01");
    master.wait_up("web02");

    let out = master.cli(&["run", "target=web*", "test.ping"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = master.cli(&["run", "target=web01", "cmd.run", "exit 3"]);
    assert_ne!(out.code, 0, "{out:?}");

    // Returns are counted once stored and flushed; the CLI may have seen
    // them a moment earlier.
    let mut text = String::new();
    eventually(
        Duration::from_secs(30),
        "both jobs finished in /metrics",
        || {
            text = master.metrics();
            sample(
                &text,
                "halite_jobs_finished_total{fun=\"cmd.run\",result=\"failed\"}",
            ) == Some(1.0)
                && sample(
                    &text,
                    "halite_jobs_finished_total{fun=\"test.ping\",result=\"success\"}",
                ) == Some(1.0)
        },
    );
    assert_eq!(
        sample(&text, "halite_jobs_submitted_total{fun=\"test.ping\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "halite_returns_total{fun=\"test.ping\",result=\"success\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "halite_job_duration_seconds_count{fun=\"test.ping\",result=\"success\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "halite_minions{name=\"up\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "halite_minions{name=\"down\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "halite_queue_depth{name=\"jobs_in_flight\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "halite_store_operation_duration_seconds_count{operation=\"flush\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "halite_http_request_duration_seconds_count{method=\"POST\",route=\"/v1/jobs\",status=\"202\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        text.lines().last(),
        Some("# EOF"),
        "OpenMetrics ends with EOF"
    );

    // A minion that stops shows as down.
    drop(_minions);
    eventually(
        Duration::from_secs(30),
        "the minions down in /metrics",
        || sample(&master.metrics(), "halite_minions{name=\"down\"}") == Some(2.0),
    );
}

#[test]
fn without_metrics_bind_nothing_else_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let ports: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("master/data/ports.json")).expect("ports"),
    )
    .expect("json");
    assert_eq!(ports["metrics"], serde_json::Value::Null);
    // The API does not serve it either: metrics are not behind a token.
    let response = halite_tests::api::http()
        .get(format!("{}/metrics", master.api_url()))
        .send()
        .expect("GET");
    assert_eq!(response.status().as_u16(), 404);
}
