//! The event stream portals follow live.

use halite_proto::Jid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One entry of the master's event stream (`GET /v1/events`,
/// `GET /v1/jobs/{jid}/events` as Server-Sent Events). `id` is the SSE id:
/// a client that reconnects with `Last-Event-ID` gets every later entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BusEntry {
    /// Position in the stream; strictly increasing, survives restarts.
    pub id: u64,
    /// `job/new`, `job/event`, `job/return`, `job/cancel`, `minion/up`,
    /// `minion/down`, `rollout/progress`, ... (docs/api.md lists them).
    pub kind: String,
    /// When it happened (unix ms).
    pub at: u64,
    /// The job, for `job/*` kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<Jid>,
    /// The minion, when one is concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minion: Option<String>,
    /// The payload: the job summary, the event (stage change or output
    /// line), or the return.
    pub data: Value,
}
