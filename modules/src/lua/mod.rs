//! Lua modules: release steps written by each team (warm a cache, drain a
//! load balancer, reload php-fpm) as Lua files on the master, synced to
//! minions, run sandboxed like any other module: `php_app.deploy` is a
//! `module.function` the registry resolves and runs.
//!
//! A module file returns a table of functions; each is called with one
//! table `job` (`args`, `kwargs`, `jid`, `fun`) and what it returns is the
//! job's data; an error it raises fails the job with the Lua message and
//! line. The sandbox ([`sandbox`]) leaves only computation; the host API
//! ([`host`], the global `halite`) is the way out. Every call runs in a
//! fresh Lua state on a blocking thread, under an instruction budget, a
//! memory cap and a wall-clock deadline (the job's timeout).
//!
//! Which modules a minion may load (signed by its master, checked by
//! hash) is the minion's business; this module only runs source it is
//! given.

mod host;
mod pattern;
mod sandbox;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use mlua::{Lua, LuaSerdeExt, Table, Value};

pub use sandbox::Limits;

use crate::{Call, Module, Outcome, Registry, RETCODE_ERROR, RETCODE_TIMEOUT};

/// How a minion runs Lua modules: the limits of each call and the
/// directories the host API may read and write.
#[derive(Clone, Debug, Default)]
pub struct LuaConfig {
    /// Per-call limits.
    pub limits: Limits,
    /// Directories every Lua module may use.
    pub roots: Vec<PathBuf>,
    /// Extra directories per module name.
    pub module_roots: HashMap<String, Vec<PathBuf>>,
}

/// A Lua module ready to run.
pub struct LuaModule {
    name: &'static str,
    functions: &'static [&'static str],
    source: Arc<str>,
    sha256: String,
    config: Arc<LuaConfig>,
    registry: Weak<Registry>,
}

impl std::fmt::Debug for LuaModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LuaModule")
            .field("name", &self.name)
            .field("functions", &self.functions)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Module names live as long as the minion (the [`Module`] trait hands
/// out `&'static str`); interning keeps re-syncs from leaking a copy each.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

fn intern_list(list: &[String]) -> &'static [&'static str] {
    static LISTS: OnceLock<Mutex<HashMap<Vec<&'static str>, &'static [&'static str]>>> =
        OnceLock::new();
    let key: Vec<&'static str> = list.iter().map(|n| intern(n)).collect();
    let mut lists = LISTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(found) = lists.get(&key) {
        return found;
    }
    let leaked: &'static [&'static str] = Box::leak(key.clone().into_boxed_slice());
    lists.insert(key, leaked);
    leaked
}

/// SHA-256 of a module's source, hex: its version.
pub fn source_hash(source: &str) -> String {
    halite_pki::sha256_hex(source.as_bytes())
}

/// The chunk name errors quote: `php_app.lua:12: ...`.
fn chunk_name(module: &str) -> String {
    format!("={module}.lua")
}

/// Loads `source` and returns the table it returns.
fn load_table(lua: &Lua, name: &str, source: &str) -> mlua::Result<Table> {
    let value: Value = lua
        .load(source)
        .set_name(chunk_name(name))
        .set_mode(mlua::ChunkMode::Text)
        .eval()?;
    match value {
        Value::Table(table) => Ok(table),
        other => Err(mlua::Error::RuntimeError(format!(
            "{name}.lua must return a table of functions (`local M = {{}} ... return M`), not a {}",
            other.type_name()
        ))),
    }
}

/// The first line of a Lua error (its message with file and line), without
/// mlua's wrapping and the traceback.
fn lua_message(error: &mlua::Error, limits: &Limits) -> String {
    match error {
        mlua::Error::MemoryError(_) => format!(
            "memory limit of {} MiB exceeded",
            limits.memory / (1024 * 1024)
        ),
        mlua::Error::CallbackError { cause, .. } => lua_message(cause, limits),
        mlua::Error::WithContext { cause, .. } => lua_message(cause, limits),
        mlua::Error::RuntimeError(message) | mlua::Error::SyntaxError { message, .. } => {
            message.lines().next().unwrap_or_default().to_owned()
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

impl LuaModule {
    /// Checks `source` (it loads, in the sandbox, and returns a table of
    /// functions) and makes the module. Err is the Lua message.
    pub fn new(
        name: &str,
        source: &str,
        config: Arc<LuaConfig>,
        registry: Weak<Registry>,
    ) -> Result<LuaModule, String> {
        halite_proto::ident::validate_lua_module(name).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let (lua, _) = sandbox::new_state(
            &config.limits,
            deadline,
            tokio_util::sync::CancellationToken::new(),
        )
        .map_err(|e| e.to_string())?;
        let table = load_table(&lua, name, source).map_err(|e| lua_message(&e, &config.limits))?;
        let mut functions = Vec::new();
        for pair in table.pairs::<Value, Value>() {
            let (key, value) = pair.map_err(|e| e.to_string())?;
            if let (Value::String(key), Value::Function(_)) = (key, value) {
                functions.push(key.to_str().map_err(|e| e.to_string())?.to_owned());
            }
        }
        if functions.is_empty() {
            return Err(format!("{name}.lua returns a table without functions"));
        }
        functions.sort();
        Ok(LuaModule {
            name: intern(name),
            functions: intern_list(&functions),
            sha256: source_hash(source),
            source: Arc::from(source),
            config,
            registry,
        })
    }

    /// The SHA-256 of its source.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    fn run_blocking(
        &self,
        function: &str,
        call: Call,
        handle: tokio::runtime::Handle,
        deadline: Instant,
    ) -> Outcome {
        let limits = &self.config.limits;
        let mut roots: Vec<PathBuf> = self.config.roots.clone();
        if let Some(extra) = self.config.module_roots.get(self.name) {
            roots.extend(extra.iter().cloned());
        }
        // Canonical roots, so a symlinked root still matches resolved paths.
        let roots = roots
            .into_iter()
            .filter_map(|r| r.canonicalize().ok())
            .collect();
        let cancel = call.cancel.clone();
        let job = (
            call.args.clone(),
            call.kwargs.clone(),
            call.jid.to_string(),
            call.fun.clone(),
        );
        let host = Arc::new(host::Host {
            call,
            roots,
            deadline,
            registry: self.registry.clone(),
            handle,
            module: self.name.to_owned(),
        });
        let tripped: std::cell::RefCell<Option<sandbox::Tripped>> = Default::default();
        let run = || -> mlua::Result<serde_json::Value> {
            let (lua, trip) = sandbox::new_state(limits, deadline, cancel.clone())?;
            *tripped.borrow_mut() = Some(trip);
            host::install(&lua, host)?;
            let table = load_table(&lua, self.name, &self.source)?;
            let entry: mlua::Function = table.get(function)?;
            let arg = lua.create_table()?;
            arg.set("args", lua.to_value(&job.0)?)?;
            arg.set("kwargs", lua.to_value(&job.1)?)?;
            arg.set("jid", job.2.as_str())?;
            arg.set("fun", job.3.as_str())?;
            let value: Value = entry.call(arg)?;
            lua.from_value(value)
        };
        let result = run();
        // A limit the script caught (pcall) still fails the call.
        let limit_hit = tripped
            .borrow()
            .as_ref()
            .and_then(|t| t.lock().unwrap_or_else(|p| p.into_inner()).clone());
        let result = match (result, limit_hit) {
            (Ok(_), Some(message)) => Err(mlua::Error::RuntimeError(message)),
            (result, _) => result,
        };
        match result {
            Ok(data) => Outcome::ok(data),
            Err(error) => {
                let message = lua_message(&error, limits);
                // Out of time or cancelled, as the deadline and the token
                // say (not the message).
                let retcode = if cancel.is_cancelled() || Instant::now() >= deadline {
                    RETCODE_TIMEOUT
                } else {
                    RETCODE_ERROR
                };
                Outcome::failed(retcode, message)
            }
        }
    }
}

impl Module for LuaModule {
    fn name(&self) -> &'static str {
        self.name
    }

    fn functions(&self) -> Vec<&'static str> {
        self.functions.to_vec()
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            // The executor also bounds the job by its timeout and cancels
            // the call; the hook sees either.
            let deadline = Instant::now() + self.config.limits.timeout;
            let handle = tokio::runtime::Handle::current();
            let this = LuaModule {
                name: self.name,
                functions: self.functions,
                source: self.source.clone(),
                sha256: self.sha256.clone(),
                config: self.config.clone(),
                registry: self.registry.clone(),
            };
            let function = function.to_owned();
            tokio::task::spawn_blocking(move || {
                this.run_blocking(&function, call, handle, deadline)
            })
            .await
            .unwrap_or_else(|e| Outcome::failed(RETCODE_ERROR, format!("Lua task failed: {e}")))
        })
    }
}
