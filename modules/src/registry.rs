//! The registry: which modules a minion has, how a function name resolves,
//! and the single place a call is run (with logging, panic and cancellation
//! safety nets).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::{Call, Module, Outcome, RETCODE_ERROR, RETCODE_TIMEOUT, RETCODE_UNKNOWN_FUNCTION};

/// How long a cancelled call may keep running (to clean up, roll back) before
/// the registry drops it, unless [`Registry::cancel_grace`] says otherwise.
const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(30);

/// The modules a minion can run, by name.
pub struct Registry {
    /// Behind a lock: synced Lua modules come and go while jobs run.
    modules: RwLock<BTreeMap<&'static str, Arc<dyn Module>>>,
    cancel_grace: Duration,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("modules", &self.read().keys().collect::<Vec<_>>())
            .field("cancel_grace", &self.cancel_grace)
            .finish()
    }
}

impl Registry {
    /// An empty registry, for callers that choose every module themselves.
    pub fn new() -> Self {
        Registry {
            modules: RwLock::new(BTreeMap::new()),
            cancel_grace: DEFAULT_CANCEL_GRACE,
        }
    }

    /// A registry with the built-in modules every minion has: `test`, `cmd`,
    /// `grains`, `git_deploy`.
    pub fn with_builtins() -> Self {
        let registry = Registry::new();
        registry.register(Arc::new(crate::test_module::TestModule));
        registry.register(Arc::new(crate::cmd::CmdModule));
        registry.register(Arc::new(crate::grains::GrainsModule));
        registry.register(Arc::new(crate::git_deploy::GitDeployModule));
        registry.register(Arc::new(crate::java_tomcat::JavaTomcatModule));
        registry.register(Arc::new(crate::win_task::WinTaskModule::system()));
        registry.register(Arc::new(crate::dotnet_iis::DotnetIisModule::system()));
        registry.register(Arc::new(crate::service::ServiceModule::system()));
        registry.register(Arc::new(crate::release_checks::ReleaseChecks));
        registry
    }

    /// How long a call may go on after its cancellation fired before it is
    /// dropped (default 30 s), so a module that ignores cancellation cannot
    /// hold a job forever while one that rolls back gets time to do it.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Adds a module; one with the same name is replaced (a synced Lua
    /// module can shadow a built-in of the same name on purpose).
    pub fn register(&self, module: Arc<dyn Module>) {
        let name = module.name();
        let mut modules = self.modules.write().unwrap_or_else(|p| p.into_inner());
        if modules.insert(name, module).is_some() {
            tracing::debug!(module = name, "module replaced");
        }
    }

    /// Removes a module (a Lua module the master no longer has); the
    /// built-in it shadowed, if any, is not restored until restart.
    pub fn unregister(&self, name: &str) -> bool {
        self.modules
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name)
            .is_some()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<&'static str, Arc<dyn Module>>> {
        self.modules.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves "module.function" or "module" (→ default function). Err is
    /// the message for the user.
    pub fn resolve(&self, fun: &str) -> Result<(Arc<dyn Module>, &'static str), String> {
        let modules = self.read();
        let declared: Vec<(&'static str, Option<&'static str>, Vec<&'static str>)> = modules
            .values()
            .map(|m| (m.name(), m.default_function(), m.functions()))
            .collect();
        let (index, function) = halite_proto::catalog::resolve(fun, declared.iter().cloned())
            .map_err(|unresolved| unresolved.to_string())?;
        let module = modules
            .get(declared[index].0)
            .ok_or_else(|| format!("unknown function `{fun}`"))?;
        Ok((Arc::clone(module), function))
    }

    /// Runs the call: an unknown module or function gives
    /// `Outcome::failed(RETCODE_UNKNOWN_FUNCTION, ..)` naming what the minion
    /// has. `call.fun` is set to the resolved `module.function`.
    ///
    /// A panicking module gives a failed outcome instead of taking the
    /// minion's task down; a module still running `cancel_grace` after
    /// `call.cancel` fired is dropped and the call fails with
    /// `RETCODE_TIMEOUT`.
    pub async fn run(&self, mut call: Call) -> Outcome {
        let (module, function) = match self.resolve(&call.fun) {
            Ok(found) => found,
            Err(message) => {
                tracing::warn!(jid = %call.jid, fun = %call.fun, "{message}");
                return Outcome::failed(RETCODE_UNKNOWN_FUNCTION, message);
            }
        };
        let full = format!("{}.{}", module.name(), function);
        call.fun = full.clone();
        let jid = call.jid.clone();
        let cancel = call.cancel.clone();
        let started = Instant::now();
        tracing::debug!(jid = %jid, fun = %full, "running");

        let work = AssertUnwindSafe(module.call(function, call)).catch_unwind();
        tokio::pin!(work);
        let finished = tokio::select! {
            biased;
            result = &mut work => Some(result),
            _ = cancel.cancelled() => None,
        };
        let result = match finished {
            Some(result) => Some(result),
            None => tokio::time::timeout(self.cancel_grace, &mut work)
                .await
                .ok(),
        };
        let outcome = match result {
            Some(Ok(outcome)) => outcome,
            Some(Err(panic)) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                tracing::error!(jid = %jid, fun = %full, "module panicked: {what}");
                Outcome::failed(RETCODE_ERROR, format!("{full} panicked: {what}"))
            }
            None => {
                tracing::warn!(jid = %jid, fun = %full, "still running {:?} after cancellation; dropped", self.cancel_grace);
                Outcome::failed(
                    RETCODE_TIMEOUT,
                    format!(
                        "{full} was cancelled and did not stop within {}s; abandoned",
                        self.cancel_grace.as_secs_f64()
                    ),
                )
            }
        };
        tracing::debug!(
            jid = %jid,
            fun = %full,
            success = outcome.success,
            retcode = outcome.retcode,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "finished"
        );
        outcome
    }

    /// Every `module.function` this registry can run, sorted (for `sys.list_functions`-style
    /// listings and error messages).
    pub fn functions(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .read()
            .values()
            .flat_map(|m| {
                m.functions()
                    .into_iter()
                    .map(move |f| format!("{}.{f}", m.name()))
            })
            .collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;
    use futures::future::BoxFuture;
    use serde_json::json;

    struct Deploy;
    impl Module for Deploy {
        fn name(&self) -> &'static str {
            "git_deploy"
        }
        fn functions(&self) -> Vec<&'static str> {
            vec!["deploy", "rollback", "stubborn", "boom"]
        }
        fn default_function(&self) -> Option<&'static str> {
            Some("deploy")
        }
        fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                match function {
                    "stubborn" => {
                        // Ignores cancellation on purpose.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Outcome::ok(json!("too late"))
                    }
                    "boom" => panic!("kaboom"),
                    _ => Outcome::ok(json!({"function": function, "fun": call.fun})),
                }
            })
        }
    }

    fn registry() -> Registry {
        let r = Registry::with_builtins();
        r.register(Arc::new(Deploy));
        r
    }

    #[test]
    fn resolves_full_names() {
        let r = registry();
        let (m, f) = r.resolve("cmd.run").expect("cmd.run exists");
        assert_eq!((m.name(), f), ("cmd", "run"));
        let (m, f) = r.resolve("git_deploy.rollback").expect("exists");
        assert_eq!((m.name(), f), ("git_deploy", "rollback"));
    }

    #[test]
    fn module_alone_means_default_function() {
        let r = registry();
        let (m, f) = r.resolve("git_deploy").expect("default function");
        assert_eq!((m.name(), f), ("git_deploy", "deploy"));
    }

    #[test]
    fn module_without_default_lists_functions() {
        let err = registry().resolve("cmd").err().expect("no default");
        assert!(err.contains("cmd.run, cmd.run_all"), "{err}");
    }

    #[test]
    fn unknown_function_lists_the_module_functions() {
        let err = registry().resolve("cmd.nope").err().expect("unknown");
        assert_eq!(
            err,
            "unknown function `cmd.nope`; the minion has: cmd.run, cmd.run_all"
        );
    }

    #[test]
    fn unknown_module_lists_modules() {
        let err = registry().resolve("nope.x").err().expect("unknown");
        assert_eq!(
            err,
            "unknown function `nope.x`; the minion has modules: cmd, dotnet_iis, git_deploy, grains, java_tomcat, release, service, test, win_task"
        );
    }

    #[test]
    fn functions_are_sorted_and_complete() {
        let all = Registry::with_builtins().functions();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        for f in [
            "cmd.run",
            "cmd.run_all",
            "grains.get",
            "grains.items",
            "grains.ls",
            "test.ping",
            "test.sleep",
        ] {
            assert!(all.iter().any(|x| x == f), "missing {f}");
        }
        assert!(Registry::new().functions().is_empty());
    }

    #[test]
    fn the_built_ins_are_exactly_the_catalog() {
        let mut declared: Vec<String> = halite_proto::catalog::MODULES
            .iter()
            .filter(|m| m.name != "saltutil" && m.name != "sys")
            .flat_map(|m| m.functions.iter().map(|f| f.fun.to_owned()))
            .collect();
        declared.sort();
        assert_eq!(Registry::with_builtins().functions(), declared);
    }

    #[tokio::test]
    async fn run_unknown_gives_127() {
        let out = registry().run(call("test.nope", vec![], json!({}))).await;
        assert_eq!(out.retcode, RETCODE_UNKNOWN_FUNCTION);
        assert!(!out.success);
        assert!(
            out.data.as_str().is_some_and(|s| s.contains("test.ping")),
            "{:?}",
            out.data
        );
    }

    #[tokio::test]
    async fn run_sets_resolved_full_name() {
        let out = registry().run(call("git_deploy", vec![], json!({}))).await;
        assert_eq!(
            out,
            Outcome::ok(json!({"function": "deploy", "fun": "git_deploy.deploy"}))
        );
    }

    #[tokio::test]
    async fn run_turns_a_panic_into_a_failure() {
        let out = registry()
            .run(call("git_deploy.boom", vec![], json!({})))
            .await;
        assert_eq!(out.retcode, RETCODE_ERROR);
        assert!(
            out.data.as_str().is_some_and(|s| s.contains("kaboom")),
            "{:?}",
            out.data
        );
    }

    #[tokio::test]
    async fn run_abandons_a_module_that_ignores_cancellation() {
        let r = registry().cancel_grace(Duration::from_millis(100));
        let c = call("git_deploy.stubborn", vec![], json!({}));
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        });
        let started = Instant::now();
        let out = r.run(c).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(out.retcode, RETCODE_TIMEOUT);
        assert!(!out.success);
    }
}
