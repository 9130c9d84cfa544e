//! The master's configuration: raw TOML, then a validated [`Config`].
//!
//! Everything is checked here, before a port is bound, and every error
//! names the file and the key (`/etc/halite/master.toml: key
//! `publish_port`: ...`).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use halite_proto::config::{
    id_key, int_key, parse_toml, resolve_path, ConfigError, MasterLocation,
};
use serde::Deserialize;

/// Where `halite-master` and `master-cli` look without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/halite/master.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
/// Every key a master config may have. The location keys (`data_dir`,
/// `api_bind`, `api_tls_*`, `users_file`) are read by
/// [`MasterLocation`]; they are listed here so unknown keys stay refused.
struct RawConfig {
    id: Option<String>,
    interface: Option<String>,
    publish_port: Option<i64>,
    return_port: Option<i64>,
    #[serde(rename = "api_bind")]
    _api_bind: Option<toml::Value>,
    pki_dir: Option<PathBuf>,
    #[serde(rename = "data_dir")]
    _data_dir: Option<toml::Value>,
    auto_accept: Option<bool>,
    max_pending_keys: Option<i64>,
    keep_jobs: Option<i64>,
    heartbeat_interval: Option<i64>,
    missed_heartbeats: Option<i64>,
    beacon_interval: Option<i64>,
    job_timeout: Option<i64>,
    check_interval: Option<i64>,
    keep_checks: Option<i64>,
    apps_dir: Option<PathBuf>,
    secrets_file: Option<PathBuf>,
    #[serde(rename = "users_file")]
    _users_file: Option<toml::Value>,
    lua_modules_dir: Option<PathBuf>,
    token_expire: Option<i64>,
    #[serde(rename = "api_tls_cert")]
    _api_tls_cert: Option<toml::Value>,
    #[serde(rename = "api_tls_key")]
    _api_tls_key: Option<toml::Value>,
    acl: Option<toml::Table>,
    groups: Option<toml::Table>,
    freeze: Option<Vec<toml::Value>>,
    schedule: Option<Vec<toml::Value>>,
    notify: Option<Vec<toml::Value>>,
    metrics_bind: Option<String>,
    store: Option<String>,
    otel_endpoint: Option<String>,
}

/// A validated master configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from (for messages), if any.
    pub file: PathBuf,
    /// Master id, sent to minions and written into every job.
    pub id: String,
    /// Address the ZeroMQ sockets bind to.
    pub interface: IpAddr,
    /// PUB port: jobs and beacons. 0 picks a free port (tests).
    pub publish_port: u16,
    /// ROUTER port: everything minions send. 0 picks a free port (tests).
    pub return_port: u16,
    /// HTTP API address. Port 0 picks a free port (tests).
    pub api_bind: SocketAddr,
    /// Where `GET /metrics` (Prometheus text, no token) is served; unset:
    /// nowhere.
    pub metrics_bind: Option<SocketAddr>,
    /// Where the master sends its spans of each job (OTLP over HTTP,
    /// `halite_daemon::traces`); unset: nowhere.
    pub otel_endpoint: Option<String>,
    /// Master key and minion keys by state.
    pub pki_dir: PathBuf,
    /// The store (unless `store` names a database), the CLI token and
    /// the port file.
    pub data_dir: PathBuf,
    /// Where jobs, returns and the rest are kept: sled in
    /// `data_dir/store`, or a PostgreSQL database several masters share.
    pub store: crate::store::StoreLocation,
    /// Accept every new minion key without an operator (labs only).
    pub auto_accept: bool,
    /// Keys that may wait for acceptance; past it new ids are refused.
    pub max_pending_keys: usize,
    /// Jobs older than this are pruned with their returns and events.
    pub keep_jobs: Duration,
    /// How often minions must send heartbeats.
    pub heartbeat_interval: Duration,
    /// Heartbeats a minion may miss before it is shown down.
    pub missed_heartbeats: u32,
    /// How often the master publishes its beacon.
    pub beacon_interval: Duration,
    /// Default job timeout when a request gives none.
    pub job_timeout: Duration,
    /// How often every accepted minion's reachability is recorded.
    pub check_interval: Duration,
    /// How long check results are kept ("which servers failed a check
    /// this week" needs at least a week).
    pub keep_checks: Duration,
    /// Application definitions, one TOML file per app (read on every
    /// deploy job, so edits need no restart).
    pub apps_dir: PathBuf,
    /// Named repository credentials the apps refer to; never logged.
    pub secrets_file: PathBuf,
    /// API users and their password hashes (`master-cli users`).
    pub users_file: PathBuf,
    /// Lua modules (`<name>.lua`), synced to minions signed.
    pub lua_modules_dir: PathBuf,
    /// How long a token from `POST /v1/login` is valid.
    pub token_expire: Duration,
    /// Certificate chain and key (PEM) to serve the API over HTTPS; both
    /// or neither.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// Who may run what where (`[acl]`, with `[groups]`).
    pub acl: crate::acl::Acl,
    /// When releases are refused (`[[freeze]]`).
    pub freezes: Vec<crate::freeze::FreezeWindow>,
    /// Jobs run on a cron schedule (`[[schedule]]`), owned by root.
    pub schedules: Vec<halite_model::NewSchedule>,
    /// Where release-request events are sent (`[[notify]]`).
    pub notify: Vec<crate::notify::NotifyTarget>,
}

impl Config {
    /// Reads and validates `file`. A missing file is an error naming it.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
        Config::from_toml(file, &text)
    }

    /// Validates TOML text as if read from `file`.
    pub fn from_toml(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(file, text)?;
        let id = id_key(file, raw.id, || halite_daemon::host_id("master"))?;
        let interface = raw.interface.as_deref().unwrap_or("0.0.0.0");
        let interface: IpAddr = interface.parse().map_err(|_| {
            ConfigError::key(
                file,
                "interface",
                format!("{interface:?} is not an IP address"),
            )
        })?;
        // Where tools find this master: read by the one shared parser.
        let location = MasterLocation::from_toml(file, text)?;
        Ok(Config {
            file: file.to_path_buf(),
            id,
            interface,
            publish_port: port(file, "publish_port", raw.publish_port, 4505)?,
            return_port: port(file, "return_port", raw.return_port, 4506)?,
            api_bind: location.api_bind,
            metrics_bind: raw
                .metrics_bind
                .as_deref()
                .map(|text| {
                    text.parse().map_err(|_| {
                        ConfigError::key(
                            file,
                            "metrics_bind",
                            format!("{text:?} is not an address like 127.0.0.1:9273"),
                        )
                    })
                })
                .transpose()?,
            otel_endpoint: halite_daemon::traces::endpoint_setting(raw.otel_endpoint.as_deref())
                .map_err(|e| ConfigError::key(file, "otel_endpoint", e))?,
            pki_dir: resolve_path(
                file,
                &raw.pki_dir
                    .unwrap_or_else(|| "/etc/halite/pki/master".into()),
            ),
            store: crate::store::StoreLocation::parse(
                raw.store.as_deref(),
                &location.data_dir.join("store"),
            )
            .map_err(|e| ConfigError::key(file, "store", e.to_string()))?,
            data_dir: location.data_dir,
            auto_accept: raw.auto_accept.unwrap_or(false),
            max_pending_keys: int_key(
                file,
                "max_pending_keys",
                raw.max_pending_keys,
                1000,
                1..=1_000_000,
            )? as usize,
            keep_jobs: Duration::from_secs(
                3600 * int_key(file, "keep_jobs", raw.keep_jobs, 24, 1..=24 * 365 * 10)?,
            ),
            heartbeat_interval: Duration::from_secs(int_key(
                file,
                "heartbeat_interval",
                raw.heartbeat_interval,
                10,
                1..=3600,
            )?),
            missed_heartbeats: int_key(
                file,
                "missed_heartbeats",
                raw.missed_heartbeats,
                3,
                1..=1000,
            )? as u32,
            beacon_interval: Duration::from_secs(int_key(
                file,
                "beacon_interval",
                raw.beacon_interval,
                2,
                1..=3600,
            )?),
            job_timeout: Duration::from_secs(int_key(
                file,
                "job_timeout",
                raw.job_timeout,
                60,
                1..=7 * 86_400,
            )?),
            check_interval: Duration::from_secs(int_key(
                file,
                "check_interval",
                raw.check_interval,
                300,
                1..=86_400,
            )?),
            keep_checks: Duration::from_secs(
                3600 * int_key(
                    file,
                    "keep_checks",
                    raw.keep_checks,
                    24 * 14,
                    1..=24 * 365 * 10,
                )?,
            ),
            apps_dir: resolve_path(file, &raw.apps_dir.unwrap_or_else(|| "apps.d".into())),
            secrets_file: resolve_path(
                file,
                &raw.secrets_file.unwrap_or_else(|| "secrets.toml".into()),
            ),
            users_file: location.users_file,
            lua_modules_dir: resolve_path(
                file,
                &raw.lua_modules_dir.unwrap_or_else(|| "lua-modules".into()),
            ),
            token_expire: Duration::from_secs(
                3600 * int_key(file, "token_expire", raw.token_expire, 12, 1..=24 * 365)?,
            ),
            api_tls: location.api_tls,
            acl: crate::acl::Acl::parse(
                file,
                &raw.acl.unwrap_or_default(),
                &raw.groups.unwrap_or_default(),
            )?,
            freezes: crate::freeze::FreezeWindow::parse_all(file, &raw.freeze.unwrap_or_default())?,
            schedules: schedules(file, raw.schedule.unwrap_or_default())?,
            notify: crate::notify::NotifyTarget::parse_all(file, &raw.notify.unwrap_or_default())?,
        })
    }

    /// The app definitions and credentials this master deploys from.
    pub fn apps(&self) -> crate::apps::Catalog {
        crate::apps::Catalog::new(self.apps_dir.clone(), self.secrets_file.clone())
    }

    /// The Lua modules this master hands out.
    pub fn lua_modules(&self) -> crate::lua_modules::LuaCatalog {
        crate::lua_modules::LuaCatalog::new(self.lua_modules_dir.clone())
    }

    /// The API users file.
    pub fn users(&self) -> halite_pki::users::Users {
        halite_pki::users::Users::new(self.users_file.clone())
    }

    /// Where the root-only CLI token lives.
    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("cli.token")
    }

    /// Where the master writes the addresses it actually bound (useful
    /// when ports are 0), for the CLI and tests.
    pub fn ports_file(&self) -> PathBuf {
        self.data_dir.join("ports.json")
    }
}

/// `[[schedule]]` entries: each a valid name, cron and job; names unique.
fn schedules(
    file: &Path,
    raw: Vec<toml::Value>,
) -> Result<Vec<halite_model::NewSchedule>, ConfigError> {
    let mut out: Vec<halite_model::NewSchedule> = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let key = format!("schedule[{i}]");
        let schedule: halite_model::NewSchedule = value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::key(file, &key, e.message()))?;
        crate::schedule::validate(&schedule)
            .map_err(|(field, e)| ConfigError::key(file, &format!("{key}.{field}"), e))?;
        if out.iter().any(|s| s.name == schedule.name) {
            return Err(ConfigError::key(
                file,
                &format!("{key}.name"),
                format!(
                    "{:?} is already the name of another schedule",
                    schedule.name
                ),
            ));
        }
        out.push(schedule);
    }
    Ok(out)
}

fn port(file: &Path, key: &str, value: Option<i64>, default: u16) -> Result<u16, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => u16::try_from(v)
            .map_err(|_| ConfigError::key(file, key, format!("{v} is not a port (0-65535)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/halite/master.toml"), text)
    }

    #[test]
    fn defaults_are_salts() {
        let config = parse("id = \"m1\"").unwrap();
        assert_eq!(config.publish_port, 4505);
        assert_eq!(config.return_port, 4506);
        assert_eq!(config.api_bind.to_string(), "127.0.0.1:8000");
        assert!(!config.auto_accept);
        assert_eq!(config.keep_jobs, Duration::from_secs(24 * 3600));
        assert_eq!(
            config.store,
            crate::store::StoreLocation::Sled("/var/lib/halite/master/store".into())
        );
        let shared = parse("id = \"m1\"\nstore = \"postgres://halite@db/halite\"").unwrap();
        assert_eq!(
            shared.store,
            crate::store::StoreLocation::Postgres("postgres://halite@db/halite".into())
        );
    }

    #[test]
    fn relative_dirs_follow_the_file() {
        let config = parse("id = \"m1\"\npki_dir = \"pki\"\ndata_dir = \"data\"").unwrap();
        assert_eq!(config.pki_dir, PathBuf::from("/etc/halite/pki"));
        assert_eq!(config.data_dir, PathBuf::from("/etc/halite/data"));
        assert_eq!(config.apps_dir, PathBuf::from("/etc/halite/apps.d"));
        assert_eq!(
            config.secrets_file,
            PathBuf::from("/etc/halite/secrets.toml")
        );
    }

    #[test]
    fn bad_values_name_file_and_key() {
        for (text, key) in [
            ("publish_port = 70000", "publish_port"),
            ("otel_endpoint = \"localhost:4318\"", "otel_endpoint"),
            ("return_port = -1", "return_port"),
            ("interface = \"nowhere\"", "interface"),
            ("api_bind = \"8000\"", "api_bind"),
            ("metrics_bind = \"9273\"", "metrics_bind"),
            ("store = \"mysql://db/halite\"", "store"),
            ("store = 5", "store"),
            ("keep_jobs = 0", "keep_jobs"),
            ("id = \"../evil\"", "id"),
            ("auto_accept = \"yes\"", "auto_accept"),
            ("colour = \"blue\"", "colour"),
            ("token_expire = 0", "token_expire"),
            ("api_tls_cert = \"c.pem\"", "api_tls_key"),
            ("[acl]\nbob = [\"@nope\"]", "acl.bob[0]"),
            ("[groups]\nleads = \"alice\"", "groups.leads"),
            ("[acl]\n\"ops%\" = [\".*\"]", "acl.ops%"),
            ("[[freeze]]\nname = \"x\"", "freeze[0]"),
            (
                "[[schedule]]\nname = \"n\"\ncron = \"* *\"\njob = { target = \"*\", fun = \"test.ping\" }",
                "schedule[0].cron",
            ),
            (
                "[[schedule]]\nname = \"n\"\ncron = \"* * * * *\"\njob = { target = \"*\" }",
                "schedule[0]",
            ),
            (
                "[[schedule]]\nname = \"n\"\ncron = \"* * * * *\"\njob = { target = \"*\", fun = \"test.ping\" }\n[[schedule]]\nname = \"n\"\ncron = \"* * * * *\"\njob = { target = \"*\", fun = \"test.ping\" }",
                "schedule[1].name",
            ),
            ("[[notify]]\nurl = \"ftp://x\"", "notify[0].url"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert!(err.to_string().contains("/etc/halite/master.toml"), "{err}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/master.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/master.toml: cannot read"),
            "{err}"
        );
    }
}
