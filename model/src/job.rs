//! Jobs: what was asked, where, by whom, and what each minion answered.

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
    /// The release request this job deploys (set by the master when it
    /// deploys one, never read from a request body): environments that
    /// take releases only through requests let it through.
    #[serde(skip)]
    pub release_request: Option<u64>,
    /// Release even inside a freeze window (needs the `@freeze_override`
    /// grant; audited).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub override_freeze: bool,
    /// The freeze window this job was let through despite (set by the
    /// master, never read from a request body).
    #[serde(skip)]
    pub freeze_overridden: Option<String>,
}

/// The answer to a job submission.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Submitted {
    /// The new job's id.
    pub jid: Jid,
    /// Minions expected to return (accepted keys matching the target).
    pub minions: Vec<String>,
    /// The freeze window the job was released in by override, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_override: Option<String>,
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

/// A stored return read without its data: who, and did it succeed.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ReturnOutcome {
    /// Minion id.
    pub id: String,
    /// Did it succeed?
    pub success: bool,
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
    /// How the target was read.
    #[serde(default)]
    pub tgt_type: TargetType,
    /// Positional arguments (salt-api's job listings show them).
    #[serde(default)]
    pub arg: Vec<Value>,
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
    /// The app it released or read (its `app` keyword argument).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
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
    /// Only jobs of this app (their `app` keyword argument).
    pub app: Option<String>,
    /// Only jobs this user may read (set by the API from the token, never
    /// from the query).
    #[serde(skip)]
    pub reader: Option<String>,
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
