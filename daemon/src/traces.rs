//! OpenTelemetry traces, sent as OTLP over HTTP (JSON encoding) to the
//! collector `otel_endpoint` names (the master's and the minion's config;
//! off when unset).
//!
//! A job's trace spans the master and its minions without any context
//! travelling with the job: its trace id *is* the jid (20 digits,
//! left-padded with zeros to OTLP's 32 hex digits, so searching a tracing
//! UI for `0000000000002026…` finds the job), and each span id is derived
//! from the jid and what the span is ([`span_id`]), so the minion names the
//! master's span as its parent on its own. The tree:
//!
//! ```text
//! job test.ping            master: submitted → published
//! └─ minion web01          master: published → web01's return stored
//!    └─ run test.ping      web01: started → finished
//! ```
//!
//! Spans go to a bounded queue and an exporter task posts them in batches;
//! a full queue or an unreachable collector drops spans (counted, one log
//! line per interval), never slowing a job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans waiting for the exporter; past this, new spans are dropped.
const QUEUE: usize = 8192;
/// Spans per request.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// One request's time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// 32 hex digits ([`trace_id`]).
    pub trace_id: String,
    /// 16 hex digits ([`span_id`]).
    pub span_id: String,
    /// The parent's span id; `None` for a trace's root.
    pub parent: Option<String>,
    /// What it was (`job test.ping`, `run test.ping`).
    pub name: String,
    /// Unix ms.
    pub start_ms: u64,
    /// Unix ms.
    pub end_ms: u64,
    /// Did it fail?
    pub error: bool,
    /// Attributes (`halite.jid`, `halite.minion`, ...).
    pub attributes: Vec<(&'static str, Value)>,
}

/// The trace id of job `jid` (20 digits): the jid, left-padded with zeros.
pub fn trace_id(jid: &str) -> String {
    format!("{jid:0>32}")
}

/// The span id of one part of job `jid`: FNV-1a over the jid and the
/// parts, so the master and a minion derive the same id independently.
/// Never all zeros (OTLP's "no span").
pub fn span_id(jid: &str, parts: &[&str]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in std::iter::once(jid)
        .chain(parts.iter().copied())
        .flat_map(|part| part.bytes().chain(std::iter::once(0)))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:016x}", hash.max(1))
}

/// Checks an `otel_endpoint` value: an `http://` or `https://` URL, to
/// which `/v1/traces` is appended. Returns it without a trailing slash.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(format!(
            "{text:?} is not a collector URL like http://127.0.0.1:4318"
        )),
    }
}

/// The `otel_endpoint` config value, checked ([`parse_endpoint`]); `None`
/// when unset.
pub fn endpoint_setting(value: Option<&str>) -> Result<Option<String>, String> {
    value.map(parse_endpoint).transpose()
}

/// Where this process's spans go. Cheap to clone.
#[derive(Clone)]
pub struct Traces {
    queue: mpsc::Sender<Span>,
    dropped: Arc<AtomicU64>,
}

impl Traces {
    /// Starts the exporter for `service` (`halite-master`, `halite-minion`)
    /// on `host`, posting to `endpoint` (checked by [`parse_endpoint`])
    /// until `shutdown`, then sending what is queued. Call inside a Tokio
    /// runtime.
    pub fn start(endpoint: &str, service: &str, host: &str, shutdown: CancellationToken) -> Traces {
        let (queue, spans) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let exporter = Exporter {
            url: format!("{endpoint}/v1/traces"),
            resource: json!({ "attributes": [
                attribute("service.name", &json!(service)),
                attribute("host.name", &json!(host)),
                attribute("service.version", &json!(env!("CARGO_PKG_VERSION"))),
            ]}),
            dropped: dropped.clone(),
        };
        tokio::spawn(exporter.run(spans, shutdown));
        Traces { queue, dropped }
    }

    /// Queues a finished span; drops it (counted) when the queue is full.
    pub fn record(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Exporter {
    url: String,
    resource: Value,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    async fn run(self, mut spans: mpsc::Receiver<Span>, shutdown: CancellationToken) {
        // An https:// collector needs the process's rustls provider.
        halite_pki::install_tls_provider();
        let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the trace exporter; no traces are sent");
                return;
            }
        };
        let log = crate::LogThrottle::new(Duration::from_secs(60));
        loop {
            let mut batch = Vec::new();
            let stopping = tokio::select! {
                _ = shutdown.cancelled() => true,
                span = spans.recv() => match span {
                    Some(span) => { batch.push(span); false }
                    None => true,
                },
            };
            if !stopping {
                let deadline = tokio::time::sleep(FLUSH_EVERY);
                tokio::pin!(deadline);
                while batch.len() < BATCH {
                    tokio::select! {
                        _ = &mut deadline => break,
                        span = spans.recv() => match span {
                            Some(span) => batch.push(span),
                            None => break,
                        },
                    }
                }
            }
            while let Ok(span) = spans.try_recv() {
                if batch.len() >= BATCH {
                    break;
                }
                batch.push(span);
            }
            if !batch.is_empty() {
                self.post(&client, &batch, &log).await;
            }
            if stopping {
                return;
            }
        }
    }

    async fn post(&self, client: &reqwest::Client, batch: &[Span], log: &crate::LogThrottle) {
        let body = self.body(batch);
        let sent = client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .and_then(|response| response.error_for_status());
        if let Err(e) = sent {
            let lost = self.dropped.swap(0, Ordering::Relaxed) + batch.len() as u64;
            if let Some(suppressed) = log.allow(&self.url) {
                tracing::warn!(url = %self.url, error = %e, lost, suppressed, "cannot send traces to the collector; spans dropped");
            }
        }
    }

    /// An OTLP `ExportTraceServiceRequest` in its JSON encoding.
    fn body(&self, batch: &[Span]) -> Value {
        let spans: Vec<Value> = batch
            .iter()
            .map(|span| {
                let mut out = json!({
                    "traceId": span.trace_id,
                    "spanId": span.span_id,
                    "name": span.name,
                    // SPAN_KIND_INTERNAL
                    "kind": 1,
                    "startTimeUnixNano": (span.start_ms * 1_000_000).to_string(),
                    "endTimeUnixNano": (span.end_ms.max(span.start_ms) * 1_000_000).to_string(),
                    "attributes": span.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
                    // STATUS_CODE_OK / STATUS_CODE_ERROR
                    "status": { "code": if span.error { 2 } else { 1 } },
                });
                if let Some(parent) = &span.parent {
                    out["parentSpanId"] = json!(parent);
                }
                out
            })
            .collect();
        json!({ "resourceSpans": [{
            "resource": self.resource,
            "scopeSpans": [{ "scope": { "name": "halite" }, "spans": spans }],
        }]})
    }
}

/// An OTLP `KeyValue` (strings, integers and booleans; anything else as
/// its JSON text).
fn attribute(key: &str, value: &Value) -> Value {
    let value = match value {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        other => json!({ "stringValue": other.to_string() }),
    };
    json!({ "key": key, "value": value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jid_is_its_trace_id_and_span_ids_agree_across_processes() {
        let jid = "20261201053600123456";
        assert_eq!(trace_id(jid), "00000000000020261201053600123456");
        assert_eq!(
            span_id(jid, &["minion", "web01"]),
            span_id(jid, &["minion", "web01"])
        );
        assert_ne!(
            span_id(jid, &["minion", "web01"]),
            span_id(jid, &["minion", "web02"])
        );
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(span_id(jid, &["ab", "c"]), span_id(jid, &["a", "bc"]));
        assert_eq!(span_id(jid, &["job"]).len(), 16);
    }

    #[test]
    fn an_endpoint_is_an_http_url() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:4318/").unwrap(),
            "http://127.0.0.1:4318"
        );
        assert!(parse_endpoint("https://otel.example:4318").is_ok());
        for bad in ["127.0.0.1:4318", "http://", "grpc://x:4317", "http://a b"] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
