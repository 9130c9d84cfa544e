//! Application definitions: what `git_deploy` (and the other deploy
//! modules) release, where, and how it is checked.
//!
//! An app is written once on the master (`<apps_dir>/shop.toml`) and
//! travels inside each deploy job as the `app` keyword argument, so a
//! minion needs no local configuration to deploy it and the stored job
//! says exactly which definition was used. Credentials never travel here:
//! the definition only names them, and the master seals the values into
//! the job's secret arguments ([`SECRET_USERNAME`], [`SECRET_PASSWORD`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{parse_toml, ConfigError};
use crate::target::{Target, TargetType};

/// Secret argument carrying the HTTPS user name for the app's repository.
pub const SECRET_USERNAME: &str = "repo_username";
/// Secret argument carrying the HTTPS password or token for the repository.
pub const SECRET_PASSWORD: &str = "repo_password";

/// Default number of releases kept on a minion (the live one included).
pub const DEFAULT_KEEP_RELEASES: usize = 5;

/// One deployable application, as written in `<apps_dir>/<name>.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name (`app=NAME` on the command line); defaults to the
    /// file name without `.toml`.
    #[serde(default)]
    pub name: String,
    /// What is released: a git checkout (`git`, the default, by
    /// `git_deploy`), a WAR on Tomcat (`tomcat`, by `java_tomcat`) or a
    /// zipped site on IIS (`iis`, by `dotnet_iis`).
    #[serde(default)]
    pub kind: AppKind,
    /// Where the code comes from: `https://…`, `http://…` (no
    /// credentials), `git://…`, `file://…` or a local path on the minion.
    /// Required for `kind = "git"`; artifact apps get a URL per deploy.
    #[serde(default)]
    pub repo: String,
    /// Which minions get it.
    pub target: String,
    /// How `target` is read (`glob` unless given).
    #[serde(default)]
    pub tgt_type: TargetType,
    /// The deploy path on the minion: `releases/`, `shared/`, `current`.
    /// `{id}` stands for the minion's id (two minions on one host keep
    /// apart: `/srv/{id}/shop`), replaced on the minion
    /// ([`expand_for_minion`]).
    pub path: PathBuf,
    /// Branch deployed when a job names no tag, branch or rev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag deployed when a job names no tag, branch or rev (wins over `branch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Releases kept on disk for instant rollback, the live one included.
    #[serde(default = "default_keep_releases")]
    pub keep_releases: usize,
    /// Paths under `shared/` linked into every release (`storage`, `.env`).
    #[serde(default)]
    pub shared: Vec<String>,
    /// Shell command run in the new release before it goes live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<String>,
    /// Shell command run in the release after it went live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_deploy: Option<String>,
    /// Seconds a hook may run before it is killed and counts as failed.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout: u64,
    /// Seconds a deploy job on this app may run on each minion when the
    /// job gives no `--timeout` (a first fetch and a build take longer
    /// than the master's general `job_timeout`).
    #[serde(default = "default_deploy_timeout")]
    pub timeout: u64,
    /// A failing hook fails the deploy (true) or is reported and ignored.
    #[serde(default = "yes")]
    pub stop_on_error: bool,
    /// After a failure past the switch, switch back to the previous release.
    #[serde(default = "yes")]
    pub auto_rollback: bool,
    /// Name of an entry in the master's secrets file (HTTPS user/token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// Extra CA certificate (PEM, a path on the minion) trusted for the
    /// repository and the health URL, for in-house certificate authorities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// What a second deploy to the same path does while one runs.
    #[serde(default)]
    pub lock: LockPolicy,
    /// Seconds a waiting deploy waits for the lock before giving up.
    #[serde(default = "default_lock_wait")]
    pub lock_wait: u64,
    /// Hard-link files unchanged since the live release instead of
    /// writing them again (a one-file change is then a one-file write).
    /// Safe as long as hooks replace files rather than edit them in
    /// place; an in-place edit is detected (by modification time) and the
    /// file is written afresh next time, and a rollback restores it.
    #[serde(default = "yes")]
    pub link_unchanged: bool,
    /// Checked after `post_deploy`; a failure fails the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// `kind = "tomcat"`: where and how the WAR is deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tomcat: Option<TomcatSpec>,
    /// `kind = "iis"`: the site, application and pool the release goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iis: Option<IisSpec>,
    /// Environments (`[env.staging]`, `[env.production]`): each its own
    /// target and the rules its release requests follow. Without any, the
    /// app is deployed to `target` directly, as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvSpec>,
    /// Webhooks and polling that ask for releases (`[trigger]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<TriggerSpec>,
    /// How `master-cli rollout start` ramps this app through its fleet
    /// when the rollout names no plan (`[rollout]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPlan>,
}

/// One environment of an app: where it runs and who says yes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// Which minions are this environment (read like the app's `target`).
    pub target: String,
    /// How `target` is read (`glob` unless given).
    #[serde(default)]
    pub tgt_type: TargetType,
    /// A request must be approved before it is deployed here.
    #[serde(default)]
    pub requires_approval: bool,
    /// Who may approve, reject or return requests (users of the master's
    /// users file); required with `requires_approval`.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// A version may be asked for here only once it is live on this other
    /// environment (`promote_from = "staging"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_from: Option<String>,
    /// May a requester approve their own request? No unless set.
    #[serde(default)]
    pub self_approval: bool,
    /// A request made by a trigger (webhook, polling) is deployed at
    /// once. Not with `requires_approval`.
    #[serde(default)]
    pub auto_deploy: bool,
    /// A request deployed here goes out as a rollout in steps
    /// (`[env.production.rollout]`; the app's `[rollout]` unless given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPlan>,
}

/// What asks for releases of an app without a person (`[trigger]`): a
/// push or tag webhook from GitHub, GitLab or Gitea, and polling the
/// repository for new tags. Each makes a release request for `env`
/// (deployed at once if that environment has `auto_deploy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// The environment triggered requests are for.
    pub env: String,
    /// Entry of the master's secrets file whose token checks webhook
    /// signatures (GitHub, Gitea) or tokens (GitLab). Without it, webhooks
    /// for this app are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Tags that trigger (a glob; every tag unless given).
    #[serde(default = "every_tag")]
    pub tags: String,
    /// Branches whose pushes trigger (none unless given).
    #[serde(default)]
    pub branches: Vec<String>,
    /// Seconds between polls of the repository for new tags (0: no polling).
    #[serde(default)]
    pub poll: u64,
}

fn every_tag() -> String {
    "*".into()
}

/// What kind of thing an app is, and so which module releases it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A git checkout, by `git_deploy`.
    #[default]
    Git,
    /// A WAR on Tomcat, by `java_tomcat`.
    Tomcat,
    /// A zipped .NET site on IIS, by `dotnet_iis`.
    Iis,
}

impl AppKind {
    /// The module that deploys this kind of app.
    pub fn module(self) -> &'static str {
        match self {
            AppKind::Git => "git_deploy",
            AppKind::Tomcat => "java_tomcat",
            AppKind::Iis => "dotnet_iis",
        }
    }
}

/// A Tomcat app's `[tomcat]` table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TomcatSpec {
    /// The manager's text API (`http://127.0.0.1:8080/manager/text`); its
    /// `manager-script` user comes from `credentials` in the secrets file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_url: Option<String>,
    /// The context path (`/shop`; `/` for ROOT).
    pub context: String,
    /// Without a manager: the `webapps` directory the WAR is copied into
    /// (Tomcat's autodeploy picks it up); `{id}` stands for the minion's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webapps: Option<PathBuf>,
    /// Keep the previous version deployed after a successful switch
    /// (its sessions end on their own); default undeploy it.
    #[serde(default)]
    pub keep_old: bool,
    /// Seconds to wait for a version copied into `webapps` to start.
    #[serde(default = "default_autodeploy_wait")]
    pub autodeploy_wait: u64,
}

fn default_autodeploy_wait() -> u64 {
    60
}

/// An IIS app's `[iis]` table. Releases unpack into `<path>\releases\<version>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IisSpec {
    /// The site (`Default Web Site`).
    pub site: String,
    /// The application within it (`/` for the site root, `/api`).
    #[serde(default = "default_application")]
    pub application: String,
    /// The application pool stopped and started around the switch.
    pub app_pool: String,
    /// Put `app_offline.htm` up during the switch.
    #[serde(default)]
    pub app_offline: bool,
    /// Seconds to wait for the pool to stop (or start) before giving up.
    #[serde(default = "default_pool_wait")]
    pub pool_wait: u64,
}

fn default_application() -> String {
    "/".into()
}
fn default_pool_wait() -> u64 {
    60
}

/// What a deploy does when another one holds the path's lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockPolicy {
    /// Wait up to `lock_wait` seconds, then fail naming the holder.
    #[default]
    Wait,
    /// Fail at once, naming the job that holds the lock.
    Refuse,
}

/// How a new release is checked once live: an HTTP URL answering the
/// expected status, or a command exiting 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL fetched with GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Shell command run in the release directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// HTTP status that means healthy.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// Attempts before the check counts as failed.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Seconds between attempts.
    #[serde(default = "default_interval")]
    pub interval: u64,
    /// Seconds one attempt may take.
    #[serde(default = "default_attempt_timeout")]
    pub timeout: u64,
}

fn default_keep_releases() -> usize {
    DEFAULT_KEEP_RELEASES
}
fn default_hook_timeout() -> u64 {
    300
}
fn default_deploy_timeout() -> u64 {
    900
}
fn default_lock_wait() -> u64 {
    600
}
fn yes() -> bool {
    true
}
fn default_expect_status() -> u16 {
    200
}
fn default_retries() -> u32 {
    5
}
fn default_interval() -> u64 {
    2
}
fn default_attempt_timeout() -> u64 {
    5
}

impl AppSpec {
    /// Reads the definition in `file` (its text given): unknown keys,
    /// wrong types and bad values are errors naming the file and the key.
    pub fn from_toml(file: &Path, text: &str) -> Result<AppSpec, ConfigError> {
        let mut app: AppSpec = parse_toml(file, text)?;
        if app.name.is_empty() {
            app.name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        app.validate()
            .map_err(|(key, message)| ConfigError::key(file, key, message))?;
        app.validate_envs()
            .map_err(|(key, message)| ConfigError::key(file, &key, message))?;
        Ok(app)
    }

    /// Checks the values serde cannot: `Err((key, message))`. Minions run
    /// it too, on the definition a job carries.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::ident::validate_id(&self.name).map_err(|e| ("name", e.to_string()))?;
        match self.kind {
            AppKind::Git if self.repo.trim().is_empty() => {
                return Err(("repo", "must not be empty".into()));
            }
            AppKind::Git | AppKind::Iis if self.tomcat.is_some() => {
                return Err(("tomcat", "only for kind = \"tomcat\"".into()));
            }
            AppKind::Git | AppKind::Tomcat if self.iis.is_some() => {
                return Err(("iis", "only for kind = \"iis\"".into()));
            }
            AppKind::Tomcat => self.validate_tomcat()?,
            AppKind::Iis => self.validate_iis()?,
            AppKind::Git => {}
        }
        if self.repo.starts_with("http://") && self.credentials.is_some() {
            return Err((
                "credentials",
                "credentials are never sent over plain http://; use https://".into(),
            ));
        }
        Target::parse(self.tgt_type, &self.target).map_err(|e| ("target", e.to_string()))?;
        if let Some(plan) = &self.rollout {
            plan.validate().map_err(|e| ("rollout", e.to_string()))?;
        }
        if !is_absolute_anywhere(&self.path) {
            return Err(("path", "must be an absolute path".into()));
        }
        if self.keep_releases == 0 || self.keep_releases > 1000 {
            return Err(("keep_releases", "must be 1 to 1000".into()));
        }
        for shared in &self.shared {
            let p = Path::new(shared);
            let escapes = shared.is_empty()
                || is_absolute_anywhere(p)
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)));
            if escapes {
                return Err((
                    "shared",
                    format!("{shared:?} must be a relative path without `..`"),
                ));
            }
        }
        for (key, hook) in [
            ("pre_deploy", &self.pre_deploy),
            ("post_deploy", &self.post_deploy),
        ] {
            if hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err((key, "must not be empty (leave it out instead)".into()));
            }
        }
        if self.timeout == 0 || self.timeout > 7 * 86_400 {
            return Err(("timeout", "must be 1 to 604800 seconds".into()));
        }
        if self.hook_timeout == 0 {
            return Err(("hook_timeout", "must be at least 1 second".into()));
        }
        for (key, name) in [("tag", &self.tag), ("branch", &self.branch)] {
            if let Some(name) = name {
                validate_ref_name(name).map_err(|m| (key, m))?;
            }
        }
        if let Some(health) = &self.health {
            match (&health.url, &health.command) {
                (None, None) => {
                    return Err(("health", "needs `url` or `command`".into()));
                }
                (Some(_), Some(_)) => {
                    return Err(("health", "give `url` or `command`, not both".into()));
                }
                (Some(url), None)
                    if !(url.starts_with("http://") || url.starts_with("https://")) =>
                {
                    return Err(("health.url", "must start with http:// or https://".into()));
                }
                _ => {}
            }
            if health.retries == 0 {
                return Err(("health.retries", "must be at least 1".into()));
            }
            if health.timeout == 0 {
                return Err(("health.timeout", "must be at least 1 second".into()));
            }
        }
        Ok(())
    }
}

impl AppSpec {
    /// Checks the environments: names, targets, approvers, and that
    /// promotions name another environment without going round in a
    /// circle (then nothing could ever be asked for first).
    /// `Err((key, message))`, the key as `env.NAME.FIELD`.
    pub fn validate_envs(&self) -> Result<(), (String, String)> {
        for (name, env) in &self.env {
            let key = |field: &str| format!("env.{name}.{field}");
            crate::ident::validate_id(name).map_err(|e| (format!("env.{name}"), e.to_string()))?;
            Target::parse(env.tgt_type, &env.target).map_err(|e| (key("target"), e.to_string()))?;
            if let Some(plan) = &env.rollout {
                plan.validate()
                    .map_err(|e| (key("rollout"), e.to_string()))?;
            }
            if env.auto_deploy && env.requires_approval {
                return Err((
                    key("auto_deploy"),
                    "an environment that requires approval is never deployed automatically".into(),
                ));
            }
            if env.requires_approval && env.approvers.is_empty() {
                return Err((
                    key("approvers"),
                    "requires_approval needs at least one approver".into(),
                ));
            }
            for approver in &env.approvers {
                // `leads%` names a group of the master's [groups].
                crate::ident::validate_id(approver.strip_suffix('%').unwrap_or(approver))
                    .map_err(|e| (key("approvers"), format!("{approver:?}: {e}")))?;
            }
            if let Some(from) = &env.promote_from {
                if from == name || !self.env.contains_key(from) {
                    return Err((
                        key("promote_from"),
                        format!("{from:?} is not another environment of this app"),
                    ));
                }
                let mut seen = vec![name.as_str()];
                let mut next = Some(from.as_str());
                while let Some(step) = next {
                    if seen.contains(&step) {
                        return Err((
                            key("promote_from"),
                            format!(
                                "promotions go round in a circle: {} -> {step}",
                                seen.join(" -> ")
                            ),
                        ));
                    }
                    seen.push(step);
                    next = self.env.get(step).and_then(|e| e.promote_from.as_deref());
                }
            }
        }
        if let Some(trigger) = &self.trigger {
            if !self.env.contains_key(&trigger.env) {
                return Err((
                    "trigger.env".into(),
                    format!(
                        "{:?} is not an environment of this app ([env.NAME])",
                        trigger.env
                    ),
                ));
            }
            if self.kind != AppKind::Git {
                return Err((
                    "trigger".into(),
                    "triggers watch a git repository: only for git apps".into(),
                ));
            }
            if trigger.poll > 86_400 {
                return Err(("trigger.poll".into(), "must be 0 to 86400 seconds".into()));
            }
            for branch in &trigger.branches {
                validate_ref_name(branch).map_err(|e| ("trigger.branches".into(), e))?;
            }
        }
        Ok(())
    }

    fn validate_iis(&self) -> Result<(), (&'static str, String)> {
        let Some(iis) = &self.iis else {
            return Err((
                "iis",
                "kind = \"iis\" needs an [iis] table with `site` and `app_pool`".into(),
            ));
        };
        let quoted = |s: &str| s.contains(['"', '\n', '\r']);
        if iis.site.trim().is_empty() || quoted(&iis.site) {
            return Err(("iis.site", "must be a site name without quotes".into()));
        }
        if iis.app_pool.trim().is_empty() || quoted(&iis.app_pool) {
            return Err(("iis.app_pool", "must be a pool name without quotes".into()));
        }
        if !iis.application.starts_with('/')
            || quoted(&iis.application)
            || iis.application.contains("..")
        {
            return Err((
                "iis.application",
                "must start with / (`/` for the site root)".into(),
            ));
        }
        if iis.pool_wait == 0 || iis.pool_wait > 3600 {
            return Err(("iis.pool_wait", "must be 1 to 3600 seconds".into()));
        }
        Ok(())
    }

    fn validate_tomcat(&self) -> Result<(), (&'static str, String)> {
        let Some(tomcat) = &self.tomcat else {
            return Err((
                "tomcat",
                "kind = \"tomcat\" needs a [tomcat] table with `context`".into(),
            ));
        };
        if !tomcat.context.starts_with('/') || tomcat.context.contains(['#', '?', ' ', '\\']) {
            return Err((
                "tomcat.context",
                format!(
                    "{:?} must start with / and hold no #, ?, space or \\",
                    tomcat.context
                ),
            ));
        }
        match (&tomcat.manager_url, &tomcat.webapps) {
            (None, None) => Err(("tomcat", "needs `manager_url` or `webapps`".into())),
            (Some(url), _) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                Err((
                    "tomcat.manager_url",
                    "must start with http:// or https://".into(),
                ))
            }
            (Some(_), _) if self.credentials.is_none() => Err((
                "credentials",
                "the manager needs a manager-script user: name it from the secrets file".into(),
            )),
            (_, Some(webapps)) if !is_absolute_anywhere(webapps) => {
                Err(("tomcat.webapps", "must be an absolute path".into()))
            }
            _ => Ok(()),
        }
    }
}

/// A tag or branch name as a job may give it: no spaces, control
/// characters, `..`, or leading `-` (git's own rules, the parts that
/// matter for safety).
pub fn validate_ref_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with(['-', '/'])
        || name.ends_with(['/', '.'])
        || name.contains("..")
        || name.contains("@{")
        || name
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'));
    if bad {
        Err(format!("{name:?} is not a valid git ref name"))
    } else {
        Ok(())
    }
}

/// Absolute on either platform (`/srv/x` or `C:\srv\x`), so a master on
/// Linux can check a path meant for a Windows minion.
fn is_absolute_anywhere(path: &Path) -> bool {
    let text = path.to_string_lossy();
    let bytes = text.as_bytes();
    text.starts_with('/')
        || text.starts_with("\\\\")
        || (bytes.len() >= 3
            && bytes[0].is_ascii_alphabetic()
            && bytes[1] == b':'
            && matches!(bytes[2], b'\\' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
name = "shop"
repo = "https://git.example.com/shop.git"
target = "web*"
path = "/srv/shop"
keep_releases = 5
shared = ["storage", ".env"]
pre_deploy = "composer install --no-dev"
post_deploy = "systemctl reload php-fpm"
stop_on_error = true
auto_rollback = true
credentials = "shop-git"
[health]
url = "http://127.0.0.1:8080/health"
expect_status = 200
retries = 5
"#;

    #[test]
    fn the_documented_example_parses() {
        let app = AppSpec::from_toml(Path::new("apps.d/shop.toml"), SHOP).expect("valid");
        assert_eq!(app.name, "shop");
        assert_eq!(app.tgt_type, TargetType::Glob);
        assert_eq!(app.shared, vec!["storage", ".env"]);
        assert_eq!(app.lock, LockPolicy::Wait);
        let health = app.health.expect("health");
        assert_eq!(
            (health.expect_status, health.retries, health.interval),
            (200, 5, 2)
        );
    }

    #[test]
    fn name_defaults_to_the_file_stem() {
        let text = "repo = \"git://h/x\"\ntarget = \"*\"\npath = \"/srv/blog\"\n";
        let app =
            AppSpec::from_toml(Path::new("/etc/halite/apps.d/blog.toml"), text).expect("valid");
        assert_eq!(app.name, "blog");
        assert_eq!(app.keep_releases, DEFAULT_KEEP_RELEASES);
        assert!(app.auto_rollback && app.stop_on_error);
    }

    #[test]
    fn the_definition_survives_json() {
        let app = AppSpec::from_toml(Path::new("shop.toml"), SHOP).expect("valid");
        let json = serde_json::to_value(&app).expect("json");
        let back: AppSpec = serde_json::from_value(json).expect("back");
        assert_eq!(back, app);
    }

    fn err(text: &str) -> ConfigError {
        AppSpec::from_toml(Path::new("apps.d/x.toml"), text).expect_err("invalid")
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let base = "repo = \"git://h/x\"\ntarget = \"*\"\n";
        for (extra, key) in [
            ("path = \"srv/x\"\n", "path"),
            ("path = \"/srv/x\"\nkeep_releases = 0\n", "keep_releases"),
            ("path = \"/srv/x\"\ntimeout = 0\n", "timeout"),
            ("path = \"/srv/x\"\nshared = [\"../etc\"]\n", "shared"),
            ("path = \"/srv/x\"\nshared = [\"/etc\"]\n", "shared"),
            ("path = \"/srv/x\"\ntag = \"v1 2\"\n", "tag"),
            ("path = \"/srv/x\"\npre_deploy = \" \"\n", "pre_deploy"),
            ("path = \"/srv/x\"\n[health]\nretries = 2\n", "health"),
            (
                "path = \"/srv/x\"\n[health]\nurl = \"ftp://x\"\n",
                "health.url",
            ),
            ("path = \"/srv/x\"\nlock = \"maybe\"\n", "lock"),
            ("path = \"/srv/x\"\nkeep = 3\n", "keep"),
            ("path = \"/srv/x\"\n[rollout]\nramp = []\n", "rollout"),
            (
                "path = \"/srv/x\"\n[rollout]\nramp = [\"1\", \"x%\"]\n",
                "ramp",
            ),
        ] {
            let e = err(&format!("{base}{extra}"));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
            assert!(e.to_string().starts_with("apps.d/x.toml: key"), "{e}");
        }
        let e = err("repo = \"http://h/x\"\ntarget = \"*\"\npath = \"/x\"\ncredentials = \"c\"\n");
        assert_eq!(e.key.as_deref(), Some("credentials"));
        let e =
            err("repo = \"git://h/x\"\ntarget = \"web(\"\ntgt_type = \"pcre\"\npath = \"/x\"\n");
        assert_eq!(e.key.as_deref(), Some("target"));
        let e = err("target = \"*\"\npath = \"/x\"\n");
        assert!(e.to_string().contains("repo"), "{e}");
    }

    #[test]
    fn environments_parse_and_bad_ones_name_their_key() {
        let base = "repo = \"git://h/x\"\ntarget = \"*\"\npath = \"/srv/x\"\n";
        let app = AppSpec::from_toml(
            Path::new("apps.d/x.toml"),
            &format!(
                "{base}[env.staging]\ntarget = \"stg-*\"\n[env.production]\ntarget = \"web*\"\nrequires_approval = true\napprovers = [\"lead\"]\npromote_from = \"staging\"\n"
            ),
        )
        .expect("valid");
        let production = &app.env["production"];
        assert!(production.requires_approval && !production.self_approval);
        assert_eq!(production.promote_from.as_deref(), Some("staging"));
        assert_eq!(app.env["staging"].tgt_type, TargetType::Glob);
        for (extra, key) in [
            ("[env.prod]\ntarget = \"web(\"\ntgt_type = \"pcre\"\n", "env.prod.target"),
            ("[env.prod]\ntarget = \"*\"\nrequires_approval = true\n", "env.prod.approvers"),
            ("[env.prod]\ntarget = \"*\"\npromote_from = \"stg\"\n", "env.prod.promote_from"),
            (
                "[env.a]\ntarget = \"*\"\npromote_from = \"b\"\n[env.b]\ntarget = \"*\"\npromote_from = \"a\"\n",
                "env.a.promote_from",
            ),
            ("[env.prod]\ntarget = \"*\"\napprovers = [\"a b\"]\n", "env.prod.approvers"),
            // Unknown keys are serde's finding: named, with the line.
            ("[env.prod]\ntarget = \"*\"\nwho = 1\n", "who"),
        ] {
            let e = err(&format!("{base}{extra}"));
            assert_eq!(e.key.as_deref(), Some(key), "{extra}: {e}");
        }
    }

    #[test]
    fn windows_paths_are_absolute_too() {
        assert!(is_absolute_anywhere(Path::new("C:\\inetpub\\shop")));
        assert!(is_absolute_anywhere(Path::new("\\\\server\\share")));
        assert!(!is_absolute_anywhere(Path::new("inetpub")));
    }

    #[test]
    fn ref_names() {
        for ok in ["v3", "release/2026-11", "v1.2.3", "feature_x"] {
            assert!(validate_ref_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "-x", "a..b", "a b", "x~1", "x^", "a:b", "x/", "x.", "@{-1}",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad}");
        }
    }
}

/// What `{id}` in an app's `path` stands for.
pub const MINION_ID_PLACEHOLDER: &str = "{id}";

/// Replaces `{id}` in the `path` (and a Tomcat app's `webapps`) of the app definition a job carries
/// (`kwargs.app`) with this minion's id: every module of every kind then
/// works on the minion's own path. Anything else is left alone.
pub fn expand_for_minion(kwargs: &mut serde_json::Map<String, serde_json::Value>, id: &str) {
    let Some(app) = kwargs.get_mut("app") else {
        return;
    };
    let webapps = app.get_mut("tomcat").and_then(|t| t.get_mut("webapps"));
    for place in [webapps].into_iter().flatten() {
        expand_id(place, id);
    }
    if let Some(path) = app.get_mut("path") {
        expand_id(path, id);
    }
}

/// `{id}` in a string value becomes the minion's id.
fn expand_id(value: &mut serde_json::Value, id: &str) {
    if let Some(text) = value.as_str().filter(|t| t.contains(MINION_ID_PLACEHOLDER)) {
        *value = serde_json::Value::String(text.replace(MINION_ID_PLACEHOLDER, id));
    }
}

#[cfg(test)]
mod expand_tests {
    use super::*;

    #[test]
    fn id_in_an_app_path_becomes_the_minions_id() {
        let mut kwargs =
            serde_json::json!({"app": {"name": "shop", "path": "/srv/{id}/shop"}, "tag": "v1"})
                .as_object()
                .cloned()
                .unwrap();
        expand_for_minion(&mut kwargs, "web01");
        assert_eq!(kwargs["app"]["path"], "/srv/web01/shop");
        let mut tomcat = serde_json::json!({"app": {"path": "/srv/{id}/blog", "tomcat": {"context": "/blog", "webapps": "/opt/{id}/webapps"}}})
            .as_object()
            .cloned()
            .unwrap();
        expand_for_minion(&mut tomcat, "app1");
        assert_eq!(tomcat["app"]["tomcat"]["webapps"], "/opt/app1/webapps");
        assert_eq!(tomcat["app"]["path"], "/srv/app1/blog");
        assert_eq!(kwargs["tag"], "v1");
        let mut plain = serde_json::json!({"app": "shop"})
            .as_object()
            .cloned()
            .unwrap();
        expand_for_minion(&mut plain, "web01");
        assert_eq!(plain["app"], "shop");
    }
}
