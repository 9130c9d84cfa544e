//! `git_deploy`: put a tag, branch or commit of an application live, and
//! take it back in a blink.
//!
//! The app's definition ([`AppSpec`]) arrives with the job (the master
//! adds it from its `apps_dir`), so a minion needs no configuration of its
//! own. A deploy runs four stages, each reported as a stage event with its
//! duration and its output lines:
//!
//! 1. **prepare** — take the path's lock, fetch into the bare cache
//!    (`<path>/.halite/cache.git`), resolve the revision; stop here if it
//!    is already live; export its tree into `releases/<rev>-<time>/` and
//!    link the shared paths. Nothing live has changed yet.
//! 2. **pre_deploy** — the app's hook, run in the new release (so
//!    `composer install` or `npm ci` builds it before it goes live).
//! 3. **deploy** — switch `current` to the new release atomically.
//! 4. **post_deploy** — the app's hook, then the health check. A failure
//!    here switches back to the previous release when `auto_rollback` is
//!    set, and the return says so.
//!
//! A failure before the switch leaves the live release untouched and
//! removes the half-built one. `rollback` is a switch to a kept release
//! (never a fetch), followed by the post_deploy hook and health check.

mod repo;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use halite_proto::app::AppSpec;
use serde_json::{json, Value};

use halite_proto::catalog;
use halite_proto::catalog::git_deploy::{DEPLOY, MODULE, RELEASES, ROLLBACK, STATUS};

use crate::args::{Args, Signature};
use crate::kit::{app_of, blocking, credentials_of, Ended, Failure, ReleaseRun};
use crate::module::unknown_function;
use crate::releases::{ReleaseError, Releases};
use crate::{Call, EventSink, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};
use halite_proto::release::{ReleaseAction, ReleaseResult, Stage};
use repo::{Source, Wanted};

/// The `git_deploy` module.
pub(crate) struct GitDeployModule;

impl Module for GitDeployModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match MODULE.function(function) {
                Some(&DEPLOY) => deploy(call).await,
                Some(&ROLLBACK) => rollback(call).await,
                Some(&RELEASES) => releases(call).await,
                Some(&STATUS) => status(call).await,
                _ => unknown_function(self, function),
            }
        })
    }
}

/// The revision a deploy asks for: at most one of tag/branch/rev, else the
/// app's default tag, else its default branch.
fn wanted_of(args: &Args<'_>, app: &AppSpec) -> Result<Wanted, Outcome> {
    let tag = args.string("tag").map_err(Outcome::from)?;
    let branch = args.string("branch").map_err(Outcome::from)?;
    let rev = args.string("rev").map_err(Outcome::from)?;
    let given = [&tag, &branch, &rev].iter().filter(|v| v.is_some()).count();
    if given > 1 {
        return Err(Outcome::failed(
            RETCODE_BAD_ARGS,
            "git_deploy.deploy: give one of tag=, branch= or rev=, not several",
        ));
    }
    let wanted = match (tag, branch, rev) {
        (Some(t), _, _) => Wanted::Tag(t),
        (_, Some(b), _) => Wanted::Branch(b),
        (_, _, Some(r)) => Wanted::Rev(r),
        _ => match (&app.tag, &app.branch) {
            (Some(t), _) => Wanted::Tag(t.clone()),
            (_, Some(b)) => Wanted::Branch(b.clone()),
            _ => {
                return Err(Outcome::failed(
                    RETCODE_BAD_ARGS,
                    format!(
                        "git_deploy.deploy: say what to deploy (tag=, branch= or rev=); app {} has no default tag or branch",
                        app.name
                    ),
                ))
            }
        },
    };
    let name = match &wanted {
        Wanted::Tag(n) | Wanted::Branch(n) => n,
        Wanted::Rev(r) => {
            let hex = r.len() >= 4 && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(Outcome::failed(
                    RETCODE_BAD_ARGS,
                    format!(
                        "git_deploy.deploy: rev {r:?} must be a commit id (4 to 64 hex digits)"
                    ),
                ));
            }
            r
        }
    };
    halite_proto::app::validate_ref_name(name)
        .map_err(|m| Outcome::failed(RETCODE_BAD_ARGS, format!("git_deploy.deploy: {m}")))?;
    Ok(wanted)
}

/// Sets `flag` when the call is cancelled, so blocking git work stops.
struct Interrupt {
    flag: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Interrupt {
    fn new(call: &Call) -> Interrupt {
        let flag = Arc::new(AtomicBool::new(false));
        let cancel = call.cancel.clone();
        let set = Arc::clone(&flag);
        let watcher = tokio::spawn(async move {
            cancel.cancelled().await;
            set.store(true, Ordering::Relaxed);
        });
        Interrupt { flag, watcher }
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// Environment every hook and check command gets.
fn hook_env(
    app: &AppSpec,
    jid: &str,
    release: &str,
    revision: &str,
    reference: Option<&str>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("HALITE_APP".into(), app.name.clone());
    env.insert("HALITE_JID".into(), jid.to_owned());
    env.insert("HALITE_PATH".into(), app.path.display().to_string());
    env.insert("HALITE_RELEASE".into(), release.to_owned());
    env.insert(
        "HALITE_RELEASE_DIR".into(),
        app.path
            .join("releases")
            .join(release)
            .display()
            .to_string(),
    );
    env.insert("HALITE_REVISION".into(), revision.to_owned());
    env.insert(
        "HALITE_REF".into(),
        reference.unwrap_or_default().to_owned(),
    );
    env
}

/// Runs a hook; Ok is a summary, Err the failure with its last lines.
async fn run_hook(
    fun: &'static str,
    name: &str,
    command: &str,
    dir: &Path,
    env: BTreeMap<String, String>,
    app: &AppSpec,
    call: &Call,
) -> Result<String, String> {
    let timeout = Duration::from_secs(app.hook_timeout);
    match crate::process::run_shell(fun, command, dir, env, timeout, &call.events, &call.cancel)
        .await
    {
        Ok(done) if done.retcode == 0 => Ok(format!("{name} `{command}` exited 0")),
        Ok(done) => {
            let tail: Vec<&str> = done.output.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "{name} `{command}` exited {}{}",
                done.retcode,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {}", tail.join(" / "))
                }
            ))
        }
        Err(e) => Err(format!("{name} `{command}`: {e}")),
    }
}

/// The post_deploy stage's work, for a deploy and a rollback alike: the
/// hook (its failure only a warning when `stop_on_error` is off), then
/// the health check. Ok is the stage's summary.
async fn post_deploy_checks(
    app: &AppSpec,
    call: &Call,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
    roots: Vec<reqwest::Certificate>,
    warnings: &mut Vec<String>,
) -> Result<String, String> {
    let mut result = match &app.post_deploy {
        Some(hook) => {
            run_hook(
                "git_deploy.post_deploy",
                "post_deploy",
                hook,
                release_dir,
                env.clone(),
                app,
                call,
            )
            .await
        }
        None => Ok("no post_deploy hook".to_owned()),
    };
    if let Err(e) = &result {
        if !app.stop_on_error && !call.cancel.is_cancelled() {
            warnings.push(e.clone());
            result = Ok(format!("{e} (ignored: stop_on_error = false)"));
        }
    }
    let (Ok(hook_summary), Some(check)) = (&result, &app.health) else {
        return result;
    };
    crate::health::check(check, release_dir, env, roots, &call.events, &call.cancel)
        .await
        .map(|h| format!("{hook_summary}; {h}"))
}

/// The revision the live release was deployed from, per its history.
fn live_revision(releases: &Releases) -> Result<Option<(String, String)>, ReleaseError> {
    let Some(live) = releases.current()? else {
        return Ok(None);
    };
    let revision = releases
        .list()?
        .into_iter()
        .find(|r| r.name == live)
        .and_then(|r| r.last)
        .map(|r| r.revision)
        .unwrap_or_default();
    Ok(Some((live, revision)))
}

async fn deploy(call: Call) -> Outcome {
    let parsed = (|| {
        let args = Args::from_call(&DEPLOY, &call).map_err(Outcome::from)?;
        let app = app_of(&args, DEPLOY.fun)?;
        let wanted = wanted_of(&args, &app)?;
        let credentials = credentials_of(&args)?;
        Ok::<_, Outcome>((app, wanted, credentials))
    })();
    let (app, wanted, credentials) = match parsed {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    tracing::info!(app = %app.name, wanted = %wanted.describe(), "deploy starting");
    let mut run = ReleaseRun::for_app(&call, &app, ReleaseAction::Deploy, wanted.reference());
    let ended = deploy_stages(&mut run, &call, &app, &wanted, credentials).await;
    run.end(ended).await
}

/// A deploy's four stages (see the module's documentation).
async fn deploy_stages(
    run: &mut ReleaseRun,
    call: &Call,
    app: &AppSpec,
    wanted: &Wanted,
    credentials: Option<(String, String)>,
) -> Result<Ended, Failure> {
    let interrupt = Interrupt::new(call);
    // ---- prepare: fetch, resolve, export, link shared ----------------------
    let prepare = prepare_stage(call, app, wanted, credentials, &interrupt);
    let (releases, prepared, roots) = run.step(Stage::Prepare, prepare).await?;
    run.report.revision = Some(prepared.revision.clone());
    let release = match prepared.release {
        Prepared::AlreadyLive(live) => {
            let message = format!(
                "{} ({}) is already live in release {live}; nothing to do",
                short(&prepared.revision),
                wanted.describe()
            );
            run.report.release = Some(live);
            tracing::info!(app = %app.name, "deploy: revision already live");
            return Ok(Ended::unchanged(
                json!({ "changed": false, "message": message }),
            ));
        }
        Prepared::Built { name, .. } => name,
    };
    run.report.release = Some(release.clone());
    let release_dir = app.path.join("releases").join(&release);
    let env = hook_env(
        app,
        &call.jid.to_string(),
        &release,
        &prepared.revision,
        run.report.reference.as_deref(),
    );

    // ---- pre_deploy: hook in the new release -------------------------------
    let mut warnings: Vec<String> = Vec::new();
    let hook = async {
        let summary = match &app.pre_deploy {
            Some(hook) => {
                run_hook(
                    "git_deploy.pre_deploy",
                    "pre_deploy",
                    hook,
                    &release_dir,
                    env.clone(),
                    app,
                    call,
                )
                .await?
            }
            None => "no pre_deploy hook".to_owned(),
        };
        Ok(((), summary))
    };
    if let Err(e) = run.stage(Stage::PreDeploy, hook).await {
        if app.stop_on_error || call.cancel.is_cancelled() {
            discard(&releases, &release).await;
            return Err(Failure::new(e).with(json!({ "live_unchanged": true })));
        }
        warnings.push(e);
    }

    // ---- deploy: switch current --------------------------------------------
    let switch = async {
        let (switching, name) = (releases.clone(), release.clone());
        let previous =
            blocking(move || switching.switch(&name).map_err(|e| e.to_string())).await??;
        let message = match &previous {
            Some(p) => format!("current -> releases/{release} (was {p})"),
            None => format!("current -> releases/{release} (first release)"),
        };
        Ok((previous, message))
    };
    match run.stage(Stage::Deploy, switch).await {
        Ok(previous) => run.report.previous = previous,
        Err(e) => {
            discard(&releases, &release).await;
            return Err(Failure::new(e).with(json!({ "live_unchanged": true })));
        }
    }

    // ---- post_deploy: hook, then health check ------------------------------
    let checks = post_deploy_checks(app, call, &release_dir, &env, roots, &mut warnings);
    let checked = run
        .stage(Stage::PostDeploy, async { checks.await.map(|s| ((), s)) })
        .await;
    if let Err(e) = checked {
        return Err(switch_back(run, &releases, app, &release, e).await);
    }

    let keep = app.keep_releases;
    let pruning = releases.clone();
    let pruned = blocking(move || pruning.prune(keep).map_err(|e| e.to_string())).await;
    let pruned = match pruned.and_then(|p| p) {
        Ok(p) => p,
        Err(e) => {
            warnings.push(format!("release is live, but pruning failed: {e}"));
            Vec::new()
        }
    };
    tracing::info!(app = %app.name, release = %release, "deploy live");
    Ok(Ended::live(
        json!({ "changed": true, "pruned": pruned, "warnings": warnings, "files": prepared.files }),
    ))
}

/// The prepare stage's work: the layout opened, the revision fetched and
/// resolved, the new release exported (or found live already).
async fn prepare_stage(
    call: &Call,
    app: &AppSpec,
    wanted: &Wanted,
    credentials: Option<(String, String)>,
    interrupt: &Interrupt,
) -> Result<((Releases, PrepareResult, Vec<reqwest::Certificate>), String), String> {
    let roots = crate::http::extra_roots(app.ca_file.as_deref())?;
    let path = app.path.clone();
    let releases = blocking(move || Releases::open(&path).map_err(|e| e.to_string())).await??;
    call.events.progress(
        "log",
        &format!("fetching {} ({})", app.repo, wanted.describe()),
    );
    let prepared = {
        let (releases, app, wanted) = (releases.clone(), app.clone(), wanted.clone());
        let (flag, events) = (Arc::clone(&interrupt.flag), call.events.clone());
        let roots = roots.clone();
        blocking(move || prepare(&releases, &app, &wanted, credentials, roots, &flag, &events))
            .await??
    };
    let summary = match &prepared.release {
        Prepared::AlreadyLive(live) => format!(
            "{} ({}) is already live in release {live}; nothing to do",
            short(&prepared.revision),
            wanted.describe()
        ),
        Prepared::Built { summary, .. } => summary.clone(),
    };
    Ok(((releases, prepared, roots), summary))
}

/// After a failed post_deploy: back to the previous release when
/// `auto_rollback` is set; the failure says where the deploy ended.
async fn switch_back(
    run: &ReleaseRun,
    releases: &Releases,
    app: &AppSpec,
    release: &str,
    e: String,
) -> Failure {
    let Some(previous) = run.report.previous.clone() else {
        return Failure::new(format!(
            "{e}; {release} stays live (there is no previous release to go back to)"
        ))
        .ended(ReleaseResult::Live);
    };
    if !app.auto_rollback {
        return Failure::new(format!("{e}; {release} stays live (auto_rollback is off)"))
            .ended(ReleaseResult::Live);
    }
    let (switching, name) = (releases.clone(), previous.clone());
    let back = blocking(move || switching.switch(&name).map_err(|e| e.to_string())).await;
    match back.and_then(|b| b) {
        Ok(_) => {
            run.log(&format!("auto_rollback: current -> releases/{previous}"));
            Failure::new(format!("{e}; auto_rollback switched back to {previous}"))
                .ended(ReleaseResult::RolledBack)
                .with(json!({ "rolled_back_to": previous }))
        }
        Err(back_err) => Failure::new(format!(
            "{e}; auto_rollback to {previous} FAILED: {back_err}; {release} is still live"
        ))
        .ended(ReleaseResult::Live),
    }
}

fn short(revision: &str) -> &str {
    &revision[..revision.len().min(12)]
}

async fn discard(releases: &Releases, name: &str) {
    let releases = releases.clone();
    let name = name.to_owned();
    let removed = blocking(move || releases.discard(&name).map_err(|e| e.to_string())).await;
    if let Err(e) = removed.and_then(|r| r) {
        tracing::warn!("cannot remove a failed release: {e}");
    }
}

enum Prepared {
    AlreadyLive(String),
    Built { name: String, summary: String },
}

struct PrepareResult {
    revision: String,
    release: Prepared,
    files: usize,
}

/// Fetch (unless a wanted commit is already cached), resolve, and build the
/// release directory. Blocking.
fn prepare(
    releases: &Releases,
    app: &AppSpec,
    wanted: &Wanted,
    credentials: Option<(String, String)>,
    roots: Vec<reqwest::Certificate>,
    interrupt: &AtomicBool,
    events: &EventSink,
) -> Result<PrepareResult, String> {
    let started = Instant::now();
    let cache = cache_path(&app.path);
    let repo = repo::open_cache(&cache).map_err(|e| e.to_string())?;
    let cached = match wanted {
        Wanted::Rev(_) => repo::resolve(&repo, wanted, &app.repo).ok(),
        _ => None,
    };
    let commit = match cached {
        Some(commit) => {
            events.progress(
                "log",
                &format!(
                    "{} is already in the cache; not fetching",
                    wanted.describe()
                ),
            );
            commit
        }
        None => {
            let source = Source {
                url: &app.repo,
                credentials,
                roots,
            };
            let fetched = repo::fetch(&repo, &source, interrupt).map_err(|e| e.to_string())?;
            events.progress(
                "log",
                &if fetched.changed {
                    format!(
                        "fetched {} KiB in {} ms",
                        fetched.bytes / 1024,
                        started.elapsed().as_millis()
                    )
                } else {
                    format!("cache up to date ({} ms)", started.elapsed().as_millis())
                },
            );
            repo::resolve(&repo, wanted, &app.repo).map_err(|e| e.to_string())?
        }
    };
    let revision = commit.to_string();
    events.progress("log", &format!("{} is {revision}", wanted.describe()));
    let live = live_revision(releases).map_err(|e| e.to_string())?;
    if let Some((live, live_rev)) = &live {
        if *live_rev == revision {
            return Ok(PrepareResult {
                revision,
                release: Prepared::AlreadyLive(live.clone()),
                files: 0,
            });
        }
    }
    // Files unchanged since the live release are hard-linked from it
    // (see `link_unchanged`), which makes a small change a small write.
    let base = match live {
        Some((live, live_rev)) if app.link_unchanged => {
            live_base(releases, &repo, &app.path, &live, &live_rev)
        }
        _ => None,
    };
    let name = releases
        .create(&revision, halite_proto::time::now_ms())
        .map_err(|e| e.to_string())?;
    let dir = app.path.join("releases").join(&name);
    let export_started = Instant::now();
    let built = repo::export(&repo, commit, &dir, base.as_ref(), interrupt)
        .map_err(|e| e.to_string())
        .and_then(|mut exported| {
            releases
                .link_shared(&name, &app.shared)
                .map_err(|e| e.to_string())?;
            // Shared paths are links to shared/ now, not release files.
            exported
                .stamps
                .retain(|(file, _)| !app.shared.iter().any(|s| is_under(file, s)));
            releases
                .write_manifest(&name, &exported.stamps)
                .map_err(|e| e.to_string())?;
            Ok(exported)
        });
    match built {
        Ok(exported) => {
            for submodule in &exported.submodules {
                events.progress(
                    "log",
                    &format!("submodule {submodule} left empty (submodules are not fetched)"),
                );
            }
            let shared = if exported.linked > 0 {
                format!(
                    ", {} unchanged files shared with the live release",
                    exported.linked
                )
            } else {
                String::new()
            };
            let summary = format!(
                "{} files ({} KiB written{shared}) exported to releases/{name} in {} ms",
                exported.files,
                exported.bytes / 1024,
                export_started.elapsed().as_millis()
            );
            events.progress("log", &summary);
            Ok(PrepareResult {
                revision,
                release: Prepared::Built { name, summary },
                files: exported.files,
            })
        }
        Err(e) => {
            if let Err(cleanup) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "cannot remove a half-built release: {cleanup}");
            }
            Err(e)
        }
    }
}

/// The live release as a base to share files with, when it has a
/// manifest and its commit is in the cache.
fn live_base(
    releases: &Releases,
    repo: &gix::Repository,
    root: &Path,
    live: &str,
    revision: &str,
) -> Option<repo::Base> {
    let manifest = releases.manifest(live)?;
    repo::Base::new(repo, revision, root.join("releases").join(live), manifest)
}

/// Is tree path `file` the shared path `shared` or inside it?
fn is_under(file: &str, shared: &str) -> bool {
    let shared = shared.trim_end_matches('/');
    file == shared
        || file
            .strip_prefix(shared)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn cache_path(root: &Path) -> PathBuf {
    root.join(".halite").join("cache.git")
}

async fn rollback(call: Call) -> Outcome {
    let parsed = (|| {
        let args = Args::from_call(&ROLLBACK, &call).map_err(Outcome::from)?;
        let app = app_of(&args, ROLLBACK.fun)?;
        let to = args.string("to").map_err(Outcome::from)?;
        Ok::<_, Outcome>((app, to))
    })();
    let (app, to) = match parsed {
        Ok(p) => p,
        Err(outcome) => return outcome,
    };
    let mut run = ReleaseRun::for_app(&call, &app, ReleaseAction::Rollback, None);
    let ended = match never_deployed(&app) {
        Some(message) => Err(Failure::new(message).at(Stage::Deploy)),
        None => rollback_stages(&mut run, &call, &app, to).await,
    };
    run.end(ended).await
}

/// What a rollback's deploy stage found: the release to go back to, or
/// that it is live already.
enum Chosen {
    Switched {
        target: String,
        revision: String,
        reference: Option<String>,
        previous: Option<String>,
    },
    AlreadyLive(String),
}

/// A rollback: the switch (deploy), then post_deploy.
async fn rollback_stages(
    run: &mut ReleaseRun,
    call: &Call,
    app: &AppSpec,
    to: Option<String>,
) -> Result<Ended, Failure> {
    let releases = {
        let path = app.path.clone();
        blocking(move || Releases::open(&path).map_err(|e| e.to_string()))
            .await
            .and_then(|r| r)
            .map_err(|e| Failure::new(e).at(Stage::Deploy))?
    };
    let switch = async {
        let chosen = {
            let (releases, app) = (releases.clone(), app.clone());
            blocking(move || choose_rollback(&releases, &app, to.as_deref())).await??
        };
        let Some((target, revision, reference)) = chosen else {
            let message = "nothing to do: that release is already live".to_owned();
            return Ok((Chosen::AlreadyLive(message.clone()), message));
        };
        // Files it shares with later releases may have been edited in
        // place there: check them against its manifest and restore them
        // from the cache.
        let verified = {
            let (releases, app) = (releases.clone(), app.clone());
            let (name, revision) = (target.clone(), revision.clone());
            blocking(move || verify_release(&releases, &app, &name, &revision)).await??
        };
        if let Some(note) = verified {
            call.events.progress("log", &note);
        }
        let previous = {
            let (releases, name) = (releases.clone(), target.clone());
            blocking(move || releases.switch(&name).map_err(|e| e.to_string())).await??
        };
        let message = format!(
            "current -> releases/{target} (was {})",
            previous.as_deref().unwrap_or("nothing")
        );
        let chosen = Chosen::Switched {
            target,
            revision,
            reference,
            previous,
        };
        Ok((chosen, message))
    };
    let chosen = run
        .stage(Stage::Deploy, switch)
        .await
        .map_err(|e| Failure::new(e).with(json!({ "live_unchanged": true })))?;
    let (target, revision) = match chosen {
        Chosen::AlreadyLive(message) => {
            return Ok(Ended::unchanged(
                json!({ "changed": false, "message": message }),
            ))
        }
        Chosen::Switched {
            target,
            revision,
            reference,
            previous,
        } => {
            run.report.release = Some(target.clone());
            run.report.revision = Some(revision.clone());
            run.report.reference = reference;
            run.report.previous = previous;
            (target, revision)
        }
    };
    // The release that was taken back is known bad: a later plain rollback
    // must not return to it.
    if let Some(previous) = run.report.previous.clone() {
        let mut bad = run.record(ReleaseResult::RolledBack);
        bad.release = previous;
        bad.revision = String::new();
        bad.reference = None;
        bad.duration_ms = 0;
        run.note(bad).await;
    }

    let release_dir = app.path.join("releases").join(&target);
    let jid = call.jid.to_string();
    let env = hook_env(
        app,
        &jid,
        &target,
        &revision,
        run.report.reference.as_deref(),
    );
    // A CA file that cannot be read leaves only the system roots, as a
    // deploy would have failed on it before.
    let roots = crate::http::extra_roots(app.ca_file.as_deref()).unwrap_or_default();
    let mut warnings = Vec::new();
    let checks = post_deploy_checks(app, call, &release_dir, &env, roots, &mut warnings);
    let checked = run
        .stage(Stage::PostDeploy, async { checks.await.map(|s| ((), s)) })
        .await;
    match checked {
        Ok(()) => {
            tracing::info!(app = %app.name, release = %target, "rollback live");
            Ok(Ended::live(json!({ "changed": true })))
        }
        Err(e) => Err(Failure::new(format!(
            "{e}; {target} is live (a rollback does not switch again on its own)"
        ))
        .ended(ReleaseResult::Live)),
    }
}

/// The kept release a rollback goes to: `to` as a release name, a
/// revision prefix, or a tag looked up in the cache (never fetched); or,
/// without `to`, the previous release. `Ok(None)`: it is already live.
fn choose_rollback(
    releases: &Releases,
    app: &AppSpec,
    to: Option<&str>,
) -> Result<Option<(String, String, Option<String>)>, String> {
    let kept = releases.list().map_err(|e| e.to_string())?;
    let live = releases.current().map_err(|e| e.to_string())?;
    let describe = |name: &str| {
        kept.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.last.clone())
            .map(|r| (r.revision, r.reference))
            .unwrap_or_default()
    };
    let target = match to {
        None => releases
            .previous()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "there is no previous release to roll back to".to_owned())?,
        Some(to) => {
            if kept.iter().any(|r| r.name == to) {
                to.to_owned()
            } else {
                let by_revision = |revision: &str| {
                    kept.iter()
                        .rev()
                        .find(|r| {
                            r.last.as_ref().is_some_and(|l| {
                                !l.revision.is_empty() && l.revision.starts_with(revision)
                            })
                        })
                        .map(|r| r.name.clone())
                };
                let is_hex = to.len() >= 4 && to.bytes().all(|b| b.is_ascii_hexdigit());
                let found = if is_hex {
                    by_revision(&to.to_ascii_lowercase())
                } else {
                    None
                };
                let found = found.or_else(|| {
                    let cache = cache_path(&app.path);
                    if !cache.join("HEAD").is_file() {
                        return None;
                    }
                    let repo = repo::open_cache(&cache).ok()?;
                    let commit =
                        repo::resolve(&repo, &Wanted::Tag(to.to_owned()), &app.repo).ok()?;
                    by_revision(&commit.to_string())
                });
                found.ok_or_else(|| {
                    let names: Vec<&str> = kept.iter().map(|r| r.name.as_str()).collect();
                    format!(
                        "no kept release matches {to:?} (a release name, a revision or a tag); kept: {}",
                        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                    )
                })?
            }
        }
    };
    if live.as_deref() == Some(target.as_str()) {
        return Ok(None);
    }
    let (revision, reference) = describe(&target);
    Ok(Some((target, revision, reference)))
}

/// Checks every file of release `name` against its manifest; files
/// changed since the export are rewritten from the cache. `Ok(Some)` is a
/// note of what was restored; Err when files changed and cannot be.
fn verify_release(
    releases: &Releases,
    app: &AppSpec,
    name: &str,
    revision: &str,
) -> Result<Option<String>, String> {
    let Some(manifest) = releases.manifest(name) else {
        return Ok(None);
    };
    let dir = releases.path_of(name).map_err(|e| e.to_string())?;
    let mut changed: Vec<String> = manifest
        .iter()
        .filter(|(file, stamp)| crate::releases::Stamp::of(&dir.join(file)).ok() != Some(**stamp))
        .map(|(file, _)| file.clone())
        .collect();
    if changed.is_empty() {
        return Ok(None);
    }
    changed.sort();
    let cache = cache_path(&app.path);
    let commit = gix::ObjectId::from_hex(revision.as_bytes()).ok();
    let (Some(commit), true) = (commit, cache.join("HEAD").is_file()) else {
        return Err(format!(
            "{} file(s) of release {name} were changed since it was deployed (first: {}), and there is no cache to restore them from",
            changed.len(),
            changed[0]
        ));
    };
    let repo = repo::open_cache(&cache).map_err(|e| e.to_string())?;
    let restored = repo::restore(&repo, commit, &dir, &changed).map_err(|e| e.to_string())?;
    let mut all: std::collections::HashMap<String, crate::releases::Stamp> = manifest;
    all.extend(restored);
    let all: Vec<(String, crate::releases::Stamp)> = all.into_iter().collect();
    releases
        .write_manifest(name, &all)
        .map_err(|e| e.to_string())?;
    Ok(Some(format!(
        "restored {} file(s) of {name} that were changed since it was deployed (first: {})",
        changed.len(),
        changed[0]
    )))
}

/// Why a path holds no deploy of `app` yet, if it does not.
fn never_deployed(app: &AppSpec) -> Option<String> {
    (!app.path.join("releases").is_dir()).then(|| {
        format!(
            "{} has never been deployed to {} on this minion",
            app.name,
            app.path.display()
        )
    })
}

/// A read-only function (`releases`, `status`): its arguments, then
/// `read` on the blocking pool (it reads the release directory).
async fn inspect(
    call: Call,
    sig: &'static Signature,
    read: fn(AppSpec) -> Result<Value, Outcome>,
) -> Outcome {
    let app = match Args::from_call(sig, &call)
        .map_err(Outcome::from)
        .and_then(|a| app_of(&a, sig.fun))
    {
        Ok(app) => app,
        Err(outcome) => return outcome,
    };
    match tokio::task::spawn_blocking(move || read(app)).await {
        Ok(Ok(data)) => Outcome::ok(data),
        Ok(Err(outcome)) => outcome,
        Err(e) => Outcome::failed(RETCODE_ERROR, format!("internal error: {e}")),
    }
}

fn failed(e: ReleaseError) -> Outcome {
    Outcome::failed(RETCODE_ERROR, e.to_string())
}

async fn releases(call: Call) -> Outcome {
    inspect(call, &RELEASES, |app| {
        if let Some(message) = never_deployed(&app) {
            return Err(Outcome::failed(RETCODE_ERROR, message));
        }
        let kept = Releases::open(&app.path)
            .and_then(|r| r.list())
            .map_err(failed)?;
        let rows: Vec<Value> = kept
            .iter()
            .rev()
            .map(|r| {
                let last = r.last.as_ref();
                json!({
                    "release": r.name,
                    "live": r.live,
                    "revision": last.map(|l| l.revision.clone()),
                    "reference": last.and_then(|l| l.reference.clone()),
                    "jid": last.map(|l| l.jid.clone()),
                    "at": last.map(|l| l.at),
                    "action": last.map(|l| l.action),
                    "result": last.map(|l| l.result),
                })
            })
            .collect();
        Ok(json!({
            "app": app.name,
            "path": app.path,
            "live": kept.iter().find(|r| r.live).map(|r| r.name.clone()),
            "releases": rows,
        }))
    })
    .await
}

async fn status(call: Call) -> Outcome {
    inspect(call, &STATUS, |app| {
        if never_deployed(&app).is_some() {
            return Ok(json!({
                "app": app.name,
                "path": app.path,
                "deployed": false,
                "live": null,
            }));
        }
        let releases = Releases::open(&app.path).map_err(failed)?;
        let kept = releases.list().map_err(failed)?;
        let live = kept.iter().find(|r| r.live);
        let last = live.and_then(|r| r.last.clone());
        let lock = releases
            .lock_holder()
            .map(|(jid, pid, since)| json!({"jid": jid, "pid": pid, "since": since}));
        Ok(json!({
            "app": app.name,
            "path": app.path,
            "deployed": live.is_some(),
            "live": live.map(|r| r.name.clone()),
            "revision": last.as_ref().map(|l| l.revision.clone()),
            "reference": last.as_ref().and_then(|l| l.reference.clone()),
            "since": last.as_ref().map(|l| l.at),
            "jid": last.as_ref().map(|l| l.jid.clone()),
            "previous": releases.previous().map_err(failed)?,
            "releases_kept": kept.len(),
            "locked_by": lock,
            "cache": cache_path(&app.path).join("HEAD").is_file(),
        }))
    })
    .await
}

#[cfg(test)]
mod tests;
