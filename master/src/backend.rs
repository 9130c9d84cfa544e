//! The master as the HTTP API's [`Backend`]: a thin adapter over
//! [`Core`], and the one place where the centre's [`CoreError`] becomes an
//! HTTP status. Calls that flush the store, write key files, sign jobs
//! or read app and module files go through [`blocking`], so an axum
//! worker is never stalled by them; store reads run inline (measured:
//! the hand-off costs a lookup more than the read, `bench/RESULTS.md`).

use std::sync::Arc;

use halite_api::types::{
    AppReleases, AuditRecord, BusEntry, CheckRecord, DeployStats, EventRecord, JobFilter, JobPage,
    JobRecord, JobRequest, JobView, KeysView, LoginToken, MinionView, PresenceEvent, Submitted,
};
use halite_api::{ApiError, AppAction, Backend, Grant, KeyAction, PublicKeyText};
use halite_model::{HookOutcome, NewRequest, NewSchedule, ReleaseRequest, Schedule, Step};
use halite_pki::PkiError;
use halite_proto::Jid;
use serde_json::{Map, Value};

use crate::acl::Special;
use crate::core::views::{KeyChange, ReleaseAction};
use crate::core::{blocking, Core, CoreError};

/// Adapter from the API's trait to [`Core`].
pub struct ApiBackend(pub Arc<Core>);

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        let message = e.to_string();
        match e {
            CoreError::Invalid(_) => ApiError::bad_request(message),
            CoreError::BadCredentials(_) => ApiError::unauthorized(message),
            CoreError::Forbidden(_) => ApiError::forbidden(message),
            CoreError::NotFound(_) => ApiError::not_found(message),
            CoreError::Conflict(_) => ApiError::conflict(message),
            CoreError::Keys(PkiError::NoSuchKey { .. }) => ApiError::not_found(message),
            CoreError::Keys(PkiError::InvalidId { .. }) => ApiError::bad_request(message),
            CoreError::Keys(PkiError::State { .. }) => ApiError::conflict(message),
            // A broken file on the master (an app, a Lua module's
            // manifest): nothing the request can change, but nothing
            // wrong with the server either; the message names the file.
            CoreError::Config(_) => ApiError::conflict(format!(
                "the master's configuration needs fixing: {message}"
            )),
            CoreError::Keys(_) | CoreError::Store(_) | CoreError::Users(_) => {
                ApiError::internal(message)
            }
        }
    }
}

impl Backend for ApiBackend {
    fn authenticate(&self, token: &str) -> Option<String> {
        self.0.authenticate(token)
    }

    fn login(&self, user: &str, password: &str) -> Result<LoginToken, ApiError> {
        // The route already runs logins on the blocking pool.
        Ok(self.0.login(user, password)?)
    }

    fn logout(&self, token: &str) -> Result<(), ApiError> {
        Ok(self.0.logout(token)?)
    }

    fn require(&self, user: &str, grant: Grant) -> Result<(), ApiError> {
        let special = match grant {
            Grant::Wheel => Special::Wheel,
            Grant::Jobs => Special::Jobs,
            Grant::Runner => Special::Runner,
        };
        Ok(self.0.require(user, special)?)
    }

    fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError> {
        Ok(blocking(|| self.0.submit(user, request))?)
    }

    fn check(&self, user: &str, request: JobRequest) -> Result<(), ApiError> {
        Ok(self.0.check(user, request)?)
    }

    fn cancel(&self, user: &str, jid: &Jid) -> Result<Value, ApiError> {
        Ok(blocking(|| self.0.cancel(user, jid))?)
    }

    fn jobs(&self, filter: &JobFilter) -> Result<JobPage, ApiError> {
        Ok(self.0.jobs(filter)?)
    }

    fn job(&self, jid: &Jid) -> Result<JobView, ApiError> {
        Ok(self.0.job_view(jid)?)
    }

    fn may_read(&self, user: &str, job: &JobRecord) -> bool {
        self.0.may_read(user, job)
    }

    fn events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, ApiError> {
        Ok(self.0.job_events(jid, after)?)
    }

    fn minions(&self) -> Result<Vec<MinionView>, ApiError> {
        Ok(self.0.minions())
    }

    fn minion(&self, id: &str) -> Result<MinionView, ApiError> {
        Ok(self.0.minion(id)?)
    }

    fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, ApiError> {
        Ok(self.0.presence_events(limit)?)
    }

    fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, ApiError> {
        Ok(self.0.checks(since, failed_only, limit)?)
    }

    fn keys(&self) -> Result<KeysView, ApiError> {
        Ok(self.0.key_list()?)
    }

    fn key_action(&self, action: KeyAction) -> Result<Vec<String>, ApiError> {
        let change = match action {
            KeyAction::Accept(id) => KeyChange::Accept(id),
            KeyAction::AcceptAll => KeyChange::AcceptAll,
            KeyAction::Reject(id) => KeyChange::Reject(id),
            KeyAction::Delete(id) => KeyChange::Delete(id),
        };
        Ok(blocking(|| self.0.change_keys(change))?)
    }

    fn public_keys(&self) -> Result<Vec<PublicKeyText>, ApiError> {
        let keys = blocking(|| self.0.public_keys())?;
        Ok(keys
            .into_iter()
            .map(|(id, status, pem)| PublicKeyText { id, status, pem })
            .collect())
    }

    fn config_values(&self) -> Result<Map<String, Value>, ApiError> {
        Ok(self.0.config_values())
    }

    fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, ApiError> {
        Ok(self.0.apps()?)
    }

    fn app_releases(&self, app: &str, limit: usize) -> Result<AppReleases, ApiError> {
        Ok(self.0.app_releases(app, limit)?)
    }

    fn app_action(
        &self,
        user: &str,
        app: &str,
        action: AppAction,
        options: Map<String, Value>,
    ) -> Result<Submitted, ApiError> {
        let action = match action {
            AppAction::Deploy => ReleaseAction::Deploy,
            AppAction::Rollback => ReleaseAction::Rollback,
        };
        Ok(blocking(|| {
            self.0.release_app(user, app, action, options, None)
        })?)
    }

    fn stats(&self, from: u64, to: u64) -> Result<DeployStats, ApiError> {
        Ok(self.0.deploy_stats(from, to)?)
    }

    fn audit(&self, record: AuditRecord) {
        tracing::info!(
            user = %record.user, from = %record.from, method = %record.method,
            path = %record.path, status = record.status, detail = ?record.detail, "audit"
        );
        if let Err(e) = self.0.audit(&record) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    fn audit_log(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, ApiError> {
        Ok(self.0.audit_log(from, to, limit)?)
    }

    fn stream(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, ApiError> {
        Ok(self.0.stream(after, jid, limit)?)
    }

    fn stream_head(&self) -> Result<u64, ApiError> {
        Ok(self.0.stream_head()?)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<BusEntry>> {
        self.0.store.subscribe()
    }

    fn create_request(&self, user: &str, new: NewRequest) -> Result<ReleaseRequest, ApiError> {
        Ok(blocking(|| self.0.create_request(user, new))?)
    }

    fn requests(
        &self,
        app: Option<&str>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ReleaseRequest>, ApiError> {
        Ok(blocking(|| self.0.requests(app, env, limit))?)
    }

    fn request(&self, id: u64) -> Result<ReleaseRequest, ApiError> {
        Ok(blocking(|| self.0.request(id))?)
    }

    fn request_step(
        &self,
        user: &str,
        id: u64,
        step: Step,
        reason: Option<&str>,
        override_freeze: bool,
    ) -> Result<ReleaseRequest, ApiError> {
        let Some(action) = step.decision() else {
            return Ok(blocking(|| {
                self.0.deploy_request(user, id, override_freeze)
            })?);
        };
        Ok(blocking(|| {
            self.0.decide_request(user, id, action, reason)
        })?)
    }

    fn app_versions(&self, app: &str) -> Result<Value, ApiError> {
        let versions = blocking(|| self.0.app_versions(app))?;
        Ok(serde_json::to_value(versions).unwrap_or_default())
    }

    fn app_changes(
        &self,
        app: &str,
        env: &str,
        version: Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let changes = blocking(|| self.0.app_changes(app, env, &version))?;
        Ok(serde_json::to_value(changes).unwrap_or_default())
    }

    fn request_changes(&self, id: u64) -> Result<Value, ApiError> {
        let changes = blocking(|| self.0.request_changes(id))?;
        Ok(serde_json::to_value(changes).unwrap_or_default())
    }

    fn webhook(
        &self,
        app: &str,
        headers: &std::collections::BTreeMap<String, String>,
        body: &[u8],
    ) -> Result<HookOutcome, ApiError> {
        Ok(blocking(|| self.0.webhook(app, headers, body))?)
    }

    fn may_release(&self, user: &str, app: &str, env: Option<&str>) -> bool {
        self.0.may_release(user, app, env)
    }

    fn pause_trigger(
        &self,
        user: &str,
        app: &str,
        paused: bool,
    ) -> Result<halite_model::TriggerState, ApiError> {
        Ok(blocking(|| self.0.pause_trigger(user, app, paused))?)
    }

    fn triggers(&self) -> Result<Vec<halite_model::TriggerState>, ApiError> {
        Ok(blocking(|| {
            let mut all = Vec::new();
            for app in self.0.apps()? {
                all.extend(self.0.trigger_state(&app)?);
            }
            Ok::<_, crate::error::CoreError>(all)
        })?)
    }

    fn start_rollout(
        &self,
        user: &str,
        new: halite_model::NewRollout,
    ) -> Result<halite_model::Rollout, ApiError> {
        Ok(blocking(|| self.0.start_rollout(user, new))?)
    }

    fn rollouts(&self, limit: usize) -> Result<Vec<halite_model::Rollout>, ApiError> {
        Ok(blocking(|| self.0.rollouts(limit))?)
    }

    fn rollout(&self, id: u64) -> Result<halite_model::Rollout, ApiError> {
        Ok(blocking(|| self.0.rollout(id))?)
    }

    fn rollout_action(
        &self,
        user: &str,
        id: u64,
        action: halite_model::RolloutAction,
    ) -> Result<halite_model::Rollout, ApiError> {
        Ok(blocking(|| self.0.rollout_action(user, id, action))?)
    }

    fn create_schedule(&self, user: &str, new: NewSchedule) -> Result<Schedule, ApiError> {
        Ok(blocking(|| self.0.create_schedule(user, new))?)
    }

    fn schedules(&self) -> Result<Vec<Schedule>, ApiError> {
        Ok(blocking(|| self.0.schedules())?)
    }

    fn schedule(&self, name: &str) -> Result<Schedule, ApiError> {
        Ok(blocking(|| self.0.schedule(name))?)
    }

    fn pause_schedule(&self, user: &str, name: &str, paused: bool) -> Result<Schedule, ApiError> {
        Ok(blocking(|| self.0.pause_schedule(user, name, paused))?)
    }

    fn remove_schedule(&self, user: &str, name: &str) -> Result<(), ApiError> {
        Ok(blocking(|| self.0.remove_schedule(user, name))?)
    }

    fn announce(&self, entry: BusEntry) -> Result<u64, ApiError> {
        Ok(blocking(|| self.0.store.publish(entry)).map_err(CoreError::from)?)
    }

    fn request_served(&self, method: &str, route: &str, status: u16, took: std::time::Duration) {
        self.0.metrics.request_served(method, route, status, took);
    }
}
