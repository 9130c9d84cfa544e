//! What the API needs from the master, as a trait.

use halite_proto::Jid;

use std::sync::Arc;

use serde_json::{Map, Value};

use halite_model::{
    HookOutcome, NewRequest, NewRollout, NewSchedule, ReleaseRequest, Rollout, RolloutAction,
    Schedule, Step,
};

use crate::types::{
    AppReleases, AuditRecord, BusEntry, CheckRecord, DeployStats, EventRecord, JobFilter, JobPage,
    JobRecord, JobRequest, JobView, KeysView, LoginToken, MinionView, PresenceEvent, Submitted,
};
use crate::ApiError;

/// A change to minion keys requested through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Accept a pending (or rejected) key.
    Accept(String),
    /// Accept every pending key.
    AcceptAll,
    /// Reject a pending or accepted key.
    Reject(String),
    /// Forget a minion's key in every state.
    Delete(String),
}

/// A grant beyond running functions, checked by [`Backend::require`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Key management (Salt's `@wheel`).
    Wheel,
    /// Job lookups through salt-api's runner client (Salt's `@jobs`;
    /// `@runner` includes it).
    Jobs,
    /// Every runner function salt-api serves (`manage.*`; Salt's `@runner`).
    Runner,
}

/// A minion's public key as its file holds it (salt-api's `key.print`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyText {
    /// Minion id.
    pub id: String,
    /// Which state the key is in.
    pub status: halite_proto::message::KeyStatus,
    /// The key file's text.
    pub pem: String,
}

/// A deploy-module action on an app (`POST /v1/apps/{name}/deploy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppAction {
    /// Release a revision.
    Deploy,
    /// Go back to the previous (or a named) release.
    Rollback,
}

/// The master, as the HTTP routes see it. Calls are short and
/// synchronous (store reads, a channel send to the publisher), except
/// [`Backend::login`], which is slow on purpose and is called off the
/// async workers.
pub trait Backend: Send + Sync + 'static {
    /// The user a token belongs to, if the token is valid.
    fn authenticate(&self, token: &str) -> Option<String>;
    /// Checks a password and issues a token (401 when wrong).
    fn login(&self, user: &str, password: &str) -> Result<LoginToken, ApiError>;
    /// Ends a login token (it no longer authenticates).
    fn logout(&self, token: &str) -> Result<(), ApiError>;
    /// 403 unless `user` has `grant`.
    fn require(&self, user: &str, grant: Grant) -> Result<(), ApiError>;
    /// What submitting `request` would answer, with nothing stored or
    /// published (a salt-api lowstate list is checked whole first).
    fn check(&self, user: &str, request: JobRequest) -> Result<(), ApiError>;
    /// Validates, checks the ACL, records and publishes a job.
    fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError>;
    /// Stops a running job on the minions that have not returned.
    fn cancel(&self, user: &str, jid: &Jid) -> Result<Value, ApiError>;
    /// Jobs newest first, filtered, one page.
    fn jobs(&self, filter: &JobFilter) -> Result<JobPage, ApiError>;
    /// One job with its returns.
    fn job(&self, jid: &Jid) -> Result<JobView, ApiError>;
    /// May `user` read `job`'s returns and events: they ran it, every
    /// minion it targeted is within their grants, or they hold `@jobs`.
    fn may_read(&self, user: &str, job: &JobRecord) -> bool;
    /// A job's events after a cursor.
    fn events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, ApiError>;
    /// Accepted minions with their status.
    fn minions(&self) -> Result<Vec<MinionView>, ApiError>;
    /// One accepted minion (404 if none).
    fn minion(&self, id: &str) -> Result<MinionView, ApiError>;
    /// Recent up/down transitions, newest first.
    fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, ApiError>;
    /// Connectivity-check results at or after `since` (unix ms), newest
    /// first; only failures when `failed_only`.
    fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, ApiError>;
    /// Every key and the master's fingerprint.
    fn keys(&self) -> Result<KeysView, ApiError>;
    /// Changes keys; returns the ids affected.
    fn key_action(&self, action: KeyAction) -> Result<Vec<String>, ApiError>;
    /// Every minion key as its file holds it.
    fn public_keys(&self) -> Result<Vec<PublicKeyText>, ApiError>;
    /// The master's settings that are safe to show anyone with `@wheel`
    /// (salt-api's `config.values`): ports, intervals and limits; never a
    /// secret or where keys, users or secrets live.
    fn config_values(&self) -> Result<Map<String, Value>, ApiError>;
    /// Every app definition, by name.
    fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, ApiError>;
    /// What is live where for one app, and its last `limit` deploys.
    fn app_releases(&self, app: &str, limit: usize) -> Result<AppReleases, ApiError>;
    /// Deploys or rolls back an app on its target (or a narrower one
    /// given as `target`); `options` are the module's keyword arguments
    /// (`tag`, `branch`, `rev`, `to`, `timeout`...).
    fn app_action(
        &self,
        user: &str,
        app: &str,
        action: AppAction,
        options: Map<String, Value>,
    ) -> Result<Submitted, ApiError>;
    /// Deploy statistics over `[from, to)` (unix ms).
    fn stats(&self, from: u64, to: u64) -> Result<DeployStats, ApiError>;
    /// Records a request that changed something (or a failed login).
    fn audit(&self, record: AuditRecord);
    /// Audit records in `[from, to)`, newest first.
    fn audit_log(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, ApiError>;
    /// Event-stream entries after `after`, oldest first; only one job's
    /// (its events and returns) when `jid` is given.
    fn stream(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, ApiError>;
    /// The newest entry's id (where a client that asks for "from now on" starts).
    fn stream_head(&self) -> Result<u64, ApiError>;
    /// Live entries from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<BusEntry>>;
    /// Makes a release request (`user` is the requester).
    fn create_request(&self, user: &str, new: NewRequest) -> Result<ReleaseRequest, ApiError>;
    /// Release requests newest first, of one app and environment if given.
    fn requests(
        &self,
        app: Option<&str>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ReleaseRequest>, ApiError>;
    /// One release request.
    fn request(&self, id: u64) -> Result<ReleaseRequest, ApiError>;
    /// Takes a step on a request as `user` (approve, reject, deploy...);
    /// a deploy inside a freeze window needs `override_freeze`.
    fn request_step(
        &self,
        user: &str,
        id: u64,
        step: Step,
        reason: Option<&str>,
        override_freeze: bool,
    ) -> Result<ReleaseRequest, ApiError>;
    /// An app's tags (newest first) and branches, from the master's
    /// cache of its repository (fetched now: slow, call off the workers).
    fn app_versions(&self, app: &str) -> Result<Value, ApiError>;
    /// What releasing `version` to `env` would change against what is
    /// live there: commits and files (fetches: slow).
    fn app_changes(
        &self,
        app: &str,
        env: &str,
        version: Map<String, Value>,
    ) -> Result<Value, ApiError>;
    /// What a request changes against what is live in its environment.
    fn request_changes(&self, id: u64) -> Result<Value, ApiError>;
    /// A webhook for an app: signature checked, push read, request made
    /// (`headers` lower-case). Slow (fetches).
    fn webhook(
        &self,
        app: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: &[u8],
    ) -> Result<HookOutcome, ApiError>;
    /// May `user` release `app` to `env` (or its whole target)? What a
    /// page shows; the release is checked again in full.
    fn may_release(&self, user: &str, app: &str, env: Option<&str>) -> bool;
    /// Makes a schedule owned by `user`.
    fn create_schedule(&self, user: &str, new: NewSchedule) -> Result<Schedule, ApiError>;
    /// Every schedule.
    fn schedules(&self) -> Result<Vec<Schedule>, ApiError>;
    /// One schedule.
    fn schedule(&self, name: &str) -> Result<Schedule, ApiError>;
    /// Pauses (or resumes) a schedule.
    fn pause_schedule(&self, user: &str, name: &str, paused: bool) -> Result<Schedule, ApiError>;
    /// Removes a schedule made through the API.
    fn remove_schedule(&self, user: &str, name: &str) -> Result<(), ApiError>;
    /// Pauses (or resumes) an app's trigger.
    fn pause_trigger(
        &self,
        user: &str,
        app: &str,
        paused: bool,
    ) -> Result<halite_model::TriggerState, ApiError>;
    /// Every app's trigger and whether it is paused.
    fn triggers(&self) -> Result<Vec<halite_model::TriggerState>, ApiError>;
    /// Starts a rollout (checked against the user's grants first).
    fn start_rollout(&self, user: &str, new: NewRollout) -> Result<Rollout, ApiError>;
    /// Rollouts, newest first.
    fn rollouts(&self, limit: usize) -> Result<Vec<Rollout>, ApiError>;
    /// One rollout.
    fn rollout(&self, id: u64) -> Result<Rollout, ApiError>;
    /// Continue, pause, resume or abort a rollout.
    fn rollout_action(
        &self,
        user: &str,
        id: u64,
        action: RolloutAction,
    ) -> Result<Rollout, ApiError>;
    /// Adds an entry to the event stream (salt-api's wheel and runner
    /// results, which Salt puts on its event bus); answers its id.
    fn announce(&self, entry: BusEntry) -> Result<u64, ApiError>;
    /// A request to `route` (its template, `/v1/jobs/{jid}`) was answered
    /// with `status` after `took`, for the master's metrics. Called on
    /// the async workers: it must not block.
    fn request_served(&self, method: &str, route: &str, status: u16, took: std::time::Duration);
}
