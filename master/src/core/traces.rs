//! The master's spans of each job, when `otel_endpoint` is set (see
//! `halite_daemon::traces` for the trace's shape): the job from its
//! submission to its publication, and per minion from publication to
//! that minion's return stored.

use halite_daemon::traces::{span_id, trace_id, Span, Traces};
use halite_model::ReturnRecord;
use halite_proto::Jid;
use serde_json::json;

use super::Core;

impl Core {
    /// Sends this master's spans to `traces` from now on (once; at start).
    pub fn send_traces_to(&self, traces: Traces) {
        let _ = self.traces.set(traces);
    }

    /// The job's root span: submitted (its jid's time) to published now.
    pub(super) fn trace_published(
        &self,
        jid: &Jid,
        fun: &str,
        target: &str,
        user: &str,
        minions: usize,
    ) {
        let Some(traces) = self.traces.get() else {
            return;
        };
        traces.record(Span {
            trace_id: trace_id(jid.as_str()),
            span_id: span_id(jid.as_str(), &["job"]),
            parent: None,
            name: format!("job {fun}"),
            start_ms: jid.unix_ms(),
            end_ms: halite_proto::time::now_ms(),
            error: false,
            attributes: vec![
                ("halite.jid", json!(jid.as_str())),
                ("halite.fun", json!(fun)),
                ("halite.target", json!(target)),
                ("halite.user", json!(user)),
                ("halite.minions", json!(minions)),
                ("halite.master", json!(self.config.id)),
            ],
        });
    }

    /// One minion's span as the master saw it: published to its return
    /// stored. The minion's own span of the run is its child.
    pub(super) fn trace_stored(&self, jid: &Jid, record: &ReturnRecord) {
        let Some(traces) = self.traces.get() else {
            return;
        };
        traces.record(Span {
            trace_id: trace_id(jid.as_str()),
            span_id: span_id(jid.as_str(), &["minion", &record.id]),
            parent: Some(span_id(jid.as_str(), &["job"])),
            name: format!("minion {}", record.id),
            start_ms: jid.unix_ms(),
            end_ms: record.stored_at,
            error: !record.success,
            attributes: vec![
                ("halite.jid", json!(jid.as_str())),
                ("halite.minion", json!(record.id)),
                ("halite.fun", json!(record.fun)),
                ("halite.retcode", json!(record.retcode)),
                ("halite.master", json!(self.config.id)),
            ],
        });
    }
}
