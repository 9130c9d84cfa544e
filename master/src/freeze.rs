//! Freeze windows (`[[freeze]]` in the master's config): times when
//! releases are refused, for every app or some, in every environment or
//! some. A window is either dates (`from`, `until`) or recurring (`cron`
//! for when it opens, `duration` for how long it stays, as Argo CD's sync
//! windows are written). A user with the `@freeze_override` grant may
//! release anyway by asking to; the override is audited.
//!
//! ```toml
//! [[freeze]]
//! name = "year end"
//! from = "2026-12-20"
//! until = "2027-01-04"
//!
//! [[freeze]]
//! name = "friday evening"
//! cron = "0 16 * * fri"
//! duration = "62h"
//! envs = ["production"]
//! apps = ["shop"]
//! ```

use std::path::Path;

use halite_proto::config::ConfigError;
use halite_proto::cron::Cron;
use halite_proto::time::parse_time_ms;
use serde::Deserialize;

/// One window, validated.
#[derive(Clone, Debug)]
pub struct FreezeWindow {
    /// Named in refusals and the audit log.
    pub name: String,
    /// When it holds.
    pub when: FreezeTime,
    /// Apps it freezes (every app when empty).
    pub apps: Vec<String>,
    /// Environments it freezes (every environment, and apps without
    /// environments, when empty).
    pub envs: Vec<String>,
}

/// When a window holds.
#[derive(Clone, Debug)]
pub enum FreezeTime {
    /// From one time until another (Unix ms, `until` excluded).
    Dates {
        /// Start.
        from: u64,
        /// End.
        until: u64,
    },
    /// Opens at each time `cron` names and stays open `duration_s`.
    Recurring {
        /// When it opens.
        cron: Cron,
        /// How long it stays open, in seconds.
        duration_s: u64,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    name: String,
    from: Option<String>,
    until: Option<String>,
    cron: Option<String>,
    duration: Option<toml::Value>,
    #[serde(default)]
    apps: Vec<String>,
    #[serde(default)]
    envs: Vec<String>,
}

impl FreezeWindow {
    /// Reads the `[[freeze]]` array; errors name `freeze[N].KEY`.
    pub fn parse_all(file: &Path, raw: &[toml::Value]) -> Result<Vec<FreezeWindow>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, value)| {
                let key = |field: &str| format!("freeze[{i}]{field}");
                let raw: RawWindow = value
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::key(file, &key(""), e.message()))?;
                if raw.name.trim().is_empty() {
                    return Err(ConfigError::key(file, &key(".name"), "must not be empty"));
                }
                let time = |field: &str, text: &Option<String>| {
                    let text = text.as_deref().ok_or_else(|| {
                        ConfigError::key(file, &key(field), "dates need both `from` and `until`")
                    })?;
                    parse_time_ms(text).ok_or_else(|| {
                        ConfigError::key(
                            file,
                            &key(field),
                            format!(
                                "{text:?} is not a UTC time like 2026-12-20 or 2026-12-20T18:00"
                            ),
                        )
                    })
                };
                let when = match (&raw.cron, raw.from.is_some() || raw.until.is_some()) {
                    (Some(_), true) => {
                        return Err(ConfigError::key(
                            file,
                            &key(""),
                            "give either `from`/`until` or `cron`/`duration`, not both",
                        ))
                    }
                    (Some(cron), false) => FreezeTime::Recurring {
                        cron: Cron::parse(cron)
                            .map_err(|e| ConfigError::key(file, &key(".cron"), e.to_string()))?,
                        duration_s: match &raw.duration {
                            Some(d) => seconds(d)
                                .map_err(|e| ConfigError::key(file, &key(".duration"), e))?,
                            None => return Err(ConfigError::key(
                                file,
                                &key(".duration"),
                                "a recurring window needs a duration (\"2h\", \"3d\" or seconds)",
                            )),
                        },
                    },
                    (None, true) => {
                        let (from, until) =
                            (time(".from", &raw.from)?, time(".until", &raw.until)?);
                        if until <= from {
                            return Err(ConfigError::key(
                                file,
                                &key(".until"),
                                "must be after `from`",
                            ));
                        }
                        FreezeTime::Dates { from, until }
                    }
                    (None, false) => {
                        return Err(ConfigError::key(
                            file,
                            &key(""),
                            "a window needs `from` and `until`, or `cron` and `duration`",
                        ))
                    }
                };
                Ok(FreezeWindow {
                    name: raw.name,
                    when,
                    apps: raw.apps,
                    envs: raw.envs,
                })
            })
            .collect()
    }

    /// Does this window hold for `app` in `env` (`None`: the app has no
    /// environment there) at `now_ms`?
    pub fn holds(&self, app: &str, env: Option<&str>, now_ms: u64) -> bool {
        let app_in = self.apps.is_empty() || self.apps.iter().any(|a| a == app);
        let env_in = self.envs.is_empty() || env.is_some_and(|e| self.envs.iter().any(|x| x == e));
        app_in && env_in && self.open_at(now_ms)
    }

    fn open_at(&self, now_ms: u64) -> bool {
        match &self.when {
            FreezeTime::Dates { from, until } => (*from..*until).contains(&now_ms),
            FreezeTime::Recurring { cron, duration_s } => {
                // Open if it opened in (now - duration, now]: the first
                // opening after (now - duration) is not in the future.
                let now = now_ms / 1000;
                let since = now.saturating_sub(*duration_s);
                cron.next_after(since).is_some_and(|t| t <= now)
            }
        }
    }

    /// The window for messages: `"year end" (2026-12-20 00:00:00 to ...)`.
    pub fn describe(&self) -> String {
        match &self.when {
            FreezeTime::Dates { from, until } => format!(
                "freeze window {:?} ({} to {} UTC)",
                self.name,
                halite_proto::time::format_ms(*from),
                halite_proto::time::format_ms(*until)
            ),
            FreezeTime::Recurring { cron, duration_s } => format!(
                "freeze window {:?} (from `{cron}` for {duration_s} s, UTC)",
                self.name
            ),
        }
    }
}

/// `"90m"`, `"2h"`, `"3d"`, `"45s"` or a number of seconds.
fn seconds(value: &toml::Value) -> Result<u64, String> {
    let bad = || format!("{value} is not a duration like \"2h\", \"3d\" or a number of seconds");
    let n = match value {
        toml::Value::Integer(n) if *n > 0 => *n as u64,
        toml::Value::String(text) => {
            let text = text.trim();
            let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let (number, unit) = text.split_at(split);
            let number: u64 = number.parse().map_err(|_| bad())?;
            let unit = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(bad()),
            };
            number * unit
        }
        _ => return Err(bad()),
    };
    if n == 0 || n > 366 * 86_400 {
        return Err("must be between 1 s and a year".into());
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::cron::unix_s;

    fn windows(text: &str) -> Result<Vec<FreezeWindow>, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let list = table["freeze"].as_array().unwrap().clone();
        FreezeWindow::parse_all(Path::new("/etc/halite/master.toml"), &list)
    }

    #[test]
    fn dated_windows_hold_between_their_dates() {
        let w = windows(
            "[[freeze]]\nname = \"year end\"\nfrom = \"2026-12-20\"\nuntil = \"2027-01-04\"",
        )
        .unwrap();
        let ms = |s: u64| s * 1000;
        assert!(w[0].holds("shop", None, ms(unix_s(2026, 12, 24, 10, 0, 0))));
        assert!(w[0].holds(
            "shop",
            Some("production"),
            ms(unix_s(2026, 12, 20, 0, 0, 0))
        ));
        assert!(!w[0].holds("shop", None, ms(unix_s(2027, 1, 4, 0, 0, 0))));
        assert!(w[0].describe().contains("year end"));
    }

    #[test]
    fn recurring_windows_stay_open_for_their_duration() {
        let w = windows(
            "[[freeze]]\nname = \"weekend\"\ncron = \"0 16 * * fri\"\nduration = \"62h\"\nenvs = [\"production\"]\napps = [\"shop\"]",
        )
        .unwrap();
        let at = |d, h| unix_s(2026, 12, d, h, 0, 0) * 1000;
        // Friday 2026-12-04 16:00 to Monday 06:00.
        assert!(!w[0].holds("shop", Some("production"), at(4, 15)));
        assert!(w[0].holds("shop", Some("production"), at(4, 16)));
        assert!(w[0].holds("shop", Some("production"), at(6, 12)));
        assert!(!w[0].holds("shop", Some("production"), at(7, 6)));
        assert!(!w[0].holds("shop", Some("staging"), at(5, 12)));
        assert!(!w[0].holds("shop", None, at(5, 12)));
        assert!(!w[0].holds("blog", Some("production"), at(5, 12)));
    }

    #[test]
    fn bad_windows_name_the_key() {
        for (text, key) in [
            ("[[freeze]]\nname = \"x\"", "freeze[0]"),
            (
                "[[freeze]]\nname = \"x\"\nfrom = \"soon\"\nuntil = \"2027-01-01\"",
                "freeze[0].from",
            ),
            (
                "[[freeze]]\nname = \"x\"\nfrom = \"2027-01-02\"\nuntil = \"2027-01-01\"",
                "freeze[0].until",
            ),
            (
                "[[freeze]]\nname = \"x\"\ncron = \"0 16 * *\"\nduration = 60",
                "freeze[0].cron",
            ),
            (
                "[[freeze]]\nname = \"x\"\ncron = \"0 16 * * *\"",
                "freeze[0].duration",
            ),
            (
                "[[freeze]]\nname = \"x\"\ncron = \"0 16 * * *\"\nduration = \"2w\"",
                "freeze[0].duration",
            ),
            ("[[freeze]]\nname = \"x\"\ncolour = 1", "freeze[0]"),
        ] {
            let err = windows(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
    }
}
