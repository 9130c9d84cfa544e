//! The `release` module: checks of a live app, whatever module released
//! it — what a rollout's gates run on its minions.
//!
//! - `release.health app=NAME` runs the app's health check (its URL or
//!   command, with its retries) against the live release, the same check
//!   every deploy module runs after switching.
//! - `release.measure app=NAME samples=N [cmd=...]` runs it N times, once
//!   each, timing every run; or runs `cmd`, taking the last number it
//!   prints. Its return is a [`Measurement`]: the canary judgment on the
//!   master compares the canary's with the baseline's.
//!
//! Both run in the app's live directory (`<path>/current` where the
//! module keeps one, as git_deploy does; `<path>` otherwise).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use halite_proto::app::{AppSpec, HealthCheck};
use halite_proto::catalog;
use halite_proto::catalog::release::{HEALTH, MEASURE, MODULE};
use halite_proto::rollout::Measurement;
use serde_json::json;

use crate::args::Args;
use crate::health::Attempt;
use crate::kit::app_of;
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};

/// The most runs one measurement makes (a canary asks for 1 to 1000).
const MAX_SAMPLES: u64 = 1000;

/// `release.health`, `release.measure`.
pub(crate) struct ReleaseChecks;

impl Module for ReleaseChecks {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let result = match MODULE.function(function) {
                Some(&HEALTH) => health(&call).await,
                Some(&MEASURE) => measure(&call).await,
                _ => return unknown_function(self, function),
            };
            result.unwrap_or_else(|outcome| outcome)
        })
    }
}

/// Where the app is live: `<path>/current` when the module keeps one.
fn live_dir(app: &AppSpec) -> PathBuf {
    let current = app.path.join("current");
    if current.is_dir() {
        current
    } else {
        app.path.clone()
    }
}

/// What the check's command sees, as in a deploy's hooks.
fn check_env(app: &AppSpec, call: &Call) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("HALITE_APP".to_owned(), app.name.clone()),
        ("HALITE_JID".to_owned(), call.jid.to_string()),
        ("HALITE_PATH".to_owned(), app.path.display().to_string()),
    ])
}

/// The HTTP client a URL check needs (none for a command).
fn client_for(app: &AppSpec, check: &HealthCheck) -> Result<Option<reqwest::Client>, Outcome> {
    if check.url.is_none() {
        return Ok(None);
    }
    let failed = |e: String| Outcome::failed(RETCODE_ERROR, e);
    let roots = crate::http::extra_roots(app.ca_file.as_deref()).map_err(failed)?;
    crate::http::client(roots, Duration::from_secs(check.timeout))
        .map(Some)
        .map_err(failed)
}

fn no_health_check(fun: &str, app: &AppSpec) -> Outcome {
    Outcome::failed(
        RETCODE_BAD_ARGS,
        format!(
            "{fun}: app {} defines no health check ([health] url or command)",
            app.name
        ),
    )
}

async fn health(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&HEALTH, call).map_err(Outcome::from)?;
    let app = app_of(&args, HEALTH.fun)?;
    let Some(check) = &app.health else {
        return Err(no_health_check(HEALTH.fun, &app));
    };
    let roots = crate::http::extra_roots(app.ca_file.as_deref())
        .map_err(|e| Outcome::failed(RETCODE_ERROR, e))?;
    let dir = live_dir(&app);
    let env = check_env(&app, call);
    Ok(
        match crate::health::check(check, &dir, &env, roots, &call.events, &call.cancel).await {
            Ok(summary) => {
                Outcome::ok(json!({"app": app.name, "healthy": true, "summary": summary}))
            }
            Err(e) => Outcome {
                success: false,
                retcode: RETCODE_ERROR,
                data: json!({"app": app.name, "healthy": false, "summary": e}),
            },
        },
    )
}

async fn measure(call: &Call) -> Result<Outcome, Outcome> {
    let args = Args::from_call(&MEASURE, call).map_err(Outcome::from)?;
    let app = app_of(&args, MEASURE.fun)?;
    let samples = args
        .count("samples", "runs")
        .map_err(Outcome::from)?
        .unwrap_or(10);
    if !(1..=MAX_SAMPLES).contains(&samples) {
        return Err(Outcome::failed(
            RETCODE_BAD_ARGS,
            format!("{}: samples must be 1 to {MAX_SAMPLES}", MEASURE.fun),
        ));
    }
    let cmd = args.string("cmd").map_err(Outcome::from)?;
    let dir = live_dir(&app);
    let env = check_env(&app, call);
    let mut measured = Measurement::default();
    match cmd {
        Some(cmd) => {
            let timeout = Duration::from_secs(app.hook_timeout);
            for _ in 0..samples {
                if call.cancel.is_cancelled() {
                    break;
                }
                measured.samples += 1;
                let run = crate::process::run_shell(
                    MEASURE.fun,
                    &cmd,
                    &dir,
                    env.clone(),
                    timeout,
                    &call.events,
                    &call.cancel,
                )
                .await;
                match run {
                    Ok(done) if done.retcode == 0 => match last_number(&done.output) {
                        Some(value) => measured.values.push(value),
                        None => measured.errors += 1,
                    },
                    _ => measured.errors += 1,
                }
            }
        }
        None => {
            let Some(check) = &app.health else {
                return Err(no_health_check(MEASURE.fun, &app));
            };
            let client = client_for(&app, check)?;
            for _ in 0..samples {
                if call.cancel.is_cancelled() {
                    break;
                }
                measured.samples += 1;
                let started = Instant::now();
                let attempt = crate::health::once(
                    check,
                    client.as_ref(),
                    &dir,
                    &env,
                    &call.events,
                    &call.cancel,
                )
                .await;
                match attempt {
                    Attempt::Seen(Ok(_)) => measured
                        .values
                        .push(started.elapsed().as_secs_f64() * 1000.0),
                    Attempt::Seen(Err(_)) => measured.errors += 1,
                    Attempt::Undefined => return Err(no_health_check(MEASURE.fun, &app)),
                }
            }
        }
    }
    let data = serde_json::to_value(&measured)
        .map_err(|e| Outcome::failed(RETCODE_ERROR, format!("internal error: {e}")))?;
    Ok(Outcome::ok(data))
}

/// The last number in a command's output (`0.123`, `12ms` → 12): what a
/// measuring command prints last, after any chatter.
fn last_number(output: &str) -> Option<f64> {
    output
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '=')
        .rev()
        .filter(|word| !word.is_empty())
        .find_map(|word| {
            let number: String = word
                .trim_start_matches(|c: char| !(c.is_ascii_digit() || c == '-' || c == '.'))
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e')
                .collect();
            number.parse::<f64>().ok().filter(|n| n.is_finite())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use std::sync::Arc;

    #[test]
    fn the_last_number_printed_is_the_sample() {
        assert_eq!(last_number("warming up\n12.5\n"), Some(12.5));
        assert_eq!(last_number("time=0.031s"), Some(0.031));
        assert_eq!(last_number("p50 3, p99 17ms\n"), Some(17.0));
        assert_eq!(last_number("no numbers here"), None);
        assert_eq!(last_number(""), None);
    }

    fn app(dir: &std::path::Path, health: serde_json::Value) -> serde_json::Value {
        json!({
            "name": "shop",
            "repo": "https://example.invalid/shop.git",
            "target": "*",
            "path": dir,
            "health": health,
        })
    }

    async fn run(fun: &str, kwargs: serde_json::Value) -> Outcome {
        let registry = Registry::new();
        registry.register(Arc::new(ReleaseChecks));
        registry
            .run(crate::call::tests::call(fun, Vec::new(), kwargs))
            .await
    }

    #[tokio::test]
    async fn health_runs_the_apps_check_in_the_live_release() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("current")).unwrap();
        std::fs::write(dir.path().join("current/ok"), "").unwrap();
        let check = json!({"command": "test -f ok", "retries": 1, "interval": 0});
        let out = run(
            "release.health",
            json!({"app": app(dir.path(), check.clone())}),
        )
        .await;
        assert!(out.success, "{out:?}");
        assert_eq!(out.data["healthy"], true);
        std::fs::remove_file(dir.path().join("current/ok")).unwrap();
        let out = run("release.health", json!({"app": app(dir.path(), check)})).await;
        assert!(!out.success);
        assert_eq!(out.data["healthy"], false);
    }

    #[tokio::test]
    async fn measure_counts_samples_values_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let check = json!({"command": "true", "retries": 1, "interval": 0});
        // A command printing a number per run; every other run fails.
        let cmd = "n=$(cat n 2>/dev/null || echo 0); echo $((n+1)) > n; \
                   test $((n % 2)) -eq 0 && echo \"took $((n * 10))\"";
        let out = run(
            "release.measure",
            json!({"app": app(dir.path(), check.clone()), "samples": 4, "cmd": cmd}),
        )
        .await;
        assert!(out.success, "{out:?}");
        let measured: Measurement = serde_json::from_value(out.data).unwrap();
        assert_eq!(measured.samples, 4);
        assert_eq!(measured.errors, 2);
        assert_eq!(measured.values, [0.0, 20.0]);
        // The health check timed: every run a value in milliseconds.
        let out = run(
            "release.measure",
            json!({"app": app(dir.path(), check), "samples": 3}),
        )
        .await;
        let measured: Measurement = serde_json::from_value(out.data).unwrap();
        assert_eq!((measured.samples, measured.errors), (3, 0));
        assert_eq!(measured.values.len(), 3);
        // Out of range: refused, not run.
        let out = run(
            "release.measure",
            json!({"app": app(dir.path(), json!({"command": "true"})), "samples": 0}),
        )
        .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
    }
}
