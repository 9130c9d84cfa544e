//! What the API reads, and the key changes it asks for: jobs with their
//! returns, minions with their status, keys, apps and their releases,
//! deploy statistics, the audit log and the event stream.
//!
//! These read the store and in-memory state; store reads may block on
//! disk, so the HTTP adapter calls them on the blocking pool.

use std::collections::{BTreeMap, HashMap};

use halite_model::{
    AppReleases, AuditRecord, BusEntry, CheckRecord, DeployStats, EventRecord, JobFilter, JobPage,
    JobRequest, JobView, KeyView, KeysView, MinionRecord, MinionView, PresenceEvent, ReturnRecord,
    Submitted,
};
use halite_proto::time::now_ms;
use halite_proto::{Jid, TargetType};
use serde_json::{Map, Value};

use super::{Core, CoreError};

/// A change to minion keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// Accept a pending (or rejected) key.
    Accept(String),
    /// Accept every pending key.
    AcceptAll,
    /// Reject a pending or accepted key.
    Reject(String),
    /// Forget a minion's key in every state.
    Delete(String),
}

/// What a release action on an app does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseAction {
    /// Release a revision.
    Deploy,
    /// Go back to the previous (or a named) release.
    Rollback,
}

/// The expected minions of a job that have not returned, and whether it
/// is done (every one returned, or its time is up).
fn progress(job: &halite_model::JobRecord, returned: impl Fn(&str) -> bool) -> (Vec<String>, bool) {
    let missing: Vec<String> = job
        .expected
        .iter()
        .filter(|id| !returned(id))
        .cloned()
        .collect();
    let done = missing.is_empty() || now_ms() >= job.deadline();
    (missing, done)
}

/// What [`Core::job_outcome`] answers.
#[derive(Clone, Debug)]
pub struct JobOutcome {
    /// Minions that returned: did each succeed?
    pub returned: BTreeMap<String, bool>,
    /// Expected minions that have not returned yet.
    pub missing: Vec<String>,
    /// Every expected minion returned, or the job's time is up.
    pub done: bool,
}

impl Core {
    /// A job with its returns, what is missing and whether it is done.
    pub fn job_view(&self, jid: &Jid) -> Result<JobView, CoreError> {
        let job = self
            .store
            .job(jid)?
            .ok_or_else(|| CoreError::NotFound(format!("no job {jid}")))?;
        let returns: BTreeMap<String, ReturnRecord> = self
            .store
            .returns(jid)?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let (missing, done) = progress(&job.record, |id| returns.contains_key(id));
        Ok(JobView {
            job: job.record,
            returns,
            missing,
            done,
        })
    }

    /// Who of a job's minions returned and whether they succeeded, who
    /// has not, and whether it is done: [`Core::job_view`] without the
    /// returns' data, for deciding on large jobs (a rollout's step).
    pub fn job_outcome(&self, jid: &Jid) -> Result<JobOutcome, CoreError> {
        let job = self
            .store
            .job(jid)?
            .ok_or_else(|| CoreError::NotFound(format!("no job {jid}")))?;
        let returned: BTreeMap<String, bool> = self
            .store
            .return_outcomes(jid)?
            .into_iter()
            .map(|r| (r.id, r.success))
            .collect();
        let (missing, done) = progress(&job.record, |id| returned.contains_key(id));
        Ok(JobOutcome {
            returned,
            missing,
            done,
        })
    }

    /// May `user` read this job's returns and events? Root and `@jobs`
    /// read every job; others the jobs they ran and the jobs whose
    /// minions are all within their grants.
    pub fn may_read(&self, user: &str, job: &halite_model::JobRecord) -> bool {
        if job.user == user {
            return true;
        }
        let grants = self.grants.current();
        grants
            .check_special(user, crate::acl::Special::Jobs)
            .is_ok()
            || (!job.expected.is_empty()
                && grants.covers(user, &job.expected, |ids, t| self.presence.matching(ids, t)))
    }

    /// Jobs newest first, filtered, one page.
    pub fn jobs(&self, filter: &JobFilter) -> Result<JobPage, CoreError> {
        let started = std::time::Instant::now();
        let page = crate::listing::jobs(self, filter);
        self.metrics.store_operation("list_jobs", started.elapsed());
        page
    }

    /// What the gauges of `/metrics` show right now.
    pub fn gauges(&self) -> Result<crate::metrics::Gauges, CoreError> {
        let accepted = self.keys.accepted_ids();
        let minions_up = accepted.iter().filter(|id| self.presence.is_up(id)).count();
        Ok(crate::metrics::Gauges {
            minions_up,
            minions_down: accepted.len() - minions_up,
            returns_queued: self.returns.max_capacity() - self.returns.capacity(),
            batches_pending: self.store.batches_len()?,
            deliveries_pending: self.store.outbox_len()?,
            rollouts_active: self.store.active_rollouts()?.len(),
            driving: self.is_driving(),
        })
    }

    /// A job's events after a cursor (404 for an unknown job).
    pub fn job_events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, CoreError> {
        if !self.store.has_job(jid)? {
            return Err(CoreError::NotFound(format!("no job {jid}")));
        }
        Ok(self.store.events(jid, after)?)
    }

    /// Accepted minions with their status.
    pub fn minions(&self) -> Vec<MinionView> {
        let accepted = self.keys.accepted_ids();
        let all = self.presence.all();
        // One map, not a scan per minion: listing stays linear in fleet size.
        let records: HashMap<&str, &MinionRecord> =
            all.iter().map(|r| (r.id.as_str(), r)).collect();
        accepted
            .into_iter()
            .map(|id| {
                let record = records.get(id.as_str());
                MinionView {
                    status: if self.presence.is_up(&id) {
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
                    grains: record.map_or(Value::Null, |r| r.grains.clone()),
                    id,
                }
            })
            .collect()
    }

    /// One accepted minion.
    pub fn minion(&self, id: &str) -> Result<MinionView, CoreError> {
        self.minions()
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| CoreError::NotFound(format!("no accepted minion {id:?}")))
    }

    /// Recent up/down transitions, newest first.
    pub fn presence_events(&self, limit: usize) -> Result<Vec<PresenceEvent>, CoreError> {
        Ok(self.store.presence(limit)?)
    }

    /// Connectivity-check results since `since`, newest first.
    pub fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, CoreError> {
        Ok(self.store.checks(since, failed_only, limit)?)
    }

    /// Every key and the master's fingerprint.
    pub fn key_list(&self) -> Result<KeysView, CoreError> {
        let keys = self.keys.list()?;
        Ok(KeysView {
            master_fingerprint: self.fingerprint(),
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

    /// Every minion key with its file's text (salt-api's `key.print`).
    pub fn public_keys(
        &self,
    ) -> Result<Vec<(String, halite_proto::message::KeyStatus, String)>, CoreError> {
        Ok(self
            .keys
            .list()?
            .into_iter()
            .map(|k| (k.id, k.status, k.key.to_pem()))
            .collect())
    }

    /// The settings salt-api's `config.values` shows: what a client may
    /// need to know about this master (id, ports, intervals, limits).
    /// Paths (keys, users, secrets, data) and the ACL stay out.
    pub fn config_values(&self) -> Map<String, Value> {
        let c = &self.config;
        let secs = |d: std::time::Duration| Value::from(d.as_secs());
        let hours = |d: std::time::Duration| Value::from(d.as_secs() / 3600);
        let mut out = Map::new();
        out.insert("id".into(), c.id.clone().into());
        out.insert("interface".into(), c.interface.to_string().into());
        out.insert("publish_port".into(), self.publish_port.into());
        out.insert("ret_port".into(), c.return_port.into());
        out.insert("auto_accept".into(), c.auto_accept.into());
        out.insert("max_pending_keys".into(), c.max_pending_keys.into());
        out.insert("keep_jobs".into(), hours(c.keep_jobs));
        out.insert("heartbeat_interval".into(), secs(c.heartbeat_interval));
        out.insert("missed_heartbeats".into(), c.missed_heartbeats.into());
        out.insert("beacon_interval".into(), secs(c.beacon_interval));
        out.insert("timeout".into(), secs(c.job_timeout));
        out.insert("check_interval".into(), secs(c.check_interval));
        out.insert("token_expire".into(), secs(c.token_expire));
        out.insert("saltversion".into(), env!("CARGO_PKG_VERSION").into());
        out
    }

    /// Changes keys (the key files are written and synced: call off the
    /// async workers); returns the ids affected. Revoking an accepted key
    /// rotates the session key.
    pub fn change_keys(&self, change: KeyChange) -> Result<Vec<String>, CoreError> {
        let keys = &self.keys;
        let accepting = matches!(change, KeyChange::Accept(_) | KeyChange::AcceptAll);
        let affected = match change {
            KeyChange::Accept(id) => {
                keys.accept(&id)?;
                vec![id]
            }
            KeyChange::AcceptAll => keys.accept_all_pending()?,
            KeyChange::Reject(id) => {
                if keys.reject(&id)? {
                    self.forget_personal_key(&id);
                    self.rotate_session();
                }
                vec![id]
            }
            KeyChange::Delete(id) => {
                if keys.delete(&id)? {
                    self.forget_personal_key(&id);
                    self.rotate_session();
                }
                self.presence.forget(&id);
                vec![id]
            }
        };
        tracing::info!(ids = ?affected, "key state changed");
        self.share_keys(&affected);
        // An accepted minion that waits gets its session key at once; a
        // rejected or deleted one is forgotten (answering it again would
        // submit a deleted key anew).
        self.answer_waiting(&affected, accepting);
        self.forget_reported_auths(&affected);
        Ok(affected)
    }

    /// Every app definition.
    pub fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, CoreError> {
        Ok(self.config.apps().load()?)
    }

    /// What is live where for one app, and its last `limit` deploys.
    pub fn app_releases(&self, app: &str, limit: usize) -> Result<AppReleases, CoreError> {
        let apps = self.apps()?;
        let history = self.store.deploys(app, limit)?;
        if history.is_empty() && !apps.iter().any(|a| a.name == app) {
            return Err(CoreError::NotFound(format!("no app {app:?}")));
        }
        Ok(AppReleases {
            app: app.to_owned(),
            live: crate::apps::live_by_minion(&history),
            history,
        })
    }

    /// Deploys or rolls back an app on its target (or a narrower one
    /// given as `target`); `options` are the module's keyword arguments.
    pub fn release_app(
        &self,
        user: &str,
        app: &str,
        action: ReleaseAction,
        mut options: Map<String, Value>,
        release_request: Option<u64>,
    ) -> Result<Submitted, CoreError> {
        let apps = self.apps()?;
        let spec = apps
            .iter()
            .find(|a| a.name == app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {app:?}")))?;
        let target = match options.remove("target") {
            None => None,
            Some(Value::String(s)) => Some(s),
            Some(other) => {
                return Err(CoreError::invalid(format!(
                    "`target` must be text, not {other}"
                )))
            }
        };
        let timeout = match options.remove("timeout") {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| CoreError::invalid("`timeout` must be a number of seconds"))?,
            ),
        };
        let (target, tgt_type) = match target {
            // A narrower target is read as a glob or compound; the master
            // still refuses minions outside the app's own target.
            Some(t) => (t, TargetType::Compound),
            None => (spec.target.clone(), spec.tgt_type),
        };
        let override_freeze = match options.remove("override_freeze") {
            None => false,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(CoreError::invalid(format!(
                    "`override_freeze` must be true or false, not {other}"
                )))
            }
        };
        options.insert("app".into(), Value::String(app.to_owned()));
        let function = match action {
            ReleaseAction::Deploy => "deploy",
            ReleaseAction::Rollback => "rollback",
        };
        let request = JobRequest {
            target,
            tgt_type,
            fun: format!("{}.{function}", crate::apps::module_for(spec)),
            kwarg: options,
            timeout,
            release_request,
            override_freeze,
            ..JobRequest::default()
        };
        self.submit(user, request)
    }

    /// May `user` release `app` (to environment `env`, or its whole
    /// target)? The ACL for the app's deploy function on every accepted
    /// minion there: what decides whether the portal shows a Deploy or
    /// Request button (the release itself is checked again in full).
    pub fn may_release(&self, user: &str, app: &str, env: Option<&str>) -> bool {
        let Ok(apps) = self.apps() else {
            return false;
        };
        let Some(spec) = apps.iter().find(|a| a.name == app) else {
            return false;
        };
        let (target, tgt_type) = match env.map(|e| spec.env.get(e)) {
            Some(Some(env)) => (&env.target, env.tgt_type),
            Some(None) => return false,
            None => (&spec.target, spec.tgt_type),
        };
        let Ok(target) = halite_proto::Target::parse(tgt_type, target) else {
            return false;
        };
        let minions = self.presence.matching(&self.keys.accepted_ids(), &target);
        let fun = format!("{}.deploy", crate::apps::module_for(spec));
        self.grants
            .current()
            .check_job(user, &fun, &minions, |ids, t| {
                self.presence.matching(ids, t)
            })
            .is_ok()
    }

    /// Deploy statistics over `[from, to)` (unix ms).
    pub fn deploy_stats(&self, from: u64, to: u64) -> Result<DeployStats, CoreError> {
        let records = self.store.deploys_between(from, to)?;
        Ok(crate::stats::deploy_stats(&records, from, to))
    }

    /// Records a request that changed something (or a failed login).
    pub fn audit(&self, record: &AuditRecord) -> Result<(), CoreError> {
        Ok(self.store.put_audit(record)?)
    }

    /// Audit records in `[from, to)`, newest first.
    pub fn audit_log(
        &self,
        from: u64,
        to: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, CoreError> {
        Ok(self.store.audit(from, to, limit)?)
    }

    /// Event-stream entries after `after`, oldest first; one job's only
    /// when `jid` is given.
    pub fn stream(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, CoreError> {
        Ok(self.store.stream_after(after, jid, limit)?)
    }

    /// The newest event-stream id.
    pub fn stream_head(&self) -> Result<u64, CoreError> {
        Ok(self.store.stream_head()?)
    }
}

impl Core {
    /// A revoked minion's own key goes: nothing more is sealed to it.
    pub(super) fn forget_personal_key(&self, id: &str) {
        self.personal
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.link_keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
