//! The minion's configuration: raw TOML, then a validated [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use halite_proto::config::{id_key, int_key, parse_toml, resolve_path, ConfigError};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Where `halite-minion` looks without `--config` on Linux and other
/// unix systems ([`default_config`] gives the platform's).
pub const DEFAULT_CONFIG: &str = "/etc/halite/minion.toml";

/// `%ProgramData%\halite` on Windows: config, keys, state and logs.
#[cfg(windows)]
pub fn program_data() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
        .join("halite")
}

/// Where `halite-minion` looks without `--config`: `/etc/halite/minion.toml`,
/// or `%ProgramData%\halite\minion.toml` on Windows.
pub fn default_config() -> PathBuf {
    #[cfg(windows)]
    {
        program_data().join("minion.toml")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from(DEFAULT_CONFIG)
    }
}

/// Default `pki_dir`: `/etc/halite/pki/minion`; on Windows `pki` beside
/// the config (`%ProgramData%\halite\pki` for the installed one: state
/// follows the config wherever the installer put it).
fn default_pki_dir() -> PathBuf {
    #[cfg(windows)]
    {
        PathBuf::from("pki")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/etc/halite/pki/minion")
    }
}

/// Default `data_dir`: `/var/lib/halite/minion`; on Windows `data`
/// beside the config.
fn default_data_dir() -> PathBuf {
    #[cfg(windows)]
    {
        PathBuf::from("data")
    }
    #[cfg(not(windows))]
    {
        PathBuf::from("/var/lib/halite/minion")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: Option<String>,
    masters: Option<Vec<String>>,
    pki_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    master_fingerprint: Option<String>,
    grains: Option<toml::Table>,
    clock_skew: Option<i64>,
    auth_retry: Option<i64>,
    master_type: Option<MasterType>,
    random_master: Option<bool>,
    master_alive_interval: Option<i64>,
    master_failback: Option<bool>,
    lua: Option<RawLua>,
    otel_endpoint: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLua {
    roots: Option<Vec<PathBuf>>,
    memory_mb: Option<i64>,
    instructions: Option<i64>,
    timeout: Option<i64>,
    modules: Option<std::collections::BTreeMap<String, RawLuaModule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLuaModule {
    roots: Option<Vec<PathBuf>>,
}

/// How a minion uses several masters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MasterType {
    /// One master at a time, the next when it stops answering.
    #[default]
    Failover,
    /// Connected to every master at once; jobs from any, returns to all.
    Hot,
}

/// Where a master listens for minions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterAddr {
    /// Host name or IP.
    pub host: String,
    /// Its `return_port` (ROUTER).
    pub port: u16,
}

impl MasterAddr {
    /// A ZeroMQ endpoint on this host.
    pub fn endpoint(&self, port: u16) -> String {
        if self.host.contains(':') {
            format!("tcp://[{}]:{port}", self.host)
        } else {
            format!("tcp://{}:{port}", self.host)
        }
    }

    /// A name safe as a file name, for the pinned key of this master.
    pub fn file_name(&self) -> String {
        let host: String = self
            .host
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{host}_{}", self.port)
    }
}

impl std::fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A validated minion configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Minion id (default: the host name).
    pub id: String,
    /// Masters, in order.
    pub masters: Vec<MasterAddr>,
    /// Minion key and pinned master keys.
    pub pki_dir: PathBuf,
    /// Spooled returns and the replay guard.
    pub data_dir: PathBuf,
    /// When set, the master key must have this fingerprint (normalized).
    pub master_fingerprint: Option<String>,
    /// Custom grains, merged over the collected ones.
    pub grains: Map<String, Value>,
    /// How far past `expires_at` a job is still accepted (clocks differ).
    pub clock_skew: Duration,
    /// How long to wait between auth attempts while the key is pending.
    pub auth_retry: Duration,
    /// `hot` or `failover` (the default; with one master the same).
    pub master_type: MasterType,
    /// Failover: start with a random master instead of the first.
    pub random_master: bool,
    /// Failover: a master silent (no beacon, no heartbeat ack) this long
    /// is left for the next.
    pub master_alive_interval: Duration,
    /// Failover: move back to the first master once it answers again.
    pub master_failback: bool,
    /// How Lua modules run: limits and the directories they may use.
    pub lua: halite_modules::lua::LuaConfig,
    /// Where this minion sends its spans of each job (OTLP over HTTP,
    /// `halite_daemon::traces`); unset: nowhere.
    pub otel_endpoint: Option<String>,
    /// What is valid but probably not meant (a setting written after
    /// `[grains]`, which makes it a grain): logged at start.
    pub warnings: Vec<String>,
}

/// The top-level keys of a minion config: a grain of one of these names
/// is almost always a setting written below `[grains]` by mistake.
const TOP_LEVEL_KEYS: &[&str] = &[
    "id",
    "masters",
    "pki_dir",
    "data_dir",
    "master_fingerprint",
    "clock_skew",
    "auth_retry",
    "master_type",
    "random_master",
    "master_alive_interval",
    "master_failback",
    "lua",
    "otel_endpoint",
];

impl Config {
    /// Reads and validates `file`.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| ConfigError::file(file, format!("cannot read: {e}")))?;
        Config::from_toml(file, &text)
    }

    /// Validates TOML text as if read from `file`.
    pub fn from_toml(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = parse_toml(file, text)?;
        let id = id_key(file, raw.id, || halite_daemon::host_id("minion"))?;
        let masters = raw.masters.unwrap_or_else(|| vec!["salt".to_owned()]);
        if masters.is_empty() {
            return Err(ConfigError::key(
                file,
                "masters",
                "needs at least one master",
            ));
        }
        let masters = masters
            .iter()
            .map(|m| parse_master(m).map_err(|e| ConfigError::key(file, "masters", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let master_fingerprint = match raw.master_fingerprint {
            None => None,
            Some(fp) => Some(halite_pki::normalize_fingerprint(&fp).ok_or_else(|| {
                ConfigError::key(
                    file,
                    "master_fingerprint",
                    "expected 32 hex pairs (SHA-256), e.g. from `master-cli keys fingerprint`",
                )
            })?),
        };
        let grains = match raw.grains {
            None => Map::new(),
            Some(table) => match serde_json::to_value(table) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(ConfigError::key(
                        file,
                        "grains",
                        "must be a table of values",
                    ))
                }
            },
        };
        Ok(Config {
            id,
            masters,
            pki_dir: resolve_path(file, &raw.pki_dir.unwrap_or_else(default_pki_dir)),
            data_dir: resolve_path(file, &raw.data_dir.unwrap_or_else(default_data_dir)),
            master_fingerprint,
            clock_skew: Duration::from_secs(int_key(
                file,
                "clock_skew",
                raw.clock_skew,
                60,
                0..=86_400,
            )?),
            auth_retry: Duration::from_secs(
                int_key(file, "auth_retry", raw.auth_retry, 10, 0..=86_400)?.max(1),
            ),
            master_type: raw.master_type.unwrap_or_default(),
            random_master: raw.random_master.unwrap_or(false),
            master_alive_interval: Duration::from_secs(int_key(
                file,
                "master_alive_interval",
                raw.master_alive_interval,
                30,
                1..=86_400,
            )?),
            master_failback: raw.master_failback.unwrap_or(false),
            lua: lua_config(file, raw.lua.unwrap_or_default())?,
            otel_endpoint: halite_daemon::traces::endpoint_setting(raw.otel_endpoint.as_deref())
                .map_err(|e| ConfigError::key(file, "otel_endpoint", e))?,
            warnings: grain_warnings(file, &grains),
            grains,
        })
    }
}

/// A warning for each grain named like a setting: TOML puts every key
/// after a `[grains]` header into that table, so `auth_retry = 1` written
/// at the end of the file silently becomes a grain.
fn grain_warnings(file: &Path, grains: &Map<String, Value>) -> Vec<String> {
    grains
        .keys()
        .filter(|key| TOP_LEVEL_KEYS.contains(&key.as_str()))
        .map(|key| {
            format!(
                "{}: grains.{key} is a grain, not the `{key}` setting (it is written below [grains]): move it above the [grains] header to set it",
                file.display()
            )
        })
        .collect()
}

/// `[lua]`: limits per call, `roots` every module may use, and
/// `[lua.modules.NAME] roots` for one module. Roots must be absolute
/// (relative ones are read against the config file's directory).
fn lua_config(file: &Path, raw: RawLua) -> Result<halite_modules::lua::LuaConfig, ConfigError> {
    let defaults = halite_modules::lua::Limits::default();
    let roots = |list: Option<Vec<PathBuf>>| -> Vec<PathBuf> {
        list.unwrap_or_default()
            .iter()
            .map(|p| resolve_path(file, p))
            .collect()
    };
    let mut module_roots = std::collections::HashMap::new();
    for (name, module) in raw.modules.unwrap_or_default() {
        halite_proto::ident::validate_lua_module(&name)
            .map_err(|e| ConfigError::key(file, &format!("lua.modules.{name}"), e.to_string()))?;
        module_roots.insert(name, roots(module.roots));
    }
    Ok(halite_modules::lua::LuaConfig {
        limits: halite_modules::lua::Limits {
            memory: int_key(
                file,
                "lua.memory_mb",
                raw.memory_mb,
                (defaults.memory / (1024 * 1024)) as u64,
                1..=65_536,
            )? as usize
                * 1024
                * 1024,
            instructions: int_key(
                file,
                "lua.instructions",
                raw.instructions,
                defaults.instructions,
                10_000..=u64::MAX / 2,
            )?,
            timeout: Duration::from_secs(int_key(
                file,
                "lua.timeout",
                raw.timeout,
                defaults.timeout.as_secs(),
                1..=7 * 86_400,
            )?),
        },
        roots: roots(raw.roots),
        module_roots,
    })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; the port defaults to 4506.
pub fn parse_master(value: &str) -> Result<MasterAddr, String> {
    let bad = || format!("{value:?} is not \"host\" or \"host:return_port\"");
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad()),
        }
    } else {
        match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !host_ok {
        return Err(bad());
    }
    let port = match port {
        None => 4506,
        Some(p) => p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad)?,
    };
    Ok(MasterAddr {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(Path::new("/etc/halite/minion.toml"), text)
    }

    #[test]
    fn masters_take_host_or_host_port() {
        let config =
            parse("id = \"web01\"\nmasters = [\"10.0.0.1\", \"m2:5506\", \"[::1]:7\"]").unwrap();
        assert_eq!(
            config.masters[0],
            MasterAddr {
                host: "10.0.0.1".into(),
                port: 4506
            }
        );
        assert_eq!(
            config.masters[1],
            MasterAddr {
                host: "m2".into(),
                port: 5506
            }
        );
        assert_eq!(config.masters[2].endpoint(4505), "tcp://[::1]:4505");
    }

    #[test]
    fn a_setting_below_grains_is_a_grain_and_warned_about() {
        let config = parse("id = \"a\"\n[grains]\nrole = \"web\"\nauth_retry = 1\n").unwrap();
        // Still a grain (valid TOML), but the operator hears about it.
        assert_eq!(config.grains["auth_retry"], Value::from(1));
        assert_eq!(config.auth_retry, Duration::from_secs(10));
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("grains.auth_retry"));
        assert!(parse("id = \"a\"\n[grains]\nrole = \"web\"\n")
            .unwrap()
            .warnings
            .is_empty());
    }

    #[test]
    fn grains_become_json() {
        let config = parse("id = \"a\"\n[grains]\nrole = \"web\"\nracks = [1, 2]").unwrap();
        assert_eq!(config.grains["role"], Value::from("web"));
        assert_eq!(config.grains["racks"], serde_json::json!([1, 2]));
    }

    #[test]
    fn bad_values_name_file_and_key() {
        for (text, key) in [
            ("masters = []", "masters"),
            ("masters = [\"host:notaport\"]", "masters"),
            ("masters = [\"a b\"]", "masters"),
            ("id = \"a/b\"", "id"),
            ("master_fingerprint = \"zz\"", "master_fingerprint"),
            ("clock_skew = -5", "clock_skew"),
            ("otel_endpoint = \"grpc://collector:4317\"", "otel_endpoint"),
            ("color = 1", "color"),
            ("masters = \"m1\"", "masters"),
            ("master_type = \"warm\"", "master_type"),
            ("master_alive_interval = 0", "master_alive_interval"),
            ("master_failback = \"yes\"", "master_failback"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
            assert!(
                err.to_string().starts_with("/etc/halite/minion.toml: key"),
                "{err}"
            );
        }
    }
}
