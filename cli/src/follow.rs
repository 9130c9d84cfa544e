//! Following a job over its event stream (`GET /v1/jobs/{jid}/events`,
//! Server-Sent Events): stage changes, output lines and returns as the
//! master stores them, then a `done` event. A dropped connection is
//! resumed with `Last-Event-ID`, so nothing is missed or shown twice.

use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use halite_model::BusEntry;

use crate::client::Client;

/// Consecutive reconnects without a new entry before giving up.
const MAX_RECONNECTS: u32 = 5;

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseEvent {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

/// Splits a byte stream into Server-Sent Events (the subset the master
/// sends: `id`, `event`, `data`, comments).
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
    current: SseEvent,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut done = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if !event.data.is_empty() || event.event.is_some() {
                    done.push(event);
                }
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = value.parse().ok(),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                _ => {}
            }
        }
        done
    }
}

/// Calls `on_entry` for every entry of the job's stream, in order, until
/// the master says the job is done.
pub async fn job(
    client: &Client,
    jid: &str,
    mut on_entry: impl FnMut(&BusEntry),
) -> anyhow::Result<()> {
    let path = format!("/v1/jobs/{jid}/events");
    let mut last: Option<u64> = None;
    let mut failures = 0u32;
    loop {
        let failure = match client.stream(&path, last).await {
            Ok(response) => {
                let mut bytes = response.bytes_stream();
                let mut parser = SseParser::default();
                let mut error = None;
                while let Some(chunk) = bytes.next().await {
                    let chunk = match chunk {
                        Ok(chunk) => chunk,
                        Err(e) => {
                            error = Some(anyhow::Error::from(e));
                            break;
                        }
                    };
                    for event in parser.feed(&chunk) {
                        if event.event.as_deref() == Some("done") {
                            return Ok(());
                        }
                        let entry: BusEntry = serde_json::from_str(&event.data)
                            .context("the master sent an event that is not an entry")?;
                        on_entry(&entry);
                        last = event.id.or(last);
                        failures = 0;
                    }
                }
                error.unwrap_or_else(|| anyhow::anyhow!("the event stream ended early"))
            }
            Err(e) => e,
        };
        failures += 1;
        if failures > MAX_RECONNECTS {
            return Err(failure.context(format!("following job {jid}")));
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_come_out_whole() {
        let mut parser = SseParser::default();
        assert!(parser.feed(b": keep-alive\n\nid: 7\nda").is_empty());
        let events = parser.feed(b"ta: {\"a\":1}\n\nevent: done\ndata: {}\n\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    id: Some(7),
                    event: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    id: None,
                    event: Some("done".into()),
                    data: "{}".into()
                },
            ]
        );
    }
}
