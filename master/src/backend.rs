//! The master as the HTTP API's [`Backend`].

use std::sync::Arc;

use halite_api::types::{
    AppReleases, AuditRecord, BusEntry, CheckRecord, DeployStats, EventRecord, JobFilter, JobPage,
    JobRequest, JobView, KeyView, KeysView, LoginToken, MinionView, PresenceEvent, Submitted,
};
use halite_api::{ApiError, AppAction, Backend, Grant, KeyAction};
use serde_json::{Map, Value};

use crate::acl::Special;
use halite_pki::PkiError;
use halite_proto::Jid;

use crate::core::Core;

/// Adapter from the API's trait to [`Core`].
pub struct ApiBackend(pub Arc<Core>);

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

fn key_error(e: PkiError) -> ApiError {
    match e {
        PkiError::NoSuchKey { .. } => ApiError::not_found(e.to_string()),
        PkiError::InvalidId { .. } => ApiError::bad_request(e.to_string()),
        PkiError::State { .. } => ApiError::conflict(e.to_string()),
        other => internal(other),
    }
}

impl Backend for ApiBackend {
    fn authenticate(&self, token: &str) -> Option<String> {
        self.0.authenticate(token)
    }

    fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError> {
        self.0.submit(user, request)
    }

    fn login(&self, user: &str, password: &str) -> Result<LoginToken, ApiError> {
        self.0.login(user, password)
    }

    fn require(&self, user: &str, grant: Grant) -> Result<(), ApiError> {
        self.0.require(
            user,
            match grant {
                Grant::Wheel => Special::Wheel,
                Grant::Jobs => Special::Jobs,
            },
        )
    }

    fn cancel(&self, user: &str, jid: &Jid) -> Result<Value, ApiError> {
        self.0.cancel(user, jid)
    }

    fn jobs(&self, filter: &JobFilter) -> Result<JobPage, ApiError> {
        crate::listing::jobs(&self.0, filter)
    }

    fn job(&self, jid: &Jid) -> Result<JobView, ApiError> {
        self.0.job_view(jid)
    }

    fn events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, ApiError> {
        if self.0.store.job(jid).map_err(internal)?.is_none() {
            return Err(ApiError::not_found(format!("no job {jid}")));
        }
        self.0.store.events(jid, after).map_err(internal)
    }

    fn minions(&self) -> Result<Vec<MinionView>, ApiError> {
        let accepted = self.0.keys.accepted_ids();
        let all = self.0.presence.all();
        // One map, not a scan per minion: listing stays linear in fleet size.
        let records: std::collections::HashMap<&str, &crate::store::MinionRecord> =
            all.iter().map(|r| (r.id.as_str(), r)).collect();
        Ok(accepted
            .into_iter()
            .map(|id| {
                let record = records.get(id.as_str());
                MinionView {
                    status: if self.0.presence.is_up(&id) {
                        "up"
                    } else {
                        "down"
                    }
                    .to_owned(),
                    last_seen: record.map(|r| r.last_seen).filter(|&t| t > 0),
                    version: record.map(|r| r.version.clone()).filter(|v| !v.is_empty()),
                    latency_ms: record.and_then(|r| r.rtt_ms),
                    os: record
                        .and_then(|r| r.grains.get("os"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned),
                    grains: record.map_or(serde_json::Value::Null, |r| r.grains.clone()),
                    id,
                }
            })
            .collect())
    }

    fn minion(&self, id: &str) -> Result<MinionView, ApiError> {
        self.minions()?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::not_found(format!("no accepted minion {id:?}")))
    }

    fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, ApiError> {
        self.0.store.presence(limit).map_err(internal)
    }

    fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, ApiError> {
        self.0
            .store
            .checks(since, failed_only, limit)
            .map_err(internal)
    }

    fn keys(&self) -> Result<KeysView, ApiError> {
        let keys = self.0.keys.list().map_err(key_error)?;
        Ok(KeysView {
            master_fingerprint: self.0.fingerprint(),
            keys: keys
                .into_iter()
                .map(|k| KeyView {
                    id: k.id,
                    status: k.status,
                    fingerprint: k.fingerprint,
                })
                .collect(),
        })
    }

    fn key_action(&self, action: KeyAction) -> Result<Vec<String>, ApiError> {
        let keys = &self.0.keys;
        let affected = match action {
            KeyAction::Accept(id) => {
                keys.accept(&id).map_err(key_error)?;
                vec![id]
            }
            KeyAction::AcceptAll => keys.accept_all_pending().map_err(key_error)?,
            KeyAction::Reject(id) => {
                if keys.reject(&id).map_err(key_error)? {
                    self.0.rotate_session();
                }
                vec![id]
            }
            KeyAction::Delete(id) => {
                if keys.delete(&id).map_err(key_error)? {
                    self.0.rotate_session();
                }
                self.0.presence.forget(&id);
                vec![id]
            }
        };
        tracing::info!(ids = ?affected, "key state changed");
        Ok(affected)
    }

    fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, ApiError> {
        self.0.config.apps().load().map_err(internal)
    }

    fn app_releases(&self, app: &str, limit: usize) -> Result<AppReleases, ApiError> {
        let apps = self.0.config.apps().load().map_err(internal)?;
        let history = self.0.store.deploys(app, limit).map_err(internal)?;
        if history.is_empty() && !apps.iter().any(|a| a.name == app) {
            return Err(ApiError::not_found(format!("no app {app:?}")));
        }
        Ok(AppReleases {
            app: app.to_owned(),
            live: crate::apps::live_by_minion(&history),
            history,
        })
    }

    fn app_action(
        &self,
        user: &str,
        app: &str,
        action: AppAction,
        mut options: Map<String, Value>,
    ) -> Result<Submitted, ApiError> {
        let apps = self.0.config.apps().load().map_err(internal)?;
        let spec = apps
            .iter()
            .find(|a| a.name == app)
            .ok_or_else(|| ApiError::not_found(format!("no app {app:?}")))?;
        let text = |options: &mut Map<String, Value>, key: &str| match options.remove(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::bad_request(format!(
                "`{key}` must be text, not {other}"
            ))),
        };
        let target = text(&mut options, "target")?;
        let timeout =
            match options.remove("timeout") {
                None => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    ApiError::bad_request("`timeout` must be a number of seconds")
                })?),
            };
        let (target, tgt_type) = match target {
            // A narrower target is read as a glob or compound; the master
            // still refuses minions outside the app's own target.
            Some(t) => (t, halite_proto::TargetType::Compound),
            None => (spec.target.clone(), spec.tgt_type),
        };
        options.insert("app".into(), Value::String(app.to_owned()));
        let function = match action {
            AppAction::Deploy => "deploy",
            AppAction::Rollback => "rollback",
        };
        let request = JobRequest {
            target,
            tgt_type,
            fun: format!("{}.{function}", crate::apps::module_for(spec)),
            kwarg: options,
            timeout,
            ..JobRequest::default()
        };
        self.0.submit(user, request)
    }

    fn stats(&self, from: u64, to: u64) -> Result<DeployStats, ApiError> {
        let records = self.0.store.deploys_between(from, to).map_err(internal)?;
        Ok(crate::stats::deploy_stats(&records, from, to))
    }

    fn audit(&self, record: AuditRecord) {
        tracing::info!(
            user = %record.user, from = %record.from, method = %record.method,
            path = %record.path, status = record.status, detail = ?record.detail, "audit"
        );
        if let Err(e) = self.0.store.put_audit(&record) {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }

    fn audit_log(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, ApiError> {
        self.0.store.audit(from, to, limit).map_err(internal)
    }

    fn stream(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, ApiError> {
        self.0
            .store
            .stream_after(after, jid, limit)
            .map_err(internal)
    }

    fn stream_head(&self) -> Result<u64, ApiError> {
        self.0.store.stream_head().map_err(internal)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<BusEntry>> {
        self.0.store.subscribe()
    }
}
