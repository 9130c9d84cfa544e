//! The release kit every deploy module uses: the app definition and
//! repository credentials a job carries, its stages (events shown live,
//! each with its duration and outcome) and the typed release report its
//! return carries (`halite_proto::release::ReleaseReport`) that the
//! master decodes into release records and statistics. A failure's return
//! code comes from the job's cancellation token, never from error text.

use std::time::Instant;

use halite_proto::app::{AppSpec, SECRET_PASSWORD, SECRET_USERNAME};
use halite_proto::release::{
    ReleaseAction, ReleaseReport, ReleaseResult, StageReport, StageStatus,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::args::{ArgError, Args};
use crate::releases::ReleaseRecord;
use crate::{Call, EventSink, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR, RETCODE_TIMEOUT};

/// The app definition a job carries in its `app` argument (the master
/// fills it in from `app=NAME`), checked.
pub(crate) fn app_of(args: &Args<'_>, fun: &'static str) -> Result<AppSpec, Outcome> {
    let Some(value) = args.value("app") else {
        return Err(Outcome::failed(
            RETCODE_BAD_ARGS,
            format!("{fun}: no app definition in the job; run it through the master with app=NAME (apps live in the master's apps_dir)"),
        ));
    };
    let app: AppSpec = serde_json::from_value(value.clone()).map_err(|e| {
        Outcome::from(ArgError::Invalid {
            fun,
            name: "app",
            expected: "an app definition (the master fills it in from app=NAME)".into(),
            got: e.to_string(),
        })
    })?;
    app.validate().map_err(|(key, message)| {
        Outcome::failed(
            RETCODE_BAD_ARGS,
            format!("{fun}: app {:?}: key `{key}`: {message}", app.name),
        )
    })?;
    Ok(app)
}

/// The repository (or manager) credentials the master sealed into the
/// job from the app's `credentials`: user (default `git`) and password.
pub(crate) fn credentials_of(args: &Args<'_>) -> Result<Option<(String, String)>, Outcome> {
    let user = args.string(SECRET_USERNAME).map_err(Outcome::from)?;
    let password = args.string(SECRET_PASSWORD).map_err(Outcome::from)?;
    Ok(password.map(|p| (user.unwrap_or_else(|| "git".to_owned()), p)))
}

/// The stages of one deploy or rollback: their events and, for the
/// return, what each did and how long it took.
pub(crate) struct Stages {
    events: EventSink,
    /// The job's cancellation: a failure after it fired is a cancellation.
    cancel: CancellationToken,
    pub(crate) done: Vec<StageReport>,
}

impl Stages {
    pub(crate) fn new(call: &Call) -> Stages {
        Stages {
            events: call.events.clone(),
            cancel: call.cancel.clone(),
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
        let (status, word, message) = match result {
            Ok(m) => (StageStatus::Succeeded, "succeeded", m),
            Err(m) => (StageStatus::Failed, "failed", m),
        };
        self.events
            .stage(stage, word, Some(ms), Some(message.clone()));
        self.done.push(StageReport {
            stage: stage.to_owned(),
            status,
            duration_ms: ms,
            message: message.clone(),
        });
    }

    pub(crate) fn log(&self, line: &str) {
        self.events.progress("log", line);
    }
}

/// What every deploy or rollback return says, success or not.
pub(crate) struct Report {
    pub(crate) app: String,
    pub(crate) action: ReleaseAction,
    pub(crate) started: Instant,
    pub(crate) revision: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) release: Option<String>,
    pub(crate) previous: Option<String>,
}

impl Report {
    pub(crate) fn new(app: &AppSpec, action: ReleaseAction, reference: Option<String>) -> Report {
        Report::named(&app.name, action, reference)
    }

    /// For a release of something that is not an app definition (a
    /// scheduled task, under its path).
    pub(crate) fn named(name: &str, action: ReleaseAction, reference: Option<String>) -> Report {
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

    /// The return's data: the typed report with the module's `extra`
    /// keys (an object) beside it.
    pub(crate) fn finish(self, stages: Stages, result: ReleaseResult, extra: Value) -> Value {
        self.report(stages, result, None, extra)
    }

    fn report(
        self,
        stages: Stages,
        result: ReleaseResult,
        failed: Option<(String, String)>,
        extra: Value,
    ) -> Value {
        let (failed_stage, error) = failed.unzip();
        let report = ReleaseReport {
            app: self.app,
            action: self.action,
            result,
            revision: self.revision,
            reference: self.reference,
            release: self.release,
            previous: self.previous,
            stages: stages.done,
            duration_ms: self.started.elapsed().as_millis() as u64,
            failed_stage,
            error,
            extra: match extra {
                Value::Object(map) => map,
                _ => Default::default(),
            },
        };
        serde_json::to_value(report).unwrap_or(Value::Null)
    }

    pub(crate) fn record(&self, jid: &str, result: ReleaseResult) -> ReleaseRecord {
        ReleaseRecord {
            release: self.release.clone().unwrap_or_default(),
            revision: self.revision.clone().unwrap_or_default(),
            reference: self.reference.clone(),
            jid: jid.to_owned(),
            action: self.action.as_str().to_owned(),
            result: result.as_str().to_owned(),
            at: halite_proto::time::now_ms(),
            duration_ms: self.started.elapsed().as_millis() as u64,
        }
    }
}

/// A failed deploy or rollback: the report with the failed stage and an
/// `error` sentence naming it, so the master can record it and people can
/// read it. The return code says cancelled (`RETCODE_TIMEOUT`) when the
/// job's cancellation fired, failed (`RETCODE_ERROR`) otherwise.
///
/// `result` is where the release ended: failed (it never went live),
/// rolled back (it went live and was switched back) or live (it is live
/// although a later step failed), as in the release history.
pub(crate) fn failure(
    report: Report,
    stages: Stages,
    stage: &str,
    error: String,
    extra: Value,
    result: ReleaseResult,
) -> Outcome {
    let retcode = if stages.cancel.is_cancelled() {
        RETCODE_TIMEOUT
    } else {
        RETCODE_ERROR
    };
    let failed = (stage.to_owned(), format!("{stage} failed: {error}"));
    Outcome {
        success: false,
        retcode,
        data: report.report(stages, result, Some(failed), extra),
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
    failure(report, stages, stage.0, error, extra, ReleaseResult::Failed)
}

/// The stage names a deploy return lists, in order (for tests).
#[cfg(test)]
pub(crate) fn stage_names(data: &Value) -> Vec<&str> {
    data["stages"]
        .as_array()
        .map(|stages| stages.iter().filter_map(|s| s["stage"].as_str()).collect())
        .unwrap_or_default()
}
