//! Application definitions (`<apps_dir>/*.toml`) and the credentials
//! they name (`secrets_file`), and how a deploy job is completed from them.
//!
//! Both are read fresh for every deploy job, so an edited app takes effect
//! on the next deploy without a restart; the master also reads them once
//! at start so a broken file stops it with the file and key named.
//! Credential values only ever leave this module sealed in a job's secret
//! arguments: they are not logged, stored or shown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use halite_model::{DeployRecord, JobRecord, ReturnRecord};
use halite_proto::app::{AppSpec, SECRET_PASSWORD, SECRET_USERNAME};
use halite_proto::config::{parse_toml, ConfigError};
use halite_proto::release::ReleaseReport;
use serde::Deserialize;

/// The app definitions and credentials of one master.
#[derive(Clone, Debug)]
pub struct Catalog {
    dir: PathBuf,
    secrets_file: PathBuf,
}

/// HTTPS credentials for a repository. `Debug` never shows the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// User name (`git` unless given; token-only servers ignore it).
    #[serde(default = "default_username")]
    pub username: String,
    /// Access token (preferred name).
    #[serde(default)]
    token: Option<String>,
    /// Password, for servers without tokens.
    #[serde(default)]
    password: Option<String>,
}

fn default_username() -> String {
    "git".to_owned()
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({}, <redacted>)", self.username)
    }
}

impl Credential {
    /// The secret to send: the token, or the password.
    pub fn secret(&self) -> &str {
        self.token
            .as_deref()
            .or(self.password.as_deref())
            .unwrap_or_default()
    }
}

impl Catalog {
    /// A catalog reading `dir` and `secrets_file`.
    pub fn new(dir: PathBuf, secrets_file: PathBuf) -> Catalog {
        Catalog { dir, secrets_file }
    }

    /// Where app files are read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every app, sorted by name. A missing directory means no apps; a
    /// bad file, or two files defining one name, is an error naming it.
    pub fn load(&self) -> Result<Vec<AppSpec>, ConfigError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ConfigError::file(&self.dir, format!("cannot read: {e}"))),
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut apps: BTreeMap<String, (PathBuf, AppSpec)> = BTreeMap::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ConfigError::file(&file, format!("cannot read: {e}")))?;
            let app = AppSpec::from_toml(&file, &text)?;
            if let Some((other, _)) = apps.get(&app.name) {
                return Err(ConfigError::key(
                    &file,
                    "name",
                    format!("app {:?} is also defined in {}", app.name, other.display()),
                ));
            }
            apps.insert(app.name.clone(), (file, app));
        }
        Ok(apps.into_values().map(|(_, app)| app).collect())
    }

    /// Every credential by name. A missing file means none.
    pub fn credentials(&self) -> Result<BTreeMap<String, Credential>, ConfigError> {
        let file = &self.secrets_file;
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ConfigError::file(file, format!("cannot read: {e}"))),
        };
        // The parser's message may quote the offending value, which here
        // is a secret: keep the file, key and line, drop the rest.
        let all: BTreeMap<String, Credential> = parse_toml(file, &text).map_err(|mut e| {
            let line = e.message.rfind(" (line ").map(|i| e.message[i..].to_owned());
            e.message = format!(
                "invalid entry{} (details withheld: this file holds secrets; expected `[name]` tables with `username` and one of `token` or `password`, all strings)",
                line.unwrap_or_default()
            );
            e
        })?;
        for (name, credential) in &all {
            if credential.token.is_some() == credential.password.is_some() {
                return Err(ConfigError::key(
                    file,
                    name,
                    "give exactly one of `token` or `password`",
                ));
            }
        }
        Ok(all)
    }

    /// Reads everything once, as at start-up: apps, credentials, and
    /// every credential an app names must exist. Warns when the secrets
    /// file can be read by others.
    pub fn check(&self) -> Result<usize, ConfigError> {
        let apps = self.load()?;
        let credentials = self.credentials()?;
        for app in &apps {
            if let Some(name) = &app.credentials {
                if !credentials.contains_key(name) {
                    return Err(ConfigError::key(
                        &self.dir.join(format!("{}.toml", app.name)),
                        "credentials",
                        format!("{name:?} is not in {}", self.secrets_file.display()),
                    ));
                }
            }
        }
        warn_if_readable_by_others(&self.secrets_file);
        Ok(apps.len())
    }

    /// Completes a job's keyword and secret arguments for an app module:
    /// `app=NAME` (or the one app whose minions the job targets) becomes
    /// the app's definition, and its credentials become sealed secrets.
    /// `job_minions` are the accepted minions the job targets;
    /// `app_minions(app)` those an app's own target selects. Err is the
    /// message for a 400.
    pub fn complete(
        &self,
        kwarg: &mut serde_json::Map<String, serde_json::Value>,
        secret: &mut BTreeMap<String, String>,
        job_target: &str,
        job_minions: &[String],
        module: &str,
        app_minions: impl Fn(&AppSpec) -> Result<Vec<String>, String>,
    ) -> Result<AppSpec, String> {
        let all = self.load().map_err(|e| e.to_string())?;
        // A deploy module takes only apps of its kind; a Lua module any.
        let built_in = halite_proto::catalog::module(module).is_some()
            && !halite_proto::catalog::reads_any_app(module);
        let of_kind = |a: &&AppSpec| !built_in || a.kind.module() == module;
        if let Some(serde_json::Value::String(name)) = kwarg.get("app") {
            if let Some(app) = all.iter().find(|a| &a.name == name && !of_kind(a)) {
                return Err(format!(
                    "app {} is a {:?} app: release it with {}, not {module}",
                    app.name,
                    app.kind,
                    app.kind.module()
                ));
            }
        }
        let apps: Vec<AppSpec> = all.iter().filter(of_kind).cloned().collect();
        if apps.is_empty() {
            return Err(format!(
                "no apps are defined: add one to {} (see docs/git-deploy.md)",
                self.dir.display()
            ));
        }
        let app = match kwarg.remove("app") {
            Some(serde_json::Value::String(name)) => apps
                .iter()
                .find(|a| a.name == name)
                .cloned()
                .ok_or_else(|| format!("no app {name:?}; apps: {}", names(&apps)))?,
            Some(other) => {
                return Err(format!(
                    "app must be the name of an app, got {other}; apps: {}",
                    names(&apps)
                ))
            }
            None => {
                let mut matching = Vec::new();
                for app in &apps {
                    let theirs = app_minions(app)?;
                    let overlaps = job_minions.iter().any(|m| theirs.contains(m));
                    if overlaps || (job_minions.is_empty() && app.target == job_target) {
                        matching.push(app.clone());
                    }
                }
                match matching.len() {
                    1 => matching.remove(0),
                    0 => {
                        return Err(format!(
                        "no app targets the minions of `{job_target}`; name one with app=NAME ({})",
                        names(&apps)
                    ))
                    }
                    _ => {
                        return Err(format!(
                            "`{job_target}` matches several apps ({}); name one with app=NAME",
                            names(&matching)
                        ))
                    }
                }
            }
        };
        let theirs = app_minions(&app)?;
        let outside: Vec<&str> = job_minions
            .iter()
            .filter(|m| !theirs.contains(m))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(format!(
                "{} not in app {}'s target `{}`; nothing was published",
                outside.join(", "),
                app.name,
                app.target
            ));
        }
        if let Some(name) = &app.credentials {
            let credentials = self.credentials().map_err(|e| e.to_string())?;
            let credential = credentials.get(name).ok_or_else(|| {
                format!(
                    "app {} names credentials {name:?}, which are not in {}",
                    app.name,
                    self.secrets_file.display()
                )
            })?;
            secret.insert(SECRET_USERNAME.to_owned(), credential.username.clone());
            secret.insert(SECRET_PASSWORD.to_owned(), credential.secret().to_owned());
        }
        let definition = serde_json::to_value(&app).map_err(|e| e.to_string())?;
        kwarg.insert("app".to_owned(), definition);
        Ok(app)
    }
}

/// The deploy module that releases an app (`POST /v1/apps/{name}/deploy`).
pub fn module_for(app: &AppSpec) -> &'static str {
    app.kind.module()
}

/// The deploy record a return carries, if it is a release: its data is
/// the typed release report every deploy module writes
/// (`halite_proto::release::ReleaseReport`). A release function's return
/// that is no report (refused arguments, an unknown app) records nothing.
///
/// A minion speaks only for itself and for the app its job was for: no
/// record from a job this master did not publish (another master's, in
/// multi-master mode: its publisher keeps that history), from a minion the job
/// did not target (the app's target, checked when the job was planned),
/// or naming another app than the job's.
pub fn deploy_record(job: &JobRecord, ret: &ReturnRecord) -> Option<DeployRecord> {
    if !halite_proto::catalog::releases(&ret.fun) {
        return None;
    }
    if job.published_by.is_some() || !job.expected.contains(&ret.id) {
        return None;
    }
    let report: ReleaseReport = serde_json::from_value(ret.data.clone()).ok()?;
    let job_app = job
        .kwarg
        .get("app")
        .and_then(|app| app.get("name"))
        .and_then(|name| name.as_str());
    if halite_proto::catalog::takes_app(&ret.fun) && job_app != Some(report.app.as_str()) {
        tracing::warn!(jid = %job.jid, minion = %ret.id, app = %report.app, "a release report for another app than the job's: not recorded");
        return None;
    }
    let jid = &job.jid;
    Some(DeployRecord {
        app: report.app,
        minion: ret.id.clone(),
        jid: jid.clone(),
        action: report.action.as_str().to_owned(),
        success: ret.success,
        result: report.result.as_str().to_owned(),
        revision: report.revision,
        reference: report.reference,
        release: report.release,
        previous: report.previous,
        error: report.error,
        failed_stage: report.failed_stage.map(|stage| stage.as_str().to_owned()),
        at: ret.finished_at,
        duration_ms: report.duration_ms,
        env: None,
    })
}

/// Per minion, the newest record whose release is live now: a deploy
/// that went live or a rollback, skipping failed, rolled-back and
/// unchanged ones. `history` is newest first.
pub fn live_by_minion(history: &[DeployRecord]) -> Vec<DeployRecord> {
    let mut live: BTreeMap<&str, &DeployRecord> = BTreeMap::new();
    for record in history {
        if record.result == "live" {
            live.entry(record.minion.as_str()).or_insert(record);
        }
    }
    live.into_values().cloned().collect()
}

fn names(apps: &[AppSpec]) -> String {
    apps.iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %file.display(), "secrets file is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Map, Value};

    fn catalog(dir: &Path) -> Catalog {
        std::fs::create_dir_all(dir.join("apps.d")).expect("mkdir");
        Catalog::new(dir.join("apps.d"), dir.join("secrets.toml"))
    }

    fn write_app(dir: &Path, name: &str, target: &str, extra: &str) {
        std::fs::write(
            dir.join("apps.d").join(format!("{name}.toml")),
            format!("repo = \"https://git.example/{name}.git\"\ntarget = \"{target}\"\npath = \"/srv/{name}\"\n{extra}"),
        )
        .expect("write app");
    }

    /// Minion sets as a glob over a fixed fleet.
    fn fleet(app: &AppSpec) -> Result<Vec<String>, String> {
        let target =
            halite_proto::Target::parse(app.tgt_type, &app.target).map_err(|e| e.to_string())?;
        Ok(["web1", "web2", "blog1"]
            .iter()
            .filter(|m| target.matches(m, &Value::Null))
            .map(|m| m.to_string())
            .collect())
    }

    #[test]
    fn the_one_matching_app_is_picked_and_credentials_sealed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = catalog(dir.path());
        write_app(dir.path(), "shop", "web*", "credentials = \"shop-git\"\n");
        write_app(dir.path(), "blog", "blog*", "");
        std::fs::write(
            dir.path().join("secrets.toml"),
            "[shop-git]\nusername = \"deploy\"\ntoken = \"s3cret\"\n",
        )
        .expect("write");
        assert_eq!(c.check().expect("valid"), 2);

        let mut kwarg = Map::new();
        let mut secret = BTreeMap::new();
        let web = vec!["web1".to_owned(), "web2".to_owned()];
        let app = c
            .complete(&mut kwarg, &mut secret, "web*", &web, "git_deploy", fleet)
            .expect("shop");
        assert_eq!(app.name, "shop");
        assert_eq!(kwarg["app"]["path"], "/srv/shop");
        assert_eq!(secret[SECRET_PASSWORD], "s3cret");
        assert_eq!(secret[SECRET_USERNAME], "deploy");
        assert!(!kwarg.to_string_lossy().contains("s3cret"));
        assert!(!format!("{:?}", c.credentials().expect("creds")).contains("s3cret"));
    }

    trait Lossy {
        fn to_string_lossy(&self) -> String;
    }
    impl Lossy for Map<String, Value> {
        fn to_string_lossy(&self) -> String {
            Value::Object(self.clone()).to_string()
        }
    }

    #[test]
    fn ambiguity_and_strays_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = catalog(dir.path());
        let all = vec!["web1".to_owned(), "blog1".to_owned()];
        // The error completing a git_deploy job on `minions` that names
        // `app` (or none).
        let refusal = |app: Option<&str>, target: &str, minions: &[String]| {
            let mut kwarg = Map::new();
            if let Some(app) = app {
                kwarg.insert("app".into(), json!(app));
            }
            c.complete(
                &mut kwarg,
                &mut BTreeMap::new(),
                target,
                minions,
                "git_deploy",
                fleet,
            )
            .expect_err("refused")
        };
        let err = refusal(None, "*", &all);
        assert!(err.contains("no apps are defined"), "{err}");
        write_app(dir.path(), "shop", "web*", "");
        write_app(dir.path(), "blog", "blog*", "");
        let err = refusal(None, "*", &all);
        assert!(err.contains("several apps (blog, shop)"), "{err}");
        let err = refusal(Some("shop"), "*", &all);
        assert!(err.starts_with("blog1 not in app shop's target"), "{err}");
        let err = refusal(Some("nope"), "web1", &all[..1]);
        assert!(err.contains("no app \"nope\"; apps: blog, shop"), "{err}");
    }

    #[test]
    fn broken_files_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = catalog(dir.path());
        write_app(dir.path(), "shop", "web*", "keep_releases = 0\n");
        let err = c.check().expect_err("bad");
        assert_eq!(err.key.as_deref(), Some("keep_releases"));
        assert!(err.file.ends_with("apps.d/shop.toml"), "{err}");
        write_app(dir.path(), "shop", "web*", "credentials = \"missing\"\n");
        let err = c.check().expect_err("missing credentials");
        assert_eq!(err.key.as_deref(), Some("credentials"));
        std::fs::write(
            dir.path().join("secrets.toml"),
            "[missing]\nusername = \"u\"\n",
        )
        .expect("write");
        let err = c.check().expect_err("no token");
        assert_eq!(err.key.as_deref(), Some("missing"));
        std::fs::write(
            dir.path().join("secrets.toml"),
            "[missing]\ntoken = \"t\"\ncolour = 1\n",
        )
        .expect("write");
        let err = c.check().expect_err("unknown key");
        assert_eq!(err.key.as_deref(), Some("colour"));
        write_app(
            dir.path(),
            "other",
            "web*",
            "name = \"shop\"\ncredentials = \"missing\"\n",
        );
        std::fs::write(
            dir.path().join("secrets.toml"),
            "[missing]\ntoken = \"t\"\n",
        )
        .expect("write");
        let err = c.check().expect_err("duplicate");
        assert!(err.to_string().contains("also defined in"), "{err}");
    }
}
