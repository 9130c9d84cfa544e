//! The `test` module: functions with no side effects, for checking that a
//! minion answers and that jobs, timeouts and failures flow end to end.

use futures::future::BoxFuture;
use serde_json::Value;

use halite_proto::catalog;
use halite_proto::catalog::test::{ARG, ECHO, FAIL, MODULE, PING, SLEEP, VERSION, VERSIONS_REPORT};

use crate::args::{ArgError, Args};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_ERROR, RETCODE_TIMEOUT};

/// `test.ping`, `test.echo`, `test.sleep`, `test.version`, `test.fail`.
pub(crate) struct TestModule;

impl Module for TestModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let result = match MODULE.function(function) {
                Some(&PING) => {
                    Args::from_call(&PING, &call).map(|_| Outcome::ok(Value::Bool(true)))
                }
                Some(&ECHO) => echo(&call),
                Some(&SLEEP) => sleep(&call).await,
                Some(&VERSION) => Args::from_call(&VERSION, &call)
                    .map(|_| Outcome::ok(Value::String(env!("CARGO_PKG_VERSION").to_owned()))),
                Some(&FAIL) => fail(&call),
                Some(&ARG) => Ok(arg(&call)),
                Some(&VERSIONS_REPORT) => {
                    Args::from_call(&VERSIONS_REPORT, &call).map(|_| versions_report(&call))
                }
                _ => Ok(unknown_function(self, function)),
            };
            result.unwrap_or_else(Outcome::from)
        })
    }
}

/// `test.versions_report`: Salt's report, one string of sections with
/// right-aligned names (`"          Salt: 3008.3"`), each section ending
/// in a `" "` line: halite's version, what it is built on, the platform.
fn versions_report(call: &Call) -> Outcome {
    let grain = |key: &str| {
        call.grains
            .get(key)
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_else(|| "Not Installed".to_owned())
    };
    let sections: [(&str, Vec<(&str, String)>); 4] = [
        (
            "Salt Version:",
            vec![("halite", env!("CARGO_PKG_VERSION").to_owned())],
        ),
        (
            "Python Version:",
            vec![("Python", "Not Installed".to_owned())],
        ),
        (
            "Dependency Versions:",
            vec![
                ("ZeroMQ", "zeromq crate (vendored, no libzmq)".to_owned()),
                ("Lua", "5.4 (mlua, vendored)".to_owned()),
            ],
        ),
        (
            "System Versions:",
            vec![
                ("dist", format!("{} {}", grain("os"), grain("osrelease"))),
                ("kernel", grain("kernel")),
                ("machine", std::env::consts::ARCH.to_owned()),
                ("release", grain("kernelrelease")),
                ("system", std::env::consts::OS.to_owned()),
            ],
        ),
    ];
    let mut lines = Vec::new();
    for (title, items) in sections {
        lines.push(title.to_owned());
        lines.extend(
            items
                .into_iter()
                .map(|(name, value)| format!("{name:>14}: {value}")),
        );
        lines.push(" ".to_owned());
    }
    Outcome::ok(Value::String(lines.join("\n")))
}

/// `test.arg`: the arguments as received, and Salt's `__pub_*` keywords.
fn arg(call: &Call) -> Outcome {
    let mut kwargs = call.kwargs.clone();
    let published = &call.published;
    for (key, value) in [
        ("__pub_fun", Value::from(call.fun.clone())),
        ("__pub_arg", Value::from(call.args.clone())),
        ("__pub_tgt", Value::from(published.tgt.clone())),
        ("__pub_jid", Value::from(call.jid.to_string())),
        ("__pub_ret", Value::from("")),
        ("__pub_tgt_type", Value::from(published.tgt_type.clone())),
        ("__pub_user", Value::from(published.user.clone())),
        ("__pub_resource_targets", Value::Array(Vec::new())),
        ("__pub_pure_resource_target", Value::Bool(false)),
        ("__pub_minion_is_target", Value::Bool(true)),
    ] {
        kwargs.insert(key.to_owned(), value);
    }
    let mut out = serde_json::Map::new();
    out.insert("args".into(), Value::from(call.args.clone()));
    out.insert("kwargs".into(), Value::Object(kwargs));
    Outcome::ok(Value::Object(out))
}

/// Returns the first argument (or `text`) unchanged, whatever its type.
fn echo(call: &Call) -> Result<Outcome, ArgError> {
    let args = Args::from_call(&ECHO, call)?;
    let text = args.value("text").ok_or_else(|| args.missing("text"))?;
    Ok(Outcome::ok(text.clone()))
}

/// Sleeps `seconds`, returning early (failed, timeout code) on cancellation.
async fn sleep(call: &Call) -> Result<Outcome, ArgError> {
    let args = Args::from_call(&SLEEP, call)?;
    let duration = args
        .seconds("seconds")?
        .ok_or_else(|| args.missing("seconds"))?;
    tracing::debug!(jid = %call.jid, ?duration, "test.sleep");
    tokio::select! {
        _ = tokio::time::sleep(duration) => Ok(Outcome::ok(Value::Bool(true))),
        _ = call.cancel.cancelled() => Ok(Outcome::failed(RETCODE_TIMEOUT, "cancelled")),
    }
}

/// Fails on purpose with retcode 1 and the given message.
fn fail(call: &Call) -> Result<Outcome, ArgError> {
    let args = Args::from_call(&FAIL, call)?;
    let message = args
        .string("message")?
        .unwrap_or_else(|| "failure requested by test.fail".to_owned());
    Ok(Outcome::failed(RETCODE_ERROR, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;
    use crate::{RETCODE_BAD_ARGS, RETCODE_UNKNOWN_FUNCTION};
    use serde_json::json;
    use std::time::{Duration, Instant};

    async fn run(function: &str, args: Vec<Value>, kwargs: Value) -> Outcome {
        TestModule
            .call(function, call(&format!("test.{function}"), args, kwargs))
            .await
    }

    #[tokio::test]
    async fn ping_is_true() {
        assert_eq!(
            run("ping", vec![], json!({})).await,
            Outcome::ok(json!(true))
        );
        assert_eq!(
            run("ping", vec![json!(1)], json!({})).await.retcode,
            RETCODE_BAD_ARGS
        );
    }

    #[tokio::test]
    async fn echo_returns_its_argument_unchanged() {
        let v = json!({"nested": [1, "two", null]});
        assert_eq!(
            run("echo", vec![v.clone()], json!({})).await,
            Outcome::ok(v)
        );
        assert_eq!(
            run("echo", vec![], json!({"text": "hi"})).await,
            Outcome::ok(json!("hi"))
        );
        let missing = run("echo", vec![], json!({})).await;
        assert_eq!(missing.retcode, RETCODE_BAD_ARGS);
        assert_eq!(
            missing.data,
            json!("test.echo: argument `text` is required")
        );
    }

    #[tokio::test]
    async fn sleep_sleeps_then_returns_true() {
        let started = Instant::now();
        let out = run("sleep", vec![json!("0.05")], json!({})).await;
        assert_eq!(out, Outcome::ok(json!(true)));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn sleep_requires_a_number() {
        let out = run("sleep", vec![], json!({})).await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        let out = run("sleep", vec![], json!({"seconds": "abc"})).await;
        assert_eq!(
            out.data,
            json!("test.sleep: argument `seconds` must be a number of seconds, got \"abc\"")
        );
    }

    #[tokio::test]
    async fn sleep_stops_when_cancelled() {
        let c = call("test.sleep", vec![json!(30)], json!({}));
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let out = TestModule.call("sleep", c).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out, Outcome::failed(RETCODE_TIMEOUT, "cancelled"));
    }

    #[tokio::test]
    async fn version_is_the_crate_version() {
        let out = run("version", vec![], json!({})).await;
        assert_eq!(out, Outcome::ok(json!(env!("CARGO_PKG_VERSION"))));
        assert!(out.data.as_str().is_some_and(|s| !s.is_empty()));
    }

    #[tokio::test]
    async fn fail_fails_with_the_message() {
        let out = run("fail", vec![json!("broken on purpose")], json!({})).await;
        assert_eq!(out, Outcome::failed(1, "broken on purpose"));
        let out = run("fail", vec![], json!({})).await;
        assert!(!out.success);
        assert_eq!(out.retcode, 1);
    }

    #[tokio::test]
    async fn unknown_function_lists_the_others() {
        let out = run("nope", vec![], json!({})).await;
        assert_eq!(out.retcode, RETCODE_UNKNOWN_FUNCTION);
        assert_eq!(
            out.data,
            json!("unknown function `test.nope`; the minion has: test.arg, test.echo, test.fail, test.ping, test.sleep, test.version, test.versions_report")
        );
    }
}
