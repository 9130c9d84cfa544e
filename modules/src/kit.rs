//! The four stages every deploy module reports (fetch, prepare, deploy,
//! verify): stage events shown live, and the return's shape — app,
//! action, result, release, stages with durations, `failed_stage` and
//! `error` — that the master turns into release records and statistics.

use std::time::Instant;

use halite_proto::app::AppSpec;
use serde_json::{json, Value};

use crate::releases::ReleaseRecord;
use crate::{Call, EventSink, Outcome, RETCODE_ERROR, RETCODE_TIMEOUT};

/// The stages of one deploy or rollback: their events and, for the
/// return, what each did and how long it took.
pub(crate) struct Stages {
    events: EventSink,
    pub(crate) done: Vec<Value>,
}

impl Stages {
    pub(crate) fn new(call: &Call) -> Stages {
        Stages {
            events: call.events.clone(),
            done: Vec::new(),
        }
    }

    pub(crate) fn start(&self, stage: &'static str) -> (&'static str, Instant) {
        self.events.stage(stage, "started", None, None);
        (stage, Instant::now())
    }

    pub(crate) fn end(
        &mut self,
        (stage, started): (&'static str, Instant),
        result: &Result<String, String>,
    ) {
        let ms = started.elapsed().as_millis() as u64;
        let (status, message) = match result {
            Ok(m) => ("succeeded", m),
            Err(m) => ("failed", m),
        };
        self.events
            .stage(stage, status, Some(ms), Some(message.clone()));
        self.done.push(json!({
            "stage": stage,
            "status": status,
            "duration_ms": ms,
            "message": message,
        }));
    }

    pub(crate) fn log(&self, line: &str) {
        self.events.progress("log", line);
    }
}

/// What every deploy or rollback return says, success or not.
pub(crate) struct Report {
    pub(crate) app: String,
    pub(crate) action: &'static str,
    pub(crate) started: Instant,
    pub(crate) revision: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) release: Option<String>,
    pub(crate) previous: Option<String>,
}

impl Report {
    pub(crate) fn new(app: &AppSpec, action: &'static str, reference: Option<String>) -> Report {
        Report::named(&app.name, action, reference)
    }

    /// For a release of something that is not an app definition (a
    /// scheduled task, under its path).
    pub(crate) fn named(name: &str, action: &'static str, reference: Option<String>) -> Report {
        Report {
            app: name.to_owned(),
            action,
            started: Instant::now(),
            revision: None,
            reference,
            release: None,
            previous: None,
        }
    }

    pub(crate) fn finish(self, stages: Stages, result: &'static str, extra: Value) -> Value {
        let mut data = json!({
            "app": self.app,
            "action": self.action,
            "result": result,
            "revision": self.revision,
            "reference": self.reference,
            "release": self.release,
            "previous": self.previous,
            "stages": stages.done,
            "duration_ms": self.started.elapsed().as_millis() as u64,
        });
        if let (Some(map), Value::Object(more)) = (data.as_object_mut(), extra) {
            map.extend(more);
        }
        data
    }

    pub(crate) fn record(&self, jid: &str, result: &str) -> ReleaseRecord {
        ReleaseRecord {
            release: self.release.clone().unwrap_or_default(),
            revision: self.revision.clone().unwrap_or_default(),
            reference: self.reference.clone(),
            jid: jid.to_owned(),
            action: self.action.to_owned(),
            result: result.to_owned(),
            at: halite_proto::time::now_ms(),
            duration_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// A failed deploy or rollback: structured data with an `error` sentence
/// naming the stage, so the master can record it and people can read it.
///
/// `result` is where the release ended: `failed` (it never went live),
/// `rolled_back` (it went live and was switched back) or `live` (it is
/// live although a later step failed), as in the release history.
pub(crate) fn failure(
    report: Report,
    stages: Stages,
    stage: &str,
    error: String,
    extra: Value,
    result: &'static str,
) -> Outcome {
    let retcode = if error.contains("cancelled") {
        RETCODE_TIMEOUT
    } else {
        RETCODE_ERROR
    };
    let mut more = json!({
        "failed_stage": stage,
        "error": format!("{stage} failed: {error}"),
    });
    if let (Some(map), Value::Object(extra)) = (more.as_object_mut(), extra) {
        map.extend(extra);
    }
    Outcome {
        success: false,
        retcode,
        data: report.finish(stages, result, more),
    }
}

/// Ends the running `stage` as failed and gives the failed return for a
/// release that never went live.
pub(crate) fn abort(
    report: Report,
    mut stages: Stages,
    stage: (&'static str, Instant),
    error: String,
    extra: Value,
) -> Outcome {
    stages.end(stage, &Err(error.clone()));
    failure(report, stages, stage.0, error, extra, "failed")
}

/// The stage names a deploy return lists, in order (for tests).
#[cfg(test)]
pub(crate) fn stage_names(data: &Value) -> Vec<&str> {
    data["stages"]
        .as_array()
        .map(|stages| stages.iter().filter_map(|s| s["stage"].as_str()).collect())
        .unwrap_or_default()
}
