//! A Lua state that can do nothing but compute: no `io`, no `os` beyond
//! the clock, no `require`, `dofile`, `loadfile`, `debug` or binary
//! chunks; the host API (`halite`, see [`super::host`]) is the only way
//! out. Every call gets a fresh state with a memory cap and a hook that
//! enforces the instruction budget, the wall-clock deadline and the job's
//! cancellation.

use std::cell::Cell;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Value, VmState};
use tokio_util::sync::CancellationToken;

/// How often (in VM instructions) the hook checks the limits.
const HOOK_EVERY: u32 = 10_000;

/// What one call of a Lua function may use.
#[derive(Clone, Debug)]
pub struct Limits {
    /// VM instructions (counted in steps of 10 000).
    pub instructions: u64,
    /// Bytes of Lua memory.
    pub memory: usize,
    /// Wall-clock time (the job's own timeout and cancellation also apply).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instructions: 1_000_000_000,
            memory: 64 * 1024 * 1024,
            timeout: Duration::from_secs(3600),
        }
    }
}

/// Why the hook stopped a script; its text is what the failed return says.
pub(crate) fn limit_error(message: String) -> mlua::Error {
    mlua::Error::RuntimeError(message)
}

/// Set by the hook when a limit stops the script: a script that catches
/// the error with `pcall` still fails with it.
pub(crate) type Tripped = Arc<Mutex<Option<String>>>;

/// A fresh sandboxed state for one call, and where the hook notes a limit hit.
pub(crate) fn new_state(
    limits: &Limits,
    deadline: Instant,
    cancel: CancellationToken,
) -> mlua::Result<(Lua, Tripped)> {
    let lua = Lua::new_with(
        StdLib::STRING
            | StdLib::TABLE
            | StdLib::MATH
            | StdLib::UTF8
            | StdLib::COROUTINE
            | StdLib::OS,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(limits.memory)?;
    let globals = lua.globals();
    // Only the clock of `os`: no execute, exit, getenv, remove, rename, tmpname.
    let os: mlua::Table = globals.get("os")?;
    let safe_os = lua.create_table()?;
    for name in ["time", "clock", "date", "difftime"] {
        safe_os.set(name, os.get::<Value>(name)?)?;
    }
    globals.set("os", safe_os)?;
    for name in ["dofile", "loadfile", "require", "collectgarbage", "print"] {
        globals.set(name, Value::Nil)?;
    }
    // string.dump makes binary chunks; load below refuses them anyway.
    let string: mlua::Table = globals.get("string")?;
    string.set("dump", Value::Nil)?;
    // Pattern matching that stops at the deadline (the C one runs
    // outside the instruction hook).
    super::pattern::install(
        &lua,
        super::pattern::Budget {
            deadline,
            cancel: cancel.clone(),
        },
    )?;
    // `load` only of text chunks, in the sandbox's globals.
    let load = lua.create_function(|lua, (chunk, name): (mlua::String, Option<String>)| {
        let bytes = chunk.as_bytes();
        if bytes.first() == Some(&0x1b) {
            return Err(mlua::Error::RuntimeError(
                "load: binary chunks are not allowed".into(),
            ));
        }
        lua.load(&bytes[..])
            .set_name(name.unwrap_or_else(|| "=load".into()))
            .set_mode(mlua::ChunkMode::Text)
            .into_function()
    })?;
    globals.set("load", load)?;

    let budget = limits.instructions;
    let used = Cell::new(0u64);
    let tripped: Tripped = Arc::default();
    let note = tripped.clone();
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            used.set(used.get() + u64::from(HOOK_EVERY));
            let stop = if used.get() > budget {
                Some(format!("instruction budget of {budget} exceeded"))
            } else if Instant::now() >= deadline {
                Some("time limit exceeded".to_owned())
            } else if cancel.is_cancelled() {
                Some("cancelled".to_owned())
            } else {
                None
            };
            match stop {
                Some(message) => {
                    note.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert_with(|| message.clone());
                    Err(limit_error(message))
                }
                None => Ok(VmState::Continue),
            }
        },
    )?;
    Ok((lua, tripped))
}
