//! The release report: what every deploy module's return carries for a
//! deploy or rollback, typed, so the minion writes it and the master
//! reads it as one type (into release records and statistics) instead of
//! picking keys out of JSON.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Deploy or roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseAction {
    /// A new release.
    Deploy,
    /// Back to an earlier release.
    Rollback,
}

impl ReleaseAction {
    /// As written in reports and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseAction::Deploy => "deploy",
            ReleaseAction::Rollback => "rollback",
        }
    }
}

/// Where a release ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseResult {
    /// It is live.
    Live,
    /// It never went live.
    Failed,
    /// It went live and was switched back.
    RolledBack,
    /// What was asked for was live already.
    Unchanged,
}

impl ReleaseResult {
    /// As written in reports and records.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseResult::Live => "live",
            ReleaseResult::Failed => "failed",
            ReleaseResult::RolledBack => "rolled_back",
            ReleaseResult::Unchanged => "unchanged",
        }
    }
}

/// How a stage ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    /// It did its work.
    Succeeded,
    /// It failed (the release stopped there).
    Failed,
}

/// The stages of a release, one vocabulary for every deploy kind, in the
/// order they run. A kind runs the stages it needs, always in this order
/// (git: prepare, pre_deploy, deploy, post_deploy; artifacts and task
/// definitions: fetch, prepare, deploy, verify):
///
/// - `fetch`: get the bits onto the server (download an artifact, read
///   what is installed now); nothing is changed.
/// - `prepare`: build the new release beside the live one (git fetches
///   into its cache and exports here; artifacts are checked and
///   unpacked); nothing live is changed.
/// - `pre_deploy`: the app's hook, run in the new release.
/// - `deploy`: make the new release live (switch, import, upload).
/// - `post_deploy`: the app's hook and health check after the switch.
/// - `verify`: check the new release serves; a failure takes it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Get the bits onto the server.
    Fetch,
    /// Build the new release beside the live one.
    Prepare,
    /// The app's hook in the new release.
    PreDeploy,
    /// Make the new release live.
    Deploy,
    /// The app's hook and health check after the switch.
    PostDeploy,
    /// Check the new release serves.
    Verify,
    /// A stage this build does not know (from a newer minion).
    #[serde(other)]
    Unknown,
}

impl Stage {
    /// As written in reports, events and statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Prepare => "prepare",
            Stage::PreDeploy => "pre_deploy",
            Stage::Deploy => "deploy",
            Stage::PostDeploy => "post_deploy",
            Stage::Verify => "verify",
            Stage::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stage of a release, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// Which stage.
    pub stage: Stage,
    /// How it ended.
    pub status: StageStatus,
    /// How long it took.
    pub duration_ms: u64,
    /// What it did, or why it failed.
    pub message: String,
}

/// A deploy or rollback, as the return's data says it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReport {
    /// The app (or, for a task definition, the task's path).
    pub app: String,
    /// Deploy or rollback.
    pub action: ReleaseAction,
    /// Where it ended.
    pub result: ReleaseResult,
    /// Commit id or artifact hash.
    pub revision: Option<String>,
    /// Tag, branch or version asked for.
    pub reference: Option<String>,
    /// The release's name on the minion.
    pub release: Option<String>,
    /// The release that was live before.
    pub previous: Option<String>,
    /// Every stage that ran, in order.
    pub stages: Vec<StageReport>,
    /// How long the whole release took.
    pub duration_ms: u64,
    /// The stage that failed, for a failed release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_stage: Option<Stage>,
    /// What failed (`"{stage} failed: {why}"`), for a failed release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the module adds (`changed`, `files`, `context`, `site`...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_with_its_extras() {
        let data = serde_json::json!({
            "app": "shop", "action": "deploy", "result": "rolled_back",
            "revision": "abc", "reference": "v3", "release": "abc-1", "previous": null,
            "stages": [{"stage": "prepare", "status": "succeeded", "duration_ms": 5, "message": "ok"}],
            "duration_ms": 9, "failed_stage": "post_deploy", "error": "post_deploy failed: 500",
            "changed": true,
        });
        let report: ReleaseReport = serde_json::from_value(data.clone()).unwrap();
        assert_eq!(report.result, ReleaseResult::RolledBack);
        assert_eq!(report.extra["changed"], true);
        assert_eq!(serde_json::to_value(&report).unwrap(), data);
    }

    #[test]
    fn stages_are_written_in_the_one_vocabulary_and_a_newer_one_still_reads() {
        let all = [
            Stage::Fetch,
            Stage::Prepare,
            Stage::PreDeploy,
            Stage::Deploy,
            Stage::PostDeploy,
            Stage::Verify,
        ];
        for stage in all {
            assert_eq!(serde_json::to_value(stage).unwrap(), stage.as_str());
        }
        let newer: Stage = serde_json::from_value(serde_json::json!("canary")).unwrap();
        assert_eq!(newer, Stage::Unknown);
    }
}
