//! What asks for releases without a person: webhooks from GitHub, GitLab
//! and Gitea (`POST /v1/hooks/{app}`) and polling a repository for new
//! tags. Both end in [`Core::trigger`]: a release request for the app's
//! `[trigger] env`, deployed at once when that environment has
//! `auto_deploy`. The master also lists an app's versions and what a
//! version changes against the one live in an environment, from its
//! cache of the repository.
//!
//! Everything here blocks (git fetches, store writes).

use std::collections::BTreeMap;

use halite_model::{
    HookOutcome, NewRequest, ReleaseRequest, RequestKind, RequestState, TriggerPause, TriggerState,
};
use halite_proto::app::{AppKind, AppSpec, TriggerSpec};
use serde_json::{Map, Value};

use super::requests::Freshness;
use super::{Core, CoreError};

/// Commits listed in a change set at most.
const MAX_COMMITS: usize = 500;

/// What a trigger saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// A tag was pushed (or appeared).
    Tag(String),
    /// A branch was pushed.
    Branch(String),
}

impl Core {
    /// An app that has a git repository.
    fn git_app(&self, name: &str) -> Result<AppSpec, CoreError> {
        let app = self
            .apps()?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| CoreError::NotFound(format!("no app {name:?}")))?;
        if app.kind != AppKind::Git {
            return Err(CoreError::invalid(format!(
                "{name} is an artifact app: its versions are the artifacts you give"
            )));
        }
        Ok(app)
    }

    /// An app's tags (newest first) and branches, fetched now.
    pub fn app_versions(&self, app: &str) -> Result<Vec<halite_git::Version>, CoreError> {
        let app = self.git_app(app)?;
        let repo = self.fetched_cache(&app, Freshness::Now)?;
        halite_git::versions(&repo).map_err(|e| CoreError::Invalid(e.to_string()))
    }

    /// What releasing `version` (`tag`, `branch` or `rev`) to `env` would
    /// change: the commits and files between the revision live there
    /// (from its latest live request) and the one `version` names now.
    pub fn app_changes(
        &self,
        app: &str,
        env: &str,
        version: &Map<String, Value>,
    ) -> Result<halite_git::ChangeSet, CoreError> {
        let spec = self.git_app(app)?;
        // Views read the cache a moment old; a version it lacks yet (a tag
        // pushed just now) is looked for again after a fetch.
        let to = self
            .resolve_revision(&spec, version, Freshness::View)
            .or_else(|_| self.resolve_revision(&spec, version, Freshness::Now))?;
        self.changes_between(&spec, env, &to)
    }

    /// What a request changes against what is live in its environment.
    pub fn request_changes(&self, id: u64) -> Result<halite_git::ChangeSet, CoreError> {
        let request = self.request(id)?;
        let spec = self.git_app(&request.app)?;
        let to = match request.kind {
            RequestKind::Deploy => request.revision.clone(),
            // A rollback goes to the release before the live one.
            RequestKind::Rollback => self
                .store
                .requests(usize::MAX, |r| {
                    r.app == request.app
                        && r.env == request.env
                        && r.kind == RequestKind::Deploy
                        && r.id < request.id
                        && matches!(r.state, RequestState::Live | RequestState::RolledBack)
                })?
                .into_iter()
                .nth(1)
                .and_then(|r| r.revision),
        }
        .ok_or_else(|| CoreError::NotFound(format!("request {id} names no revision to compare")))?;
        self.changes_between(&spec, &request.env, &to)
    }

    fn changes_between(
        &self,
        app: &AppSpec,
        env: &str,
        to: &str,
    ) -> Result<halite_git::ChangeSet, CoreError> {
        if !app.env.contains_key(env) {
            return Err(CoreError::NotFound(format!(
                "app {} has no environment {env:?}",
                app.name
            )));
        }
        let live = self.live_revision(&app.name, env)?;
        let repo = self.fetched_cache(app, Freshness::View)?;
        halite_git::changes(&repo, live.as_deref(), to, MAX_COMMITS)
            .map_err(|e| CoreError::Invalid(e.to_string()))
    }

    /// The revision live in an app's environment: its latest live deploy
    /// request's.
    fn live_revision(&self, app: &str, env: &str) -> Result<Option<String>, CoreError> {
        Ok(self
            .requests(Some(app), Some(env), usize::MAX)?
            .into_iter()
            .find(|r| r.state == RequestState::Live && r.kind == RequestKind::Deploy)
            .and_then(|r| r.revision))
    }

    /// A webhook: checks the signature (GitHub, Gitea) or token (GitLab)
    /// against the app's `[trigger] secret`, reads the push, and triggers
    /// on a tag or branch the app watches. `headers` are lower-case.
    pub fn webhook(
        &self,
        app: &str,
        headers: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Result<HookOutcome, CoreError> {
        let spec = self
            .apps()?
            .into_iter()
            .find(|a| a.name == app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {app:?}")))?;
        let (trigger, secret_name) = match &spec.trigger {
            Some(
                t @ TriggerSpec {
                    secret: Some(secret),
                    ..
                },
            ) => (t.clone(), secret.clone()),
            _ => {
                return Err(CoreError::NotFound(format!(
                    "app {app} takes no webhooks (it needs [trigger] with a secret)"
                )))
            }
        };
        let credentials = self.config.apps().credentials()?;
        let secret = credentials
            .get(&secret_name)
            .map(|c| c.secret().to_owned())
            .ok_or_else(|| {
                CoreError::invalid(format!(
                    "app {app}'s trigger secret {secret_name:?} is not in the secrets file"
                ))
            })?;
        let source = verify_hook(headers, body, &secret)?;
        let event = [
            "x-github-event",
            "x-gitea-event",
            "x-gogs-event",
            "x-gitlab-event",
        ]
        .iter()
        .find_map(|h| headers.get(*h))
        .cloned()
        .unwrap_or_default();
        let ignored = |why: String| {
            Ok(HookOutcome {
                source: source.to_owned(),
                ignored: Some(why),
                request: None,
            })
        };
        if !matches!(event.as_str(), "push" | "Push Hook" | "Tag Push Hook") {
            // GitHub's `ping`, issues, merge requests...: nothing to release.
            return ignored(format!("event {event:?} is not a push"));
        }
        let payload: Value = serde_json::from_slice(body)
            .map_err(|e| CoreError::invalid(format!("the payload is not JSON: {e}")))?;
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let reference = payload.get("ref").and_then(text).unwrap_or_default();
        let after = payload.get("after").and_then(text).unwrap_or_default();
        if !after.is_empty() && after.bytes().all(|b| b == b'0') {
            return ignored(format!("{reference} was deleted"));
        }
        let pusher = [
            "/pusher/name",
            "/pusher/login",
            "/pusher/username",
            "/user_username",
        ]
        .iter()
        .find_map(|p| payload.pointer(p).and_then(text))
        .unwrap_or_else(|| "someone".into());
        let pushed = if let Some(tag) = reference.strip_prefix("refs/tags/") {
            Pushed::Tag(tag.to_owned())
        } else if let Some(branch) = reference.strip_prefix("refs/heads/") {
            Pushed::Branch(branch.to_owned())
        } else {
            return ignored(format!("{reference:?} is neither a tag nor a branch"));
        };
        if !watches(&trigger, &pushed) {
            return ignored(format!("the app's [trigger] does not watch {reference}"));
        }
        if let Some(pause) = self.store.trigger_pause(&spec.name)? {
            return ignored(format!(
                "the app's trigger was paused by {} ({} ignored)",
                pause.by,
                pushed_words(&pushed)
            ));
        }
        let reason = format!("{} by {pusher} ({source} webhook)", pushed_words(&pushed));
        let request = self.trigger(&spec, &pushed, &format!("webhook:{source}"), &reason)?;
        Ok(HookOutcome {
            source: source.to_owned(),
            ignored: None,
            request: Some(request),
        })
    }

    /// Makes the request a trigger asks for, and deploys it at once where
    /// the environment has `auto_deploy` (as root: the operator who wrote
    /// the app's `[trigger]` and `auto_deploy` allowed it).
    pub fn trigger(
        &self,
        app: &AppSpec,
        pushed: &Pushed,
        by: &str,
        reason: &str,
    ) -> Result<ReleaseRequest, CoreError> {
        let trigger = app
            .trigger
            .as_ref()
            .ok_or_else(|| CoreError::invalid(format!("app {} has no [trigger]", app.name)))?;
        let mut version = Map::new();
        match pushed {
            Pushed::Tag(tag) => version.insert("tag".into(), Value::String(tag.clone())),
            Pushed::Branch(branch) => {
                version.insert("branch".into(), Value::String(branch.clone()))
            }
        };
        let request = self.create_request_as(
            by,
            halite_pki::users::ROOT,
            NewRequest {
                app: app.name.clone(),
                env: trigger.env.clone(),
                kind: RequestKind::Deploy,
                version,
                reason: reason.to_owned(),
            },
        )?;
        let auto = app.env.get(&trigger.env).is_some_and(|e| e.auto_deploy);
        if !auto {
            return Ok(request);
        }
        self.deploy_request_as(by, halite_pki::users::ROOT, request.id, false)
    }

    /// Pauses or resumes an app's trigger (webhooks and polling): by a
    /// user who may release the app to the trigger's environment.
    pub fn pause_trigger(
        &self,
        user: &str,
        app: &str,
        paused: bool,
    ) -> Result<TriggerState, CoreError> {
        let apps = self.apps()?;
        let spec = apps
            .iter()
            .find(|a| a.name == app)
            .ok_or_else(|| CoreError::NotFound(format!("no app {app:?}")))?;
        let trigger = spec
            .trigger
            .as_ref()
            .ok_or_else(|| CoreError::NotFound(format!("app {app} has no [trigger]")))?;
        if !self.may_release(user, app, Some(&trigger.env)) {
            return Err(CoreError::Forbidden(format!(
                "{user} may not release {app} to {}: its trigger is not theirs to pause",
                trigger.env
            )));
        }
        let pause = paused.then(|| TriggerPause {
            by: user.to_owned(),
            at: halite_proto::time::now_ms(),
        });
        self.store.put_trigger_pause(app, pause.as_ref())?;
        Ok(TriggerState {
            app: app.to_owned(),
            env: trigger.env.clone(),
            paused: pause,
        })
    }

    /// An app's trigger and whether it is paused.
    pub fn trigger_state(&self, app: &AppSpec) -> Result<Option<TriggerState>, CoreError> {
        let Some(trigger) = &app.trigger else {
            return Ok(None);
        };
        Ok(Some(TriggerState {
            app: app.name.clone(),
            env: trigger.env.clone(),
            paused: self.store.trigger_pause(&app.name)?,
        }))
    }

    /// Polls one app's repository: tags it has not seen before (and its
    /// `[trigger] tags` glob takes) trigger a request for the newest of
    /// them. The first poll only records what there is.
    pub fn poll_app(&self, app: &AppSpec) -> Result<Option<ReleaseRequest>, CoreError> {
        let Some(trigger) = &app.trigger else {
            return Ok(None);
        };
        let repo = self.fetched_cache(app, Freshness::Now)?;
        let versions =
            halite_git::versions(&repo).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let tags: Vec<&halite_git::Version> = versions.iter().filter(|v| v.kind == "tag").collect();
        let key = format!("poll/{}", app.name);
        let seen = self.store.trigger_state(&key)?;
        let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
        // The first poll, and every poll while paused, only records.
        let paused = self.store.trigger_pause(&app.name)?.is_some();
        let Some(seen) = seen.filter(|_| !paused) else {
            self.store.put_trigger_state(&key, &names)?;
            return Ok(None);
        };
        // Tags come newest first: the newest unseen one is released.
        let newest = tags
            .iter()
            .find(|t| !seen.contains(&t.name) && watches(trigger, &Pushed::Tag(t.name.clone())));
        let outcome = match newest {
            Some(tag) => {
                let pushed = Pushed::Tag(tag.name.clone());
                let reason = format!("{} (seen by polling)", pushed_words(&pushed));
                Some(self.trigger(app, &pushed, "poll", &reason))
            }
            None => None,
        };
        // Seen either way: a refused trigger (one already active) is not
        // retried every poll; it is in the log and the refusal below.
        self.store.put_trigger_state(&key, &names)?;
        outcome.transpose()
    }
}

/// `tag v3 pushed`, `branch main pushed`.
fn pushed_words(pushed: &Pushed) -> String {
    match pushed {
        Pushed::Tag(t) => format!("tag {t} pushed"),
        Pushed::Branch(b) => format!("branch {b} pushed"),
    }
}

/// Does the app's trigger take this push?
fn watches(trigger: &TriggerSpec, pushed: &Pushed) -> bool {
    match pushed {
        Pushed::Tag(tag) => halite_proto::target::glob_matches(&trigger.tags, tag),
        Pushed::Branch(branch) => trigger.branches.iter().any(|b| b == branch),
    }
}

/// Checks a webhook as its sender signs it, and names the sender:
/// GitHub (and Gitea, Gogs, Forgejo, which send the same header) sign
/// the body with HMAC-SHA256 in `X-Hub-Signature-256: sha256=<hex>`;
/// Gitea also sends `X-Gitea-Signature: <hex>`; GitLab sends the secret
/// itself in `X-Gitlab-Token`. Every comparison is constant-time.
pub fn verify_hook(
    headers: &BTreeMap<String, String>,
    body: &[u8],
    secret: &str,
) -> Result<&'static str, CoreError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let source = if headers.contains_key("x-gitlab-event") {
        "gitlab"
    } else if headers.contains_key("x-gitea-event") {
        "gitea"
    } else if headers.contains_key("x-gogs-event") {
        "gogs"
    } else {
        "github"
    };
    let refused = |why: &str| CoreError::BadCredentials(format!("webhook refused: {why}"));
    if let Some(token) = headers.get("x-gitlab-token") {
        // Compare MACs of both: equal-length, constant-time.
        let given = ring::hmac::sign(&key, token.as_bytes());
        return ring::hmac::verify(&key, secret.as_bytes(), given.as_ref())
            .map(|()| source)
            .map_err(|_| refused("the X-Gitlab-Token is not the app's secret"));
    }
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|s| s.strip_prefix("sha256="))
        .or_else(|| headers.get("x-gitea-signature").map(String::as_str))
        .or_else(|| headers.get("x-gogs-signature").map(String::as_str))
        .ok_or_else(|| {
            refused("no signature (X-Hub-Signature-256, X-Gitea-Signature or X-Gitlab-Token)")
        })?;
    let signature =
        hex::decode(signature.trim()).map_err(|_| refused("the signature is not hex"))?;
    ring::hmac::verify(&key, body, &signature)
        .map(|()| source)
        .map_err(|_| refused("the signature does not match the body and the app's secret"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_sender_is_checked_its_way() {
        let body = br#"{"ref":"refs/tags/v3"}"#;
        let signed = crate::notify::signature("s3cret", body);
        let hex_only = signed.trim_start_matches("sha256=");
        assert_eq!(
            verify_hook(
                &headers(&[("x-github-event", "push"), ("x-hub-signature-256", &signed)]),
                body,
                "s3cret"
            )
            .unwrap(),
            "github"
        );
        assert_eq!(
            verify_hook(
                &headers(&[("x-gitea-event", "push"), ("x-gitea-signature", hex_only)]),
                body,
                "s3cret"
            )
            .unwrap(),
            "gitea"
        );
        assert_eq!(
            verify_hook(
                &headers(&[
                    ("x-gitlab-event", "Tag Push Hook"),
                    ("x-gitlab-token", "s3cret")
                ]),
                body,
                "s3cret"
            )
            .unwrap(),
            "gitlab"
        );
        for bad in [
            headers(&[("x-github-event", "push"), ("x-hub-signature-256", &signed)]),
            headers(&[("x-gitlab-event", "push"), ("x-gitlab-token", "guess")]),
            headers(&[("x-github-event", "push")]),
            headers(&[
                ("x-github-event", "push"),
                ("x-hub-signature-256", "sha256=zz"),
            ]),
        ] {
            let secret = if bad.contains_key("x-hub-signature-256")
                && bad["x-hub-signature-256"] == signed
            {
                "other"
            } else {
                "s3cret"
            };
            assert!(matches!(
                verify_hook(&bad, body, secret),
                Err(CoreError::BadCredentials(_))
            ));
        }
        // A forged body under a real signature.
        assert!(verify_hook(
            &headers(&[("x-github-event", "push"), ("x-hub-signature-256", &signed)]),
            br#"{"ref":"refs/tags/v4"}"#,
            "s3cret"
        )
        .is_err());
    }

    #[test]
    fn triggers_take_the_tags_and_branches_they_watch() {
        let trigger = TriggerSpec {
            env: "staging".into(),
            secret: None,
            tags: "v*".into(),
            branches: vec!["main".into()],
            poll: 0,
        };
        assert!(watches(&trigger, &Pushed::Tag("v3".into())));
        assert!(!watches(&trigger, &Pushed::Tag("nightly".into())));
        assert!(watches(&trigger, &Pushed::Branch("main".into())));
        assert!(!watches(&trigger, &Pushed::Branch("dev".into())));
    }
}
