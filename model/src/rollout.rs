//! Rollouts: one release of an app through its fleet in steps, each step
//! a job, checked and gated before the next; stopped and put back when a
//! step fails. The master stores the record after every change, so a
//! restarted master continues it where it was.

use halite_proto::rollout::RolloutPlan;
use halite_proto::Jid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What starts a rollout (`POST /v1/rollouts`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// The app.
    pub app: String,
    /// Which version: `{"tag": "v3"}`, `{"branch": ...}` or `{"rev": ...}`.
    pub version: Map<String, Value>,
    /// A narrower target than the app's (read as a compound target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The plan; the app's `[rollout]` (or all at once) unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<RolloutPlan>,
    /// The module that releases the app: a Lua deploy module of the
    /// master's (`php_app`), whose `deploy` and `rollback` the steps and
    /// the fleet rollback run; the app kind's own module unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Why, for the history and the audit log.
    #[serde(default)]
    pub reason: String,
    /// Groups released after this app's minions, in this order: other
    /// apps (each its own module and target), ramped by the same plan.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<NewGroup>,
}

/// A group of a rollout after the first (`then`): another app and the
/// version it gets.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// The app (its own module: `git_deploy`, `java_tomcat`, ...).
    pub app: String,
    /// Its version (`{"tag": "v3"}`, `{"url": ..., "sha256": ..., "version": ...}`).
    pub version: Map<String, Value>,
    /// A narrower target than the app's (read as a compound target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// A Lua deploy module releasing the app instead of its kind's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// A group of a rollout after the first, as the master resolved it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct RolloutGroup {
    /// The app.
    pub app: String,
    /// Its version.
    pub version: Map<String, Value>,
    /// Its deploy function (`java_tomcat.deploy`, ...).
    pub fun: String,
}

/// Where a step is.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepPhase {
    /// Not started.
    #[default]
    Pending,
    /// Its deploy job is out.
    Running,
    /// Released; baking until `bake_until`.
    Baking,
    /// Baked; its checks on the minions (the app's health check, the
    /// canary's measurement) and the master's probes are running.
    Checking,
    /// Waiting for `rollout continue` (a manual gate).
    Waiting,
    /// Done and checked.
    Passed,
    /// Over a threshold or a gate failed.
    Failed,
}

/// One step of a rollout.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RolloutStep {
    /// Its group: 0 is the rollout's app, 1 the first of `then`, ...
    #[serde(default, skip_serializing_if = "is_zero")]
    pub group: usize,
    /// Its minions.
    pub minions: Vec<String>,
    /// Where it is.
    pub phase: StepPhase,
    /// Its deploy job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<Jid>,
    /// Minions whose deploy succeeded (released by this rollout).
    #[serde(default)]
    pub released: Vec<String>,
    /// Minions whose deploy failed.
    #[serde(default)]
    pub failed: Vec<String>,
    /// Minions that did not return in time.
    #[serde(default)]
    pub missing: Vec<String>,
    /// When its job went out (unix ms).
    #[serde(default)]
    pub started_at: u64,
    /// When it was released and checked, or failed (unix ms).
    #[serde(default)]
    pub finished_at: u64,
    /// The job running the app's health check again on the released
    /// minions after the bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_jid: Option<Jid>,
    /// Released minions whose health check failed after the bake (or did
    /// not answer), with what it saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<(String, String)>,
    /// The canary's measurement job (the first step): its minions and the
    /// baseline's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_jid: Option<Jid>,
    /// Minions not yet released measured as the canary's baseline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baseline: Vec<String>,
    /// Gates run after the bake: what each found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    /// Who let it go on (a manual gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continued_by: Option<String>,
}

/// What one gate found.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct GateResult {
    /// `health check`, `canary`, `probe http://…`, `probe cmd …`.
    pub gate: String,
    /// Passed?
    pub passed: bool,
    /// What it saw (status, exit code, error).
    pub detail: String,
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Going through its steps.
    #[default]
    Running,
    /// Stopped by a person between steps (a running job finishes).
    Paused,
    /// Putting released minions back.
    RollingBack,
    /// Every step passed.
    Succeeded,
    /// A step failed; released minions stay (auto_rollback off) or some
    /// could not be put back.
    Failed,
    /// A step failed or it was aborted, and every released minion is back
    /// on its previous release.
    RolledBack,
    /// Aborted without a rollback (nothing had been released).
    Aborted,
}

impl RolloutState {
    /// Nothing more happens.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::Failed
                | RolloutState::RolledBack
                | RolloutState::Aborted
        )
    }
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::RollingBack => "rolling_back",
            RolloutState::Succeeded => "succeeded",
            RolloutState::Failed => "failed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        };
        f.write_str(text)
    }
}

/// The fleet rollback after a failed step or an abort.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct FleetRollback {
    /// Why.
    pub reason: String,
    /// The rollback job (the first group's, when there are several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<Jid>,
    /// Every rollback job: one per app the rollout released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<Jid>,
    /// The minions it went to: every one this rollout released.
    pub minions: Vec<String>,
    /// Back on their previous release (and healthy).
    #[serde(default)]
    pub rolled_back: Vec<String>,
    /// Could not be put back, with what went wrong.
    #[serde(default)]
    pub not_rolled_back: Vec<(String, String)>,
}

impl FleetRollback {
    /// Every rollback job (a record from before `jobs` has only `jid`).
    pub fn all_jobs(&self) -> Vec<Jid> {
        let mut all = self.jobs.clone();
        if let Some(jid) = &self.jid {
            if !all.contains(jid) {
                all.insert(0, jid.clone());
            }
        }
        all
    }

    /// `web3 (did not return), web4 (...)`, or `-` when every one is back.
    pub fn not_back(&self) -> String {
        if self.not_rolled_back.is_empty() {
            return "-".into();
        }
        self.not_rolled_back
            .iter()
            .map(|(minion, why)| format!("{minion} ({why})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Something that happened to a rollout, for its history.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct RolloutEvent {
    /// When (unix ms).
    pub at: u64,
    /// Who (the master itself: `halite`).
    pub by: String,
    /// What.
    pub what: String,
}

/// A rollout.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Rollout {
    /// Its number (1, 2, ...).
    pub id: u64,
    /// The app.
    pub app: String,
    /// The version released.
    pub version: Map<String, Value>,
    /// The deploy module's function (`git_deploy.deploy`, ...).
    pub fun: String,
    /// Who started it; its jobs run with their grants.
    pub user: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// The plan it follows.
    pub plan: RolloutPlan,
    /// The steps, in order.
    pub steps: Vec<RolloutStep>,
    /// The step under way (`steps.len()` when every step passed).
    pub current: usize,
    /// Where it is.
    pub state: RolloutState,
    /// When the current step's bake ends (unix ms).
    #[serde(default)]
    pub bake_until: u64,
    /// Why it stopped, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The fleet rollback, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<FleetRollback>,
    /// What happened, oldest first.
    pub history: Vec<RolloutEvent>,
    /// When it was started (unix ms).
    pub created_at: u64,
    /// The release request it deploys (its jobs carry it, so an
    /// environment that takes releases through requests lets them in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_request: Option<u64>,
    /// Who aborted it while a step's job was out: the step is judged
    /// when its job is done, then the rollout stops, so every minion the
    /// job released is put back too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborting: Option<String>,
    /// The request was deployed with a freeze override: so are the steps.
    #[serde(default)]
    pub override_freeze: bool,
    /// Groups after the first (other apps), released in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<RolloutGroup>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Rollout {
    /// The app, version and deploy function of group `group` (0: the
    /// rollout's own).
    pub fn group(&self, group: usize) -> (&str, &Map<String, Value>, &str) {
        match group.checked_sub(1).and_then(|i| self.then.get(i)) {
            Some(g) => (&g.app, &g.version, &g.fun),
            None => (&self.app, &self.version, &self.fun),
        }
    }

    /// Each group's minions, in group order: (group, minions).
    pub fn minions_by_group(&self) -> Vec<(usize, Vec<String>)> {
        let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
        for step in &self.steps {
            match groups.last_mut() {
                Some((g, minions)) if *g == step.group => {
                    minions.extend(step.minions.iter().cloned())
                }
                _ => groups.push((step.group, step.minions.clone())),
            }
        }
        groups
    }

    /// The minions this rollout released so far, by group: (group,
    /// minions), groups without any left out.
    pub fn released_by_group(&self) -> Vec<(usize, Vec<String>)> {
        let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
        for step in self.steps.iter().filter(|s| !s.released.is_empty()) {
            match groups.iter_mut().find(|(g, _)| *g == step.group) {
                Some((_, minions)) => minions.extend(step.released.iter().cloned()),
                None => groups.push((step.group, step.released.clone())),
            }
        }
        groups
    }

    /// Every minion this rollout released so far.
    pub fn released(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.released.iter().cloned())
            .collect()
    }

    /// Failed and missing minions over every step.
    pub fn failures(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.failed.len() + s.missing.len())
            .sum()
    }

    /// How many minions the rollout has.
    pub fn minions(&self) -> usize {
        self.steps.iter().map(|s| s.minions.len()).sum()
    }

    /// Every minion of the rollout, in step order.
    pub fn all_minions(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.minions.iter().cloned())
            .collect()
    }

    /// Records what happened.
    pub fn note(&mut self, at: u64, by: &str, what: impl Into<String>) {
        self.history.push(RolloutEvent {
            at,
            by: by.to_owned(),
            what: what.into(),
        });
    }
}

/// A person's step on a rollout (`POST /v1/rollouts/{id}/ACTION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    /// Let a step waiting at a manual gate go on.
    Continue,
    /// Start no further step.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Stop for good and put released minions back.
    Abort,
}

impl RolloutAction {
    /// `continue`, `pause`, `resume`, `abort`.
    pub fn parse(text: &str) -> Option<RolloutAction> {
        match text {
            "continue" => Some(RolloutAction::Continue),
            "pause" => Some(RolloutAction::Pause),
            "resume" => Some(RolloutAction::Resume),
            "abort" => Some(RolloutAction::Abort),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(group: usize, minions: &[&str], released: &[&str]) -> RolloutStep {
        RolloutStep {
            group,
            minions: minions.iter().map(|m| m.to_string()).collect(),
            released: released.iter().map(|m| m.to_string()).collect(),
            ..RolloutStep::default()
        }
    }

    #[test]
    fn groups_keep_their_apps_and_minions_apart() {
        let rollout = Rollout {
            id: 1,
            app: "shop".into(),
            version: Map::new(),
            fun: "git_deploy.deploy".into(),
            user: "root".into(),
            reason: String::new(),
            plan: RolloutPlan::default(),
            steps: vec![
                step(0, &["web1"], &["web1"]),
                step(0, &["web2"], &["web2"]),
                step(1, &["app1"], &["app1"]),
                step(1, &["app2"], &[]),
            ],
            current: 3,
            state: RolloutState::Running,
            bake_until: 0,
            failure: None,
            rollback: None,
            history: Vec::new(),
            created_at: 0,
            release_request: None,
            aborting: None,
            override_freeze: false,
            then: vec![RolloutGroup {
                app: "store".into(),
                version: Map::new(),
                fun: "java_tomcat.deploy".into(),
            }],
        };
        assert_eq!(rollout.group(0).0, "shop");
        assert_eq!(rollout.group(1).2, "java_tomcat.deploy");
        let by_group = rollout.minions_by_group();
        assert_eq!(by_group.len(), 2);
        assert_eq!(by_group[1], (1, vec!["app1".to_owned(), "app2".to_owned()]));
        let released = rollout.released_by_group();
        assert_eq!(released[0], (0, vec!["web1".to_owned(), "web2".to_owned()]));
        assert_eq!(released[1], (1, vec!["app1".to_owned()]));
        // A stored rollback from before `jobs` still names its job.
        let old: FleetRollback = serde_json::from_value(
            serde_json::json!({"reason": "x", "jid": "20260101000000000001", "minions": []}),
        )
        .unwrap();
        assert_eq!(old.all_jobs().len(), 1);
    }
}
