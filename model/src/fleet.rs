//! The fleet: minions, their keys, when they came and went, and the
//! periodic connectivity checks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A minion as the master sees it.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MinionView {
    /// Minion id.
    pub id: String,
    /// `up` or `down`.
    pub status: String,
    /// Last heartbeat or message (unix ms), if ever.
    pub last_seen: Option<u64>,
    /// halite version it runs.
    pub version: Option<String>,
    /// Round trip of its last heartbeat, in ms.
    pub latency_ms: Option<u64>,
    /// `os` grain.
    pub os: Option<String>,
    /// All grains it reported.
    pub grains: Value,
}

/// A minion came up or went down (`GET /v1/presence`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PresenceEvent {
    /// Minion id.
    pub id: String,
    /// `minion/up` or `minion/down`.
    pub event: String,
    /// When the master noticed (unix ms).
    pub at: u64,
}

/// One minion's result in one periodic connectivity check
/// (`GET /v1/checks`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct CheckRecord {
    /// Minion id.
    pub id: String,
    /// When the check ran (unix ms).
    pub at: u64,
    /// Was the minion reachable: a heartbeat acknowledged within
    /// `missed_heartbeats` intervals (both directions of its connection work)?
    pub ok: bool,
    /// Round trip of its last heartbeat, in ms.
    pub latency_ms: Option<u64>,
    /// Last time anything signed by it arrived (unix ms), if ever.
    pub last_seen: Option<u64>,
}

/// A minion key and its state.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct KeyView {
    /// Minion id.
    pub id: String,
    /// accepted, pending, rejected or denied.
    pub status: halite_proto::message::KeyStatus,
    /// SHA-256 fingerprint of the key.
    pub fingerprint: String,
}

/// `GET /v1/keys`: the master's own fingerprint and every minion key.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct KeysView {
    /// Fingerprint of the master's key (what minions pin).
    pub master_fingerprint: String,
    /// Minion keys.
    pub keys: Vec<KeyView>,
}

/// What the master remembers of a minion between restarts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct MinionRecord {
    /// Minion id.
    pub id: String,
    /// Grains reported at its last auth.
    pub grains: Value,
    /// halite version reported.
    pub version: String,
    /// Last time anything signed by it arrived (unix ms).
    pub last_seen: u64,
    /// Round trip of its last heartbeat.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
    /// The `at` (minion clock, unix ms) of the last heartbeat accepted
    /// from it: a heartbeat not newer than this is a replay.
    #[serde(default)]
    pub heartbeat_at: u64,
}
