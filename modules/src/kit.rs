//! The release kit every deploy module uses: the app definition and
//! repository credentials a job carries, and the release driver
//! ([`ReleaseRun`]) that runs a deploy or rollback of any kind stage by
//! stage — the path's lock, stage events, one history format, and the
//! typed release report its return carries
//! (`halite_proto::release::ReleaseReport`) that the master decodes into
//! release records and statistics. A failure's return code comes from the
//! job's cancellation token, never from error text.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use halite_proto::app::{AppSpec, LockPolicy, SECRET_PASSWORD, SECRET_USERNAME};
use halite_proto::release::{
    ReleaseAction, ReleaseReport, ReleaseResult, Stage, StageReport, StageStatus,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::args::{ArgError, Args};
use crate::history::{History, ReleaseRecord};
use crate::lock::{DeployLock, LockError};
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

/// The release history of `app`'s path, oldest first; a history that
/// cannot be read fails the call (`fun`) and names the file.
pub(crate) fn history_of(app: &AppSpec, fun: &str) -> Result<Vec<ReleaseRecord>, Outcome> {
    History::at(&app.path)
        .read()
        .map_err(|e| Outcome::failed(RETCODE_ERROR, format!("{fun}: {e}")))
}

/// The repository (or manager) credentials the master sealed into the
/// job from the app's `credentials`: user (default `git`) and password.
pub(crate) fn credentials_of(args: &Args<'_>) -> Result<Option<(String, String)>, Outcome> {
    let user = args.string(SECRET_USERNAME).map_err(Outcome::from)?;
    let password = args.string(SECRET_PASSWORD).map_err(Outcome::from)?;
    Ok(password.map(|p| (user.unwrap_or_else(|| "git".to_owned()), p)))
}

/// What a release knows about itself as it goes, for its report and its
/// history record. Deploy modules fill in what they learn (revision,
/// release, previous) as stages complete.
pub(crate) struct Report {
    pub(crate) app: String,
    pub(crate) action: ReleaseAction,
    pub(crate) started: Instant,
    pub(crate) revision: Option<String>,
    pub(crate) reference: Option<String>,
    pub(crate) release: Option<String>,
    pub(crate) previous: Option<String>,
}

/// How a release's stages ended when nothing failed.
pub(crate) struct Ended {
    result: ReleaseResult,
    extra: Value,
}

impl Ended {
    /// The release is live; `extra` (an object) goes beside the report.
    pub(crate) fn live(extra: Value) -> Ended {
        Ended {
            result: ReleaseResult::Live,
            extra,
        }
    }

    /// What was asked for was live already; nothing changed.
    pub(crate) fn unchanged(extra: Value) -> Ended {
        Ended {
            result: ReleaseResult::Unchanged,
            extra,
        }
    }
}

/// Why a release stopped, where it ended and what the module adds.
pub(crate) struct Failure {
    error: String,
    result: ReleaseResult,
    stage: Option<Stage>,
    extra: Value,
}

impl Failure {
    /// A failure that left the live release as it was.
    pub(crate) fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            result: ReleaseResult::Failed,
            stage: None,
            extra: json!({}),
        }
    }

    /// Where the release ended instead: rolled back (it went live and
    /// was switched back) or live (a later step failed).
    pub(crate) fn ended(mut self, result: ReleaseResult) -> Failure {
        self.result = result;
        self
    }

    /// The module's keys beside the report (an object).
    pub(crate) fn with(mut self, extra: Value) -> Failure {
        self.extra = extra;
        self
    }

    /// The stage to blame when none ran (a refusal before the first).
    pub(crate) fn at(mut self, stage: Stage) -> Failure {
        self.stage = Some(stage);
        self
    }
}

/// Where a release happens on the minion: its deploy path, whose lock it
/// takes and whose history it writes.
struct Place {
    root: PathBuf,
    /// How long to wait for another deploy's lock (`lock = "wait"`).
    wait: Option<Duration>,
}

/// The release driver: one deploy or rollback of any kind, run stage by
/// stage. Every deploy module goes through it, so every kind
///
/// - takes its path's deploy lock at the start of its first stage (a
///   wait for another job is reported as a log line), and holds it to
///   the end;
/// - reports each stage live (`started`, then `succeeded` or `failed`
///   with its duration and message) and in the return;
/// - writes one history record at the end, under the lock (not for a
///   release that changed nothing, nor a rollback that never switched);
/// - returns the typed [`ReleaseReport`], with the failed stage, an
///   `error` naming it, and a return code that says cancelled when the
///   job's cancellation fired (never read from error text).
pub(crate) struct ReleaseRun {
    events: EventSink,
    cancel: CancellationToken,
    jid: String,
    place: Option<Place>,
    lock: Option<DeployLock>,
    done: Vec<StageReport>,
    failed: Option<Stage>,
    /// What the release knows so far (modules fill it in).
    pub(crate) report: Report,
}

impl ReleaseRun {
    /// A release of `app` under its path: locked per the app's `lock`
    /// policy, recorded in the path's history.
    pub(crate) fn for_app(
        call: &Call,
        app: &AppSpec,
        action: ReleaseAction,
        reference: Option<String>,
    ) -> ReleaseRun {
        let mut run = ReleaseRun::unplaced(call, &app.name, action, reference);
        run.place = Some(Place {
            root: app.path.clone(),
            wait: (app.lock == LockPolicy::Wait).then(|| Duration::from_secs(app.lock_wait)),
        });
        run
    }

    /// A release with no deploy path on the minion (a scheduled task's
    /// definition, named by its path): no lock, no history here (the
    /// master keeps its release records).
    pub(crate) fn unplaced(
        call: &Call,
        name: &str,
        action: ReleaseAction,
        reference: Option<String>,
    ) -> ReleaseRun {
        ReleaseRun {
            events: call.events.clone(),
            cancel: call.cancel.clone(),
            jid: call.jid.to_string(),
            place: None,
            lock: None,
            done: Vec::new(),
            failed: None,
            report: Report {
                app: name.to_owned(),
                action,
                started: Instant::now(),
                revision: None,
                reference,
                release: None,
                previous: None,
            },
        }
    }

    /// Runs one stage: `work` gives its value and a summary, or why it
    /// failed. The first stage takes the deploy lock before its work.
    pub(crate) async fn stage<T>(
        &mut self,
        stage: Stage,
        work: impl Future<Output = Result<(T, String), String>>,
    ) -> Result<T, String> {
        self.events.stage(stage.as_str(), "started", None, None);
        let started = Instant::now();
        let result = match self.take_lock().await {
            Ok(()) => work.await,
            Err(e) => Err(e),
        };
        let ms = started.elapsed().as_millis() as u64;
        let (status, word, message) = match &result {
            Ok((_, summary)) => (StageStatus::Succeeded, "succeeded", summary.clone()),
            Err(e) => (StageStatus::Failed, "failed", e.clone()),
        };
        self.events
            .stage(stage.as_str(), word, Some(ms), Some(message.clone()));
        self.done.push(StageReport {
            stage,
            status,
            duration_ms: ms,
            message,
        });
        if result.is_err() {
            self.failed = Some(stage);
        }
        result.map(|(value, _)| value)
    }

    /// [`ReleaseRun::stage`] for a stage whose failure ends the release
    /// with the live release unchanged.
    pub(crate) async fn step<T>(
        &mut self,
        stage: Stage,
        work: impl Future<Output = Result<(T, String), String>>,
    ) -> Result<T, Failure> {
        self.stage(stage, work).await.map_err(Failure::new)
    }

    /// A log line in the running stage.
    pub(crate) fn log(&self, line: &str) {
        self.events.progress("log", line);
    }

    /// The history of the release's path (None for an unplaced release).
    pub(crate) fn history(&self) -> Option<History> {
        self.place.as_ref().map(|p| History::at(&p.root))
    }

    /// Writes `record` to the history now (a rollback marking the release
    /// it left as bad). Only while the lock is held; a failure is logged,
    /// never fatal.
    pub(crate) async fn note(&self, record: ReleaseRecord) {
        if self.lock.is_some() {
            self.write_history(record).await;
        }
    }

    /// This release's history record, ending as `result`.
    pub(crate) fn record(&self, result: ReleaseResult) -> ReleaseRecord {
        ReleaseRecord {
            release: self.report.release.clone().unwrap_or_default(),
            revision: self.report.revision.clone().unwrap_or_default(),
            reference: self.report.reference.clone(),
            jid: self.jid.clone(),
            action: self.report.action,
            result,
            at: halite_proto::time::now_ms(),
            duration_ms: self.report.started.elapsed().as_millis() as u64,
        }
    }

    /// Ends the release: its history record, the lock released, and the
    /// return carrying the report.
    pub(crate) async fn end(mut self, ended: Result<Ended, Failure>) -> Outcome {
        let result = match &ended {
            Ok(ended) => ended.result,
            Err(failure) => failure.result,
        };
        let changed_nothing = result == ReleaseResult::Unchanged
            || (self.report.action == ReleaseAction::Rollback && result == ReleaseResult::Failed);
        if self.lock.is_some() && !changed_nothing {
            self.write_history(self.record(result)).await;
        }
        self.lock = None;
        tracing::info!(app = %self.report.app, release = ?self.report.release, result = result.as_str(), "release ended");
        match ended {
            Ok(Ended { result, extra }) => Outcome::ok(self.into_report(result, None, extra)),
            Err(failure) => {
                let retcode = if self.cancel.is_cancelled() {
                    RETCODE_TIMEOUT
                } else {
                    RETCODE_ERROR
                };
                let stage = failure
                    .stage
                    .or(self.failed)
                    .or(self.done.last().map(|s| s.stage))
                    .unwrap_or(Stage::Prepare);
                let error = format!("{stage} failed: {}", failure.error);
                Outcome {
                    success: false,
                    retcode,
                    data: self.into_report(failure.result, Some((stage, error)), failure.extra),
                }
            }
        }
    }

    async fn take_lock(&mut self) -> Result<(), String> {
        let Some(place) = &self.place else {
            return Ok(());
        };
        if self.lock.is_some() {
            return Ok(());
        }
        let (root, jid) = (place.root.clone(), self.jid.clone());
        let first = blocking(move || crate::lock::take(&root, &jid, None)).await?;
        let lock = match (first, place.wait) {
            (Ok(lock), _) => lock,
            (Err(LockError::Locked { jid: holder, .. }), Some(wait)) => {
                self.log(&format!(
                    "waiting up to {}s for job {holder}, which is deploying to {}",
                    wait.as_secs(),
                    place.root.display()
                ));
                let (root, jid) = (place.root.clone(), self.jid.clone());
                blocking(move || crate::lock::take(&root, &jid, Some(wait)))
                    .await?
                    .map_err(|e| e.to_string())?
            }
            (Err(e), _) => return Err(e.to_string()),
        };
        self.lock = Some(lock);
        Ok(())
    }

    async fn write_history(&self, record: ReleaseRecord) {
        let Some(history) = self.history() else {
            return;
        };
        let written = blocking(move || history.record(record).map_err(|e| e.to_string())).await;
        if let Err(e) = written.and_then(|r| r) {
            tracing::warn!("cannot write the release history: {e}");
            self.log(&format!("cannot write the release history: {e}"));
        }
    }

    fn into_report(
        self,
        result: ReleaseResult,
        failed: Option<(Stage, String)>,
        extra: Value,
    ) -> Value {
        let (failed_stage, error) = failed.unzip();
        let report = ReleaseReport {
            app: self.report.app,
            action: self.report.action,
            result,
            revision: self.report.revision,
            reference: self.report.reference,
            release: self.report.release,
            previous: self.report.previous,
            stages: self.done,
            duration_ms: self.report.started.elapsed().as_millis() as u64,
            failed_stage,
            error,
            extra: match extra {
                Value::Object(map) => map,
                _ => Default::default(),
            },
        };
        serde_json::to_value(report).unwrap_or(Value::Null)
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("internal error: {e}"))
}

/// The stage names a deploy return lists, in order (for tests).
#[cfg(test)]
pub(crate) fn stage_names(data: &Value) -> Vec<&str> {
    data["stages"]
        .as_array()
        .map(|stages| stages.iter().filter_map(|s| s["stage"].as_str()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;
    use halite_proto::release::ReleaseReport;

    fn app(path: &std::path::Path) -> AppSpec {
        serde_json::from_value(json!({
            "name": "shop", "repo": "https://example.invalid/shop.git", "target": "*",
            "path": path.display().to_string(), "lock": "refuse",
        }))
        .unwrap()
    }

    fn report(outcome: &Outcome) -> ReleaseReport {
        serde_json::from_value(outcome.data.clone()).unwrap()
    }

    async fn ok(summary: &str) -> Result<((), String), String> {
        Ok(((), summary.to_owned()))
    }

    async fn fails(why: &str) -> Result<((), String), String> {
        Err(why.to_owned())
    }

    #[tokio::test]
    async fn a_release_reports_its_stages_and_writes_one_history_record() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let call = call("x.deploy", vec![], json!({}));
        let mut run = ReleaseRun::for_app(&call, &app, ReleaseAction::Deploy, Some("v1".into()));
        run.report.release = Some("v1".into());
        run.step(Stage::Fetch, ok("fetched")).await.ok().unwrap();
        run.step(Stage::Deploy, ok("switched")).await.ok().unwrap();
        let out = run.end(Ok(Ended::live(json!({ "changed": true })))).await;
        assert!(out.success);
        let report = report(&out);
        assert_eq!(report.result, ReleaseResult::Live);
        let stages: Vec<Stage> = report.stages.iter().map(|s| s.stage).collect();
        assert_eq!(stages, [Stage::Fetch, Stage::Deploy]);
        assert_eq!(report.extra["changed"], true);
        let history = History::at(dir.path()).read().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].release, "v1");
        assert_eq!(history[0].result, ReleaseResult::Live);
        assert!(
            crate::lock::holder(dir.path()).is_none(),
            "the lock is released"
        );
    }

    #[tokio::test]
    async fn a_second_release_of_a_locked_path_fails_in_its_first_stage_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let first_call = call("x.deploy", vec![], json!({}));
        let mut first = ReleaseRun::for_app(&first_call, &app, ReleaseAction::Deploy, None);
        first.step(Stage::Fetch, ok("fetched")).await.ok().unwrap();

        let second_call = call("x.deploy", vec![], json!({}));
        let mut second = ReleaseRun::for_app(&second_call, &app, ReleaseAction::Deploy, None);
        let failed = second
            .step(Stage::Fetch, ok("never runs"))
            .await
            .err()
            .unwrap();
        let out = second.end(Err(failed)).await;
        assert!(!out.success);
        assert_eq!(out.retcode, RETCODE_ERROR);
        assert_eq!(report(&out).failed_stage, Some(Stage::Fetch));
        assert!(History::at(dir.path()).read().unwrap().is_empty());
        assert!(
            crate::lock::holder(dir.path()).is_some(),
            "the first release still holds the lock"
        );
        first.end(Ok(Ended::unchanged(json!({})))).await;
        assert!(crate::lock::holder(dir.path()).is_none());
        assert!(
            History::at(dir.path()).read().unwrap().is_empty(),
            "unchanged is not recorded"
        );
    }

    #[tokio::test]
    async fn a_failure_names_its_stage_and_a_cancelled_one_says_so_in_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let call = call("x.deploy", vec![], json!({}));
        let mut run = ReleaseRun::for_app(&call, &app, ReleaseAction::Deploy, None);
        run.step(Stage::Prepare, ok("built")).await.ok().unwrap();
        let e = run.stage(Stage::Verify, fails("503")).await.unwrap_err();
        call.cancel.cancel();
        let out = run
            .end(Err(Failure::new(e).ended(ReleaseResult::RolledBack)))
            .await;
        assert_eq!(out.retcode, RETCODE_TIMEOUT);
        let report = report(&out);
        assert_eq!(report.failed_stage, Some(Stage::Verify));
        assert_eq!(report.result, ReleaseResult::RolledBack);
        assert_eq!(report.stages[1].status, StageStatus::Failed);
        let history = History::at(dir.path()).read().unwrap();
        assert_eq!(history[0].result, ReleaseResult::RolledBack);
    }

    #[tokio::test]
    async fn a_rollback_that_never_switched_leaves_the_history_alone() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path());
        let call = call("x.rollback", vec![], json!({}));
        let mut run = ReleaseRun::for_app(&call, &app, ReleaseAction::Rollback, None);
        let e = run.stage(Stage::Deploy, fails("gone")).await.unwrap_err();
        let out = run.end(Err(Failure::new(e))).await;
        assert_eq!(report(&out).failed_stage, Some(Stage::Deploy));
        assert!(History::at(dir.path()).read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_unplaced_release_takes_no_lock_and_keeps_no_history() {
        let call = call("win_task.create", vec![], json!({}));
        let mut run = ReleaseRun::unplaced(&call, "\\halite\\job", ReleaseAction::Deploy, None);
        assert!(run.history().is_none());
        run.step(Stage::Deploy, ok("imported")).await.ok().unwrap();
        let out = run.end(Ok(Ended::live(json!({})))).await;
        assert!(out.success);
        assert_eq!(report(&out).app, "\\halite\\job");
    }
}
