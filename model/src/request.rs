//! Release requests: a version asked for one environment of an app, with
//! a reason; approved by someone allowed to (not the requester, unless the
//! environment says so); deployed with exactly the revision that was
//! approved; every step kept with who, when and why.
//!
//! This is the state machine and nothing else (no I/O): the master keeps
//! requests in its store, resolves versions to revisions and runs the
//! deploys, and asks [`ReleaseRequest::apply`] whether a step may happen.

use halite_proto::Jid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a request stands.
///
/// ```text
/// requested ──approve──▶ approved ──deploy──▶ deploying ──▶ live ──▶ rolled_back
///    │  ▲ └──reject──▶ rejected                     └──▶ failed
///    │  └─resubmit── returned ◀──return── requested
///    └──withdraw──▶ withdrawn  (from requested, returned or approved)
/// ```
/// Without required approval, `deploy` goes from `requested` directly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Asked for; waiting for an approver (or to be deployed, where no
    /// approval is required).
    Requested,
    /// Approved; waiting to be deployed.
    Approved,
    /// Refused, with a reason. Final.
    Rejected,
    /// Sent back to the requester for changes, with a reason.
    Returned,
    /// Its deploy job runs.
    Deploying,
    /// Its deploy succeeded everywhere: what the environment runs.
    Live,
    /// Its deploy failed somewhere. Final (a new request tries again).
    Failed,
    /// Was live; a later rollback replaced it. Final.
    RolledBack,
    /// The requester took it back before it was deployed. Final.
    Withdrawn,
}

impl RequestState {
    /// Still on its way: an app's environment has at most one such request.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            RequestState::Requested
                | RequestState::Approved
                | RequestState::Returned
                | RequestState::Deploying
        )
    }

    /// Its name, as the API and the CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Requested => "requested",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Returned => "returned",
            RequestState::Deploying => "deploying",
            RequestState::Live => "live",
            RequestState::Failed => "failed",
            RequestState::RolledBack => "rolled_back",
            RequestState::Withdrawn => "withdrawn",
        }
    }
}

impl std::fmt::Display for RequestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A new version.
    #[default]
    Deploy,
    /// Back to an earlier release (`to`, or the previous one).
    Rollback,
}

/// One step of a request's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The state it entered.
    pub state: RequestState,
    /// Who took the step (`master` for what the master did itself).
    pub by: String,
    /// When (unix ms).
    pub at: u64,
    /// Why, when the step asks for a reason (reject, return) or was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A release request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// Its number, increasing.
    pub id: u64,
    /// The app.
    pub app: String,
    /// The app's environment it is for.
    pub env: String,
    /// Deploy or rollback.
    #[serde(default)]
    pub kind: RequestKind,
    /// What was asked for, as given: `tag`, `branch` or `rev` for git
    /// apps; `url`, `sha256` and `version` for artifact apps; `to` for a
    /// rollback.
    pub version: Map<String, Value>,
    /// The exact revision that was asked for and is approved: the commit
    /// id a tag or branch named when the request was made, or the
    /// artifact's sha256. The deploy carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Why (required).
    pub reason: String,
    /// Who asked.
    pub requester: String,
    /// Where it stands.
    pub state: RequestState,
    /// Every step, oldest first (the first is `requested`).
    pub history: Vec<Transition>,
    /// The deploy job, once deploying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<Jid>,
    /// The rollout that deploys it, when its environment (or app) has a
    /// rollout plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<u64>,
}

/// A request as asked for (`POST /v1/requests`, `master-cli requests new`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// The app.
    pub app: String,
    /// Its environment.
    pub env: String,
    /// Deploy (the default) or rollback.
    #[serde(default)]
    pub kind: RequestKind,
    /// `tag`, `branch` or `rev`; `url`, `sha256` and `version`; or, for a
    /// rollback, `to` (the previous release when absent).
    #[serde(default)]
    pub version: Map<String, Value>,
    /// Why (required).
    pub reason: String,
}

/// A step on a request (`POST /v1/requests/{id}/{step}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// An approver says yes.
    Approve,
    /// An approver says no (reason required).
    Reject,
    /// An approver sends it back (reason required).
    Return,
    /// The requester submits it again.
    Resubmit,
    /// The requester takes it back.
    Withdraw,
    /// Deploy it (approved, or where no approval is needed).
    Deploy,
}

impl Step {
    /// The decision this step is, or `None` for `Deploy` (which needs its
    /// job published first, then is [`Action::Deploy`]).
    pub fn decision(self) -> Option<Action> {
        match self {
            Step::Approve => Some(Action::Approve),
            Step::Reject => Some(Action::Reject),
            Step::Return => Some(Action::Return),
            Step::Resubmit => Some(Action::Resubmit),
            Step::Withdraw => Some(Action::Withdraw),
            Step::Deploy => None,
        }
    }
}

/// An environment's rules for its requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    /// A request must be approved before it is deployed.
    pub requires_approval: bool,
    /// Who may approve, reject or return (user names).
    pub approvers: Vec<String>,
    /// May the requester approve their own request?
    pub self_approval: bool,
}

impl From<&halite_proto::app::EnvSpec> for Rules {
    fn from(env: &halite_proto::app::EnvSpec) -> Rules {
        Rules {
            requires_approval: env.requires_approval,
            approvers: env.approvers.clone(),
            self_approval: env.self_approval,
        }
    }
}

/// A step someone asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// An approver approves.
    Approve,
    /// An approver refuses (reason required).
    Reject,
    /// An approver sends it back for changes (reason required).
    Return,
    /// The requester submits it again (with the version changed, maybe).
    Resubmit,
    /// Its deploy job was published as `jid`.
    Deploy(Jid),
    /// Its rollout (this id) was started.
    RollOut(u64),
    /// The deploy finished: live, or failed.
    Finished {
        /// Did it succeed everywhere?
        ok: bool,
    },
    /// A later rollback replaced this live release.
    RolledBack,
    /// The requester takes it back.
    Withdraw,
}

impl Action {
    /// Its name in messages.
    fn name(&self) -> &'static str {
        match self {
            Action::Approve => "approved",
            Action::Reject => "rejected",
            Action::Return => "returned for changes",
            Action::Resubmit => "resubmitted",
            Action::Deploy(_) | Action::RollOut(_) => "deployed",
            Action::Finished { .. } => "finished",
            Action::RolledBack => "rolled back",
            Action::Withdraw => "withdrawn",
        }
    }
}

/// Why a step may not happen.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// Not from this state.
    #[error("request {id} is {state}: it cannot be {action}")]
    WrongState {
        /// The request.
        id: u64,
        /// Where it stands.
        state: RequestState,
        /// What was asked (`approved`, `deployed`, ...).
        action: &'static str,
    },
    /// Only an approver of the environment may.
    #[error("{user} is not an approver of {app} {env} (approvers: {approvers})")]
    NotApprover {
        /// Who tried.
        user: String,
        /// The app.
        app: String,
        /// The environment.
        env: String,
        /// Who may.
        approvers: String,
    },
    /// The requester may not approve their own request here.
    #[error("{user} asked for request {id} and may not approve it: another approver must")]
    OwnRequest {
        /// Who tried.
        user: String,
        /// The request.
        id: u64,
    },
    /// Only the requester may.
    #[error("only {requester}, who asked for request {id}, may do that")]
    NotRequester {
        /// The requester.
        requester: String,
        /// The request.
        id: u64,
    },
    /// The step needs a reason.
    #[error("a reason is required to mark request {id} {action}")]
    ReasonRequired {
        /// The request.
        id: u64,
        /// What was asked.
        action: &'static str,
    },
}

impl ReleaseRequest {
    /// A new request, `requested` by `requester` at `at`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        app: &str,
        env: &str,
        kind: RequestKind,
        version: Map<String, Value>,
        revision: Option<String>,
        reason: &str,
        requester: &str,
        at: u64,
    ) -> ReleaseRequest {
        ReleaseRequest {
            id,
            app: app.to_owned(),
            env: env.to_owned(),
            kind,
            version,
            revision,
            reason: reason.to_owned(),
            requester: requester.to_owned(),
            state: RequestState::Requested,
            history: vec![Transition {
                state: RequestState::Requested,
                by: requester.to_owned(),
                at,
                reason: Some(reason.to_owned()),
            }],
            jid: None,
            rollout: None,
        }
    }

    /// When it was asked for (unix ms).
    pub fn at_creation(&self) -> u64 {
        self.history.first().map_or(0, |t| t.at)
    }

    /// Takes `action` by `by` at `at` under the environment's `rules`, or
    /// says why not (and changes nothing).
    pub fn apply(
        &mut self,
        action: Action,
        by: &str,
        reason: Option<&str>,
        at: u64,
        rules: &Rules,
    ) -> Result<(), WorkflowError> {
        use RequestState::*;
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        let wrong = |state| WorkflowError::WrongState {
            id: self.id,
            state,
            action: action.name(),
        };
        let next = match (&action, self.state) {
            (Action::Approve | Action::Reject | Action::Return, Requested) => {
                self.check_approver(by, &action, rules)?;
                match action {
                    Action::Approve => Approved,
                    Action::Reject => Rejected,
                    _ => Returned,
                }
            }
            (Action::Resubmit, Returned) => {
                self.check_requester(by)?;
                Requested
            }
            (Action::Deploy(_) | Action::RollOut(_), Approved) => Deploying,
            (Action::Deploy(_) | Action::RollOut(_), Requested) if !rules.requires_approval => {
                Deploying
            }
            (Action::Finished { ok: true }, Deploying) => Live,
            (Action::Finished { ok: false }, Deploying) => Failed,
            (Action::RolledBack, Live) => RolledBack,
            (Action::Withdraw, Requested | Returned | Approved) => {
                self.check_requester(by)?;
                Withdrawn
            }
            (_, state) => return Err(wrong(state)),
        };
        if matches!(action, Action::Reject | Action::Return) && reason.is_none() {
            return Err(WorkflowError::ReasonRequired {
                id: self.id,
                action: action.name(),
            });
        }
        match &action {
            Action::Deploy(jid) => self.jid = Some(jid.clone()),
            Action::RollOut(id) => self.rollout = Some(*id),
            _ => {}
        }
        self.state = next;
        self.history.push(Transition {
            state: next,
            by: by.to_owned(),
            at,
            reason: reason.map(str::to_owned),
        });
        Ok(())
    }

    fn check_approver(
        &self,
        by: &str,
        action: &Action,
        rules: &Rules,
    ) -> Result<(), WorkflowError> {
        if !rules.approvers.iter().any(|a| a == by) {
            return Err(WorkflowError::NotApprover {
                user: by.to_owned(),
                app: self.app.clone(),
                env: self.env.clone(),
                approvers: rules.approvers.join(", "),
            });
        }
        if *action == Action::Approve && by == self.requester && !rules.self_approval {
            return Err(WorkflowError::OwnRequest {
                user: by.to_owned(),
                id: self.id,
            });
        }
        Ok(())
    }

    fn check_requester(&self, by: &str) -> Result<(), WorkflowError> {
        if by == self.requester {
            Ok(())
        } else {
            Err(WorkflowError::NotRequester {
                requester: self.requester.clone(),
                id: self.id,
            })
        }
    }
}

/// What a webhook did (`POST /v1/hooks/{app}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookOutcome {
    /// Who sent it: `github`, `gitlab`, `gitea`, `gogs`.
    pub source: String,
    /// Why nothing was done (not a push, a branch not watched...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// The request it made (deploying already where `auto_deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<ReleaseRequest>,
}

/// A paused trigger: who paused it and when. While paused, webhooks are
/// answered and ignored and polling records tags without asking for them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct TriggerPause {
    /// Who paused it.
    pub by: String,
    /// When (unix ms).
    pub at: u64,
}

/// An app's trigger and whether it is paused
/// (`POST /v1/apps/{name}/trigger/{pause|resume}`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct TriggerState {
    /// The app.
    pub app: String,
    /// The environment its requests are for.
    pub env: String,
    /// Set while paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<TriggerPause>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            requires_approval: true,
            approvers: vec!["lead".into(), "dev".into()],
            self_approval: false,
        }
    }

    fn request() -> ReleaseRequest {
        ReleaseRequest::new(
            7,
            "shop",
            "production",
            RequestKind::Deploy,
            json!({"tag": "v3"}).as_object().cloned().unwrap(),
            Some("a".repeat(40)),
            "fixes checkout",
            "dev",
            1,
        )
    }

    fn jid() -> Jid {
        Jid::parse("20261130120000000001").unwrap()
    }

    #[test]
    fn the_whole_way_to_live_is_recorded() {
        let mut r = request();
        r.apply(Action::Approve, "lead", None, 2, &rules()).unwrap();
        r.apply(Action::Deploy(jid()), "dev", None, 3, &rules())
            .unwrap();
        r.apply(Action::Finished { ok: true }, "master", None, 4, &rules())
            .unwrap();
        assert_eq!(r.state, RequestState::Live);
        assert_eq!(r.jid, Some(jid()));
        let steps: Vec<(RequestState, &str, u64)> = r
            .history
            .iter()
            .map(|t| (t.state, t.by.as_str(), t.at))
            .collect();
        assert_eq!(
            steps,
            [
                (RequestState::Requested, "dev", 1),
                (RequestState::Approved, "lead", 2),
                (RequestState::Deploying, "dev", 3),
                (RequestState::Live, "master", 4),
            ]
        );
        r.apply(Action::RolledBack, "master", None, 5, &rules())
            .unwrap();
        assert!(!r.state.is_active());
    }

    #[test]
    fn a_rollout_deploys_like_a_job_and_only_when_approved() {
        let mut r = request();
        assert!(r
            .apply(Action::RollOut(7), "dev", None, 2, &rules())
            .is_err());
        r.apply(Action::Approve, "lead", None, 3, &rules()).unwrap();
        r.apply(Action::RollOut(7), "dev", None, 4, &rules())
            .unwrap();
        assert_eq!(
            (r.state, r.rollout, r.jid.as_ref()),
            (RequestState::Deploying, Some(7), None)
        );
        r.apply(Action::Finished { ok: false }, "master", None, 5, &rules())
            .unwrap();
        assert_eq!(r.state, RequestState::Failed);
    }

    #[test]
    fn the_requester_cannot_approve_unless_the_environment_allows_it() {
        let mut r = request();
        let before = r.clone();
        assert!(matches!(
            r.apply(Action::Approve, "dev", None, 2, &rules()),
            Err(WorkflowError::OwnRequest { .. })
        ));
        assert_eq!(r, before, "nothing changed");
        let lenient = Rules {
            self_approval: true,
            ..rules()
        };
        r.apply(Action::Approve, "dev", None, 2, &lenient).unwrap();
        assert_eq!(r.state, RequestState::Approved);
    }

    #[test]
    fn only_approvers_decide_and_refusals_need_a_reason() {
        let mut r = request();
        assert!(matches!(
            r.apply(Action::Approve, "intern", None, 2, &rules()),
            Err(WorkflowError::NotApprover { .. })
        ));
        assert!(matches!(
            r.apply(Action::Reject, "lead", Some("  "), 2, &rules()),
            Err(WorkflowError::ReasonRequired { .. })
        ));
        r.apply(Action::Return, "lead", Some("add a migration"), 2, &rules())
            .unwrap();
        assert_eq!(
            r.history.last().unwrap().reason.as_deref(),
            Some("add a migration")
        );
        assert!(matches!(
            r.apply(Action::Resubmit, "lead", None, 3, &rules()),
            Err(WorkflowError::NotRequester { .. })
        ));
        r.apply(Action::Resubmit, "dev", None, 3, &rules()).unwrap();
        r.apply(Action::Reject, "lead", Some("not this week"), 4, &rules())
            .unwrap();
        assert_eq!(r.state, RequestState::Rejected);
        assert!(!r.state.is_active());
    }

    #[test]
    fn nothing_is_deployed_unapproved_where_approval_is_required() {
        let mut r = request();
        assert!(matches!(
            r.apply(Action::Deploy(jid()), "dev", None, 2, &rules()),
            Err(WorkflowError::WrongState {
                state: RequestState::Requested,
                ..
            })
        ));
        let open = Rules {
            requires_approval: false,
            ..rules()
        };
        r.apply(Action::Deploy(jid()), "dev", None, 2, &open)
            .unwrap();
        r.apply(Action::Finished { ok: false }, "master", None, 3, &open)
            .unwrap();
        assert_eq!(r.state, RequestState::Failed);
        assert!(r
            .apply(Action::Finished { ok: true }, "master", None, 4, &open)
            .is_err());
    }

    #[test]
    fn an_environment_gives_its_rules() {
        let env = halite_proto::app::EnvSpec {
            target: "web*".into(),
            requires_approval: true,
            approvers: vec!["lead".into()],
            ..Default::default()
        };
        let rules = Rules::from(&env);
        assert!(rules.requires_approval && !rules.self_approval);
        assert_eq!(rules.approvers, ["lead"]);
    }

    #[test]
    fn a_request_survives_json_and_says_its_state() {
        let r = request();
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"state\":\"requested\""), "{text}");
        let back: ReleaseRequest = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(RequestState::RolledBack.to_string(), "rolled_back");
    }
}
