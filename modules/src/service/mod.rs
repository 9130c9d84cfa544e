//! `service`: start, stop, restart, reload, enable and disable a system
//! service, and ask about it (`status`, `enabled`, `available`, `list`),
//! through the init system that runs on the server:
//!
//! - **systemd** when it is the running init (`/run/systemd/system` is a
//!   directory: the test `sd_booted(3)` documents), through `systemctl`;
//! - **SysV init scripts** otherwise (`/etc/init.d/NAME`, LSB exit codes
//!   for `status`, `update-rc.d` to enable and disable), as on containers
//!   and older servers.
//!
//! What to run and how to read the answer is platform-neutral code
//! ([`systemd`], [`sysv`]); the programs run through `cmd`, so their
//! output streams live and they time out and cancel like `cmd.run`. Every
//! change is checked afterwards (a started service must be running).
//! Windows services are not handled yet: the module says so.

mod systemd;
mod sysv;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value};

use halite_proto::catalog;
use halite_proto::catalog::service::{
    AVAILABLE, DISABLE, ENABLE, ENABLED, LIST, MODULE, RELOAD, RESTART, START, STOP,
};

use crate::args::{Args, Signature};
use crate::module::unknown_function;
use crate::{Call, Module, Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR};

/// How long a start, stop or other change may take unless `timeout=` says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a status query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// What a program run for the module printed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ran {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    /// stderr, or stdout when stderr is empty: what to show on failure.
    fn said(&self) -> &str {
        let err = self.stderr.trim();
        if err.is_empty() {
            self.stdout.trim()
        } else {
            err
        }
    }
}

/// Runs a program with arguments: this machine's, or a test double.
pub(crate) trait Exec: Send + Sync {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        call: &'a Call,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Ran, String>>;
}

/// Programs of this machine, through `cmd` (live lines, timeout,
/// cancellation, process-group kill).
struct SystemExec;

impl Exec for SystemExec {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        call: &'a Call,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Ran, String>> {
        Box::pin(async move {
            let request = crate::process::CommandRequest {
                argv: Some(argv),
                timeout,
                ..Default::default()
            };
            let data =
                crate::process::run_request("service", request, &call.events, &call.cancel).await?;
            let text = |key: &str| data[key].as_str().unwrap_or_default().to_owned();
            Ok(Ran {
                code: data["retcode"].as_i64().unwrap_or(-1) as i32,
                stdout: text("stdout"),
                stderr: text("stderr"),
            })
        })
    }
}

/// Which init system manages services here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Init {
    Systemd,
    /// Init scripts under `etc/init.d`, links under `etc/rc?.d`.
    SysV {
        etc: PathBuf,
    },
}

/// What the module knows about one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) running: bool,
    /// None where the init system cannot say (SysV `list`).
    pub(crate) enabled: Option<bool>,
    /// The init system's own words (`active (running)`, the script's line).
    pub(crate) state: String,
    pub(crate) pid: Option<u64>,
}

/// The `service` module.
pub(crate) struct ServiceModule {
    exec: Arc<dyn Exec>,
    /// Present when systemd runs (`/run/systemd/system`).
    systemd_marker: PathBuf,
    /// Where SysV init keeps its scripts and links (`/etc`).
    etc: PathBuf,
}

impl ServiceModule {
    /// The module over this machine's init system.
    pub(crate) fn system() -> ServiceModule {
        ServiceModule {
            exec: Arc::new(SystemExec),
            systemd_marker: PathBuf::from("/run/systemd/system"),
            etc: PathBuf::from("/etc"),
        }
    }

    /// The init system to drive, decided at each call (a container may
    /// gain systemd between jobs; the check is one `stat`).
    fn init(&self, fun: &str) -> Result<Init, Outcome> {
        if self.systemd_marker.is_dir() {
            return Ok(Init::Systemd);
        }
        if self.etc.join("init.d").is_dir() {
            return Ok(Init::SysV {
                etc: self.etc.clone(),
            });
        }
        let windows = if cfg!(windows) {
            " (Windows services are not handled by this module yet: use cmd.run with sc.exe)"
        } else {
            ""
        };
        Err(Outcome::failed(
            RETCODE_ERROR,
            format!(
                "{fun}: no init system found: systemd does not run ({} is missing) and there is no {}{windows}",
                self.systemd_marker.display(),
                self.etc.join("init.d").display()
            ),
        ))
    }
}

/// A change to a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Start,
    Stop,
    Restart,
    Reload,
    Enable,
    Disable,
}

impl Action {
    /// The change a function makes, if it makes one.
    fn of(function: &Signature) -> Option<Action> {
        Some(match *function {
            START => Action::Start,
            STOP => Action::Stop,
            RESTART => Action::Restart,
            RELOAD => Action::Reload,
            ENABLE => Action::Enable,
            DISABLE => Action::Disable,
            _ => return None,
        })
    }

    pub(crate) fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Reload => "reload",
            Action::Enable => "enable",
            Action::Disable => "disable",
        }
    }

    /// What must hold afterwards, as (running, enabled) expectations.
    fn expects(self) -> (Option<bool>, Option<bool>) {
        match self {
            Action::Start | Action::Restart | Action::Reload => (Some(true), None),
            Action::Stop => (Some(false), None),
            Action::Enable => (None, Some(true)),
            Action::Disable => (None, Some(false)),
        }
    }
}

/// A service name as the init systems take it: letters, digits and
/// `@ . _ : + -`, not starting with `-` or `.` (never an option, never a
/// path), at most 256 characters.
pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '_' | ':' | '+' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name {name:?}: use letters, digits and @ . _ : + - (not first - or .)"
        ))
    }
}

impl Module for ServiceModule {
    fn name(&self) -> &'static str {
        MODULE.name
    }

    fn catalog(&self) -> Option<&'static catalog::Module> {
        Some(&MODULE)
    }

    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(sig) = MODULE.function(function) else {
                return unknown_function(self, function);
            };
            match self.dispatch(sig, &call).await {
                Ok(outcome) | Err(outcome) => outcome,
            }
        })
    }
}

impl ServiceModule {
    async fn dispatch(&self, sig: &'static Signature, call: &Call) -> Result<Outcome, Outcome> {
        let args = Args::from_call(sig, call).map_err(Outcome::from)?;
        let init = self.init(sig.fun)?;
        if *sig == LIST {
            let services = self.list(&init, call).await.map_err(|e| fail(sig, e))?;
            return Ok(Outcome::ok(Value::Array(services)));
        }
        let name = args
            .string("name")
            .map_err(Outcome::from)?
            .ok_or_else(|| Outcome::from(args.missing("name")))?;
        validate_name(&name).map_err(|e| bad(sig, e))?;
        let status = self
            .status(&init, &name, call)
            .await
            .map_err(|e| fail(sig, e))?;
        let Some(action) = Action::of(sig) else {
            return Ok(Outcome::ok(match *sig {
                AVAILABLE => Value::Bool(status.is_some()),
                _ => {
                    let status = status.ok_or_else(|| fail(sig, format!("no service {name}")))?;
                    match *sig {
                        ENABLED => Value::Bool(status.enabled == Some(true)),
                        _ => status_json(&name, &init, &status),
                    }
                }
            }));
        };
        let before = status.ok_or_else(|| fail(sig, format!("no service {name}")))?;
        let timeout = args
            .seconds("timeout")
            .map_err(Outcome::from)?
            .unwrap_or(DEFAULT_TIMEOUT);
        for argv in commands(&init, action, &name) {
            let ran = self.exec.run(argv.clone(), call, timeout).await;
            let ran = ran.map_err(|e| fail(sig, e))?;
            if ran.code != 0 {
                return Err(fail(
                    sig,
                    format!("{} exited {}: {}", argv.join(" "), ran.code, ran.said()),
                ));
            }
        }
        let after = self
            .status(&init, &name, call)
            .await
            .map_err(|e| fail(sig, e))?
            .ok_or_else(|| fail(sig, format!("{name} is gone after {}", action.verb())))?;
        let (running, enabled) = action.expects();
        if running.is_some_and(|r| r != after.running)
            || enabled.is_some_and(|e| Some(e) != after.enabled)
        {
            return Err(fail(
                sig,
                format!(
                    "{name}: {} succeeded but the service is {}{}",
                    action.verb(),
                    after.state,
                    match after.enabled {
                        Some(true) => ", enabled",
                        Some(false) => ", disabled",
                        None => "",
                    }
                ),
            ));
        }
        let changed = match action {
            Action::Start | Action::Stop => before.running != after.running,
            Action::Enable | Action::Disable => before.enabled != after.enabled,
            Action::Restart | Action::Reload => true,
        };
        let mut data = status_json(&name, &init, &after);
        if let Some(map) = data.as_object_mut() {
            map.insert("action".to_owned(), json!(action.verb()));
            map.insert("changed".to_owned(), json!(changed));
        }
        Ok(Outcome::ok(data))
    }

    /// The service's status, or None when there is no such service.
    async fn status(&self, init: &Init, name: &str, call: &Call) -> Result<Option<Status>, String> {
        match init {
            Init::Systemd => {
                let ran = self
                    .exec
                    .run(systemd::show(name), call, QUERY_TIMEOUT)
                    .await?;
                if ran.code != 0 {
                    return Err(format!("systemctl show {name}: {}", ran.said()));
                }
                Ok(systemd::status(&ran.stdout))
            }
            Init::SysV { etc } => {
                let Some(script) = sysv::script(etc, name) else {
                    return Ok(None);
                };
                let ran = self
                    .exec
                    .run(sysv::command(&script, "status"), call, QUERY_TIMEOUT)
                    .await?;
                let mut status = sysv::status(ran.code, &ran.stdout)?;
                status.enabled = Some(sysv::enabled(etc, name));
                Ok(Some(status))
            }
        }
    }

    async fn list(&self, init: &Init, call: &Call) -> Result<Vec<Value>, String> {
        match init {
            Init::Systemd => {
                let ran = self
                    .exec
                    .run(systemd::list_units(), call, QUERY_TIMEOUT)
                    .await?;
                if ran.code != 0 {
                    return Err(format!("systemctl list-units: {}", ran.said()));
                }
                Ok(systemd::units(&ran.stdout)
                    .into_iter()
                    .map(|(name, status)| status_json(&name, init, &status))
                    .collect())
            }
            Init::SysV { etc } => Ok(sysv::scripts(etc)
                .into_iter()
                .map(|name| {
                    json!({
                        "name": name,
                        "manager": "sysv",
                        "enabled": sysv::enabled(etc, &name),
                    })
                })
                .collect()),
        }
    }
}

/// The programs that make `action` happen, in order.
fn commands(init: &Init, action: Action, name: &str) -> Vec<Vec<String>> {
    match init {
        Init::Systemd => vec![systemd::action(action, name)],
        Init::SysV { etc } => sysv::action(etc, action, name),
    }
}

fn status_json(name: &str, init: &Init, status: &Status) -> Value {
    json!({
        "name": name,
        "manager": match init { Init::Systemd => "systemd", Init::SysV { .. } => "sysv" },
        "running": status.running,
        "enabled": status.enabled,
        "state": status.state,
        "pid": status.pid,
    })
}

fn fail(sig: &Signature, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(RETCODE_ERROR, format!("{}: {message}", sig.fun))
}

fn bad(sig: &Signature, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(RETCODE_BAD_ARGS, format!("{}: {message}", sig.fun))
}
