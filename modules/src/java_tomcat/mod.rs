//! `java_tomcat`: releases a Java web application (a WAR) on Tomcat in
//! one job, with git_deploy's four stages shown live:
//!
//! 1. **fetch**: the WAR by URL into the app's artifact cache (or found
//!    there);
//! 2. **prepare**: the WAR checked against the job's `sha256` (a mismatch
//!    fails here and changes nothing), the manager answers with these
//!    credentials, and the versions of the context deployed now;
//! 3. **deploy**: the WAR goes in as `context##version` next to the old
//!    version (Tomcat parallel deployment: old sessions stay on the old
//!    version, new ones go to the new one), or is copied into `webapps/`
//!    for installs without the manager;
//! 4. **verify**: the app's health check; if it fails, the new version is
//!    undeployed and the old one, never touched, serves everything again.
//!    If it passes, the old versions are undeployed (unless `keep_old`).
//!
//! Rollback goes back to the previous live version, redeploying it from
//! the artifact cache when it is no longer deployed (no download).
//! The app's history is `<path>/.halite/history.json` (crate::history).

mod manager;

use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use halite_proto::app::{AppKind, AppSpec, TomcatSpec};
use serde_json::json;

use halite_proto::catalog;
use halite_proto::catalog::java_tomcat::{
    DEPLOY, LIST, MODULE, RELOAD, ROLLBACK, START, STATUS, STOP, UNDEPLOY,
};

use crate::args::{Args, Signature};
use crate::artifact::ArtifactCache;
use crate::history::{live_and_previous, History};
use crate::kit::{app_of, credentials_of, history_of, Ended, Failure, ReleaseRun};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};
use halite_proto::release::{ReleaseAction, ReleaseResult, Stage};
use manager::{Deployed, Manager};

/// Time allowed after autodeploy unpacked a WAR for its context to start.
const AUTODEPLOY_GRACE: Duration = Duration::from_secs(3);

/// The `java_tomcat` module.
pub(crate) struct JavaTomcatModule;

impl Module for JavaTomcatModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let result = match MODULE.function(function) {
                Some(&DEPLOY) => deploy(&call).await,
                Some(&ROLLBACK) => rollback(&call).await,
                Some(&STATUS) => status(&call).await,
                Some(&LIST) => list(&call).await,
                Some(sig @ (&START | &STOP | &RELOAD | &UNDEPLOY)) => control(&call, sig).await,
                _ => return unknown_function(self, function),
            };
            result.unwrap_or_else(|outcome| outcome)
        })
    }
}

/// Everything a call needs about the app.
struct Target {
    app: AppSpec,
    tomcat: TomcatSpec,
    manager: Option<Manager>,
}

fn target_of(args: &Args<'_>, fun: &'static str) -> Result<Target, Outcome> {
    let app = app_of(args, fun)?;
    if app.kind != AppKind::Tomcat {
        return Err(Outcome::failed(
            RETCODE_BAD_ARGS,
            format!(
                "{fun}: app {} is a {:?} app, not a tomcat one",
                app.name, app.kind
            ),
        ));
    }
    let tomcat = app.tomcat.clone().ok_or_else(|| {
        Outcome::failed(
            RETCODE_BAD_ARGS,
            format!("{fun}: app {} has no [tomcat] table", app.name),
        )
    })?;
    let manager = match &tomcat.manager_url {
        Some(url) => {
            let (user, password) = credentials_of(args)?.ok_or_else(|| {
                Outcome::failed(
                    RETCODE_BAD_ARGS,
                    format!(
                        "{fun}: app {} has a manager_url but the job carries no credentials",
                        app.name
                    ),
                )
            })?;
            Some(
                Manager::new(url, user, password, app.ca_file.as_deref())
                    .map_err(|e| Outcome::failed(RETCODE_ERROR, format!("{fun}: {e}")))?,
            )
        }
        None => None,
    };
    Ok(Target {
        app,
        tomcat,
        manager,
    })
}

/// The file name Tomcat's autodeploy reads as `context##version`.
fn war_name(context: &str, version: &str) -> String {
    let base = match context.trim_matches('/') {
        "" => "ROOT".to_owned(),
        path => path.replace('/', "#"),
    };
    format!("{base}##{version}.war")
}

/// The versions of the app's context deployed now.
async fn deployed(target: &Target) -> Result<Vec<Deployed>, String> {
    match &target.manager {
        Some(manager) => Ok(manager
            .list()
            .await?
            .into_iter()
            .filter(|d| d.path == target.tomcat.context)
            .collect()),
        None => {
            let Some(webapps) = &target.tomcat.webapps else {
                return Ok(Vec::new());
            };
            let prefix = war_name(&target.tomcat.context, "");
            let prefix = prefix.trim_end_matches(".war");
            let mut found = Vec::new();
            if let Ok(entries) = std::fs::read_dir(webapps) {
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(version) = name
                        .strip_prefix(prefix)
                        .and_then(|v| v.strip_suffix(".war"))
                    {
                        found.push(Deployed {
                            path: target.tomcat.context.clone(),
                            state: "deployed".into(),
                            sessions: 0,
                            version: Some(version.to_owned()),
                            doc_base: name.clone(),
                        });
                    }
                }
            }
            Ok(found)
        }
    }
}

async fn put_version(target: &Target, version: &str, war: &Path) -> Result<(), String> {
    match (&target.manager, &target.tomcat.webapps) {
        (Some(manager), _) => manager.deploy(&target.tomcat.context, version, war).await,
        (None, Some(webapps)) => {
            let dest = webapps.join(war_name(&target.tomcat.context, version));
            let tmp = webapps.join(format!(
                ".{}.halite-tmp",
                war_name(&target.tomcat.context, version)
            ));
            tokio::fs::copy(war, &tmp)
                .await
                .map_err(|e| format!("cannot copy into {}: {e}", webapps.display()))?;
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|e| format!("cannot move into {}: {e}", dest.display()))?;
            Ok(())
        }
        (None, None) => Err("the app has neither manager_url nor webapps".into()),
    }
}

async fn remove_version(target: &Target, version: &str) -> Result<(), String> {
    match (&target.manager, &target.tomcat.webapps) {
        (Some(manager), _) => manager
            .command("undeploy", &target.tomcat.context, Some(version))
            .await
            .map(|_| ()),
        (None, Some(webapps)) => {
            let path = webapps.join(war_name(&target.tomcat.context, version));
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cannot remove {}: {e}", path.display()))
                }
                _ => Ok(()),
            }
        }
        (None, None) => Ok(()),
    }
}

/// The app's health check; without one, the version must show as
/// running in the manager (or simply be in place, for webapps installs).
async fn verify(target: &Target, version: &str, call: &Call) -> Result<String, String> {
    let wait = Duration::from_secs(target.tomcat.autodeploy_wait);
    if let (None, Some(webapps)) = (&target.manager, &target.tomcat.webapps) {
        // The old version answers the health URL too: first wait until
        // autodeploy has unpacked the new one (unpackWARs, the default).
        let name = war_name(&target.tomcat.context, version);
        let unpacked = webapps.join(name.trim_end_matches(".war"));
        let deadline = Instant::now() + wait;
        while !unpacked.is_dir() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "Tomcat did not deploy {name} within {}s (autodeploy on, unpackWARs on?)",
                    wait.as_secs()
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                () = call.cancel.cancelled() => return Err("cancelled".into()),
            }
        }
        // Unpacking comes before the context starts; starting a small app
        // takes well under a second. Without the manager there is no
        // exact signal: this grace is the approximation (docs say so).
        tokio::time::sleep(AUTODEPLOY_GRACE).await;
    }
    match &target.app.health {
        Some(health) => {
            let roots = crate::http::extra_roots(target.app.ca_file.as_deref())?;
            let mut check = health.clone();
            if target.manager.is_none() {
                // Autodeploy picks the file up within its scan interval.
                let attempts = (wait.as_secs() / health.interval.max(1)).max(1) as u32;
                check.retries = check.retries.max(attempts);
            }
            crate::health::check(
                &check,
                &target.app.path,
                &Default::default(),
                roots,
                &call.events,
                &call.cancel,
            )
            .await
        }
        None => {
            let running = deployed(target).await?.into_iter().any(|d| {
                d.version.as_deref() == Some(version)
                    && (d.state == "running" || d.state == "deployed")
            });
            if running {
                Ok(format!("{version} is running (no health check defined)"))
            } else {
                Err(format!("{version} is not running after deploy"))
            }
        }
    }
}

async fn deploy(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&DEPLOY, call).map_err(Outcome::from)?;
    let target = target_of(&args, DEPLOY.fun)?;
    let wanted = crate::artifact::Wanted::from_args(&args, DEPLOY.fun)?;
    let mut run = ReleaseRun::for_app(
        call,
        &target.app,
        ReleaseAction::Deploy,
        Some(wanted.version.clone()),
    );
    run.report.revision = Some(wanted.sha256.clone());
    run.report.release = Some(wanted.version.clone());
    let ended = deploy_stages(&mut run, call, &target, &wanted).await;
    Ok(run.end(ended).await)
}

fn listed(versions: &[String]) -> String {
    if versions.is_empty() {
        "nothing".to_owned()
    } else {
        versions.join(", ")
    }
}

/// A deploy's four stages (see the module's documentation).
async fn deploy_stages(
    run: &mut ReleaseRun,
    call: &Call,
    target: &Target,
    wanted: &crate::artifact::Wanted,
) -> Result<Ended, Failure> {
    let (app, version) = (&target.app, &wanted.version);
    let fetched = run.step(Stage::Fetch, wanted.fetch_for(app)).await?;

    let prepare = async {
        let war = wanted.check_for(app, fetched)?;
        let before = deployed(target).await?;
        let history = History::at(&app.path).read().map_err(|e| e.to_string())?;
        let old: Vec<String> = before
            .iter()
            .filter_map(|d| d.version.clone())
            .filter(|v| v != version)
            .collect();
        let already = before
            .iter()
            .any(|d| d.version.as_deref() == Some(version) && d.state == "running");
        let summary = format!("deployed now: {}", listed(&old));
        Ok(((war, old, already, live_and_previous(&history).0), summary))
    };
    let (war, old, already, previous) = run.step(Stage::Prepare, prepare).await?;
    run.report.previous = previous;
    if already && old.is_empty() {
        return Ok(Ended::unchanged(
            json!({ "context": target.tomcat.context }),
        ));
    }

    let put = async {
        put_version(target, version, &war).await?;
        let summary = format!(
            "{}##{version} deployed next to {}",
            target.tomcat.context,
            listed(&old)
        );
        Ok(((), summary))
    };
    if let Err(e) = run.stage(Stage::Deploy, put).await {
        // A half-uploaded version is not left behind.
        let _ = remove_version(target, version).await;
        return Err(Failure::new(e));
    }

    let check = async {
        let started = Instant::now();
        let summary = verify(target, version, call).await?;
        let mut removed = Vec::new();
        if !target.tomcat.keep_old {
            for v in &old {
                match remove_version(target, v).await {
                    Ok(()) => removed.push(v.clone()),
                    Err(e) => call
                        .events
                        .progress("log", &format!("could not undeploy {v}: {e}")),
                }
            }
        }
        Ok((
            removed,
            format!("{summary} ({} ms)", started.elapsed().as_millis()),
        ))
    };
    match run.stage(Stage::Verify, check).await {
        Ok(removed) => Ok(Ended::live(
            json!({ "context": target.tomcat.context, "undeployed": removed }),
        )),
        Err(e) => {
            // The new version goes; the old one never stopped serving.
            let message = match remove_version(target, version).await {
                Ok(()) => format!("{e}; {version} undeployed, {} serves", listed(&old)),
                Err(c) => format!("{e}; undeploying {version} failed too: {c}"),
            };
            Err(Failure::new(message)
                .ended(ReleaseResult::RolledBack)
                .with(json!({ "context": target.tomcat.context })))
        }
    }
}

async fn rollback(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&ROLLBACK, call).map_err(Outcome::from)?;
    let target = target_of(&args, ROLLBACK.fun)?;
    let app = &target.app;
    let (live, previous) = live_and_previous(&history_of(app, ROLLBACK.fun)?);
    let to = match args.string("to").map_err(Outcome::from)?.or(previous) {
        Some(to) => to,
        None => {
            return Err(Outcome::failed(
                RETCODE_ERROR,
                format!(
                    "{}: app {} has no earlier live version to go back to",
                    ROLLBACK.fun, app.name
                ),
            ))
        }
    };
    let mut run = ReleaseRun::for_app(call, app, ReleaseAction::Rollback, Some(to.clone()));
    run.report.release = Some(to.clone());
    run.report.previous = live;
    let ended = rollback_stages(&mut run, call, &target, &to).await;
    Ok(run.end(ended).await)
}

/// A rollback: prepare (where the version comes from), deploy, verify.
async fn rollback_stages(
    run: &mut ReleaseRun,
    call: &Call,
    target: &Target,
    to: &str,
) -> Result<Ended, Failure> {
    let app = &target.app;
    let prepare = async {
        let now = deployed(target).await?;
        let present = now.iter().any(|d| d.version.as_deref() == Some(to));
        if present {
            return Ok(((now, None), format!("{to} is still deployed")));
        }
        match ArtifactCache::new(app.path.join("artifacts")).lookup(to)? {
            Some((cached, path)) => Ok((
                (now, Some((cached.sha256, path))),
                format!("{to} from the artifact cache"),
            )),
            None => Err(format!("{to} is neither deployed nor in the artifact cache; deploy it again with its url and sha256")),
        }
    };
    let (now, cached) = run.step(Stage::Prepare, prepare).await?;
    let war = cached.map(|(sha256, path)| {
        run.report.revision = Some(sha256);
        path
    });

    let put = async {
        if let Some(war) = &war {
            put_version(target, to, war).await?;
        } else if let Some(manager) = &target.manager {
            if let Err(e) = manager
                .command("start", &target.tomcat.context, Some(to))
                .await
            {
                call.events.progress("log", &format!("start {to}: {e}"));
            }
        }
        Ok(((), format!("{to} deployed")))
    };
    run.step(Stage::Deploy, put).await?;

    let check = async {
        let summary = verify(target, to, call).await?;
        for d in &now {
            if let Some(v) = d.version.as_deref().filter(|v| *v != to) {
                if let Err(e) = remove_version(target, v).await {
                    call.events
                        .progress("log", &format!("could not undeploy {v}: {e}"));
                }
            }
        }
        Ok(((), summary))
    };
    match run.stage(Stage::Verify, check).await {
        Ok(()) => Ok(Ended::live(json!({ "context": target.tomcat.context }))),
        Err(e) => {
            if war.is_some() {
                let _ = remove_version(target, to).await;
            }
            Err(Failure::new(e))
        }
    }
}

async fn status(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&STATUS, call).map_err(Outcome::from)?;
    let target = target_of(&args, STATUS.fun)?;
    let now = deployed(&target)
        .await
        .map_err(|e| Outcome::failed(RETCODE_ERROR, e))?;
    let history = history_of(&target.app, STATUS.fun)?;
    let (live, previous) = live_and_previous(&history);
    Ok(Outcome::ok(json!({
        "app": target.app.name,
        "context": target.tomcat.context,
        "live": live,
        "previous": previous,
        "deployed": now,
        "history": history.iter().rev().take(10).collect::<Vec<_>>(),
    })))
}

async fn list(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&LIST, call).map_err(Outcome::from)?;
    let target = target_of(&args, LIST.fun)?;
    let manager = target.manager.as_ref().ok_or_else(|| {
        Outcome::failed(
            RETCODE_BAD_ARGS,
            "java_tomcat.list needs an app with a manager_url",
        )
    })?;
    let all = manager
        .list()
        .await
        .map_err(|e| Outcome::failed(RETCODE_ERROR, e))?;
    Ok(Outcome::ok(json!(all)))
}

/// start, stop, reload, undeploy of one version (default: the live one).
/// `start`, `stop`, `reload`, `undeploy`: the manager command of the
/// same name on one version.
async fn control(call: &Call, sig: &'static Signature) -> Result<Outcome, Outcome> {
    let args = Args::from_call(sig, call).map_err(Outcome::from)?;
    let (fun, command) = (sig.fun, sig.name());
    let target = target_of(&args, fun)?;
    let version = match args.string("version").map_err(Outcome::from)? {
        Some(v) => v,
        None => live_and_previous(&history_of(&target.app, fun)?)
            .0
            .ok_or_else(|| {
                Outcome::failed(
                    RETCODE_BAD_ARGS,
                    format!("{fun}: give version= (nothing is recorded live)"),
                )
            })?,
    };
    crate::artifact::validate_version(&version)
        .map_err(|e| Outcome::failed(RETCODE_BAD_ARGS, format!("{fun}: {e}")))?;
    let done = match (&target.manager, command) {
        (Some(manager), _) => {
            manager
                .command(command, &target.tomcat.context, Some(&version))
                .await
        }
        (None, "undeploy") => remove_version(&target, &version)
            .await
            .map(|()| format!("removed {version}")),
        (None, _) => Err(format!(
            "{fun} needs the manager (the app has no manager_url)"
        )),
    };
    done.map(|message| {
        Outcome::ok(
            json!({ "context": target.tomcat.context, "version": version, "message": message }),
        )
    })
    .map_err(|e| Outcome::failed(RETCODE_ERROR, format!("{fun}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn war_names_for_autodeploy() {
        assert_eq!(war_name("/shop", "v1"), "shop##v1.war");
        assert_eq!(war_name("/", "2.0"), "ROOT##2.0.war");
        assert_eq!(war_name("/a/b", "v1"), "a#b##v1.war");
    }
}
