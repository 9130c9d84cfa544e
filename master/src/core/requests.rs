//! Release requests on the master: made for an app's environment, bound
//! to the exact revision they name, decided by the environment's
//! approvers, deployed to the environment's target with that revision,
//! and marked live or failed from their deploy job. The state machine is
//! `halite_model::request`; this keeps requests in the store and does
//! what each step needs (resolve, check, submit).
//!
//! Everything here may block (store writes, a git fetch): callers run it
//! on the blocking pool.

use std::sync::atomic::AtomicBool;

use halite_model::{Action, NewRequest, ReleaseRequest, RequestKind, RequestState, Rules};
use halite_proto::app::{AppKind, AppSpec, EnvSpec};
use halite_proto::time::now_ms;
use serde_json::{Map, Value};

use super::views::ReleaseAction;
use super::{Core, CoreError};

impl Core {
    /// Makes a request: the app's environment must exist, nothing else may
    /// be under way there, the requester must be allowed to deploy there,
    /// a promoted environment must have the revision live already, and the
    /// version is resolved now to the revision the approval will bind.
    pub fn create_request(&self, user: &str, new: NewRequest) -> Result<ReleaseRequest, CoreError> {
        self.create_request_as(user, user, new)
    }

    /// [`Core::create_request`], made as `by` and checked against the
    /// grants of `acl_user` (a trigger asks as root, recorded as itself).
    pub(crate) fn create_request_as(
        &self,
        by: &str,
        acl_user: &str,
        new: NewRequest,
    ) -> Result<ReleaseRequest, CoreError> {
        let user = by;
        let reason = new.reason.trim();
        if reason.is_empty() {
            return Err(CoreError::invalid("a request needs a reason"));
        }
        let (app, env) = self.app_env(&new.app, &new.env)?;
        if !self.may_release(acl_user, &app.name, Some(&new.env)) {
            return Err(CoreError::Forbidden(format!(
                "user {acl_user:?} may not release {} to {} (no grant for its deploy function on every minion there)",
                app.name, new.env
            )));
        }
        if let Some(active) = self.active_request(&app.name, &new.env)? {
            return Err(one_at_a_time(&active));
        }
        let revision = match new.kind {
            RequestKind::Deploy => {
                Some(self.resolve_revision(&app, &new.version, Freshness::Now)?)
            }
            RequestKind::Rollback => None,
        };
        // The fetch above is slow; what it decided is checked again under
        // the lock, against the store as it is now.
        let _steps = self.lock_steps();
        if let Some(active) = self
            .store
            .requests(usize::MAX, |r| {
                r.app == app.name && r.env == new.env && r.state.is_active()
            })?
            .into_iter()
            .next()
        {
            return Err(one_at_a_time(&active));
        }
        if let (Some(from), Some(revision)) = (&env.promote_from, &revision) {
            let live_there = self
                .store
                .requests(usize::MAX, |r| {
                    r.app == app.name && &r.env == from && r.state == RequestState::Live
                })?
                .into_iter()
                .next();
            if live_there.as_ref().and_then(|r| r.revision.as_ref()) != Some(revision) {
                return Err(CoreError::Invalid(format!(
                    "{} ({}) is not live on {from}: {} is promoted from there",
                    describe(&new.version),
                    short(revision),
                    new.env
                )));
            }
        }
        let id = self.store.next_request_id()?;
        let request = ReleaseRequest::new(
            id,
            &app.name,
            &new.env,
            new.kind,
            new.version,
            revision,
            reason,
            user,
            now_ms(),
        );
        self.save_request(&request)?;
        Ok(request)
    }

    /// Approves, rejects, returns, resubmits or withdraws a request, as
    /// the environment's rules allow `user`.
    pub fn decide_request(
        &self,
        user: &str,
        id: u64,
        action: Action,
        reason: Option<&str>,
    ) -> Result<ReleaseRequest, CoreError> {
        self.request(id)?;
        let _steps = self.lock_steps();
        let mut request = self.stored_request(id)?;
        let (_, env) = self.app_env(&request.app, &request.env)?;
        request
            .apply(action, user, reason, now_ms(), &self.rules(&env))
            .map_err(|e| CoreError::Conflict(e.to_string()))?;
        self.save_request(&request)?;
        Ok(request)
    }

    /// Deploys an approved request (or a requested one where no approval
    /// is needed) to its environment's target with exactly its revision.
    /// A tag or branch that moved since the request was made is refused:
    /// what was approved is not what it names now. Inside a freeze window
    /// it is refused unless `override_freeze` (and the user's grant).
    pub fn deploy_request(
        &self,
        user: &str,
        id: u64,
        override_freeze: bool,
    ) -> Result<ReleaseRequest, CoreError> {
        self.deploy_request_as(user, user, id, override_freeze)
    }

    /// [`Core::deploy_request`], recorded as `by` and checked against the
    /// grants of `acl_user` (a trigger deploys as root, recorded as the
    /// trigger).
    pub(crate) fn deploy_request_as(
        &self,
        by: &str,
        acl_user: &str,
        id: u64,
        override_freeze: bool,
    ) -> Result<ReleaseRequest, CoreError> {
        self.request(id)?;
        // Held until the deploy is recorded: a second deploy of the same
        // request waits, then finds it deploying.
        let _steps = self.lock_steps();
        let mut request = self.stored_request(id)?;
        let (app, env) = self.app_env(&request.app, &request.env)?;
        let rules = self.rules(&env);
        let ready = request.state == RequestState::Approved
            || (request.state == RequestState::Requested && !rules.requires_approval);
        if !ready {
            return Err(CoreError::Conflict(format!(
                "request {id} is {}: only an approved request is deployed",
                request.state
            )));
        }
        let mut options = Map::new();
        let action = match request.kind {
            RequestKind::Deploy => {
                let approved = request.revision.clone().unwrap_or_default();
                let now = self.resolve_revision(&app, &request.version, Freshness::Now)?;
                if now != approved {
                    return Err(CoreError::Conflict(format!(
                        "{} now names {}, but {} was approved: make a new request for it",
                        describe(&request.version),
                        short(&now),
                        short(&approved)
                    )));
                }
                match app.kind {
                    AppKind::Git => {
                        options.insert("rev".into(), Value::String(approved));
                    }
                    AppKind::Tomcat | AppKind::Iis => {
                        for key in ["url", "sha256", "version"] {
                            if let Some(v) = request.version.get(key) {
                                options.insert(key.into(), v.clone());
                            }
                        }
                    }
                }
                ReleaseAction::Deploy
            }
            RequestKind::Rollback => {
                if let Some(to) = request.version.get("to") {
                    options.insert("to".into(), to.clone());
                }
                ReleaseAction::Rollback
            }
        };
        // An environment (or app) with a rollout plan deploys in steps.
        let plan = env.rollout.clone().or_else(|| app.rollout.clone());
        if let (RequestKind::Deploy, Some(plan)) = (request.kind, plan) {
            let rollout = self.start_bound_rollout(
                acl_user,
                halite_model::NewRollout {
                    app: app.name.clone(),
                    version: options,
                    target: Some(as_compound(&env)),
                    plan: Some(plan),
                    reason: format!("request {id}: {}", request.reason),
                    then: Vec::new(),
                    module: None,
                },
                Some(id),
                override_freeze,
            )?;
            let note = format!("rollout {} in {} steps", rollout.id, rollout.steps.len());
            request
                .apply(
                    Action::RollOut(rollout.id),
                    by,
                    Some(&note),
                    now_ms(),
                    &rules,
                )
                .map_err(|e| CoreError::Conflict(e.to_string()))?;
            self.save_request(&request)?;
            return Ok(request);
        }
        options.insert("target".into(), Value::String(as_compound(&env)));
        if override_freeze {
            options.insert("override_freeze".into(), Value::Bool(true));
        }
        let submitted = self.release_app(acl_user, &app.name, action, options, Some(id))?;
        let note = submitted
            .freeze_override
            .as_ref()
            .map(|window| format!("deployed inside freeze window {window:?} by override"));
        request
            .apply(
                Action::Deploy(submitted.jid),
                by,
                note.as_deref(),
                now_ms(),
                &rules,
            )
            .map_err(|e| CoreError::Conflict(e.to_string()))?;
        self.save_request(&request)?;
        Ok(request)
    }

    /// The request with this id, its deploy's outcome brought up to date
    /// (a finished job makes it live or failed; a live rollback marks the
    /// release it replaced rolled back).
    pub fn request(&self, id: u64) -> Result<ReleaseRequest, CoreError> {
        let request = self.stored_request(id)?;
        self.settle(request)
    }

    /// The request as stored (not settled).
    fn stored_request(&self, id: u64) -> Result<ReleaseRequest, CoreError> {
        self.store
            .request(id)?
            .ok_or_else(|| CoreError::NotFound(format!("no request {id}")))
    }

    fn lock_steps(&self) -> std::sync::MutexGuard<'_, ()> {
        self.request_steps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Requests newest first (at most `limit`), settled like [`Core::request`].
    pub fn requests(
        &self,
        app: Option<&str>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ReleaseRequest>, CoreError> {
        self.store
            .requests(limit, |r| {
                app.is_none_or(|a| r.app == a) && env.is_none_or(|e| r.env == e)
            })?
            .into_iter()
            .map(|r| self.settle(r))
            .collect()
    }

    /// A deploying request whose job is done becomes live or failed.
    /// Never called with the step lock held: it takes it.
    fn settle(&self, request: ReleaseRequest) -> Result<ReleaseRequest, CoreError> {
        if request.state != RequestState::Deploying {
            return Ok(request);
        }
        let ok = match (&request.jid, request.rollout) {
            (_, Some(rollout)) => {
                let rollout = self.rollout(rollout)?;
                if !rollout.state.is_final() {
                    return Ok(request);
                }
                rollout.state == halite_model::RolloutState::Succeeded
            }
            (Some(jid), None) => {
                let view = self.job_view(jid)?;
                if !view.done {
                    return Ok(request);
                }
                view.missing.is_empty() && view.returns.values().all(|r| r.success)
            }
            (None, None) => return Ok(request),
        };
        let _steps = self.lock_steps();
        let mut request = self.stored_request(request.id)?;
        if request.state != RequestState::Deploying {
            return Ok(request); // settled meanwhile
        }
        let rules = match self.app_env(&request.app, &request.env) {
            Ok((_, env)) => self.rules(&env),
            Err(_) => Rules::default(),
        };
        request
            .apply(Action::Finished { ok }, "master", None, now_ms(), &rules)
            .map_err(|e| CoreError::Conflict(e.to_string()))?;
        if ok && request.kind == RequestKind::Rollback {
            // The release it went back from is rolled back.
            let replaced = self.store.requests(usize::MAX, |r| {
                r.app == request.app
                    && r.env == request.env
                    && r.id != request.id
                    && r.state == RequestState::Live
            })?;
            if let Some(mut previous) = replaced.into_iter().next() {
                previous
                    .apply(Action::RolledBack, "master", None, now_ms(), &rules)
                    .map_err(|e| CoreError::Conflict(e.to_string()))?;
                self.save_request(&previous)?;
            }
        }
        self.save_request(&request)?;
        Ok(request)
    }

    /// Stores a request durably, then queues its latest step for every
    /// `[[notify]]` receiver that wants it.
    fn save_request(&self, request: &ReleaseRequest) -> Result<(), CoreError> {
        self.store.put_request(request)?;
        self.notify_request(request);
        Ok(())
    }

    /// The active request of an app's environment, if any.
    fn active_request(&self, app: &str, env: &str) -> Result<Option<ReleaseRequest>, CoreError> {
        Ok(self
            .requests(Some(app), Some(env), usize::MAX)?
            .into_iter()
            .find(|r| r.state.is_active()))
    }

    /// An environment's rules, its approver groups (`leads%`) expanded to
    /// their members as `[groups]` says now.
    fn rules(&self, env: &EnvSpec) -> Rules {
        let mut rules = Rules::from(env);
        rules.approvers = self.grants.current().expand(&env.approvers);
        rules
    }

    /// The app and one of its environments.
    fn app_env(&self, app: &str, env: &str) -> Result<(AppSpec, EnvSpec), CoreError> {
        let spec = self
            .apps()?
            .into_iter()
            .find(|a| a.name == app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {app:?}")))?;
        let environment = spec.env.get(env).cloned().ok_or_else(|| {
            CoreError::NotFound(format!(
                "app {app} has no environment {env:?} (it has: {})",
                spec.env.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Ok((spec, environment))
    }

    /// The revision a version names now: for a git app the commit its
    /// tag, branch or rev names (fetched into the master's cache of the
    /// repository, with the app's credentials); for an artifact app its
    /// sha256.
    pub(crate) fn resolve_revision(
        &self,
        app: &AppSpec,
        version: &Map<String, Value>,
        freshness: Freshness,
    ) -> Result<String, CoreError> {
        let text = |key: &str| version.get(key).and_then(Value::as_str).map(str::to_owned);
        if app.kind != AppKind::Git {
            let sha = text("sha256").ok_or_else(|| {
                CoreError::invalid(format!(
                    "{} is an artifact app: give url, sha256 and version",
                    app.name
                ))
            })?;
            return Ok(sha.to_ascii_lowercase());
        }
        let wanted = match (text("tag"), text("branch"), text("rev")) {
            (Some(tag), None, None) => halite_git::Wanted::Tag(tag),
            (None, Some(branch), None) => halite_git::Wanted::Branch(branch),
            (None, None, Some(rev)) => halite_git::Wanted::Rev(rev),
            _ => return Err(CoreError::invalid("name exactly one of tag, branch or rev")),
        };
        let repo = self.fetched_cache(app, freshness)?;
        let commit = halite_git::resolve(&repo, &wanted, &app.repo)
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        Ok(commit.to_string())
    }

    /// The master's own cache of a git app's repository
    /// (`data_dir/git/APP.git`: refs and objects only, never a checkout,
    /// never a hook), fetched with the app's credentials: always for
    /// [`Freshness::Now`], at most once per [`VIEW_FRESHNESS`] for
    /// [`Freshness::View`].
    pub(crate) fn fetched_cache(
        &self,
        app: &AppSpec,
        freshness: Freshness,
    ) -> Result<halite_git::Repository, CoreError> {
        let credentials = match &app.credentials {
            Some(name) => {
                let all = self.config.apps().credentials()?;
                let credential = all.get(name).ok_or_else(|| {
                    CoreError::invalid(format!("credentials {name:?} are not in the secrets file"))
                })?;
                Some((credential.username.clone(), credential.secret().to_owned()))
            }
            None => None,
        };
        let caches = self.config.data_dir.join("git");
        std::fs::create_dir_all(&caches)
            .map_err(|e| CoreError::Invalid(format!("cannot create {}: {e}", caches.display())))?;
        let cache = caches.join(format!("{}.git", app.name));
        let repo = halite_git::open_cache(&cache).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let fetched_at = self
            .git_fetched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&app.name)
            .copied();
        if freshness == Freshness::View
            && fetched_at.is_some_and(|at| at.elapsed() < VIEW_FRESHNESS)
        {
            return Ok(repo);
        }
        let source = halite_git::Source {
            url: &app.repo,
            credentials,
            roots: Vec::new(),
        };
        let started = std::time::Instant::now();
        halite_git::fetch(&repo, &source, &AtomicBool::new(false))
            .map_err(|e| CoreError::Invalid(e.to_string()))?;
        self.git_fetched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(app.name.clone(), started);
        Ok(repo)
    }
}

/// How current the master's git cache must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Fetched now: a request binds the commit a tag names at this moment,
    /// and a poll looks for what is new.
    Now,
    /// A change set: a fetch made within [`VIEW_FRESHNESS`] will do (a
    /// version the cache lacks is fetched again), so an app page with
    /// several environments costs one round trip to the remote (its list
    /// of versions, always fetched), not three per environment.
    View,
}

/// How long a fetch serves views.
pub(crate) const VIEW_FRESHNESS: std::time::Duration = std::time::Duration::from_secs(10);

/// The refusal of a second request where one is under way, naming it.
fn one_at_a_time(active: &ReleaseRequest) -> CoreError {
    CoreError::Conflict(format!(
        "request {} ({} by {}) is {} for {} {}: one at a time per environment",
        active.id,
        describe(&active.version),
        active.requester,
        active.state,
        active.app,
        active.env
    ))
}

/// `tag v3`, `branch main`, `rev 1a2b3c`, `version 1.4.2`, `rollback to X`.
fn describe(version: &Map<String, Value>) -> String {
    for key in ["tag", "branch", "rev", "version", "to"] {
        if let Some(v) = version.get(key).and_then(Value::as_str) {
            return format!("{key} {v}");
        }
    }
    "the previous release".to_owned()
}

/// An environment's target as a compound expression (what a narrower
/// target of an app release is read as).
fn as_compound(env: &EnvSpec) -> String {
    use halite_proto::TargetType;
    match env.tgt_type {
        TargetType::Glob | TargetType::Compound => env.target.clone(),
        TargetType::List => format!("L@{}", env.target),
        TargetType::Grain => format!("G@{}", env.target),
        TargetType::Pcre => format!("E@{}", env.target),
    }
}

/// A commit id or hash, shortened for messages.
fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::target::Target;
    use halite_proto::TargetType;

    #[test]
    fn an_environment_target_reads_the_same_as_a_compound() {
        for (tgt_type, target, id, grains) in [
            (TargetType::Glob, "web*", "web1", serde_json::json!({})),
            (TargetType::List, "web1,web2", "web2", serde_json::json!({})),
            (
                TargetType::Grain,
                "role:web",
                "x",
                serde_json::json!({"role": "web"}),
            ),
            (
                TargetType::Pcre,
                "web[0-9]+",
                "web12",
                serde_json::json!({}),
            ),
        ] {
            let env = EnvSpec {
                target: target.into(),
                tgt_type,
                ..EnvSpec::default()
            };
            let own = Target::parse(tgt_type, target).unwrap();
            let compound = Target::parse(TargetType::Compound, &as_compound(&env)).unwrap();
            assert!(
                own.matches(id, &grains) && compound.matches(id, &grains),
                "{target}"
            );
            assert!(!compound.matches("db1", &serde_json::json!({})), "{target}");
        }
    }
}
