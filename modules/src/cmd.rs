//! The `cmd` module: run a shell command, stream its output live and return
//! it, with a working directory, environment, stdin, timeout and output cap.
//! The running itself is the process runner's ([`crate::process`]).

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::json;

use halite_proto::catalog;
use halite_proto::catalog::cmd::{MODULE, RUN, RUN_ALL};

use crate::args::{ArgError, Args, Signature};
use crate::module::unknown_function;
use crate::process::{execute, CmdSpec, DEFAULT_OUTPUT_CAP};
use crate::{Call, Module, Outcome};

/// `cmd.run` and `cmd.run_all`.
pub(crate) struct CmdModule;

impl Module for CmdModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let (sig, all) = match MODULE.function(function) {
                Some(&RUN) => (&RUN, false),
                Some(&RUN_ALL) => (&RUN_ALL, true),
                _ => return unknown_function(self, function),
            };
            let spec = match CmdSpec::parse(sig, &call) {
                Ok(spec) => spec,
                Err(err) => return err.into(),
            };
            match execute(&spec, &call.events, &call.cancel).await {
                Ok(done) if all => done.run_all_outcome(),
                Ok(done) => done.run_outcome(),
                Err(err) => {
                    tracing::info!(jid = %call.jid, fun = spec.fun, "{err}");
                    err.into()
                }
            }
        })
    }
}

impl CmdSpec {
    fn parse(sig: &'static Signature, call: &Call) -> Result<CmdSpec, ArgError> {
        let args = Args::from_call(sig, call)?;
        let cmd = args.string("cmd")?.ok_or_else(|| args.missing("cmd"))?;
        if cmd.trim().is_empty() {
            return Err(ArgError::Invalid {
                fun: sig.fun,
                name: "cmd",
                expected: "a non-empty command".to_owned(),
                got: json!(cmd).to_string(),
            });
        }
        let env = args.string_map("env")?.unwrap_or_default();
        if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
            return Err(ArgError::Invalid {
                fun: sig.fun,
                name: "env",
                expected: "variable names without `=`".to_owned(),
                got: json!(bad).to_string(),
            });
        }
        let timeout = args.seconds("timeout")?;
        if timeout == Some(Duration::ZERO) {
            return Err(ArgError::Invalid {
                fun: sig.fun,
                name: "timeout",
                expected: "a positive number of seconds".to_owned(),
                got: "0".to_owned(),
            });
        }
        Ok(CmdSpec {
            fun: sig.fun,
            cmd,
            argv: None,
            cwd: args.string("cwd")?.map(PathBuf::from),
            stdin: args.string("stdin")?,
            shell: args.string("shell")?.filter(|s| !s.is_empty()),
            env,
            timeout,
            output_cap: args
                .count("output_cap", "bytes")?
                .unwrap_or(DEFAULT_OUTPUT_CAP),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;
    use crate::process::DRAIN_GRACE;
    use crate::{RETCODE_BAD_ARGS, RETCODE_ERROR, RETCODE_TIMEOUT, RETCODE_UNKNOWN_FUNCTION};
    use halite_proto::message::EventBody;
    use serde_json::Value;
    use std::time::Instant;

    #[tokio::test]
    async fn bad_arguments_are_refused_before_running() {
        let out = CmdModule
            .call("run", call("cmd.run", vec![], json!({})))
            .await;
        assert_eq!(
            out,
            Outcome::failed(RETCODE_BAD_ARGS, "cmd.run: argument `cmd` is required")
        );
        let out = CmdModule
            .call(
                "run",
                call("cmd.run", vec![json!("true")], json!({"timeout": "abc"})),
            )
            .await;
        assert_eq!(
            out.data,
            json!("cmd.run: argument `timeout` must be a number of seconds, got \"abc\"")
        );
        let out = CmdModule
            .call(
                "run",
                call("cmd.run", vec![json!("true")], json!({"user": "root"})),
            )
            .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        assert!(out
            .data
            .as_str()
            .is_some_and(|s| s.contains("accepted: cmd, cwd, stdin")));
        let out = CmdModule
            .call(
                "run",
                call("cmd.run", vec![json!("true")], json!({"env": {"A=B": "x"}})),
            )
            .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        let out = CmdModule
            .call("run", call("cmd.run", vec![json!("  ")], json!({})))
            .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        let out = CmdModule
            .call("nope", call("cmd.nope", vec![], json!({})))
            .await;
        assert_eq!(out.retcode, RETCODE_UNKNOWN_FUNCTION);
    }

    #[cfg(unix)]
    mod unix {
        use super::*;
        use std::sync::Arc;
        use tokio::sync::mpsc;

        async fn run(function: &str, args: Vec<Value>, kwargs: Value) -> Outcome {
            CmdModule
                .call(function, call(&format!("cmd.{function}"), args, kwargs))
                .await
        }

        #[tokio::test]
        async fn run_returns_output_and_exit_code() {
            let out = run("run", vec![json!("echo hello")], json!({})).await;
            assert_eq!(out, Outcome::ok(json!("hello")));
            let out = run("run", vec![json!("echo partial; exit 3")], json!({})).await;
            assert_eq!(
                out,
                Outcome {
                    success: false,
                    retcode: 3,
                    data: json!("partial")
                }
            );
        }

        #[tokio::test]
        async fn run_combines_stdout_and_stderr() {
            let out = run(
                "run",
                vec![json!("echo out; sleep 0.1; echo err >&2")],
                json!({}),
            )
            .await;
            assert_eq!(out.data, json!("out\nerr"));
        }

        #[tokio::test]
        async fn run_all_keeps_streams_apart() {
            let out = run(
                "run_all",
                vec![json!("echo out; echo err >&2; exit 4")],
                json!({}),
            )
            .await;
            assert!(!out.success);
            assert_eq!(out.retcode, 4);
            assert_eq!(out.data["stdout"], json!("out"));
            assert_eq!(out.data["stderr"], json!("err"));
            assert_eq!(out.data["retcode"], json!(4));
            assert_eq!(out.data["truncated"], json!(false));
            assert!(out.data["pid"].as_u64().is_some_and(|p| p > 0));
        }

        #[tokio::test]
        async fn killed_by_signal_is_128_plus_signal() {
            let out = run("run", vec![json!("kill -9 $$")], json!({})).await;
            assert_eq!(out.retcode, 137);
            assert!(!out.success);
        }

        #[tokio::test]
        async fn cwd_env_and_stdin_are_applied() {
            let dir = tempfile::tempdir().expect("tempdir");
            let expected = dir.path().canonicalize().expect("canonical");
            let out = run("run", vec![json!("pwd -P")], json!({"cwd": dir.path()})).await;
            assert_eq!(out.data, json!(expected.display().to_string()));

            let out = run(
                "run",
                vec![json!("echo \"$GREETING $N\"")],
                json!({"env": {"GREETING": "hi", "N": 2}}),
            )
            .await;
            assert_eq!(out.data, json!("hi 2"));

            let out = run(
                "run",
                vec![json!("tr a-z A-Z")],
                json!({"stdin": "shout\n"}),
            )
            .await;
            assert_eq!(out.data, json!("SHOUT"));

            // No stdin given: the command reads end of input at once instead of hanging.
            let out = run("run", vec![json!("cat; echo done")], json!({"timeout": 10})).await;
            assert_eq!(out.data, json!("done"));
        }

        #[tokio::test]
        async fn output_beyond_the_cap_is_dropped_and_reported() {
            let script =
                "i=0; while [ $i -lt 200 ]; do echo 0123456789; i=$((i+1)); done; echo tail >&2";
            let out = run("run_all", vec![json!(script)], json!({"output_cap": "100"})).await;
            assert!(out.success);
            assert_eq!(out.data["truncated"], json!(true));
            // Nine 11-byte lines and the first byte of the tenth.
            assert_eq!(out.data["stdout"].as_str().map(str::len), Some(100));
            assert_eq!(out.data["stderr"], json!("tail"));
            let out = run(
                "run_all",
                vec![json!("echo small")],
                json!({"output_cap": 100}),
            )
            .await;
            assert_eq!(out.data["truncated"], json!(false));
        }

        #[tokio::test]
        async fn timeout_kills_the_whole_command() {
            let dir = tempfile::tempdir().expect("tempdir");
            let pidfile = dir.path().join("pid");
            let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
            let started = Instant::now();
            let out = run("run", vec![json!(script)], json!({"timeout": 0.5})).await;
            let elapsed = started.elapsed();
            assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
            assert_eq!(
                out,
                Outcome::failed(RETCODE_TIMEOUT, "timed out after 0.5s")
            );
            let pid = std::fs::read_to_string(&pidfile).expect("pid written");
            assert!(
                wait_gone(pid.trim()).await,
                "background sleep {pid} survived the timeout"
            );
        }

        /// Whether the process is gone (or a zombie) within a few seconds.
        async fn wait_gone(pid: &str) -> bool {
            for _ in 0..100 {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.split_whitespace().next());
                if stat.is_empty() || state == Some("Z") {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        }

        #[tokio::test]
        async fn cancellation_kills_the_command() {
            let c = call("cmd.run", vec![json!("sleep 30")], json!({}));
            let cancel = c.cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                cancel.cancel();
            });
            let started = Instant::now();
            let out = CmdModule.call("run", c).await;
            assert!(started.elapsed() < Duration::from_secs(10));
            assert_eq!(out.retcode, RETCODE_TIMEOUT);
            assert!(
                out.data
                    .as_str()
                    .is_some_and(|s| s.starts_with("cancelled after")),
                "{:?}",
                out.data
            );
        }

        #[tokio::test]
        async fn background_process_holding_output_does_not_hang_the_call() {
            let started = Instant::now();
            let out = run("run", vec![json!("sleep 20 & echo started")], json!({})).await;
            assert_eq!(out, Outcome::ok(json!("started")));
            assert!(started.elapsed() < DRAIN_GRACE + Duration::from_secs(5));
        }

        #[tokio::test]
        async fn lines_are_sent_live_as_progress() {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut c = call(
                "cmd.run",
                vec![json!("echo one; echo two >&2; printf three")],
                json!({}),
            );
            c.events = crate::EventSink::new(tx);
            let out = CmdModule.call("run", c).await;
            assert!(out.success);
            let mut got = Vec::new();
            while let Ok(EventBody::Progress { line, stream }) = rx.try_recv() {
                got.push((stream, line));
            }
            got.sort();
            assert_eq!(
                got,
                vec![
                    ("stderr".to_owned(), "two".to_owned()),
                    ("stdout".to_owned(), "one".to_owned()),
                    ("stdout".to_owned(), "three".to_owned()),
                ]
            );
        }

        #[tokio::test]
        async fn spawn_failures_are_clear() {
            let out = run(
                "run",
                vec![json!("true")],
                json!({"shell": "/nonexistent/shell"}),
            )
            .await;
            assert_eq!(out.retcode, RETCODE_ERROR);
            let msg = out.data.as_str().unwrap_or_default();
            assert!(
                msg.starts_with("cmd.run: cannot start `/nonexistent/shell`"),
                "{msg}"
            );

            let out = run(
                "run_all",
                vec![json!("true")],
                json!({"cwd": "/nonexistent/dir"}),
            )
            .await;
            assert_eq!(out.retcode, RETCODE_ERROR);
            let msg = out.data.as_str().unwrap_or_default();
            assert!(
                msg.starts_with("cmd.run_all: working directory `/nonexistent/dir` cannot be used"),
                "{msg}"
            );
        }

        #[tokio::test]
        async fn runs_through_the_registry_with_grains_untouched() {
            let registry = crate::Registry::with_builtins();
            let mut c = call("cmd.run", vec![json!("echo via registry")], json!({}));
            c.grains = Arc::new(json!({"os": "Linux"}));
            assert_eq!(registry.run(c).await, Outcome::ok(json!("via registry")));
        }
    }
}
