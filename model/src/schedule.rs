//! Schedules: a job run at the times a cron expression names (a nightly
//! deploy to staging, a periodic `cmd.run`), from the master's config or
//! made through the API, paused and resumed, each run linked to its job.

use serde::{Deserialize, Serialize};

use crate::job::JobRequest;

/// What makes a schedule (`POST /v1/schedules`, `[[schedule]]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Unique name (an id: letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// When it runs: five cron fields, or six with seconds first; UTC.
    pub cron: String,
    /// The job it submits each time.
    pub job: JobRequest,
}

/// Where a schedule was defined.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleOrigin {
    /// Made through the API; removed through it.
    #[default]
    Api,
    /// `[[schedule]]` in the master's config; changed there.
    Config,
}

/// One run of a schedule.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct ScheduleRun {
    /// The time it was due (Unix ms).
    pub due: u64,
    /// The job it submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jid: Option<String>,
    /// Why no job was submitted (refused by the ACL, a bad target...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A schedule as stored and shown.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Schedule {
    /// Unique name.
    pub name: String,
    /// Cron expression.
    pub cron: String,
    /// The job each run submits.
    pub job: JobRequest,
    /// Whose grants each run is checked against.
    pub owner: String,
    /// Config or API.
    #[serde(default)]
    pub origin: ScheduleOrigin,
    /// Paused schedules skip their times until resumed.
    #[serde(default)]
    pub paused: bool,
    /// When it was made (Unix ms).
    pub created: u64,
    /// The last time it was due and taken (Unix ms): a time is taken
    /// (stored durably) before its job is submitted, so a restart never
    /// runs it twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_due: Option<u64>,
    /// The next time it is due (Unix ms), when not paused; filled in for
    /// views.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due: Option<u64>,
    /// The latest runs, newest last (at most [`Schedule::KEEP_RUNS`]).
    #[serde(default)]
    pub runs: Vec<ScheduleRun>,
}

impl Schedule {
    /// Runs kept per schedule.
    pub const KEEP_RUNS: usize = 50;

    /// Records a run, keeping the latest [`Schedule::KEEP_RUNS`].
    pub fn record(&mut self, run: ScheduleRun) {
        self.runs.push(run);
        let extra = self.runs.len().saturating_sub(Self::KEEP_RUNS);
        self.runs.drain(..extra);
    }
}
