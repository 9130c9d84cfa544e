//! JSON shapes of the native `/v1` API.
//!
//! The master's store keeps jobs, returns and events in exactly these
//! shapes, so what a portal reads is what was recorded.

use std::collections::BTreeMap;

use halite_proto::message::EventBody;
use halite_proto::{Jid, TargetType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/jobs`: what to run where.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Target expression.
    pub target: String,
    /// How to read `target` (glob when absent).
    #[serde(default)]
    pub tgt_type: TargetType,
    /// `module.function`.
    pub fun: String,
    /// Positional arguments.
    #[serde(default)]
    pub arg: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwarg: Map<String, Value>,
    /// Keyword arguments sealed for the minions: never stored or logged in clear.
    #[serde(default)]
    pub secret: BTreeMap<String, String>,
    /// Seconds the function may run on each minion (master default when absent).
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Refuse (409, nothing published) when a targeted minion is down.
    #[serde(default)]
    pub require_up: bool,
    /// Run on this many minions at a time (`"10"`) or this share of them
    /// (`"25%"`); the next batch starts when every minion of the previous
    /// one returned or its time ran out.
    #[serde(default)]
    pub batch: Option<String>,
}

/// The answer to a job submission.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Submitted {
    /// The new job's id.
    pub jid: Jid,
    /// Minions expected to return (accepted keys matching the target).
    pub minions: Vec<String>,
}

/// A job as recorded: what was asked, by whom, and who must answer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct JobRecord {
    /// Job id.
    pub jid: Jid,
    /// Target expression.
    pub target: String,
    /// How the target was read.
    pub tgt_type: TargetType,
    /// Function.
    pub fun: String,
    /// Positional arguments.
    pub arg: Vec<Value>,
    /// Keyword arguments (secrets excluded).
    pub kwarg: Map<String, Value>,
    /// Names of the secret keyword arguments (values are never kept).
    pub secret_keys: Vec<String>,
    /// Who submitted it.
    pub user: String,
    /// Seconds each minion may run it.
    pub timeout: u64,
    /// When it was published (unix ms).
    pub issued_at: u64,
    /// After this a minion refuses to start it (unix ms).
    pub expires_at: u64,
    /// Minions expected to return.
    pub expected: Vec<String>,
    /// Expected minions that were already down when the job was published
    /// (they may still run it if they come back before it expires).
    #[serde(default)]
    pub down: Vec<String>,
    /// Set when another master published the job and this one only holds
    /// the returns minions sent it (hot multi-master): that master's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
    /// Minions per batch, for a job run in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

impl JobRecord {
    /// When the master stops waiting for returns (unix ms): the job's
    /// timeout per batch, plus a grace for returns in flight.
    pub fn deadline(&self) -> u64 {
        let batches = match self.batch_size {
            Some(size) if size > 0 => self.expected.len().div_ceil(size).max(1) as u64,
            _ => 1,
        };
        self.issued_at + self.timeout * 1000 * batches + RETURN_GRACE_MS
    }
}

/// Extra time the master waits past a job's timeout before it calls the
/// job done and the missing minions "did not return".
pub const RETURN_GRACE_MS: u64 = 5_000;

/// One minion's return as stored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ReturnRecord {
    /// Minion id.
    pub id: String,
    /// Function that ran.
    pub fun: String,
    /// Did it succeed?
    pub success: bool,
    /// 0 on success.
    pub retcode: i32,
    /// What the function returned.
    pub data: Value,
    /// When the minion started it (unix ms).
    pub started_at: u64,
    /// When it finished (unix ms).
    pub finished_at: u64,
    /// When the master stored it (unix ms).
    pub stored_at: u64,
}

/// One progress line or stage change, as stored.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct EventRecord {
    /// Position in the job's event stream; pass it as `after` to get only newer ones.
    pub cursor: u64,
    /// Minion id.
    pub id: String,
    /// Order within the minion's events.
    pub seq: u64,
    /// When it happened on the minion (unix ms).
    pub at: u64,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

/// `GET /v1/jobs/{jid}`: a job with every return and who has not answered.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: JobRecord,
    /// Returns by minion id.
    pub returns: BTreeMap<String, ReturnRecord>,
    /// Expected minions that have not returned yet.
    pub missing: Vec<String>,
    /// Every expected minion returned, or the job's time is up.
    pub done: bool,
}

/// A row of `GET /v1/jobs`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub jid: Jid,
    /// Function.
    pub fun: String,
    /// Target expression.
    pub target: String,
    /// Who submitted it.
    pub user: String,
    /// When (unix ms).
    pub issued_at: u64,
    /// How many minions were expected.
    pub expected: usize,
    /// How many returned.
    pub returned: usize,
    /// How many of those failed.
    pub failed: usize,
    /// Every expected minion returned, or the job's time is up.
    #[serde(default)]
    pub done: bool,
}

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

/// The body of every error response.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// One deploy or rollback of an app on one minion, as the master keeps it
/// (from the minion's signed return), so "what is live where" and "what was
/// live before" outlive job pruning.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct DeployRecord {
    /// App name.
    pub app: String,
    /// Minion id.
    pub minion: String,
    /// The job that did it.
    pub jid: Jid,
    /// `deploy` or `rollback`.
    pub action: String,
    /// Did the job succeed?
    pub success: bool,
    /// Where the release ended: `live`, `failed` (never went live),
    /// `rolled_back` (went live, switched back) or `unchanged`.
    pub result: String,
    /// Commit id.
    pub revision: Option<String>,
    /// Tag or branch asked for.
    pub reference: Option<String>,
    /// Release directory name on the minion.
    pub release: Option<String>,
    /// The release that was live before.
    pub previous: Option<String>,
    /// What failed, for a failed job.
    pub error: Option<String>,
    /// The stage that failed (`fetch`, `prepare`, `deploy`, `verify`).
    #[serde(default)]
    pub failed_stage: Option<String>,
    /// When the minion finished (unix ms).
    pub at: u64,
    /// How long it took.
    pub duration_ms: u64,
}

/// `GET /v1/apps/{name}/releases`: what is live on each minion, and the
/// deploy history, newest first.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct AppReleases {
    /// App name.
    pub app: String,
    /// Per minion, the latest record whose release is live now.
    pub live: Vec<DeployRecord>,
    /// Every recorded deploy and rollback, newest first.
    pub history: Vec<DeployRecord>,
}

/// One entry of the master's event stream (`GET /v1/events`,
/// `GET /v1/jobs/{jid}/events` as Server-Sent Events). `id` is the SSE id:
/// a client that reconnects with `Last-Event-ID` gets every later entry.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct BusEntry {
    /// Position in the stream; strictly increasing, survives restarts.
    pub id: u64,
    /// `job/new`, `job/event`, `job/return`, `job/cancel`, `minion/up`,
    /// `minion/down`.
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

/// `POST /v1/login` body (JSON or form).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LoginRequest {
    /// User name (from `master-cli users add`).
    pub username: String,
    /// Password.
    pub password: String,
    /// Accepted and ignored (salt-api clients send `eauth`).
    #[serde(default)]
    pub eauth: Option<String>,
}

/// A session token and what it allows.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct LoginToken {
    /// Send it as `X-Auth-Token` or `Authorization: Bearer`.
    pub token: String,
    /// User name.
    pub user: String,
    /// When it was issued (unix ms).
    pub issued_at: u64,
    /// When it stops working (unix ms).
    pub expires_at: u64,
    /// The user's grants as written in the master's `[acl]`.
    pub perms: Vec<Value>,
}

/// One request that changed something (`GET /v1/audit`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct AuditRecord {
    /// When (unix ms).
    pub at: u64,
    /// Who (`root` for the local CLI; the name tried for a failed login).
    pub user: String,
    /// Client address as seen by the master.
    pub from: String,
    /// HTTP method.
    pub method: String,
    /// Path (without the query string).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// What was asked, briefly (function and target, key id...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `GET /v1/stats`: deploy statistics over a time range, for a dashboard.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct DeployStats {
    /// Start of the range (unix ms, inclusive).
    pub from: u64,
    /// End of the range (unix ms, exclusive).
    pub to: u64,
    /// Deploys and rollbacks in the range, per minion.
    pub total: u64,
    /// How many of them succeeded.
    pub succeeded: u64,
    /// succeeded / total (1.0 when there were none).
    pub success_rate: f64,
    /// Median duration (ms).
    pub median_ms: u64,
    /// 95th percentile duration (ms).
    pub p95_ms: u64,
    /// Per app and UTC day (`YYYY-MM-DD`): count and failures.
    pub per_app_day: Vec<AppDayStats>,
    /// Failures by minion id.
    pub failures_by_minion: BTreeMap<String, u64>,
    /// Failures by the stage that failed (`fetch`, `prepare`, `deploy`,
    /// `verify`, or `unknown`).
    pub failures_by_stage: BTreeMap<String, u64>,
}

/// Deploys of one app on one day.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct AppDayStats {
    /// App name.
    pub app: String,
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Deploys and rollbacks (per minion).
    pub deploys: u64,
    /// How many failed.
    pub failed: u64,
}

/// `GET /v1/jobs` filters and page.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobFilter {
    /// Page size (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Only jobs older than this jid (the previous page's `next`).
    pub before: Option<String>,
    /// Function, exact or a `*` glob (`git_deploy.*`).
    pub fun: Option<String>,
    /// Target expression as submitted, exact.
    pub target: Option<String>,
    /// Submitting user.
    pub user: Option<String>,
    /// Issued at or after (unix ms).
    pub from: Option<u64>,
    /// Issued before (unix ms).
    pub to: Option<u64>,
    /// `success` (every expected minion returned success), `failed` (a
    /// return failed or a minion never returned), `running`.
    pub result: Option<String>,
    /// Only jobs that ran on this minion.
    pub minion: Option<String>,
}

/// A page of `GET /v1/jobs`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JobPage {
    /// Jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
