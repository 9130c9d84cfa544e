//! One invocation of a module function: its arguments, the minion's grains,
//! a cancellation handle and a sink for progress events.

use std::sync::Arc;

use halite_proto::message::EventBody;
use halite_proto::Jid;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Everything a module function gets from the minion for one job.
#[derive(Clone, Debug)]
pub struct Call {
    /// The job this call runs for (for logs and events).
    pub jid: Jid,
    /// Full function name, e.g. `cmd.run`. [`crate::Registry::run`] sets it
    /// to the resolved `module.function` even when the job named the module
    /// alone.
    pub fun: String,
    /// Positional arguments, as published in the job.
    pub args: Vec<Value>,
    /// Keyword arguments, as published in the job.
    pub kwargs: Map<String, Value>,
    /// The minion's grains object (built once by [`crate::grains::collect`]).
    pub grains: Arc<Value>,
    /// Cancelled when the job times out or the minion shuts down; a function
    /// must stop promptly when it fires.
    pub cancel: CancellationToken,
    /// Where the function reports progress lines and stage changes.
    pub events: EventSink,
    /// Who published the job, and to what target (Salt's `__pub_*`, which
    /// `test.arg` shows).
    pub published: Published,
}

/// What a job said about where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The target expression.
    pub tgt: String,
    /// How it was read (`glob`, `list`, ...).
    pub tgt_type: String,
    /// The user who submitted it.
    pub user: String,
}

/// Where a running function reports progress lines and stage changes;
/// clonable, cheap, never blocks.
///
/// Sending never fails from the function's point of view: if nobody listens
/// any more (the minion dropped the receiver) the events are dropped, because
/// a job must not fail for lack of an audience.
#[derive(Clone)]
pub struct EventSink {
    tx: Option<UnboundedSender<EventBody>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.tx.is_some() {
            "EventSink(channel)"
        } else {
            "EventSink(discard)"
        })
    }
}

impl EventSink {
    /// Sends every event on `tx` (the minion forwards them to the master).
    pub fn new(tx: UnboundedSender<EventBody>) -> Self {
        EventSink { tx: Some(tx) }
    }

    /// Drops every event: for tests, benches and calls nobody watches.
    pub fn discard() -> Self {
        EventSink { tx: None }
    }

    /// Reports one line of output; `stream` is `stdout`, `stderr` or `log`.
    pub fn progress(&self, stream: &str, line: &str) {
        self.send(EventBody::Progress {
            line: line.to_owned(),
            stream: stream.to_owned(),
        });
    }

    /// Reports that a stage started or ended (`status` is `started`,
    /// `succeeded` or `failed`; `duration_ms` goes on the ending event).
    pub fn stage(
        &self,
        stage: &str,
        status: &str,
        duration_ms: Option<u64>,
        message: Option<String>,
    ) {
        self.send(EventBody::Stage {
            stage: stage.to_owned(),
            status: status.to_owned(),
            duration_ms,
            message,
        });
    }

    fn send(&self, body: EventBody) {
        if let Some(tx) = &self.tx {
            if tx.send(body).is_err() {
                tracing::trace!("event receiver gone; event dropped");
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A call of `fun` with the given arguments, empty grains and a discarding sink.
    pub(crate) fn call(fun: &str, args: Vec<Value>, kwargs: Value) -> Call {
        let kwargs = match kwargs {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        Call {
            jid: Jid::parse("20260101000000000001").expect("valid test jid"),
            fun: fun.to_owned(),
            args,
            kwargs,
            grains: Arc::new(Value::Object(Map::new())),
            cancel: CancellationToken::new(),
            events: EventSink::discard(),
            published: Published::default(),
        }
    }

    #[test]
    fn progress_and_stage_reach_the_channel() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let sink = EventSink::new(tx);
        sink.clone().progress("stdout", "hello");
        sink.stage("deploy", "succeeded", Some(12), Some("done".into()));
        assert_eq!(
            rx.try_recv().ok(),
            Some(EventBody::Progress {
                line: "hello".into(),
                stream: "stdout".into()
            })
        );
        assert_eq!(
            rx.try_recv().ok(),
            Some(EventBody::Stage {
                stage: "deploy".into(),
                status: "succeeded".into(),
                duration_ms: Some(12),
                message: Some("done".into())
            })
        );
    }

    #[test]
    fn closed_channel_and_discard_do_not_panic() {
        let (tx, rx) = mpsc::unbounded_channel();
        drop(rx);
        let sink = EventSink::new(tx);
        sink.progress("log", "nobody listens");
        let d = EventSink::discard();
        d.stage("x", "started", None, None);
        assert_eq!(format!("{d:?}"), "EventSink(discard)");
        assert_eq!(format!("{sink:?}"), "EventSink(channel)");
    }
}
