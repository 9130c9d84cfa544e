//! Decides whether a verified job runs, runs it, and produces signed
//! events and a signed, spooled return.
//!
//! The link has already checked the master's signature. Here a job is
//! refused when it is not for this minion, has expired (beyond the
//! configured clock skew), or its jid was already run (the replay guard
//! is on disk, so this holds across restarts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use halite_modules::{Call, EventSink, Outcome, Registry, RETCODE_ERROR, RETCODE_TIMEOUT};
use halite_pki::{KeyPair, SessionKey};
use halite_proto::catalog::{saltutil, sys};
use halite_proto::message::{
    Event, EventBody, Job, Return, VouchedJob, KILL_JOB, LIST_MODULES, SYNC_MODULES,
};
use halite_proto::time::now_ms;
use halite_proto::{Jid, Target};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::outbox::Outbox;
use crate::seen::SeenJobs;

/// How long a job sealed under a newer session key waits for the link to
/// fetch that key before failing.
const SESSION_WAIT: Duration = Duration::from_secs(10);

/// The session keys of every master this minion is authenticated with,
/// by epoch (epochs are creation times in ms, so masters do not clash).
/// A job's sealed arguments name the epoch that opens them.
#[derive(Clone, Default)]
pub struct SessionKeys {
    /// The masters' session keys, by epoch (jobs are published under them).
    pub shared: std::collections::BTreeMap<u64, SessionKey>,
    /// This minion's own key from each master (by master id), for the
    /// secrets sealed to it alone.
    pub personal: std::collections::BTreeMap<String, SessionKey>,
}

impl SessionKeys {
    /// No keys yet.
    pub fn new() -> SessionKeys {
        SessionKeys::default()
    }
}

/// A signed message for the master(s).
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Envelope bytes.
    pub bytes: Vec<u8>,
    /// For a return: its jid and nonce, which the master's ack must echo.
    pub ack: Option<(Jid, Vec<u8>)>,
}

/// What is kept about a running job, to report it if the minion dies.
#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    fun: String,
    master: String,
    started_at: u64,
    /// The publisher's signed summary, for the return of an interrupted
    /// job to the other masters (see [`Executor::vouch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job: Option<VouchedJob>,
}

/// How a job reached the minion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobSource {
    /// Published on the PUB socket: a replay here is suspicious.
    Published,
    /// Re-offered by catch-up after a (re)connect: jobs this minion already
    /// ran are expected among them.
    Catchup,
}

/// Why a job was not run (already logged).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its target does not include this minion.
    NotForMe,
    /// Its `expires_at` has passed.
    Expired,
    /// The target could not be parsed.
    Error,
}

/// Runs jobs for one minion.
pub struct Executor {
    id: String,
    key: Arc<KeyPair>,
    registry: Arc<Registry>,
    grains: Arc<Value>,
    seen: Mutex<SeenJobs>,
    outbox: Arc<Outbox>,
    session: watch::Receiver<SessionKeys>,
    clock_skew: Duration,
    /// Running jobs: the handle that cancels each (`saltutil.kill_job`)
    /// and what `saltutil.running` shows of it.
    running: Arc<Mutex<HashMap<Jid, RunningJob>>>,
    /// `data_dir/running`: a marker per job between its start and its
    /// spooled return, so a job cut short by a crash still gets a return.
    markers: std::path::PathBuf,
    shutdown: CancellationToken,
    lua: Arc<crate::lua_store::LuaStore>,
    /// Does this minion serve several masters? Then each return carries
    /// the publisher's signed job summary, the only word the other
    /// masters take for a job they did not publish.
    several_masters: bool,
    /// Where this minion's spans go (`otel_endpoint`), if anywhere.
    traces: Option<halite_daemon::traces::Traces>,
}

/// A job running now.
struct RunningJob {
    cancel: CancellationToken,
    /// Salt's view of it (`saltutil.running`, `saltutil.find_job`).
    shown: Value,
}

/// What [`Executor::new`] needs.
pub struct ExecutorParts {
    /// Minion id.
    pub id: String,
    /// Minion key (signs returns and events).
    pub key: Arc<KeyPair>,
    /// Modules.
    pub registry: Arc<Registry>,
    /// Grains.
    pub grains: Arc<Value>,
    /// Replay guard.
    pub seen: SeenJobs,
    /// Where signed returns and events go (and returns are spooled).
    pub outbox: Arc<Outbox>,
    /// Session keys as received from the masters.
    pub session: watch::Receiver<SessionKeys>,
    /// Expiry tolerance.
    pub clock_skew: Duration,
    /// Cancels running jobs.
    pub shutdown: CancellationToken,
    /// Where running-job markers live (`data_dir/running`).
    pub markers: std::path::PathBuf,
    /// Lua modules (installed from jobs, checked against the master's signature).
    pub lua: Arc<crate::lua_store::LuaStore>,
    /// Whether the minion serves several masters (hot or failover).
    pub several_masters: bool,
    /// Where spans go (`otel_endpoint`), if anywhere.
    pub traces: Option<halite_daemon::traces::Traces>,
}

impl Executor {
    /// Assembles an executor.
    pub fn new(parts: ExecutorParts) -> Executor {
        Executor {
            id: parts.id,
            key: parts.key,
            registry: parts.registry,
            grains: parts.grains,
            seen: Mutex::new(parts.seen),
            outbox: parts.outbox,
            session: parts.session,
            clock_skew: parts.clock_skew,
            running: Arc::new(Mutex::new(HashMap::new())),
            markers: parts.markers,
            shutdown: parts.shutdown,
            lua: parts.lua,
            several_masters: parts.several_masters,
            traces: parts.traces,
        }
    }

    /// Jobs running now (reported in heartbeats).
    pub fn running(&self) -> Vec<Jid> {
        self.running
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Takes a job whose signature the link verified. Refusals decided at
    /// once (target, expiry) come back as `Err`; the replay guard is checked
    /// in the spawned task (it fsyncs), which refuses and logs a replay.
    pub fn accept(self: &Arc<Self>, job: Job, source: JobSource) -> Result<(), Refusal> {
        let span = tracing::info_span!(
            "job",
            jid = %job.jid,
            minion = %self.id,
            fun = %job.fun,
            user = %job.user
        );
        let _enter = span.enter();
        match Target::parse(job.tgt_type, &job.tgt) {
            Ok(target) if target.matches(&self.id, &self.grains) => {}
            Ok(_) => {
                tracing::debug!("job not for this minion");
                return Err(Refusal::NotForMe);
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a job with an unparsable target");
                return Err(Refusal::Error);
            }
        }
        let now = now_ms();
        let keep_until = job.expires_at + self.clock_skew.as_millis() as u64;
        if now > keep_until {
            tracing::warn!(expires_at = job.expires_at, now, "refused an expired job");
            return Err(Refusal::Expired);
        }
        // The replay guard fsyncs: record the jid on the blocking pool, not
        // on the connection loop that called us. Its mutex still lets only
        // one of two deliveries of a jid through.
        let executor = self.clone();
        tokio::spawn(
            async move {
                let (guard, jid) = (executor.clone(), job.jid.clone());
                let marker = Marker {
                    fun: job.fun.clone(),
                    master: job.master.clone(),
                    started_at: now,
                    job: executor.vouch(&job),
                };
                let recorded = tokio::task::spawn_blocking(move || {
                    let first = guard.record_jid(&jid, keep_until, now)?;
                    let ready = if first {
                        guard.ready_to_record(&jid, &marker)
                    } else {
                        Ok(())
                    };
                    Ok::<_, String>((first, ready))
                })
                .await;
                match recorded {
                    Ok(Ok((true, Ok(())))) => {}
                    Ok(Ok((true, Err(e)))) => {
                        // Run unrecorded, a crash would lose what it did:
                        // refuse it, saying why, in a return.
                        tracing::error!(error = %e, "cannot record the job on this minion; not run");
                        let outcome = Outcome::failed(
                            RETCODE_ERROR,
                            format!("not run: this minion cannot record the job before running it ({e}); free space in its data_dir"),
                        );
                        executor.finish(&job, now, outcome).await;
                        return;
                    }
                    Ok(Ok((false, _))) if source == JobSource::Published => {
                        tracing::warn!("refused a replayed job (this jid already ran here)");
                        return;
                    }
                    Ok(Ok((false, _))) => {
                        tracing::debug!("catch-up offered a job that already ran here");
                        return;
                    }
                    Ok(Err(e)) => {
                        // Without a durable record the job could run twice.
                        tracing::error!(error = %e, "cannot record the jid; job not run");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "replay guard task failed; job not run");
                        return;
                    }
                }
                tracing::info!("job started");
                executor.run(job).await
            }
            .instrument(span.clone()),
        );
        Ok(())
    }

    /// Notes that `jid` is running (its marker) and checks that its
    /// return can be spooled: Err (naming the path) if either cannot be
    /// written, and then the job must not run.
    fn ready_to_record(&self, jid: &Jid, marker: &Marker) -> Result<(), String> {
        std::fs::create_dir_all(&self.markers)
            .and_then(|()| {
                let bytes = serde_json::to_vec(marker).map_err(std::io::Error::other)?;
                // Written aside and renamed: a kill between creating the
                // file and writing it must not leave an empty marker, which
                // would lose the interrupted job's return.
                let partial = self.markers.join(format!(".{jid}.partial"));
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, self.markers.join(jid.as_str()))
            })
            .map_err(|e| format!("{}: {e}", self.markers.display()))?;
        self.outbox.probe().inspect_err(|_| {
            let _ = std::fs::remove_file(self.markers.join(jid.as_str()));
        })
    }

    /// Gives every job that was running when the minion last stopped
    /// (crash, kill -9, power loss) a failed return saying so, spooled
    /// like any other: the master then records what happened instead of
    /// "did not return". Call once at start, before the links run.
    pub fn recover_interrupted(&self) {
        let Ok(entries) = std::fs::read_dir(&self.markers) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // A marker cut short before its rename: its job never ran.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let parsed = Jid::parse(&name).ok().zip(
                std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Marker>(&b).ok()),
            );
            let Some((jid, marker)) = parsed else {
                tracing::warn!(file = %path.display(), "dropped an unreadable running-job marker");
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if self.outbox.holds(&jid) {
                // Stopped after the real return was spooled: that return
                // stands, and goes out like any other.
                tracing::info!(%jid, minion = %self.id, "job finished before the minion stopped; its spooled return stands");
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let ret = Return {
                jid: jid.clone(),
                id: self.id.clone(),
                fun: marker.fun,
                success: false,
                retcode: RETCODE_ERROR,
                data: Value::String(
                    "interrupted: the minion stopped (crash, kill or power loss) while this job ran; \
                     what it did before is unknown — check the server before running it again"
                        .to_owned(),
                ),
                started_at: marker.started_at,
                finished_at: now_ms(),
                nonce: nonce(),
                master: marker.master,
                job: marker.job,
            };
            match self.key.sign_message(&self.id, &ret) {
                Ok(envelope) => match self.outbox.spool(&jid, &envelope.to_bytes()) {
                    Ok(()) => {
                        tracing::warn!(%jid, minion = %self.id, "job was interrupted by a minion stop; a failed return is spooled");
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        tracing::error!(%jid, error = %e, "cannot spool the return of an interrupted job")
                    }
                },
                Err(e) => {
                    tracing::error!(%jid, error = %e, "cannot sign the return of an interrupted job")
                }
            }
        }
    }

    /// What a return of `job` carries for the masters that did not
    /// publish it: its publisher's signed summary, when there are other
    /// masters to tell.
    fn vouch(&self, job: &Job) -> Option<VouchedJob> {
        if self.several_masters {
            VouchedJob::of(job)
        } else {
            None
        }
    }

    /// Records `jid` in the replay guard; false if it already ran here.
    fn record_jid(&self, jid: &Jid, keep_until: u64, now: u64) -> Result<bool, String> {
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        seen.prune(now.saturating_sub(self.clock_skew.as_millis() as u64));
        seen.insert(jid, keep_until)
            .map_err(|e| format!("{}: {e}", seen.path().display()))
    }

    async fn run(self: Arc<Self>, job: Job) {
        let cancel = self.shutdown.child_token();
        if let Ok(mut running) = self.running.lock() {
            let shown = serde_json::json!({
                "jid": job.jid, "fun": job.fun, "arg": job.arg, "tgt": job.tgt,
                "tgt_type": job.tgt_type, "user": job.user, "pid": std::process::id(),
                "id": self.id, "ret": "",
            });
            running.insert(
                job.jid.clone(),
                RunningJob {
                    cancel: cancel.clone(),
                    shown,
                },
            );
        }
        let started_at = now_ms();
        let outcome = match self.unseal(&job).await {
            Ok(_) if job.fun == KILL_JOB => self.kill(&job),
            Ok(_) if job.fun == saltutil::RUNNING.fun => self.running_jobs(&job.jid),
            Ok(_) if job.fun == saltutil::FIND_JOB.fun => self.find_job(&job),
            Ok(kwargs) if job.fun.starts_with("sys.") => self.sys(&job, &kwargs),
            Ok(_) if job.fun == SYNC_MODULES => self.lua.sync(&job.modules),
            Ok(kwargs) if job.fun == LIST_MODULES => self
                .lua
                .list(kwargs.get("master").and_then(|v| v.as_object())),
            Ok(kwargs) => match self.install_modules(&job) {
                Ok(()) => self.call(&job, kwargs, cancel).await,
                Err(message) => Outcome::failed(RETCODE_ERROR, message),
            },
            Err(message) => Outcome::failed(RETCODE_ERROR, message),
        };
        self.finish(&job, started_at, outcome).await;
        if let Ok(mut running) = self.running.lock() {
            running.remove(&job.jid);
        }
    }

    /// Signs, spools (unspooled if the spool cannot take it) and sends a
    /// job's return, then drops its running marker.
    async fn finish(&self, job: &Job, started_at: u64, mut outcome: Outcome) {
        let depth = halite_proto::envelope::depth(&outcome.data);
        if depth > halite_proto::envelope::MAX_DATA_DEPTH {
            // The master would not keep it; say so instead of losing it.
            outcome.data = serde_json::Value::String(format!(
                "the result nests {depth} levels deep, more than {}: not sent",
                halite_proto::envelope::MAX_DATA_DEPTH
            ));
        }
        let ret = Return {
            jid: job.jid.clone(),
            id: self.id.clone(),
            fun: job.fun.clone(),
            success: outcome.success,
            retcode: outcome.retcode,
            data: outcome.data,
            started_at,
            finished_at: now_ms(),
            nonce: nonce(),
            master: job.master.clone(),
            job: self.vouch(job),
        };
        tracing::info!(success = ret.success, retcode = ret.retcode, "job finished");
        self.trace_run(&ret);
        let ack = Some((ret.jid.clone(), ret.nonce.clone()));
        match self.key.sign_message(&self.id, &ret) {
            Ok(envelope) => {
                let bytes = envelope.to_bytes();
                // fsync blocks: keep it off the async workers that carry
                // heartbeats and other jobs.
                let (outbox, jid, copy) = (self.outbox.clone(), job.jid.clone(), bytes.clone());
                let spooled = tokio::task::spawn_blocking(move || outbox.spool(&jid, &copy)).await;
                match spooled {
                    Ok(Ok(())) => {
                        // The return is on disk: the marker has done its
                        // job. Unspooled, the marker stays, so a crash
                        // before the master has the return still reports one.
                        let marker = self.markers.join(job.jid.as_str());
                        if let Err(e) = std::fs::remove_file(&marker) {
                            tracing::debug!(error = %e, "no running marker to remove");
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot spool the return; sending it unspooled")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "spool task failed; sending the return unspooled")
                    }
                }
                self.outbox.send(Outgoing { bytes, ack });
            }
            Err(e) => tracing::error!(error = %e, "cannot sign the return"),
        }
    }

    /// This minion's span of a job it ran, when `otel_endpoint` is set: a
    /// child of the master's span for this minion, in the job's trace
    /// (`halite_daemon::traces`).
    fn trace_run(&self, ret: &Return) {
        use halite_daemon::traces::{span_id, trace_id, Span};
        let Some(traces) = &self.traces else {
            return;
        };
        let jid = ret.jid.as_str();
        traces.record(Span {
            trace_id: trace_id(jid),
            span_id: span_id(jid, &["run", &self.id]),
            parent: Some(span_id(jid, &["minion", &self.id])),
            name: format!("run {}", ret.fun),
            start_ms: ret.started_at,
            end_ms: ret.finished_at,
            error: !ret.success,
            attributes: vec![
                ("halite.jid", Value::from(jid)),
                ("halite.minion", Value::from(self.id.as_str())),
                ("halite.fun", Value::from(ret.fun.as_str())),
                ("halite.retcode", Value::from(ret.retcode)),
            ],
        });
    }

    /// Keyword arguments with the secret ones opened: this minion's own
    /// copy (sealed to it alone), or the copy sealed under the session key
    /// by a master from before per-minion sealing.
    async fn unseal(&self, job: &Job) -> Result<Map<String, Value>, String> {
        let mut kwargs = job.kwarg.clone();
        let plain = if !job.secrets.is_empty() {
            let Some(sealed) = job.secrets.get(&self.id) else {
                return Err(format!(
                    "no secret arguments were sealed for {}: it had not authenticated with master {} when the job was published; run the job again",
                    self.id, job.master
                ));
            };
            let key = self
                .session
                .borrow()
                .personal
                .get(&job.master)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "cannot open secret arguments: no key of this minion from master {}",
                        job.master
                    )
                })?;
            halite_pki::open_for_minion(&key, job.jid.as_str(), &self.id, sealed)
                .map_err(|e| format!("cannot open secret arguments: {e}"))?
        } else if let Some(sealed) = &job.secret {
            let mut session = self.session.clone();
            let key = tokio::time::timeout(SESSION_WAIT, async {
                loop {
                    if let Some(key) = session.borrow_and_update().shared.get(&sealed.epoch) {
                        return Some(key.clone());
                    }
                    if session.changed().await.is_err() {
                        return None;
                    }
                }
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| {
                format!(
                    "cannot open secret arguments: no session key of epoch {}",
                    sealed.epoch
                )
            })?;
            key.open(job.jid.as_str().as_bytes(), sealed)
                .map_err(|e| format!("cannot open secret arguments: {e}"))?
        } else {
            return Ok(kwargs);
        };
        let secrets: std::collections::BTreeMap<String, String> =
            halite_proto::envelope::decode("secrets", &plain).map_err(|e| e.to_string())?;
        for (name, value) in secrets {
            kwargs.insert(name, Value::String(value));
        }
        Ok(kwargs)
    }

    /// Installs the Lua modules a job carries (signed by the master) that
    /// this minion lacks or has another version of.
    fn install_modules(&self, job: &Job) -> Result<(), String> {
        for module in &job.modules {
            self.lua.install(module).inspect_err(|message| {
                tracing::warn!(module = %module.name, "{message}");
            })?;
        }
        Ok(())
    }

    /// `saltutil.running`: what runs here now, as Salt lists it (this
    /// job itself left out, as Salt leaves out the asking job).
    fn running_jobs(&self, asking: &Jid) -> Outcome {
        let mut jobs: Vec<(Jid, Value)> = self
            .running
            .lock()
            .map(|r| {
                r.iter()
                    .filter(|(jid, _)| *jid != asking)
                    .map(|(jid, job)| (jid.clone(), job.shown.clone()))
                    .collect()
            })
            .unwrap_or_default();
        jobs.sort_by(|a, b| a.0.cmp(&b.0));
        Outcome::ok(Value::Array(jobs.into_iter().map(|(_, v)| v).collect()))
    }

    /// `saltutil.find_job JID`: that job if it runs here, else `{}`.
    fn find_job(&self, job: &Job) -> Outcome {
        let wanted = job
            .arg
            .first()
            .or_else(|| job.kwarg.get("jid"))
            .and_then(|v| v.as_str())
            .and_then(|s| Jid::parse(s).ok());
        let Some(wanted) = wanted else {
            return Outcome::failed(RETCODE_ERROR, "saltutil.find_job needs a job id");
        };
        let found = self
            .running
            .lock()
            .ok()
            .and_then(|r| r.get(&wanted).map(|j| j.shown.clone()));
        Outcome::ok(found.unwrap_or_else(|| Value::Object(Map::new())))
    }

    /// `sys.list_functions`, `sys.list_modules`, `sys.doc`: what this
    /// minion can run (its modules and installed Lua modules) and the
    /// catalog's word on each (Salt's shapes).
    fn sys(&self, job: &Job, kwargs: &Map<String, Value>) -> Outcome {
        let mut all = self.registry.functions();
        all.extend(
            [&saltutil::MODULE, &sys::MODULE]
                .iter()
                .flat_map(|m| m.functions.iter().map(|f| f.fun.to_owned())),
        );
        all.sort();
        let mut names: Vec<String> = job
            .arg
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        if let Some(Value::String(more)) = kwargs.get("name") {
            names.push(more.clone());
        }
        let wanted = |fun: &str| -> bool {
            names.is_empty()
                || names.iter().any(|n| {
                    let module = fun.split_once('.').map_or(fun, |(m, _)| m);
                    n == module
                        || Target::parse(halite_proto::TargetType::Glob, n)
                            .is_ok_and(|g| g.matches(fun, &Value::Null))
                })
        };
        match job.fun.as_str() {
            "sys.list_functions" => Outcome::ok(Value::from(
                all.into_iter().filter(|f| wanted(f)).collect::<Vec<_>>(),
            )),
            "sys.list_modules" => {
                let mut modules: Vec<String> = all
                    .iter()
                    .map(|f| f.split_once('.').map_or(f.as_str(), |(m, _)| m).to_owned())
                    .collect();
                modules.dedup();
                Outcome::ok(Value::from(modules))
            }
            "sys.doc" => {
                let docs: Map<String, Value> = all
                    .into_iter()
                    .filter(|f| wanted(f))
                    .map(|f| {
                        let doc = halite_proto::catalog::function(&f)
                            .map(|c| c.doc.trim())
                            .filter(|d| !d.is_empty())
                            .map_or(Value::Null, |d| Value::String(d.to_owned()));
                        (f, doc)
                    })
                    .collect();
                Outcome::ok(Value::Object(docs))
            }
            other => Outcome::failed(
                RETCODE_ERROR,
                format!(
                    "unknown function `{other}`; the minion has: {}",
                    sys::MODULE.names().join(", ")
                ),
            ),
        }
    }

    /// `saltutil.kill_job JID`: cancels a running job (which then stops,
    /// rolling back what it can within the registry's grace, and returns
    /// as cancelled). The request itself is a job signed by the master.
    fn kill(&self, job: &Job) -> Outcome {
        let Some(target) = job
            .arg
            .first()
            .and_then(|v| v.as_str())
            .and_then(|s| Jid::parse(s).ok())
        else {
            return Outcome::failed(RETCODE_ERROR, format!("{KILL_JOB} needs a job id"));
        };
        let token = self
            .running
            .lock()
            .ok()
            .and_then(|running| running.get(&target).map(|job| job.cancel.clone()));
        match token {
            Some(token) => {
                token.cancel();
                tracing::warn!(target_jid = %target, "job cancelled by the master");
                Outcome::ok(serde_json::json!({ "cancelled": target.as_str() }))
            }
            None => Outcome::failed(
                RETCODE_ERROR,
                format!("job {target} is not running on this minion"),
            ),
        }
    }

    async fn call(
        &self,
        job: &Job,
        kwargs: Map<String, Value>,
        cancel: CancellationToken,
    ) -> Outcome {
        let mut kwargs = kwargs;
        halite_proto::app::expand_for_minion(&mut kwargs, &self.id);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward_events(
            self.key.clone(),
            self.id.clone(),
            job.jid.clone(),
            events_rx,
            self.outbox.clone(),
        ));
        let call = Call {
            jid: job.jid.clone(),
            fun: job.fun.clone(),
            args: job.arg.clone(),
            kwargs,
            grains: self.grains.clone(),
            cancel: cancel.clone(),
            events: EventSink::new(events_tx),
            published: halite_modules::Published {
                tgt: job.tgt.clone(),
                tgt_type: job.tgt_type.to_string(),
                user: job.user.clone(),
            },
        };
        let timeout = Duration::from_secs(job.timeout.max(1));
        let run = self.registry.run(call);
        tokio::pin!(run);
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            _ = tokio::time::sleep(timeout) => {
                // Let the module stop and clean up (the registry bounds how
                // long it may take), but report the job's own timeout.
                cancel.cancel();
                let _ = run.await;
                Outcome::failed(RETCODE_TIMEOUT, format!("{} timed out after {}s", job.fun, job.timeout))
            }
        };
        // The sink was moved into the call; once it is dropped the
        // forwarder drains what is left and ends.
        let _ = forwarder.await;
        outcome
    }
}

async fn forward_events(
    key: Arc<KeyPair>,
    id: String,
    jid: Jid,
    mut rx: mpsc::UnboundedReceiver<EventBody>,
    out: Arc<Outbox>,
) {
    let mut seq = 0;
    while let Some(body) = rx.recv().await {
        let event = Event {
            jid: jid.clone(),
            id: id.clone(),
            seq,
            at: now_ms(),
            body,
        };
        seq += 1;
        match key.sign_message(&id, &event) {
            Ok(envelope) => {
                out.send(Outgoing {
                    bytes: envelope.to_bytes(),
                    ack: None,
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot sign an event"),
        }
    }
}

/// 16 random bytes for request/reply binding.
pub fn nonce() -> Vec<u8> {
    let mut bytes = vec![0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), bytes.as_mut_slice());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Spool;
    use halite_proto::Envelope;

    fn executor(dir: &std::path::Path) -> (Executor, Spool) {
        let spool = Spool::open(&dir.join("spool")).expect("spool");
        let (outbox, _queues) = Outbox::new(vec![spool.clone()]);
        let registry = Arc::new(Registry::new());
        let (_tx, session) = watch::channel(SessionKeys::new());
        let executor = Executor::new(ExecutorParts {
            id: "web01".to_owned(),
            key: Arc::new(KeyPair::generate().expect("key")),
            registry: registry.clone(),
            grains: Arc::new(Value::Null),
            seen: SeenJobs::open(&dir.join("seen"), 0).expect("seen"),
            outbox: Arc::new(outbox),
            session,
            clock_skew: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            markers: dir.join("running"),
            lua: Arc::new(crate::lua_store::LuaStore::open(
                dir.join("lua"),
                dir.join("masters"),
                Default::default(),
                registry,
            )),
            several_masters: false,
            traces: None,
        });
        (executor, spool)
    }

    fn mark(executor: &Executor, jid: &Jid) {
        let marker = Marker {
            fun: "cmd.run".to_owned(),
            master: "m1".to_owned(),
            started_at: 1,
            job: None,
        };
        executor.ready_to_record(jid, &marker).expect("marker");
    }

    #[test]
    fn a_marker_without_a_return_becomes_a_failed_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (executor, spool) = executor(dir.path());
        let jid = Jid::from_unix_us(1_000_000);
        mark(&executor, &jid);
        executor.recover_interrupted();
        let spooled = spool.all();
        assert_eq!(spooled.len(), 1);
        let envelope = Envelope::from_bytes(&spooled[0].1).expect("envelope");
        let ret: Return = envelope.open().expect("return");
        assert!(!ret.success);
        assert_eq!((ret.fun.as_str(), ret.master.as_str()), ("cmd.run", "m1"));
        assert!(!dir.path().join("running").join(jid.as_str()).exists());
    }

    #[test]
    fn a_marker_appears_whole_and_a_partial_one_is_cleared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (executor, spool) = executor(dir.path());
        let jid = Jid::from_unix_us(3_000_000);
        mark(&executor, &jid);
        let running = dir.path().join("running");
        let names: Vec<String> = std::fs::read_dir(&running)
            .expect("markers")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![jid.to_string()]);
        let marker: Marker =
            serde_json::from_slice(&std::fs::read(running.join(jid.as_str())).expect("read"))
                .expect("a whole marker");
        assert_eq!(marker.fun, "cmd.run");
        // Killed between writing a marker and renaming it: the job never
        // ran, so there is nothing to report and nothing left behind.
        std::fs::remove_file(running.join(jid.as_str())).expect("remove");
        let partial = running.join(format!(".{jid}.partial"));
        std::fs::write(&partial, b"").expect("partial");
        executor.recover_interrupted();
        assert!(spool.all().is_empty());
        assert!(!partial.exists());
    }

    #[test]
    fn a_spooled_return_outlives_the_marker_of_its_job() {
        // Killed after the real return reached the spool but before the
        // marker went: the real return is what the master must get.
        let dir = tempfile::tempdir().expect("tempdir");
        let (executor, spool) = executor(dir.path());
        let jid = Jid::from_unix_us(2_000_000);
        mark(&executor, &jid);
        let real = Return {
            jid: jid.clone(),
            id: "web01".into(),
            fun: "cmd.run".into(),
            success: true,
            retcode: 0,
            data: serde_json::json!("the real return"),
            started_at: 0,
            finished_at: 0,
            nonce: vec![2; 16],
            master: "m1".into(),
            job: None,
        };
        let real = KeyPair::generate()
            .expect("key")
            .sign_message("web01", &real)
            .expect("sign")
            .to_bytes();
        spool.put(&jid, &real).expect("put");
        executor.recover_interrupted();
        assert_eq!(spool.all(), vec![(jid.clone(), real)]);
        assert!(!dir.path().join("running").join(jid.as_str()).exists());
    }
}
