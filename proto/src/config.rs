//! Shared rules for halite's TOML configuration files.
//!
//! Both daemons read TOML with unknown keys refused, and every error must
//! name the file and the key. This module turns text into a typed raw
//! config with such errors; reading the file is the caller's (this crate
//! does no I/O), validation of values is each config's own.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A configuration problem, always naming the file and, when known, the key.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// The key, dotted (`grains.role`), when the problem is one key's.
    pub key: Option<String>,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: key `{key}`: {}", self.file.display(), self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl ConfigError {
    /// A bad value for `key` in `file`.
    pub fn key(file: &Path, key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: Some(key.to_owned()),
            message: message.into(),
        }
    }

    /// A problem with the file as a whole (missing, unreadable).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: None,
            message: message.into(),
        }
    }
}

/// Parses TOML `text` (read from `file`) into `T`, whose serde derive
/// should carry `deny_unknown_fields`. Syntax errors, unknown keys and
/// wrong types come back naming the file, the key and the line.
pub fn parse_toml<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().trim().to_owned();
        let key = unknown_field(&message).or_else(|| line.and_then(|l| key_on_line(text, l)));
        let message = match line {
            Some(line) => format!("{message} (line {line})"),
            None => message,
        };
        ConfigError {
            file: file.to_path_buf(),
            key,
            message,
        }
    })
}

/// Resolves a configured path relative to the directory of the config
/// file, so a config and its data can be moved together.
pub fn resolve_path(config_file: &Path, value: &Path) -> PathBuf {
    let joined = if value.is_absolute() {
        value.to_path_buf()
    } else {
        config_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(value)
    };
    // Absolute, so every message naming a file names it unambiguously
    // (a daemon started as `--config master.toml` from some directory).
    std::path::absolute(&joined).unwrap_or(joined)
}

/// An integer key that must lie in `range`; `default` when absent.
/// Config integers are read as `i64` so a negative value gets this
/// message rather than a type error.
pub fn int_key(
    file: &Path,
    key: &str,
    value: Option<i64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 0 && range.contains(&(v as u64)) => Ok(v as u64),
        Some(v) => Err(ConfigError::key(
            file,
            key,
            format!("{v} is out of range ({}-{})", range.start(), range.end()),
        )),
    }
}

/// The `id` key: the given value, or `default` (the host name), checked
/// against the id pattern so it is safe in paths and logs.
pub fn id_key(
    file: &Path,
    value: Option<String>,
    default: impl FnOnce() -> String,
) -> Result<String, ConfigError> {
    let id = value.unwrap_or_else(default);
    crate::ident::validate_id(&id).map_err(|e| ConfigError::key(file, "id", e.to_string()))?;
    Ok(id)
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

fn key_on_line(text: &str, line: usize) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = content.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty()).then(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        port: Option<u16>,
        name: Option<String>,
    }

    #[test]
    fn unknown_keys_are_named_with_file_and_line() {
        let err =
            parse_toml::<Sample>(Path::new("/etc/x.toml"), "name = \"a\"\nprot = 3\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("prot"));
        let shown = err.to_string();
        assert!(shown.starts_with("/etc/x.toml: key `prot`"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn wrong_types_name_the_key() {
        let err = parse_toml::<Sample>(Path::new("m.toml"), "port = \"high\"\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("port"));
        let err = parse_toml::<Sample>(Path::new("m.toml"), "port = 70000\n").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("port"));
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = parse_toml::<Sample>(Path::new("m.toml"), "port = = 1").unwrap_err();
        assert!(err.to_string().starts_with("m.toml:"));
    }

    #[test]
    fn integers_are_range_checked() {
        let file = Path::new("m.toml");
        assert_eq!(int_key(file, "n", None, 7, 1..=10).unwrap(), 7);
        assert_eq!(int_key(file, "n", Some(10), 7, 1..=10).unwrap(), 10);
        for bad in [0, 11, -1] {
            let err = int_key(file, "n", Some(bad), 7, 1..=10).unwrap_err();
            assert_eq!(err.key.as_deref(), Some("n"));
            assert!(err.message.contains("out of range (1-10)"), "{err}");
        }
    }

    #[test]
    fn ids_default_and_are_validated() {
        let file = Path::new("m.toml");
        assert_eq!(id_key(file, None, || "host1".into()).unwrap(), "host1");
        let err = id_key(file, Some("../x".into()), || "host1".into()).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("id"));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        assert_eq!(
            resolve_path(Path::new("/etc/halite/master.toml"), Path::new("pki")),
            PathBuf::from("/etc/halite/pki")
        );
        assert_eq!(
            resolve_path(Path::new("/etc/halite/master.toml"), Path::new("/var/x")),
            PathBuf::from("/var/x")
        );
    }
}

/// Where a master can be found by tools on its own host (`master-cli`):
/// its `data_dir` (CLI token, bound ports), API address and TLS chain,
/// and its users file. Read leniently from the master's config file
/// (other keys are the master's business) with the master's defaults, so
/// a tool needs no copy of the master's configuration code; the master
/// takes these four from here too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterLocation {
    /// The config file it was read from.
    pub file: PathBuf,
    /// The master's `data_dir`.
    pub data_dir: PathBuf,
    /// `api_bind` (port 0: the bound address is in `ports.json`).
    pub api_bind: std::net::SocketAddr,
    /// `api_tls_cert` and `api_tls_key`, both or neither.
    pub api_tls: Option<(PathBuf, PathBuf)>,
    /// `users_file`.
    pub users_file: PathBuf,
}

#[derive(Deserialize)]
struct RawLocation {
    data_dir: Option<PathBuf>,
    api_bind: Option<String>,
    api_tls_cert: Option<PathBuf>,
    api_tls_key: Option<PathBuf>,
    users_file: Option<PathBuf>,
}

/// The master's default `data_dir`.
pub const DEFAULT_MASTER_DATA_DIR: &str = "/var/lib/halite/master";
/// The master's default `api_bind`.
pub const DEFAULT_API_BIND: &str = "127.0.0.1:8000";

impl MasterLocation {
    /// Reads the location keys of a master config's text (as if read
    /// from `file`); unknown keys are ignored here.
    pub fn from_toml(file: &Path, text: &str) -> Result<MasterLocation, ConfigError> {
        let raw: RawLocation = parse_toml(file, text)?;
        let api_bind = raw.api_bind.as_deref().unwrap_or(DEFAULT_API_BIND);
        let api_bind = api_bind.parse().map_err(|_| {
            ConfigError::key(
                file,
                "api_bind",
                format!("{api_bind:?} is not an address like {DEFAULT_API_BIND}"),
            )
        })?;
        let api_tls = match (raw.api_tls_cert, raw.api_tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((resolve_path(file, &cert), resolve_path(file, &key))),
            (Some(_), None) => {
                return Err(ConfigError::key(
                    file,
                    "api_tls_key",
                    "api_tls_cert is set: set the key too",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::key(
                    file,
                    "api_tls_cert",
                    "api_tls_key is set: set the certificate too",
                ))
            }
        };
        Ok(MasterLocation {
            file: file.to_path_buf(),
            data_dir: resolve_path(
                file,
                &raw.data_dir
                    .unwrap_or_else(|| DEFAULT_MASTER_DATA_DIR.into()),
            ),
            api_bind,
            api_tls,
            users_file: resolve_path(file, &raw.users_file.unwrap_or_else(|| "users.toml".into())),
        })
    }

    /// Where the root-only CLI token lives.
    pub fn token_file(&self) -> PathBuf {
        self.data_dir.join("cli.token")
    }

    /// Where the master writes the addresses it actually bound.
    pub fn ports_file(&self) -> PathBuf {
        self.data_dir.join("ports.json")
    }
}
