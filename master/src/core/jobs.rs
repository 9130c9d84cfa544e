//! Jobs: submit (validate, check the ACL, complete app jobs, seal
//! secrets, sign, store durably, publish), cancel, and the later batches
//! of a job run in batches.
//!
//! Everything here is synchronous and may block (the store flush before a
//! job is published, app and module files read per job, signing): the
//! HTTP adapter calls it on the blocking pool.

use std::collections::BTreeMap;

use halite_model::{BusEntry, JobRecord, JobRequest, Submitted};
use halite_proto::message::{Job, SignedModule, KILL_JOB, LIST_MODULES, SYNC_MODULES};
use halite_proto::time::now_ms;
use halite_proto::{catalog, Jid, Target, TargetType};
use tokio::sync::mpsc;

use super::{Core, CoreError, RETURN_GRACE_MS};
use crate::batch::BatchPlan;
use crate::store::StoredJob;

/// Longest timeout a job may ask for (a week).
const MAX_TIMEOUT_SECS: u64 = 7 * 86_400;

/// A request checked and resolved, not yet signed or stored.
struct Planned {
    request: JobRequest,
    /// Every minion the job expects a return from.
    expected: Vec<String>,
    /// Expected minions that are down now.
    down: Vec<String>,
    /// Lua modules the job carries, signed.
    modules: Vec<SignedModule>,
    timeout: u64,
    /// Minions per batch, for a job run in batches.
    batch_size: Option<usize>,
}

impl Core {
    /// Validates, checks the ACL, records durably, then publishes a job.
    pub fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, CoreError> {
        let span =
            tracing::info_span!("job", jid = tracing::field::Empty, fun = %request.fun, user);
        let _entered = span.enter();
        let planned = self.plan(user, request, true)?;
        self.publish_planned(user, planned)
    }

    /// Submits a job whose permission follows from a grant already
    /// checked: a rollout's health check and canary measurement ride on
    /// its deploy grant (checked when it started; a canary command given
    /// then needed `cmd.run` too). Everything else is checked as usual.
    pub(crate) fn submit_implied(
        &self,
        user: &str,
        request: JobRequest,
    ) -> Result<Submitted, CoreError> {
        let span =
            tracing::info_span!("job", jid = tracing::field::Empty, fun = %request.fun, user);
        let _entered = span.enter();
        let planned = self.plan(user, request, false)?;
        self.publish_planned(user, planned)
    }

    /// Everything `submit` checks (function, target, ACL, app, modules,
    /// timeout, batch), with nothing stored or published: how a list of
    /// jobs is checked whole before any of it runs.
    pub fn check(&self, user: &str, request: JobRequest) -> Result<(), CoreError> {
        self.plan(user, request, true).map(|_| ())
    }

    /// Cancels a running job: a signed `saltutil.kill_job` to the minions
    /// that have not returned. Allowed to the user who submitted the job
    /// and to anyone the ACL lets run its function on those minions.
    pub fn cancel(&self, user: &str, jid: &Jid) -> Result<serde_json::Value, CoreError> {
        let span = tracing::info_span!("job", %jid, fun = "cancel", user);
        let _entered = span.enter();
        let view = self.job_view(jid)?;
        if let Some(master) = &view.job.published_by {
            return Err(CoreError::Conflict(format!(
                "job {jid} was published by master {master}; cancel it there"
            )));
        }
        if view.done {
            return Err(CoreError::Conflict(format!(
                "job {jid} is done; nothing to cancel"
            )));
        }
        if view.job.user != user {
            self.check_acl(user, &view.job.fun, &view.missing)?;
        }
        let request = JobRequest {
            target: view.missing.join(","),
            tgt_type: TargetType::List,
            fun: KILL_JOB.to_owned(),
            arg: vec![serde_json::Value::String(jid.to_string())],
            timeout: Some(30),
            ..JobRequest::default()
        };
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jid.clone());
        if let Err(e) = self
            .store
            .delete_batch(jid)
            .and_then(|()| self.store.flush())
        {
            tracing::warn!(error = %e, "cannot delete the batch plan of a cancelled job");
        }
        let planned = self.plan(user, request, false)?;
        let submitted = self.publish_planned(user, planned)?;
        self.announce(BusEntry {
            id: 0,
            kind: "job/cancel".to_owned(),
            at: now_ms(),
            jid: Some(jid.clone()),
            minion: None,
            data: serde_json::json!({ "by": user, "kill_jid": submitted.jid, "minions": submitted.minions }),
        });
        tracing::warn!(minions = ?submitted.minions, "job cancelled");
        Ok(serde_json::json!({
            "jid": jid,
            "kill_jid": submitted.jid,
            "minions": submitted.minions,
        }))
    }

    /// Refuses unless `user` may run `fun` on every one of `minions`.
    pub(crate) fn check_acl(
        &self,
        user: &str,
        fun: &str,
        minions: &[String],
    ) -> Result<(), CoreError> {
        self.grants
            .current()
            .check_job(user, &acl_function(fun), minions, |ids, t| {
                self.presence.matching(ids, t)
            })
            .map_err(|denied| CoreError::Forbidden(denied.0))
    }

    /// A keyword argument that is a command (`cmd`, `*_cmd`: a module
    /// runs it in a shell) is a shell on the minions, whatever module
    /// takes it: it needs a grant for `cmd.run` on them too, so a deploy
    /// grant stays a deploy grant.
    fn check_command_arguments(
        &self,
        user: &str,
        request: &JobRequest,
        minions: &[String],
    ) -> Result<(), CoreError> {
        if request.fun.split('.').next() == Some("cmd") {
            return Ok(());
        }
        let Some(key) = request.kwarg.keys().find(|k| is_command_argument(k)) else {
            return Ok(());
        };
        self.check_acl(user, "cmd.run", minions).map_err(|denied| {
            tracing::warn!(argument = %key, "command argument refused by the ACL");
            CoreError::Forbidden(format!(
                "`{key}` is a command the minions would run: it needs a grant for cmd.run on them too ({denied})"
            ))
        })
    }

    /// Checks a request and resolves everything the job needs: its
    /// minions, the ACL, the app definition and modules, the timeout and
    /// the batches. Nothing is stored or published yet.
    fn plan(
        &self,
        user: &str,
        mut request: JobRequest,
        check_acl: bool,
    ) -> Result<Planned, CoreError> {
        halite_proto::ident::validate_function(&request.fun)
            .map_err(|e| CoreError::invalid(e.to_string()))?;
        let target = Target::parse(request.tgt_type, &request.target)
            .map_err(|e| CoreError::invalid(format!("target: {e}")))?;
        let accepted = self.keys.accepted_ids();
        let expected = self.presence.matching(&accepted, &target);
        if let Some(app) = request.kwarg.get("app").filter(|a| !a.is_string()) {
            // A definition in the job would skip apps.d, the app's target
            // and its credentials, and run the caller's own hooks.
            return Err(CoreError::invalid(format!(
                "app must be the name of an app defined on the master (apps.d), got {}",
                kind_of(app)
            )));
        }
        if check_acl {
            self.check_acl(user, &request.fun, &expected)
                .inspect_err(|_| {
                    tracing::warn!(target = %request.target, "refused by the ACL");
                })?;
            self.check_command_arguments(user, &request, &expected)?;
        }
        let modules = self.lua_modules_for(&mut request)?;
        if modules.is_empty() {
            self.refuse_unknown_function(&request.fun)?;
        }
        // A Lua module given `app=NAME` gets the app's definition and
        // credentials like git_deploy does (it may call git_deploy).
        let lua_app = !modules.is_empty()
            && request.fun != SYNC_MODULES
            && request.kwarg.get("app").is_some_and(|a| a.is_string());
        if catalog::takes_app(&request.fun) || lua_app {
            self.complete_app(user, &mut request, &accepted, &expected)?;
        }
        let timeout = request.timeout.unwrap_or(self.config.job_timeout.as_secs());
        if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
            return Err(CoreError::invalid(format!(
                "timeout must be 1 to {MAX_TIMEOUT_SECS} seconds"
            )));
        }
        if let Some(key) = request
            .secret
            .keys()
            .find(|k| request.kwarg.contains_key(*k))
        {
            return Err(CoreError::invalid(format!(
                "`{key}` is given both as a keyword argument and as a secret"
            )));
        }
        let down: Vec<String> = expected
            .iter()
            .filter(|id| !self.presence.is_up(id))
            .cloned()
            .collect();
        if request.require_up && !down.is_empty() {
            return Err(CoreError::Conflict(format!(
                "targeted minions are down: {}; nothing was published",
                down.join(", ")
            )));
        }
        let batch_size = match request.batch.as_deref() {
            Some(batch) => Some(crate::batch::parse_size(batch, expected.len())?),
            None => None,
        }
        .filter(|&size| size < expected.len());
        Ok(Planned {
            request,
            expected,
            down,
            modules,
            timeout,
            batch_size,
        })
    }

    /// Refuses a function no minion has, before anything is published,
    /// with the message a minion would give: a built-in function must be
    /// in the catalog; any other must belong to a Lua module the master
    /// has (whose functions only the minion knows).
    fn refuse_unknown_function(&self, fun: &str) -> Result<(), CoreError> {
        if catalog::function(fun).is_some() {
            return Ok(());
        }
        let lua = self.config.lua_modules().all()?;
        let modules = catalog::MODULES
            .iter()
            .map(|m| (m.name, m.default, m.names()))
            .chain(lua.keys().map(|name| (name.as_str(), None, Vec::new())));
        match catalog::resolve(fun, modules) {
            Ok(_) => Ok(()),
            Err(unresolved) => Err(CoreError::invalid(unresolved.to_string())),
        }
    }

    /// Seals, signs, stores (flushed) and publishes a planned job; a job
    /// in batches goes to its first batch, by list, and its plan goes to
    /// the batch driver.
    fn publish_planned(&self, user: &str, planned: Planned) -> Result<Submitted, CoreError> {
        let Planned {
            request,
            expected,
            down,
            modules,
            timeout,
            batch_size,
        } = planned;
        let freeze_override = request.freeze_overridden.clone();
        let jid = self.jids.next();
        tracing::Span::current().record("jid", tracing::field::display(&jid));
        let issued_at = now_ms();
        let expires_at = issued_at + timeout * 1000;
        let secrets = self.seal_secrets(&jid, &request.secret, &expected)?;
        let first: Vec<String> = match batch_size {
            Some(size) => expected[..size].to_vec(),
            None => expected.clone(),
        };
        let (tgt, tgt_type) = match batch_size {
            Some(_) => (first.join(","), TargetType::List),
            None => (request.target.clone(), request.tgt_type),
        };
        let mut job = Job {
            jid: jid.clone(),
            tgt,
            tgt_type,
            fun: request.fun.clone(),
            arg: request.arg.clone(),
            kwarg: request.kwarg.clone(),
            secret: None,
            secrets,
            timeout,
            issued_at,
            expires_at,
            master: self.config.id.clone(),
            user: user.to_owned(),
            modules,
            summary_signature: Vec::new(),
        };
        let envelope = self.sign_job(&mut job)?;
        let record = JobRecord {
            jid: jid.clone(),
            target: request.target,
            tgt_type: request.tgt_type,
            fun: request.fun,
            arg: request.arg,
            kwarg: request.kwarg,
            secret_keys: request.secret.into_keys().collect(),
            user: user.to_owned(),
            timeout,
            issued_at,
            expires_at,
            expected: expected.clone(),
            down,
            published_by: None,
            batch_size,
        };
        // A job in batches keeps its plan beside it, so a restarted master
        // goes on with the next batch.
        let plan = batch_size.map(|size| BatchPlan {
            rest: expected[size..]
                .chunks(size)
                .map(<[String]>::to_vec)
                .collect(),
            waiting_for: first.clone(),
            deadline: expires_at + RETURN_GRACE_MS,
            template: job.clone(),
        });
        self.store_job(record, envelope.clone(), plan.as_ref())?;
        self.metrics.job_published(
            &jid,
            &job.fun,
            expected.len(),
            issued_at,
            expires_at + RETURN_GRACE_MS,
        );
        self.send_job(&job, first, envelope);
        if let Some(plan) = plan {
            if self.batches.send(plan).is_err() {
                tracing::error!(
                    "the batch driver is not running; only the first batch was published"
                );
            }
        }
        tracing::info!(target = %job.tgt, expected = expected.len(), "job published");
        self.trace_published(&jid, &job.fun, &job.tgt, user, expected.len());
        self.announce(BusEntry {
            id: 0,
            kind: "job/new".to_owned(),
            at: issued_at,
            jid: Some(jid.clone()),
            minion: None,
            data: serde_json::json!({
                "fun": job.fun, "target": job.tgt, "tgt_type": job.tgt_type,
                "user": user, "minions": expected, "arg": job.arg,
            }),
        });
        Ok(Submitted {
            jid,
            minions: expected,
            freeze_override,
        })
    }

    /// Seals a job's secret arguments for each expected minion under its
    /// own key (given at its auth): no accepted minion can open another's
    /// copy. A minion that has not authenticated since this master
    /// started gets none (its job fails saying so); the cost is one small
    /// seal per target.
    fn seal_secrets(
        &self,
        jid: &Jid,
        secret: &BTreeMap<String, String>,
        expected: &[String],
    ) -> Result<BTreeMap<String, halite_proto::message::Sealed>, CoreError> {
        if secret.is_empty() {
            return Ok(BTreeMap::new());
        }
        let plain = halite_proto::envelope::encode("secrets", secret)
            .map_err(|e| CoreError::invalid(e.to_string()))?;
        let personal = self.personal.read().unwrap_or_else(|p| p.into_inner());
        let mut sealed = BTreeMap::new();
        for minion in expected {
            if let Some(key) = personal.get(minion) {
                let copy = halite_pki::seal_for_minion(key, jid.as_str(), minion, &plain)?;
                sealed.insert(minion.clone(), copy);
            }
        }
        Ok(sealed)
    }

    /// Stores a job (and its batch plan) and flushes: a job is durable
    /// before any minion can return for it.
    fn store_job(
        &self,
        record: JobRecord,
        envelope: Vec<u8>,
        plan: Option<&BatchPlan>,
    ) -> Result<(), CoreError> {
        self.store.put_job(&StoredJob { record, envelope })?;
        if let Some(plan) = plan {
            self.store.put_batch(plan)?;
        }
        self.store.flush()?;
        Ok(())
    }

    /// Fills in an app module's job from the app catalog (see
    /// [`crate::apps::Catalog::complete`]), with the app's `timeout` when
    /// the request gives none. Secrets given on the command line for the
    /// same names are refused rather than overridden.
    /// `accepted` are the accepted minions, `job_minions` those the job
    /// targets.
    fn complete_app(
        &self,
        user: &str,
        request: &mut JobRequest,
        accepted: &[String],
        job_minions: &[String],
    ) -> Result<(), CoreError> {
        let app_minions = |app: &halite_proto::app::AppSpec| {
            let theirs = Target::parse(app.tgt_type, &app.target)
                .map_err(|e| format!("app {}: target: {e}", app.name))?;
            Ok(self.presence.matching(accepted, &theirs))
        };
        let mut secret = BTreeMap::new();
        let app = self
            .config
            .apps()
            .complete(
                &mut request.kwarg,
                &mut secret,
                &request.target,
                job_minions,
                request.fun.split('.').next().unwrap_or_default(),
                app_minions,
            )
            .map_err(CoreError::Invalid)?;
        let envs = self.check_environments(&app, request, accepted, job_minions)?;
        self.check_freeze(user, &app.name, &envs, request)?;
        request.timeout.get_or_insert(app.timeout);
        for (key, value) in secret {
            if request.secret.insert(key.clone(), value).is_some() {
                return Err(CoreError::invalid(format!(
                    "`{key}` comes from app {}'s credentials; do not pass it as well",
                    app.name
                )));
            }
        }
        Ok(())
    }

    /// An app whose environment requires approval or promotion takes
    /// releases there only through release requests: a deploy or rollback
    /// job reaching one of its minions otherwise is refused, naming the
    /// environment (reading functions, `status`, `list`, pass).
    ///
    /// The environments a release job reaches (`None` for minions in no
    /// environment of the app), for the freeze check; empty for a job
    /// that releases nothing.
    fn check_environments(
        &self,
        app: &halite_proto::app::AppSpec,
        request: &JobRequest,
        accepted: &[String],
        job_minions: &[String],
    ) -> Result<Vec<Option<String>>, CoreError> {
        let function = request.fun.rsplit('.').next().unwrap_or_default();
        if !matches!(function, "deploy" | "rollback" | "undeploy") {
            return Ok(Vec::new());
        }
        let mut reached = Vec::new();
        let mut outside: Vec<&String> = job_minions.iter().collect();
        for (name, env) in &app.env {
            let target = Target::parse(env.tgt_type, &env.target)
                .map_err(|e| CoreError::Invalid(format!("app {} env {name}: {e}", app.name)))?;
            let theirs = self.presence.matching(accepted, &target);
            if !job_minions.iter().any(|m| theirs.contains(m)) {
                continue;
            }
            outside.retain(|m| !theirs.contains(m));
            reached.push(Some(name.clone()));
            let gated = env.requires_approval || env.promote_from.is_some();
            if gated && request.release_request.is_none() {
                return Err(CoreError::Forbidden(format!(
                    "{} {name} takes releases through requests only (approval or promotion): \
                     master-cli requests new {} {name} tag=... --reason \"...\"",
                    app.name, app.name
                )));
            }
        }
        if !outside.is_empty() || job_minions.is_empty() {
            reached.push(None);
        }
        Ok(reached)
    }

    /// A release inside a freeze window is refused, naming the window,
    /// unless the user asked to override it and holds `@freeze_override`;
    /// the window overridden is kept on the request for the answer and
    /// the audit log.
    fn check_freeze(
        &self,
        user: &str,
        app: &str,
        envs: &[Option<String>],
        request: &mut JobRequest,
    ) -> Result<(), CoreError> {
        let now = now_ms();
        let freezes = self.grants.freezes();
        let Some((window, env)) = envs.iter().find_map(|env| {
            freezes
                .iter()
                .find(|w| w.holds(app, env.as_deref(), now))
                .map(|w| (w, env))
        }) else {
            return Ok(());
        };
        let place = match env {
            Some(env) => format!("{app} {env}"),
            None => app.to_owned(),
        };
        if !request.override_freeze {
            return Err(CoreError::Forbidden(format!(
                "{place} is frozen: {}; a user with the @freeze_override grant may release anyway with override_freeze",
                window.describe()
            )));
        }
        self.require(user, crate::acl::Special::FreezeOverride)
            .map_err(|e| {
                CoreError::Forbidden(format!("{place} is frozen: {}; {e}", window.describe()))
            })?;
        tracing::warn!(app, window = %window.name, user, "release inside a freeze window, by override");
        request.freeze_overridden = Some(window.name.clone());
        Ok(())
    }

    /// The signed Lua modules a job carries: the one its function names
    /// (if the master has such a Lua module), or all of them for
    /// `saltutil.sync_modules`. `saltutil.list_modules` gets the master's
    /// versions as its `master` argument, so minions say which are current.
    fn lua_modules_for(&self, request: &mut JobRequest) -> Result<Vec<SignedModule>, CoreError> {
        let catalog = self.config.lua_modules();
        let wanted: Vec<(String, String)> = if request.fun == SYNC_MODULES {
            catalog.all()?.into_iter().collect()
        } else if request.fun == LIST_MODULES {
            let versions: serde_json::Map<String, serde_json::Value> = catalog
                .all()?
                .into_iter()
                .map(|(name, source)| (name, halite_pki::sha256_hex(source.as_bytes()).into()))
                .collect();
            request.kwarg.insert("master".into(), versions.into());
            Vec::new()
        } else {
            let module = request.fun.split('.').next().unwrap_or_default();
            match catalog.get(module)? {
                Some(source) => vec![(module.to_owned(), source)],
                None => Vec::new(),
            }
        };
        wanted
            .into_iter()
            .map(|(name, source)| {
                crate::lua_modules::sign(&self.key, &self.config.id, &name, source)
                    .map_err(CoreError::from)
            })
            .collect()
    }

    // ---- batches -------------------------------------------------------------

    /// The plans of jobs run in batches, for the batch driver (once).
    pub fn take_batch_plans(&self) -> Option<mpsc::UnboundedReceiver<BatchPlan>> {
        self.batch_plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Hands the batch plans a previous run left in the store to the batch
    /// driver (at start).
    pub fn resume_batches(&self) -> Result<usize, crate::store::StoreError> {
        // On a shared store the master driving the rest resumes them.
        if !self.drives() {
            return Ok(0);
        }
        let plans = self.store.batches()?;
        let count = plans.len();
        for plan in plans {
            tracing::info!(jid = %plan.template.jid, remaining = plan.rest.len(), "resuming a job in batches");
            if self.batches.send(plan).is_err() {
                tracing::error!("the batch driver is not running");
            }
        }
        Ok(count)
    }

    /// Has the job been cancelled (so no further batch starts)?
    pub fn is_cancelled(&self, jid: &Jid) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(jid)
    }

    /// Publishes one later batch of a job in batches: the first batch's
    /// job, re-signed for `minions` with its own time window. Returns
    /// when that window ends (unix ms).
    pub fn publish_batch(&self, template: &Job, minions: &[String]) -> Result<u64, CoreError> {
        let mut job = template.clone();
        job.tgt = minions.join(",");
        job.tgt_type = TargetType::List;
        job.issued_at = now_ms();
        job.expires_at = job.issued_at + job.timeout * 1000;
        let envelope = self.sign_job(&mut job)?;
        self.send_job(&job, minions.to_vec(), envelope);
        tracing::info!(jid = %job.jid, minions = minions.len(), "next batch published");
        self.announce(BusEntry {
            id: 0,
            kind: "job/batch".to_owned(),
            at: job.issued_at,
            jid: Some(job.jid.clone()),
            minion: None,
            data: serde_json::json!({ "minions": minions }),
        });
        Ok(job.expires_at)
    }
}

/// The function name the ACL checks: a deploy module named alone means
/// its `deploy` function, so `git_deploy` needs the same grant as
/// `git_deploy.deploy`.
/// Keyword arguments named as commands: `cmd` or `*_cmd` (the
/// convention every module that takes a command follows; see
/// docs/security.md).
pub(crate) fn is_command_argument(key: &str) -> bool {
    key == "cmd" || key.ends_with("_cmd")
}

/// A JSON value's kind, for messages that must not echo the value.
fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

fn acl_function(fun: &str) -> String {
    if !fun.contains('.') && catalog::takes_app(fun) {
        format!("{fun}.deploy")
    } else {
        fun.to_owned()
    }
}
