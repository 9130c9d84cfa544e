//! The host API: the global `halite` table, a Lua module's only way to
//! touch the server. Commands, files under the allowed roots, templates,
//! HTTP, sleep, logs, progress lines and stages (shown live like
//! git_deploy's), grains, and calls of other modules.
//!
//! Lua runs on a blocking thread; host functions that wait (commands,
//! HTTP, sleep, module calls) run on the minion's runtime through its
//! handle, bounded by the call's deadline and cancellation.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mlua::{Lua, LuaSerdeExt, Table, Value};
use tokio::runtime::Handle;

use crate::process::{run_request, CommandRequest};
use crate::{Call, Registry};

/// What the host functions of one call share.
pub(crate) struct Host {
    /// The job's call (jid, grains, events, cancellation).
    pub(crate) call: Call,
    /// Directories the module may read and write under (canonical).
    pub(crate) roots: Vec<PathBuf>,
    /// When the call must be over.
    pub(crate) deadline: Instant,
    /// For `halite.call` (weak: the registry holds this module).
    pub(crate) registry: Weak<Registry>,
    /// The minion's runtime.
    pub(crate) handle: Handle,
    /// The module's name, for logs.
    pub(crate) module: String,
}

fn fail(message: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(message.into())
}

impl Host {
    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Runs `future` on the runtime, bounded by the deadline and the
    /// job's cancellation.
    fn wait<T>(&self, what: &str, future: impl std::future::Future<Output = T>) -> mlua::Result<T> {
        let remaining = self.remaining();
        let cancel = self.call.cancel.clone();
        self.handle.block_on(async move {
            tokio::select! {
                out = tokio::time::timeout(remaining, future) => {
                    out.map_err(|_| fail(format!("{what}: time limit exceeded")))
                }
                () = cancel.cancelled() => Err(fail(format!("{what}: cancelled"))),
            }
        })
    }

    /// `path` if it lies under an allowed root (symlinks resolved), else an
    /// error naming the path and the roots.
    fn allowed(&self, path: &str) -> mlua::Result<PathBuf> {
        let refused = |why: &str| {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            fail(format!(
                "path {path:?} {why}; this module may use: {}",
                if roots.is_empty() {
                    "no path (set [lua] roots in the minion config)".to_owned()
                } else {
                    roots.join(", ")
                }
            ))
        };
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(refused("is not absolute"));
        }
        if given
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(refused("contains .."));
        }
        // Resolve the longest existing prefix (following symlinks), then
        // add the parts that do not exist yet.
        let mut existing = given.to_path_buf();
        let mut rest = Vec::new();
        let resolved = loop {
            match existing.canonicalize() {
                Ok(real) => break real,
                Err(_) => match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        rest.push(name.to_owned());
                        existing = parent.to_path_buf();
                    }
                    _ => return Err(refused("cannot be resolved")),
                },
            }
        };
        let full = rest.iter().rev().fold(resolved, |p, part| p.join(part));
        if self.roots.iter().any(|root| full.starts_with(root)) {
            Ok(full)
        } else {
            Err(refused("is outside the allowed roots"))
        }
    }
}

/// Installs `halite` into the state's globals.
pub(crate) fn install(lua: &Lua, host: Arc<Host>) -> mlua::Result<()> {
    let halite = lua.create_table()?;
    halite.set("jid", host.call.jid.as_str())?;
    halite.set("fun", host.call.fun.as_str())?;
    halite.set("grains", lua.to_value(host.call.grains.as_ref())?)?;

    let h = host.clone();
    halite.set(
        "run",
        lua.create_function(move |lua, options: Table| {
            let request = CommandRequest {
                argv: options.get::<Option<Vec<String>>>("argv")?,
                shell_cmd: options.get::<Option<String>>("cmd")?,
                cwd: options.get::<Option<String>>("cwd")?.map(PathBuf::from),
                env: options
                    .get::<Option<BTreeMap<String, String>>>("env")?
                    .unwrap_or_default(),
                stdin: options.get::<Option<String>>("stdin")?,
                timeout: options
                    .get::<Option<f64>>("timeout")?
                    .filter(|t| *t > 0.0)
                    .map_or(h.remaining(), |t| {
                        Duration::from_secs_f64(t).min(h.remaining())
                    }),
            };
            let (events, cancel) = (h.call.events.clone(), h.call.cancel.clone());
            let result = h.wait("halite.run", async move {
                run_request("halite.run", request, &events, &cancel).await
            })?;
            lua.to_value(&result.map_err(fail)?)
        })?,
    )?;

    let h = host.clone();
    halite.set(
        "read",
        lua.create_function(move |_, path: String| {
            let path = h.allowed(&path)?;
            std::fs::read_to_string(&path)
                .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "write",
        lua.create_function(move |_, (path, content): (String, mlua::String)| {
            let path = h.allowed(&path)?;
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
            }
            std::fs::write(&path, &content.as_bytes()[..])
                .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "exists",
        lua.create_function(move |_, path: String| Ok(h.allowed(&path)?.exists()))?,
    )?;
    let h = host.clone();
    halite.set(
        "list",
        lua.create_function(move |_, path: String| {
            let path = h.allowed(&path)?;
            let mut names: Vec<String> = std::fs::read_dir(&path)
                .map_err(|e| fail(format!("cannot list {}: {e}", path.display())))?
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names)
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "mkdir",
        lua.create_function(move |_, path: String| {
            let path = h.allowed(&path)?;
            std::fs::create_dir_all(&path)
                .map_err(|e| fail(format!("cannot create {}: {e}", path.display())))
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "remove",
        lua.create_function(move |_, (path, options): (String, Option<Table>)| {
            let path = h.allowed(&path)?;
            if h.roots.contains(&path) {
                return Err(fail(format!(
                    "{} is an allowed root itself; not removed",
                    path.display()
                )));
            }
            let recursive = options
                .map(|o| o.get::<Option<bool>>("recursive"))
                .transpose()?
                .flatten()
                .unwrap_or(false);
            let removed = match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => Err(e),
                Ok(meta) if meta.is_dir() && recursive => std::fs::remove_dir_all(&path),
                Ok(meta) if meta.is_dir() => std::fs::remove_dir(&path),
                Ok(_) => std::fs::remove_file(&path),
            };
            removed
                .map(|()| true)
                .map_err(|e| fail(format!("cannot remove {}: {e}", path.display())))
        })?,
    )?;
    halite.set(
        "render",
        lua.create_function(|_, (text, vars): (String, Table)| render(&text, &vars))?,
    )?;
    let h = host.clone();
    halite.set(
        "template",
        lua.create_function(move |_, (source, target, vars): (String, String, Table)| {
            let source = h.allowed(&source)?;
            let target = h.allowed(&target)?;
            let text = std::fs::read_to_string(&source)
                .map_err(|e| fail(format!("cannot read {}: {e}", source.display())))?;
            let rendered = render(&text, &vars)?;
            std::fs::write(&target, rendered)
                .map_err(|e| fail(format!("cannot write {}: {e}", target.display())))
        })?,
    )?;

    for (name, post) in [("http_get", false), ("http_post", true)] {
        let h = host.clone();
        halite.set(
            name,
            lua.create_function(move |lua, args: mlua::MultiValue| {
                let mut args = args.into_iter();
                let url: String = match args.next() {
                    Some(Value::String(s)) => s.to_str()?.to_owned(),
                    _ => {
                        return Err(fail(format!(
                            "halite.{name}: the first argument is the URL"
                        )))
                    }
                };
                let body = if post {
                    match args.next() {
                        Some(Value::String(s)) => Some(s.to_str()?.to_owned()),
                        Some(Value::Nil) | None => Some(String::new()),
                        Some(other) => Some(
                            serde_json::to_string(&lua.from_value::<serde_json::Value>(other)?)
                                .map_err(|e| fail(e.to_string()))?,
                        ),
                    }
                } else {
                    None
                };
                let options = match args.next() {
                    Some(Value::Table(t)) => Some(t),
                    _ => None,
                };
                let timeout = options
                    .as_ref()
                    .map(|o| o.get::<Option<f64>>("timeout"))
                    .transpose()?
                    .flatten()
                    .map_or(Duration::from_secs(10), Duration::from_secs_f64)
                    .min(h.remaining());
                let headers: BTreeMap<String, String> = options
                    .as_ref()
                    .map(|o| o.get::<Option<BTreeMap<String, String>>>("headers"))
                    .transpose()?
                    .flatten()
                    .unwrap_or_default();
                let client = crate::http::client(Vec::new(), timeout).map_err(fail)?;
                let answer = h.wait(&format!("halite.{name}"), async move {
                    let mut request = match &body {
                        Some(body) => client.post(&url).body(body.clone()),
                        None => client.get(&url),
                    };
                    for (key, value) in &headers {
                        request = request.header(key, value);
                    }
                    let response = request
                        .send()
                        .await
                        .map_err(|e| format!("{url}: {}", crate::http::error_chain(&e)))?;
                    let status = response.status().as_u16();
                    let text = response.text().await.map_err(|e| format!("{url}: {e}"))?;
                    Ok::<_, String>((status, text))
                })?;
                let (status, text) = answer.map_err(fail)?;
                let out = lua.create_table()?;
                out.set("status", status)?;
                out.set("body", text)?;
                Ok(out)
            })?,
        )?;
    }

    let h = host.clone();
    halite.set(
        "sleep",
        lua.create_function(move |_, seconds: f64| {
            if !seconds.is_finite() || seconds < 0.0 {
                return Err(fail("halite.sleep: seconds must be a positive number"));
            }
            h.wait(
                "halite.sleep",
                tokio::time::sleep(Duration::from_secs_f64(seconds)),
            )
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "log",
        lua.create_function(move |_, (level, message): (String, Option<String>)| {
            let (level, message) = match message {
                Some(message) => (level, message),
                None => ("info".to_owned(), level),
            };
            let (jid, module) = (&h.call.jid, &h.module);
            let line = log_line(&message);
            match level.as_str() {
                "error" => tracing::error!(%jid, module, "{line}"),
                "warn" | "warning" => tracing::warn!(%jid, module, "{line}"),
                "debug" => tracing::debug!(%jid, module, "{line}"),
                _ => tracing::info!(%jid, module, "{line}"),
            }
            h.call.events.progress("log", &message);
            Ok(())
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "progress",
        lua.create_function(move |_, line: String| {
            h.call.events.progress("stdout", &line);
            Ok(())
        })?,
    )?;
    let h = host.clone();
    halite.set(
        "stage",
        lua.create_function(
            move |_, (stage, status, message): (String, String, Option<String>)| {
                if !matches!(status.as_str(), "started" | "succeeded" | "failed") {
                    return Err(fail(format!(
                        "halite.stage: status {status:?}: use started, succeeded or failed"
                    )));
                }
                h.call.events.stage(&stage, &status, None, message);
                Ok(())
            },
        )?,
    )?;
    let h = host;
    halite.set(
        "call",
        lua.create_function(
            move |lua, (fun, kwargs, args): (String, Option<Value>, Option<Value>)| {
                let registry = h
                    .registry
                    .upgrade()
                    .ok_or_else(|| fail("halite.call: the minion is shutting down"))?;
                let kwargs = match kwargs {
                    Some(Value::Nil) | None => serde_json::Map::new(),
                    Some(value) => match lua.from_value::<serde_json::Value>(value)? {
                        serde_json::Value::Object(map) => map,
                        // An empty Lua table reads as an empty list.
                        serde_json::Value::Array(list) if list.is_empty() => serde_json::Map::new(),
                        other => {
                            return Err(fail(format!(
                                "halite.call: keyword arguments must be a table, not {other}"
                            )))
                        }
                    },
                };
                let args = match args {
                    Some(Value::Nil) | None => Vec::new(),
                    Some(value) => match lua.from_value::<serde_json::Value>(value)? {
                        serde_json::Value::Array(list) => list,
                        other => vec![other],
                    },
                };
                let call = Call {
                    jid: h.call.jid.clone(),
                    fun,
                    args,
                    kwargs,
                    grains: h.call.grains.clone(),
                    cancel: h.call.cancel.child_token(),
                    events: h.call.events.clone(),
                    published: h.call.published.clone(),
                };
                let outcome = h.wait("halite.call", async move { registry.run(call).await })?;
                let out = lua.create_table()?;
                out.set("success", outcome.success)?;
                out.set("retcode", outcome.retcode)?;
                out.set("data", lua.to_value(&outcome.data)?)?;
                Ok(out)
            },
        )?,
    )?;
    lua.globals().set("halite", halite)
}

/// `{{ name }}` → `vars.name` (text, numbers and booleans); an unknown
/// name is an error, so a typo never ships an empty value.
fn render(text: &str, vars: &Table) -> mlua::Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| fail("template: `{{` without `}}`"))?;
        let name = after[..end].trim();
        let value: Value = vars.get(name)?;
        match value {
            Value::String(s) => out.push_str(&s.to_str()?),
            Value::Integer(i) => out.push_str(&i.to_string()),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Boolean(b) => out.push_str(&b.to_string()),
            _ => return Err(fail(format!("template: no value for {{{{ {name} }}}}"))),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Longest Lua log line the minion log takes (the job's events keep it
/// whole).
const MAX_LOG_LINE: usize = 4096;

/// A module's log message as one line of the minion's log: control
/// characters (newlines included) escaped, so a module cannot forge log
/// lines, and cut at [`MAX_LOG_LINE`] characters.
pub(super) fn log_line(message: &str) -> String {
    let mut line: String = message
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .take(MAX_LOG_LINE)
        .collect();
    if message.chars().count() > MAX_LOG_LINE {
        line.push('…');
    }
    line
}
