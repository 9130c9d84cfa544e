//! The master as the HTTP API's [`Backend`].

use std::sync::Arc;

use halite_api::types::{
    AppReleases, CheckRecord, EventRecord, JobRequest, JobSummary, JobView, KeyView, KeysView,
    MinionView, PresenceEvent, Submitted,
};
use halite_api::{ApiError, Backend, KeyAction};
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

    fn jobs(&self, limit: usize, before: Option<Jid>) -> Result<Vec<JobSummary>, ApiError> {
        let jobs = self
            .0
            .store
            .jobs(limit, before.as_ref())
            .map_err(internal)?;
        jobs.into_iter()
            .map(|job| {
                let returns = self.0.store.returns(&job.record.jid).map_err(internal)?;
                Ok(JobSummary {
                    failed: returns.iter().filter(|r| !r.success).count(),
                    returned: returns.len(),
                    expected: job.record.expected.len(),
                    jid: job.record.jid,
                    fun: job.record.fun,
                    target: job.record.target,
                    user: job.record.user,
                    issued_at: job.record.issued_at,
                })
            })
            .collect()
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
}
