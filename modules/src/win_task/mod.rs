//! `win_task`: Windows scheduled tasks from a definition — create,
//! update, run, end, enable, disable, delete, info, list. `create` and
//! `update` are releases of the definition (four stages, release records
//! on the master under the task's path).
//!
//! Everything that decides what to run and reads what comes back is
//! platform-neutral and tested on Linux: the definition
//! ([`definition`]), its Task Scheduler XML ([`xml`]), the `schtasks.exe`
//! argument lists and the parsing of its CSV output ([`schtasks`]). Only
//! starting `schtasks.exe` is `cfg(windows)`; on other systems every
//! function fails saying it needs a Windows minion. The tests drive the
//! module against a double of schtasks that keeps tasks as Task Scheduler
//! does.

mod definition;
#[cfg(test)]
mod fake;
mod schtasks;
mod xml;

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use halite_proto::catalog;
use halite_proto::catalog::win_task::{
    CREATE, DELETE, DISABLE, ENABLE, END, INFO, LIST, MODULE, RUN, UPDATE,
};

use crate::args::Signature;
use crate::kit::{Ended, Failure, ReleaseRun};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};
use definition::{task_path, TaskDefinition};
use halite_proto::release::{ReleaseAction, Stage};
use schtasks::{Schtasks, ToolOutput};

/// The `win_task` module over a schtasks runner.
pub(crate) struct WinTaskModule {
    tool: Arc<dyn Schtasks>,
}

impl WinTaskModule {
    /// The module over this machine's `schtasks.exe`.
    pub(crate) fn system() -> WinTaskModule {
        WinTaskModule {
            tool: Arc::new(schtasks::system()),
        }
    }
}

impl Module for WinTaskModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let sig = match MODULE.function(function) {
                Some(&CREATE) => return self.define(true, &call).await,
                Some(&UPDATE) => return self.define(false, &call).await,
                Some(&LIST) => return self.list(&call).await,
                Some(sig) => sig,
                None => return unknown_function(self, function),
            };
            let path = match named_task(&call, sig.name()) {
                Ok(path) => path,
                Err(outcome) => return outcome,
            };
            match *sig {
                INFO => self.info(&path).await,
                _ => self.change(sig, &path).await,
            }
        })
    }
}

fn bad(fun: &str, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(RETCODE_BAD_ARGS, format!("win_task.{fun}: {message}"))
}

/// `name` (and `folder`) of an existing task, as `\Folder\Name`.
fn named_task(call: &Call, fun: &str) -> Result<String, Outcome> {
    for key in call.kwargs.keys() {
        if key != "name" && key != "folder" {
            return Err(bad(
                fun,
                format!("unknown argument `{key}` (takes name and folder)"),
            ));
        }
    }
    let name = call
        .kwargs
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| call.args.first().and_then(Value::as_str))
        .ok_or_else(|| bad(fun, "needs name=TASK"))?;
    let folder = call
        .kwargs
        .get("folder")
        .and_then(Value::as_str)
        .unwrap_or("\\");
    if name.contains(['\\', '/']) || !folder.starts_with('\\') {
        return Err(bad(fun, "name is a task name and folder starts with \\"));
    }
    Ok(task_path(folder, name))
}

impl WinTaskModule {
    async fn schtasks(&self, fun: &str, args: Vec<String>) -> Result<ToolOutput, Outcome> {
        self.tool
            .run(args)
            .await
            .map_err(|e| Outcome::failed(RETCODE_ERROR, format!("win_task.{fun}: {e}")))
    }

    /// The task's info, or None when it does not exist.
    async fn query(&self, fun: &str, path: &str) -> Result<Option<Value>, Outcome> {
        let out = self.schtasks(fun, schtasks::query(Some(path))).await?;
        if schtasks::not_found(&out) {
            return Ok(None);
        }
        if out.code != 0 {
            return Err(failed(fun, &out));
        }
        Ok(schtasks::parse_query(&out.stdout)
            .into_iter()
            .find(|t| t["path"] == path))
    }

    /// `create` / `update`: a task definition released like an app, under
    /// the task's path, in the deploy modules' four stages — fetch (what
    /// Task Scheduler has now), prepare (create needs no task yet, update
    /// an existing one; the XML written), deploy (schtasks imports it),
    /// verify (the task is registered). The return has their shape too
    /// (`release`: the first 12 hex digits of the XML's SHA-256), so the
    /// master keeps the task's release history.
    async fn define(&self, create: bool, call: &Call) -> Outcome {
        let fun = if create { "create" } else { "update" };
        let def: TaskDefinition = match serde_json::from_value(Value::Object(call.kwargs.clone())) {
            Ok(def) => def,
            Err(e) => return bad(fun, e),
        };
        if let Err(e) = def.validate() {
            return bad(fun, e);
        }
        let path = def.path();
        let xml = xml::render(&def);
        let revision = halite_pki::sha256_hex(xml.as_bytes());
        let mut run = ReleaseRun::unplaced(call, &path, ReleaseAction::Deploy, None);
        run.report.release = Some(revision[..12].to_owned());
        run.report.revision = Some(revision);
        let ended = self
            .define_stages(&mut run, create, call, &path, &xml)
            .await;
        run.end(ended).await
    }

    /// A definition's release: fetch, prepare, deploy, verify.
    async fn define_stages(
        &self,
        run: &mut ReleaseRun,
        create: bool,
        call: &Call,
        path: &str,
        xml: &str,
    ) -> Result<Ended, Failure> {
        let fun = if create { "create" } else { "update" };
        let fetch = async {
            let before = self.query(fun, path).await.map_err(text)?;
            let found = match &before {
                Some(task) => format!(
                    "{path} is there ({})",
                    task["status"].as_str().unwrap_or("?")
                ),
                None => format!("no task {path} yet"),
            };
            Ok((before, found))
        };
        let before = run.step(Stage::Fetch, fetch).await?;

        let file = std::env::temp_dir().join(format!("halite-task-{}.xml", call.jid));
        let prepare = async {
            match (create, before.is_some()) {
                (true, true) => Err(format!("task {path} exists; use win_task.update")),
                (false, false) => Err(format!("no task {path}; use win_task.create")),
                _ => std::fs::write(&file, xml::utf16_file(xml))
                    .map_err(|e| format!("cannot write {}: {e}", file.display())),
            }?;
            Ok(((), format!("{path} rendered")))
        };
        run.step(Stage::Prepare, prepare).await?;

        let import = async {
            let out = self
                .schtasks(fun, schtasks::create(path, &file.display().to_string()))
                .await;
            let _ = std::fs::remove_file(&file);
            match out {
                Ok(out) if out.code == 0 => Ok(((), format!("schtasks imported {path}"))),
                Ok(out) => Err(said(fun, &out)),
                Err(outcome) => Err(text(outcome)),
            }
        };
        run.step(Stage::Deploy, import).await?;

        let check = async {
            match self.query(fun, path).await {
                Ok(Some(info)) => Ok((info, format!("{path} is registered"))),
                Ok(None) => Err(format!("{path} is not there after schtasks said it was")),
                Err(outcome) => Err(text(outcome)),
            }
        };
        let info = run.step(Stage::Verify, check).await?;
        Ok(Ended::live(json!({ "changed": true, "task": info })))
    }

    async fn info(&self, path: &str) -> Outcome {
        match self.query("info", path).await {
            Ok(Some(info)) => Outcome::ok(info),
            Ok(None) => Outcome::failed(RETCODE_ERROR, format!("win_task.info: no task {path}")),
            Err(outcome) => outcome,
        }
    }

    /// `run`, `end`, `enable`, `disable` or `delete` on one task.
    async fn change(&self, sig: &Signature, path: &str) -> Outcome {
        let fun = sig.name();
        let args = match *sig {
            RUN => schtasks::run(path),
            END => schtasks::end(path),
            ENABLE => schtasks::enable(path, true),
            DISABLE => schtasks::enable(path, false),
            _ => schtasks::delete(path),
        };
        let out = match self.schtasks(fun, args).await {
            Ok(out) => out,
            Err(outcome) => return outcome,
        };
        if schtasks::not_found(&out) {
            return Outcome::failed(RETCODE_ERROR, format!("win_task.{fun}: no task {path}"));
        }
        if out.code != 0 {
            return failed(fun, &out);
        }
        if *sig == DELETE {
            return Outcome::ok(json!({ "deleted": path }));
        }
        self.info(path).await
    }

    async fn list(&self, call: &Call) -> Outcome {
        if let Some(key) = call.kwargs.keys().find(|k| *k != "folder") {
            return bad("list", format!("unknown argument `{key}` (takes folder)"));
        }
        let folder = call.kwargs.get("folder").and_then(Value::as_str);
        let out = match self.schtasks("list", schtasks::query(None)).await {
            Ok(out) if out.code == 0 => out,
            Ok(out) => return failed("list", &out),
            Err(outcome) => return outcome,
        };
        let tasks: Vec<Value> = schtasks::parse_query(&out.stdout)
            .into_iter()
            .filter(|t| {
                folder.is_none_or(|f| {
                    t["folder"].as_str() == Some(f.trim_end_matches('\\'))
                        || (f == "\\" && t["folder"] == "\\")
                })
            })
            .collect();
        Outcome::ok(Value::Array(tasks))
    }
}

fn failed(fun: &str, out: &ToolOutput) -> Outcome {
    Outcome::failed(RETCODE_ERROR, said(fun, out))
}

/// What a failed schtasks run said, for a failure message.
fn said(fun: &str, out: &ToolOutput) -> String {
    let said = if out.stderr.trim().is_empty() {
        out.stdout.trim()
    } else {
        out.stderr.trim()
    };
    format!("win_task.{fun}: schtasks exited {}: {said}", out.code)
}

/// The message of a failed outcome, to carry into a stage's failure.
fn text(outcome: Outcome) -> String {
    match outcome.data {
        Value::String(message) => message,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::tests::call;

    fn module() -> (Arc<fake::FakeSchtasks>, WinTaskModule) {
        let fake = Arc::new(fake::FakeSchtasks::default());
        (fake.clone(), WinTaskModule { tool: fake })
    }

    fn task() -> Value {
        json!({
            "name": "Rotate logs",
            "folder": "\\Halite",
            "command": "C:\\tools\\rotate.exe",
            "triggers": [{ "type": "daily", "start": "2026-11-23T02:00:00" }],
        })
    }

    #[tokio::test]
    async fn a_task_through_its_life() {
        let (fake, m) = module();
        let out = m
            .call("create", call("win_task.create", vec![], task()))
            .await;
        assert!(out.success, "{out:?}");
        assert_eq!(out.data["task"]["status"], "Ready");
        let stages = crate::kit::stage_names(&out.data);
        assert_eq!(stages, ["fetch", "prepare", "deploy", "verify"]);
        let first_release = out.data["release"].clone();
        assert_eq!(out.data["task"]["run_as"], "SYSTEM");
        let xml = fake.tasks.lock().unwrap()["\\Halite\\Rotate logs"]
            .xml
            .clone();
        assert!(xml.contains("<DaysInterval>1</DaysInterval>"), "{xml}");

        let again = m
            .call("create", call("win_task.create", vec![], task()))
            .await;
        assert!(!again.success);
        assert_eq!(again.data["failed_stage"], "prepare", "{again:?}");
        assert!(
            again.data["error"]
                .as_str()
                .unwrap()
                .contains("use win_task.update"),
            "{again:?}"
        );

        let mut changed = task();
        changed["command"] = json!("C:\\tools\\rotate2.exe");
        let out = m
            .call("update", call("win_task.update", vec![], changed))
            .await;
        assert_eq!(
            out.data["task"]["command"], "C:\\tools\\rotate2.exe",
            "{out:?}"
        );
        // Released like an app, under the task's path: a new release.
        assert_eq!(out.data["app"], "\\Halite\\Rotate logs");
        assert_eq!(out.data["result"], "live");
        assert_ne!(out.data["release"], first_release);
        assert_eq!(out.data["release"].as_str().map(str::len), Some(12));

        let named = json!({ "name": "Rotate logs", "folder": "\\Halite" });
        let out = m
            .call("run", call("win_task.run", vec![], named.clone()))
            .await;
        assert_eq!(out.data["status"], "Running", "{out:?}");
        let out = m
            .call("end", call("win_task.end", vec![], named.clone()))
            .await;
        assert_eq!(
            out.data["last_result_text"], "terminated by the user",
            "{out:?}"
        );
        let out = m
            .call("disable", call("win_task.disable", vec![], named.clone()))
            .await;
        assert_eq!(
            (out.data["status"].clone(), out.data["enabled"].clone()),
            (json!("Disabled"), json!(false))
        );
        let out = m
            .call("run", call("win_task.run", vec![], named.clone()))
            .await;
        assert!(
            !out.success && out.data.as_str().unwrap().contains("disabled"),
            "{out:?}"
        );
        let out = m
            .call("enable", call("win_task.enable", vec![], named.clone()))
            .await;
        assert_eq!(out.data["enabled"], true);

        let out = m
            .call(
                "list",
                call("win_task.list", vec![], json!({ "folder": "\\Halite" })),
            )
            .await;
        assert_eq!(out.data.as_array().unwrap().len(), 1, "{out:?}");
        let out = m
            .call(
                "list",
                call("win_task.list", vec![], json!({ "folder": "\\Other" })),
            )
            .await;
        assert_eq!(out.data, json!([]));

        let out = m
            .call("delete", call("win_task.delete", vec![], named.clone()))
            .await;
        assert!(out.success, "{out:?}");
        let out = m.call("info", call("win_task.info", vec![], named)).await;
        assert!(!out.success);
        assert_eq!(
            out.data,
            json!("win_task.info: no task \\Halite\\Rotate logs")
        );
    }

    #[tokio::test]
    async fn bad_input_is_named_and_changes_nothing() {
        let (fake, m) = module();
        let mut bad_schedule = task();
        bad_schedule["triggers"] =
            json!([{ "type": "weekly", "start": "2026-11-23T02:00:00", "days": ["someday"] }]);
        let out = m
            .call("create", call("win_task.create", vec![], bad_schedule))
            .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        assert!(out.data.as_str().unwrap().contains("someday"), "{out:?}");
        let out = m
            .call("update", call("win_task.update", vec![], task()))
            .await;
        assert!(
            out.data["error"]
                .as_str()
                .unwrap()
                .contains("use win_task.create"),
            "{out:?}"
        );
        for fun in ["run", "end", "enable", "disable", "delete"] {
            let out = m
                .call(
                    fun,
                    call(
                        &format!("win_task.{fun}"),
                        vec![],
                        json!({ "name": "ghost" }),
                    ),
                )
                .await;
            assert_eq!(
                out.data,
                json!(format!("win_task.{fun}: no task \\ghost")),
                "{fun}"
            );
        }
        let out = m
            .call(
                "run",
                call("win_task.run", vec![], json!({ "name": "x", "colour": 1 })),
            )
            .await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS);
        assert!(fake.tasks.lock().unwrap().is_empty());
    }
}
