//! `dotnet_iis`: releases a zipped .NET site on IIS in one job, with the
//! four live stages of the other deploy modules:
//!
//! 1. **fetch**: the zip by URL into the app's artifact cache (or found
//!    there);
//! 2. **prepare**: the zip checked against the job's `sha256` (a mismatch
//!    fails here and changes nothing), the site and pool exist, what the application serves
//!    now, and the zip unpacked into `<path>/releases/<version>` (entries
//!    that would escape it are refused);
//! 3. **deploy**: `app_offline.htm` up (if asked), the pool stopped (its
//!    state polled, bounded by `pool_wait`), the application's physical
//!    path switched, the pool started;
//! 4. **verify**: the health check; a failure switches the path back and
//!    starts the pool again. `app_offline.htm` comes down either way.
//!
//! Also rollback, status, pool and site control, listings, site and pool
//! creation, bindings. Deciding what to run and reading what comes back
//! is platform-neutral ([`appcmd`]); only starting `appcmd.exe` is
//! `cfg(windows)` (`crate::wintool`). Tests drive it against a double of
//! appcmd that keeps IIS's state.

mod appcmd;
#[cfg(test)]
mod fake;
mod unpack;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use halite_proto::app::{AppKind, AppSpec, IisSpec};
use serde_json::{json, Map, Value};

use halite_proto::catalog;
use halite_proto::catalog::dotnet_iis::{
    APPPOOL_RECYCLE, APPPOOL_START, APPPOOL_STOP, BINDINGS, CREATE_APPPOOL, CREATE_SITE, DEPLOY,
    LIST_APPPOOLS, LIST_SITES, MODULE, ROLLBACK, SITE_START, SITE_STOP, STATUS,
};

use crate::args::Args;
use crate::history::live_and_previous;
use crate::kit::{app_of, history_of, Ended, Failure, ReleaseRun};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};
use appcmd::{Appcmd, ToolOutput};
use halite_proto::release::{ReleaseAction, ReleaseResult, Stage};

/// How often a pool's state is polled while it stops or starts.
const POLL: Duration = Duration::from_millis(250);

/// The file ASP.NET serves instead of the application while it exists.
const APP_OFFLINE: &str = "app_offline.htm";

/// The `dotnet_iis` module over an appcmd runner.
pub(crate) struct DotnetIisModule {
    tool: Arc<dyn Appcmd>,
}

impl DotnetIisModule {
    /// The module over this machine's `appcmd.exe`.
    pub(crate) fn system() -> DotnetIisModule {
        DotnetIisModule {
            tool: Arc::new(appcmd::system()),
        }
    }
}

impl Module for DotnetIisModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let iis = Iis {
                tool: self.tool.as_ref(),
            };
            let result = match MODULE.function(function) {
                Some(&DEPLOY) => iis.deploy(&call).await,
                Some(&ROLLBACK) => iis.rollback(&call).await,
                Some(&STATUS) => iis.status(&call).await,
                Some(sig @ (&APPPOOL_START | &APPPOOL_STOP | &APPPOOL_RECYCLE)) => {
                    iis.pool_control(&call, sig.name()).await
                }
                Some(sig @ (&SITE_START | &SITE_STOP)) => iis.site_control(&call, sig.name()).await,
                Some(&LIST_SITES) => iis.listing(&call, "sites", "SITE").await,
                Some(&LIST_APPPOOLS) => iis.listing(&call, "apppools", "APPPOOL").await,
                Some(&CREATE_SITE) => iis.create_site(&call).await,
                Some(&CREATE_APPPOOL) => iis.create_apppool(&call).await,
                Some(&BINDINGS) => iis.bindings(&call).await,
                _ => return unknown_function(self, function),
            };
            result.unwrap_or_else(|outcome| outcome)
        })
    }
}

struct Iis<'a> {
    tool: &'a dyn Appcmd,
}

fn err(fun: &str, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(RETCODE_ERROR, format!("dotnet_iis.{fun}: {message}"))
}

fn bad(fun: &str, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(RETCODE_BAD_ARGS, format!("dotnet_iis.{fun}: {message}"))
}

/// Keyword arguments checked against `allowed`; the text ones read.
fn kwargs<'c>(
    call: &'c Call,
    fun: &str,
    allowed: &[&str],
) -> Result<&'c Map<String, Value>, Outcome> {
    if let Some(key) = call.kwargs.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            fun,
            format!("unknown argument `{key}`; takes {}", allowed.join(", ")),
        ));
    }
    Ok(&call.kwargs)
}

fn text<'c>(map: &'c Map<String, Value>, fun: &str, key: &str) -> Result<&'c str, Outcome> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|v| !v.trim().is_empty() && !v.contains(['"', '\n']))
        .ok_or_else(|| bad(fun, format!("needs {key}= (text without quotes)")))
}

impl Iis<'_> {
    /// Runs appcmd; Err is its error line (or why it could not run).
    async fn appcmd(&self, args: Vec<String>) -> Result<ToolOutput, String> {
        let out = self.tool.run(args).await?;
        match appcmd::error_of(&out) {
            Some(message) => Err(message),
            None => Ok(out),
        }
    }

    async fn text_of(&self, args: Vec<String>) -> Result<String, String> {
        Ok(self.appcmd(args).await?.stdout.trim().to_owned())
    }

    /// Polls the pool until it is `want` (`Stopped`/`Started`), at most `wait`.
    async fn wait_pool(
        &self,
        pool: &str,
        want: &str,
        wait: Duration,
        call: &Call,
    ) -> Result<(), String> {
        let deadline = Instant::now() + wait;
        loop {
            let state = self.text_of(appcmd::pool_state(pool)).await?;
            if state == want {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "pool {pool} is still {state} after {}s (wanted {want})",
                    wait.as_secs()
                ));
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = call.cancel.cancelled() => return Err("cancelled".into()),
            }
        }
    }

    /// Stops the pool, points the application at `path`, starts the pool.
    /// On a failure before the switch nothing is switched; the pool is
    /// started again either way.
    async fn switch(&self, iis: &IisSpec, path: &Path, call: &Call) -> Result<(), String> {
        let wait = Duration::from_secs(iis.pool_wait);
        let stopped = match self
            .appcmd(appcmd::pool_command("stop", &iis.app_pool))
            .await
        {
            // Already stopped is fine; polling says so.
            Ok(_) | Err(_) => self.wait_pool(&iis.app_pool, "Stopped", wait, call).await,
        };
        let switched = match stopped {
            Ok(()) => self
                .appcmd(appcmd::set_physical_path(
                    &appcmd::vdir_id(&iis.site, &iis.application),
                    &path.display().to_string(),
                ))
                .await
                .map(|_| ()),
            Err(e) => Err(format!("{e}; nothing was switched")),
        };
        let started = match self
            .appcmd(appcmd::pool_command("start", &iis.app_pool))
            .await
        {
            Ok(_) => self.wait_pool(&iis.app_pool, "Started", wait, call).await,
            Err(e) => Err(e),
        };
        switched?;
        started
    }

    fn target(&self, args: &Args<'_>, fun: &'static str) -> Result<(AppSpec, IisSpec), Outcome> {
        let app = app_of(args, fun)?;
        if app.kind != AppKind::Iis {
            return Err(bad(
                fun.trim_start_matches("dotnet_iis."),
                format!("app {} is a {:?} app, not an iis one", app.name, app.kind),
            ));
        }
        let iis = app.iis.clone().ok_or_else(|| {
            bad(
                fun.trim_start_matches("dotnet_iis."),
                format!("app {} has no [iis] table", app.name),
            )
        })?;
        Ok((app, iis))
    }

    async fn deploy(&self, call: &Call) -> Result<Outcome, Outcome> {
        let args = Args::from_call(&DEPLOY, call).map_err(Outcome::from)?;
        let (app, iis) = self.target(&args, DEPLOY.fun)?;
        let wanted = crate::artifact::Wanted::from_args(&args, DEPLOY.fun)?;
        let mut run = ReleaseRun::for_app(
            call,
            &app,
            ReleaseAction::Deploy,
            Some(wanted.version.clone()),
        );
        run.report.release = Some(wanted.version.clone());
        run.report.revision = Some(wanted.sha256.clone());
        let ended = self
            .deploy_stages(&mut run, call, &app, &iis, &wanted)
            .await;
        Ok(run.end(ended).await)
    }

    /// A deploy's four stages (see the module's documentation).
    async fn deploy_stages(
        &self,
        run: &mut ReleaseRun,
        call: &Call,
        app: &AppSpec,
        iis: &IisSpec,
        wanted: &crate::artifact::Wanted,
    ) -> Result<Ended, Failure> {
        let version = &wanted.version;
        let fetched = run.step(Stage::Fetch, wanted.fetch_for(app)).await?;

        let release = app.path.join("releases").join(version);
        let prepare = async {
            let zip = wanted.check_for(app, fetched)?;
            self.text_of(appcmd::site_state(&iis.site)).await?;
            self.text_of(appcmd::pool_state(&iis.app_pool)).await?;
            let current = self
                .text_of(appcmd::physical_path(&appcmd::vdir_id(
                    &iis.site,
                    &iis.application,
                )))
                .await?;
            if !unpack::is_complete(&release) {
                let dir = release.clone();
                tokio::task::spawn_blocking(move || unpack::unpack(&zip, &dir))
                    .await
                    .map_err(|e| format!("unpack task: {e}"))??;
            }
            let previous = PathBuf::from(current);
            let summary = format!("{version} unpacked; serving now: {}", previous.display());
            Ok((previous, summary))
        };
        let previous = run.step(Stage::Prepare, prepare).await?;
        run.report.previous = previous
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        if previous == release {
            return Ok(Ended::unchanged(json!({ "site": iis.site })));
        }

        let offline = iis.app_offline.then(|| previous.join(APP_OFFLINE));
        if let Some(page) = &offline {
            if previous.is_dir() {
                let _ = std::fs::write(
                    page,
                    "<html><body>Updating, back in a moment.</body></html>",
                );
            }
        }
        let switch = async {
            self.switch(iis, &release, call).await?;
            let summary = format!(
                "{} now serves {}",
                appcmd::app_id(&iis.site, &iis.application),
                release.display()
            );
            Ok(((), summary))
        };
        let switched = run.stage(Stage::Deploy, switch).await;
        if let Err(e) = switched {
            take_down(&offline);
            return Err(Failure::new(e).with(json!({ "site": iis.site })));
        }

        let check = async {
            let summary = self.verify(app, iis, &release, &previous, call).await?;
            Ok(((), summary))
        };
        let checked = run.stage(Stage::Verify, check).await;
        take_down(&offline);
        match checked {
            Ok(()) => {
                prune(app, version, run.report.previous.as_deref());
                Ok(Ended::live(json!({ "site": iis.site, "path": release })))
            }
            Err(message) => Err(Failure::new(message)
                .ended(ReleaseResult::RolledBack)
                .with(json!({ "site": iis.site }))),
        }
    }

    /// The verify stage: the app's health check against `release`; when
    /// it fails, the application is switched back to `previous` and the
    /// error says whether that worked.
    async fn verify(
        &self,
        app: &AppSpec,
        iis: &IisSpec,
        release: &Path,
        previous: &Path,
        call: &Call,
    ) -> Result<String, String> {
        let checked = match &app.health {
            Some(health) => {
                let roots = crate::http::extra_roots(app.ca_file.as_deref())?;
                crate::health::check(
                    health,
                    release,
                    &Default::default(),
                    roots,
                    &call.events,
                    &call.cancel,
                )
                .await
            }
            None => Ok("no health check defined".into()),
        };
        match checked {
            Ok(summary) => Ok(summary),
            Err(e) => Err(match self.switch(iis, previous, call).await {
                Ok(()) => format!("{e}; switched back to {}", previous.display()),
                Err(back) => format!("{e}; switching back failed too: {back}"),
            }),
        }
    }

    async fn rollback(&self, call: &Call) -> Result<Outcome, Outcome> {
        let args = Args::from_call(&ROLLBACK, call).map_err(Outcome::from)?;
        let (app, iis) = self.target(&args, ROLLBACK.fun)?;
        let (live, previous) = live_and_previous(&history_of(&app, ROLLBACK.fun)?);
        let Some(to) = args.string("to").map_err(Outcome::from)?.or(previous) else {
            return Err(err(
                "rollback",
                format!("app {} has no earlier live version to go back to", app.name),
            ));
        };
        crate::artifact::validate_version(&to).map_err(|e| bad("rollback", e))?;
        let mut run = ReleaseRun::for_app(call, &app, ReleaseAction::Rollback, Some(to.clone()));
        run.report.release = Some(to.clone());
        run.report.previous = live;
        let ended = self.rollback_stages(&mut run, call, &app, &iis, &to).await;
        Ok(run.end(ended).await)
    }

    /// A rollback: prepare (the release is still here), deploy, verify.
    async fn rollback_stages(
        &self,
        run: &mut ReleaseRun,
        call: &Call,
        app: &AppSpec,
        iis: &IisSpec,
        to: &str,
    ) -> Result<Ended, Failure> {
        let release = app.path.join("releases").join(to);
        let prepare = async {
            if !unpack::is_complete(&release) {
                return Err(format!(
                    "release {to} is not on this server any more (kept: keep_releases)"
                ));
            }
            let current = self
                .text_of(appcmd::physical_path(&appcmd::vdir_id(
                    &iis.site,
                    &iis.application,
                )))
                .await?;
            let current = PathBuf::from(current);
            let summary = format!("back from {} to {}", current.display(), release.display());
            Ok((current, summary))
        };
        let current = run.step(Stage::Prepare, prepare).await?;
        let switch = async {
            self.switch(iis, &release, call).await?;
            Ok(((), format!("{} serves {}", iis.site, release.display())))
        };
        run.step(Stage::Deploy, switch).await?;
        let check = async {
            let summary = self.verify(app, iis, &release, &current, call).await?;
            Ok(((), summary))
        };
        run.step(Stage::Verify, check).await?;
        Ok(Ended::live(json!({ "site": iis.site })))
    }

    async fn status(&self, call: &Call) -> Result<Outcome, Outcome> {
        let args = Args::from_call(&STATUS, call).map_err(Outcome::from)?;
        let (app, iis) = self.target(&args, STATUS.fun)?;
        let read = async {
            Ok::<_, String>((
                self.text_of(appcmd::site_state(&iis.site)).await?,
                self.text_of(appcmd::pool_state(&iis.app_pool)).await?,
                self.text_of(appcmd::physical_path(&appcmd::vdir_id(
                    &iis.site,
                    &iis.application,
                )))
                .await?,
            ))
        };
        let (site_state, pool_state, path) = read.await.map_err(|e| err("status", e))?;
        let history = history_of(&app, STATUS.fun)?;
        let (live, previous) = live_and_previous(&history);
        let mut releases: Vec<String> = std::fs::read_dir(app.path.join("releases"))
            .map(|d| {
                d.flatten()
                    .filter(|e| unpack::is_complete(&e.path()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        releases.sort();
        Ok(Outcome::ok(json!({
            "app": app.name, "site": iis.site, "site_state": site_state, "app_pool": iis.app_pool,
            "pool_state": pool_state, "physical_path": path, "live": live, "previous": previous,
            "releases": releases, "history": history.iter().rev().take(10).collect::<Vec<_>>(),
        })))
    }

    async fn pool_control(&self, call: &Call, fun: &str) -> Result<Outcome, Outcome> {
        let map = kwargs(call, fun, &["name"])?;
        let name = text(map, fun, "name")?;
        let verb = fun.trim_start_matches("apppool_");
        self.appcmd(appcmd::pool_command(verb, name))
            .await
            .map_err(|e| err(fun, e))?;
        let state = self
            .text_of(appcmd::pool_state(name))
            .await
            .map_err(|e| err(fun, e))?;
        Ok(Outcome::ok(json!({ "app_pool": name, "state": state })))
    }

    async fn site_control(&self, call: &Call, fun: &str) -> Result<Outcome, Outcome> {
        let map = kwargs(call, fun, &["name"])?;
        let name = text(map, fun, "name")?;
        self.appcmd(appcmd::site_command(fun.trim_start_matches("site_"), name))
            .await
            .map_err(|e| err(fun, e))?;
        let state = self
            .text_of(appcmd::site_state(name))
            .await
            .map_err(|e| err(fun, e))?;
        Ok(Outcome::ok(json!({ "site": name, "state": state })))
    }

    async fn listing(&self, call: &Call, what: &str, element: &str) -> Result<Outcome, Outcome> {
        let fun = format!("list_{what}");
        kwargs(call, &fun, &[])?;
        let out = self
            .appcmd(appcmd::list_xml(what))
            .await
            .map_err(|e| err(&fun, e))?;
        Ok(Outcome::ok(json!(appcmd::parse_xml(&out.stdout, element))))
    }

    async fn create_site(&self, call: &Call) -> Result<Outcome, Outcome> {
        let map = kwargs(
            call,
            "create_site",
            &["name", "bindings", "physical_path", "app_pool"],
        )?;
        let name = text(map, "create_site", "name")?;
        let bindings = text(map, "create_site", "bindings")?;
        let path = text(map, "create_site", "physical_path")?;
        for binding in bindings.split(',') {
            parse_binding(binding).map_err(|e| bad("create_site", e))?;
        }
        self.appcmd(appcmd::add_site(name, bindings, path))
            .await
            .map_err(|e| err("create_site", e))?;
        if let Some(pool) = map.get("app_pool").and_then(Value::as_str) {
            self.appcmd(appcmd::app_pool_of(&appcmd::app_id(name, "/"), pool))
                .await
                .map_err(|e| err("create_site", e))?;
        }
        Ok(Outcome::ok(json!({ "site": name, "created": true })))
    }

    async fn create_apppool(&self, call: &Call) -> Result<Outcome, Outcome> {
        let map = kwargs(
            call,
            "create_apppool",
            &[
                "name", "runtime", "pipeline", "identity", "user", "password",
            ],
        )?;
        let name = text(map, "create_apppool", "name")?;
        let runtime = map.get("runtime").and_then(Value::as_str).unwrap_or("v4.0");
        if !matches!(runtime, "v4.0" | "v2.0" | "") {
            return Err(bad(
                "create_apppool",
                format!(
                    "runtime {runtime:?}: use v4.0, v2.0 or \"\" (no managed code, ASP.NET Core)"
                ),
            ));
        }
        let pipeline = map
            .get("pipeline")
            .and_then(Value::as_str)
            .unwrap_or("Integrated");
        if !matches!(pipeline, "Integrated" | "Classic") {
            return Err(bad(
                "create_apppool",
                format!("pipeline {pipeline:?}: use Integrated or Classic"),
            ));
        }
        let identity = map
            .get("identity")
            .and_then(Value::as_str)
            .unwrap_or("ApplicationPoolIdentity");
        let user = match identity {
            "ApplicationPoolIdentity" | "LocalSystem" | "LocalService" | "NetworkService" => None,
            "SpecificUser" => Some((text(map, "create_apppool", "user")?, text(map, "create_apppool", "password")?)),
            other => return Err(bad("create_apppool", format!("identity {other:?}: use ApplicationPoolIdentity, LocalSystem, LocalService, NetworkService or SpecificUser"))),
        };
        self.appcmd(appcmd::add_pool(name, runtime, pipeline))
            .await
            .map_err(|e| err("create_apppool", e))?;
        self.appcmd(appcmd::pool_identity(name, identity, user))
            .await
            .map_err(|e| err("create_apppool", e))?;
        Ok(Outcome::ok(
            json!({ "app_pool": name, "runtime": runtime, "pipeline": pipeline, "identity": identity }),
        ))
    }

    /// `bindings site=S add=["http/*:8080:host"] remove=[...]`: changes a
    /// site's bindings, then lists them.
    async fn bindings(&self, call: &Call) -> Result<Outcome, Outcome> {
        let map = kwargs(call, "bindings", &["site", "add", "remove"])?;
        let site = text(map, "bindings", "site")?;
        let list = |key: &str| -> Result<Vec<String>, Outcome> {
            match map.get(key) {
                None => Ok(Vec::new()),
                Some(Value::String(one)) => Ok(vec![one.clone()]),
                Some(Value::Array(many)) => many
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_owned).ok_or_else(|| {
                            bad("bindings", format!("{key} must be text or a list of text"))
                        })
                    })
                    .collect(),
                Some(_) => Err(bad(
                    "bindings",
                    format!("{key} must be text or a list of text"),
                )),
            }
        };
        for (add, key) in [(true, "add"), (false, "remove")] {
            for binding in list(key)? {
                let (protocol, information) =
                    parse_binding(&binding).map_err(|e| bad("bindings", e))?;
                self.appcmd(appcmd::binding(site, add, protocol, information))
                    .await
                    .map_err(|e| err("bindings", format!("{key} {binding}: {e}")))?;
            }
        }
        let out = self
            .appcmd(appcmd::list_xml("sites"))
            .await
            .map_err(|e| err("bindings", e))?;
        let bindings = appcmd::parse_xml(&out.stdout, "SITE")
            .into_iter()
            .find(|s| s.get("SITE.NAME").map(String::as_str) == Some(site))
            .and_then(|s| s.get("bindings").cloned())
            .ok_or_else(|| err("bindings", format!("no site {site:?}")))?;
        Ok(Outcome::ok(
            json!({ "site": site, "bindings": bindings.split(',').collect::<Vec<_>>() }),
        ))
    }
}

/// `http/*:8080:host.example` → (`http`, `*:8080:host.example`).
fn parse_binding(binding: &str) -> Result<(&str, &str), String> {
    let (protocol, information) = binding.split_once('/').ok_or_else(|| {
        format!("binding {binding:?}: write protocol/ip:port:host, e.g. http/*:80:")
    })?;
    let parts: Vec<&str> = information.split(':').collect();
    let port_ok = parts.len() == 3 && parts[1].parse::<u16>().is_ok_and(|p| p > 0);
    if !matches!(protocol, "http" | "https") || !port_ok || binding.contains(['\'', '"', ',']) {
        return Err(format!(
            "binding {binding:?}: write protocol/ip:port:host, e.g. http/*:80:"
        ));
    }
    Ok((protocol, information))
}

fn take_down(page: &Option<PathBuf>) {
    if let Some(page) = page {
        let _ = std::fs::remove_file(page);
    }
}

/// Removes release directories beyond `keep_releases`, never the live or
/// the previous one.
fn prune(app: &AppSpec, live: &str, previous: Option<&str>) {
    let dir = app.path.join("releases");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut releases: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    releases.sort_by_key(|r| std::cmp::Reverse(r.0));
    for (_, path) in releases.into_iter().skip(app.keep_releases) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name != live && Some(name.as_str()) != previous {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests;
