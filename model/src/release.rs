//! Releases: every deploy and rollback of an app on a minion, what is live
//! where, and statistics over them.

use std::collections::BTreeMap;

use halite_proto::Jid;
use serde::{Deserialize, Serialize};

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
    /// The app's environment the minion is in (none for an app without
    /// environments, or a minion outside them), so statistics per
    /// environment count every deploy, through a request or not.
    #[serde(default)]
    pub env: Option<String>,
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
    /// Per app and environment: count, failures and durations.
    #[serde(default)]
    pub per_env: Vec<EnvStats>,
}

/// Deploys of one app in one environment over the range.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct EnvStats {
    /// App name.
    pub app: String,
    /// Environment (none: minions outside the app's environments).
    pub env: Option<String>,
    /// Deploys and rollbacks (per minion).
    pub deploys: u64,
    /// How many failed.
    pub failed: u64,
    /// Median duration (ms).
    pub median_ms: u64,
    /// 95th percentile duration (ms).
    pub p95_ms: u64,
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
