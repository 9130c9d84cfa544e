//! A scheduled task as a job describes it, validated before anything runs
//! (`win_task.create` / `update`): what to run, as whom, when, and the
//! settings Task Scheduler needs.

use serde::Deserialize;

/// What a task definition may not be.
pub(crate) type Invalid = String;

/// Task Scheduler's multiple-instances policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Instances {
    /// Do not start another while one runs (Task Scheduler's default).
    #[default]
    IgnoreNew,
    /// Run them side by side.
    Parallel,
    /// Start the next when the running one ends.
    Queue,
    /// Stop the running one, start the new one.
    StopExisting,
}

impl Instances {
    pub(crate) fn xml(self) -> &'static str {
        match self {
            Instances::IgnoreNew => "IgnoreNew",
            Instances::Parallel => "Parallel",
            Instances::Queue => "Queue",
            Instances::StopExisting => "StopExisting",
        }
    }
}

/// Repeat a trigger every `interval` seconds for `duration` seconds
/// (0: indefinitely).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Repeat {
    pub(crate) interval: u64,
    #[serde(default)]
    pub(crate) duration: u64,
}

/// When a task starts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Trigger {
    /// Once, at `start` (`2026-11-23T02:00:00`, local time).
    Once {
        start: String,
        #[serde(default)]
        repeat: Option<Repeat>,
    },
    /// Every `every` days from `start`.
    Daily {
        start: String,
        #[serde(default = "one")]
        every: u32,
        #[serde(default)]
        repeat: Option<Repeat>,
    },
    /// On `days` (`["monday", "friday"]`) every `every` weeks from `start`.
    Weekly {
        start: String,
        days: Vec<String>,
        #[serde(default = "one")]
        every: u32,
        #[serde(default)]
        repeat: Option<Repeat>,
    },
    /// When the machine starts, after `delay` seconds.
    Startup {
        #[serde(default)]
        delay: u64,
    },
    /// When `user` (any user when absent) logs on, after `delay` seconds.
    Logon {
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        delay: u64,
    },
}

fn one() -> u32 {
    1
}

/// The days `weekly` accepts, as Task Scheduler's XML names them.
pub(crate) const DAYS: [(&str, &str); 7] = [
    ("monday", "Monday"),
    ("tuesday", "Tuesday"),
    ("wednesday", "Wednesday"),
    ("thursday", "Thursday"),
    ("friday", "Friday"),
    ("saturday", "Saturday"),
    ("sunday", "Sunday"),
];

/// A task as `create`/`update` take it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskDefinition {
    /// Task name (no `\ / : * ? " < > |`).
    pub(crate) name: String,
    /// Folder (`\Halite`), created by Task Scheduler when missing.
    #[serde(default = "default_folder")]
    pub(crate) folder: String,
    /// The program.
    pub(crate) command: String,
    /// Its arguments, one string as Windows passes them.
    #[serde(default)]
    pub(crate) arguments: Option<String>,
    /// Its working directory.
    #[serde(default)]
    pub(crate) working_dir: Option<String>,
    /// Shown in Task Scheduler.
    #[serde(default)]
    pub(crate) description: Option<String>,
    /// When it starts; none: only when run by hand (`win_task.run`).
    #[serde(default)]
    pub(crate) triggers: Vec<Trigger>,
    /// `SYSTEM` (default), `LOCAL SERVICE`, `NETWORK SERVICE`, or an
    /// account (`DOMAIN\user`, run whether logged on or not, without a
    /// stored password: S4U).
    #[serde(default = "default_user")]
    pub(crate) run_as: String,
    /// Run with highest privileges.
    #[serde(default)]
    pub(crate) highest: bool,
    /// What to do when it is started while running.
    #[serde(default)]
    pub(crate) multiple_instances: Instances,
    /// Seconds after which Task Scheduler stops it (0: never; default 72 h).
    #[serde(default = "default_limit")]
    pub(crate) execution_time_limit: u64,
    /// Enabled when created.
    #[serde(default = "yes")]
    pub(crate) enabled: bool,
}

fn default_folder() -> String {
    "\\".into()
}
fn default_user() -> String {
    "SYSTEM".into()
}
fn default_limit() -> u64 {
    72 * 3600
}
fn yes() -> bool {
    true
}

/// `YYYY-MM-DDTHH:MM:SS`, the local start time Task Scheduler takes.
fn valid_start(start: &str) -> bool {
    let b = start.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
        && (1..=12).contains(&start[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&start[8..10].parse::<u32>().unwrap_or(0))
        && start[11..13].parse::<u32>().unwrap_or(99) < 24
        && start[14..16].parse::<u32>().unwrap_or(99) < 60
        && start[17..19].parse::<u32>().unwrap_or(99) < 60
}

impl TaskDefinition {
    /// Checks what serde cannot; Err names the field.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        let forbidden = ['\\', '/', ':', '*', '?', '"', '<', '>', '|'];
        if self.name.trim().is_empty() || self.name.contains(forbidden) || self.name.len() > 200 {
            return Err(format!(
                "name {:?}: 1 to 200 characters, none of \\ / : * ? \" < > |",
                self.name
            ));
        }
        if !self.folder.starts_with('\\')
            || self
                .folder
                .contains(['/', ':', '*', '?', '"', '<', '>', '|'])
            || self.folder.contains("\\\\")
        {
            return Err(format!(
                "folder {:?} must start with \\ (e.g. \\Halite)",
                self.folder
            ));
        }
        if self.command.trim().is_empty() {
            return Err("command must not be empty".into());
        }
        if self.run_as.trim().is_empty() {
            return Err("run_as must not be empty".into());
        }
        for (i, trigger) in self.triggers.iter().enumerate() {
            let field = format!("triggers[{i}]");
            let (start, repeat) = match trigger {
                Trigger::Once { start, repeat } => (Some(start), repeat),
                Trigger::Daily {
                    start,
                    every,
                    repeat,
                } => {
                    if *every == 0 || *every > 365 {
                        return Err(format!("{field}.every must be 1 to 365 days"));
                    }
                    (Some(start), repeat)
                }
                Trigger::Weekly {
                    start,
                    days,
                    every,
                    repeat,
                } => {
                    if *every == 0 || *every > 52 {
                        return Err(format!("{field}.every must be 1 to 52 weeks"));
                    }
                    if days.is_empty() {
                        return Err(format!("{field}.days must name at least one day"));
                    }
                    if let Some(bad) = days
                        .iter()
                        .find(|d| !DAYS.iter().any(|(n, _)| n == &d.to_ascii_lowercase()))
                    {
                        return Err(format!(
                            "{field}.days: {bad:?} is not a day (monday ... sunday)"
                        ));
                    }
                    (Some(start), repeat)
                }
                Trigger::Startup { .. } | Trigger::Logon { .. } => (None, &None),
            };
            if let Some(start) = start {
                if !valid_start(start) {
                    return Err(format!(
                        "{field}.start {start:?} must be YYYY-MM-DDTHH:MM:SS (local time)"
                    ));
                }
            }
            if let Some(repeat) = repeat {
                if repeat.interval < 60 || repeat.interval > 31 * 86_400 {
                    return Err(format!(
                        "{field}.repeat.interval must be 60 seconds to 31 days"
                    ));
                }
                if repeat.duration != 0 && repeat.duration < repeat.interval {
                    return Err(format!("{field}.repeat.duration must be at least the interval (or 0: indefinitely)"));
                }
            }
        }
        Ok(())
    }

    /// `\Folder\Name`, as schtasks' `/TN` takes it.
    pub(crate) fn path(&self) -> String {
        task_path(&self.folder, &self.name)
    }
}

/// `\Folder\Name` from a folder and a name.
pub(crate) fn task_path(folder: &str, name: &str) -> String {
    let folder = folder.trim_end_matches('\\');
    format!("{folder}\\{name}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<TaskDefinition, String> {
        let def: TaskDefinition = serde_json::from_value(value).map_err(|e| e.to_string())?;
        def.validate()?;
        Ok(def)
    }

    #[test]
    fn defaults_and_paths() {
        let def =
            parse(json!({ "name": "Rotate logs", "command": "C:\\tools\\rotate.exe" })).unwrap();
        assert_eq!(def.path(), "\\Rotate logs");
        assert_eq!(def.run_as, "SYSTEM");
        assert_eq!(def.execution_time_limit, 72 * 3600);
        let def =
            parse(json!({ "name": "x", "folder": "\\Halite\\", "command": "a.exe" })).unwrap();
        assert_eq!(def.path(), "\\Halite\\x");
    }

    #[test]
    fn malformed_schedules_are_named() {
        for (value, needle) in [
            (json!({ "name": "a/b", "command": "x" }), "name"),
            (json!({ "name": "a", "command": "" }), "command"),
            (
                json!({ "name": "a", "folder": "Halite", "command": "x" }),
                "folder",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "daily", "start": "tomorrow" }] }),
                "triggers[0].start",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "daily", "start": "2026-13-01T00:00:00" }] }),
                "triggers[0].start",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "weekly", "start": "2026-11-23T02:00:00", "days": ["funday"] }] }),
                "funday",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "weekly", "start": "2026-11-23T02:00:00", "days": [] }] }),
                "days",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "once", "start": "2026-11-23T02:00:00", "repeat": { "interval": 5 } }] }),
                "interval",
            ),
            (
                json!({ "name": "a", "command": "x", "triggers": [{ "type": "hourly" }] }),
                "unknown variant",
            ),
            (
                json!({ "name": "a", "command": "x", "colour": "red" }),
                "colour",
            ),
        ] {
            let err = parse(value.clone()).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}
