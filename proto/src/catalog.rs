//! The function catalog: every built-in module and function, each
//! declared once — its name, its parameters and what kind of function it
//! is.
//!
//! The minion's modules take their function lists and argument
//! signatures from here, the master refuses a job whose function no
//! minion has before publishing it (Lua modules aside, which the master
//! knows by file), decides which jobs it completes with an app
//! definition, and which returns are release records; `master-cli` shows
//! releases' stages live. The messages for an unknown name are built here
//! so master and minions say the same thing.

use crate::app::SECRET_PASSWORD as PASSWORD;
use crate::app::SECRET_USERNAME as USERNAME;

/// What a function is, beyond its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Runs and returns.
    Plain,
    /// Works on an app defined on the master: the master completes the job
    /// with the app's definition and credentials and refuses minions
    /// outside the app's target; its returns are release records.
    App,
    /// Releases something that is not an app (a scheduled task's
    /// definition): its returns are release records under that name.
    Release,
    /// Handled by the minion itself (`saltutil.*`), not by a module.
    Minion,
    /// Reads an app defined on the master, of any kind (`release.health`):
    /// completed with the app's definition like [`Kind::App`], but its
    /// returns are not release records.
    AppCheck,
}

/// One function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    /// `module.function`.
    pub fun: &'static str,
    /// Parameters in positional order; each may also be given by keyword.
    pub params: &'static [&'static str],
    /// The function reads free-form keyword arguments itself (`params`
    /// is then empty and not enforced).
    pub free_keywords: bool,
    /// What kind of function it is.
    pub kind: Kind,
    /// What it does, from its declaration's doc comment (`sys.doc`).
    pub doc: &'static str,
}

impl Function {
    const fn new(fun: &'static str, params: &'static [&'static str], kind: Kind) -> Function {
        Function {
            fun,
            params,
            free_keywords: false,
            kind,
            doc: "",
        }
    }

    const fn free(fun: &'static str, kind: Kind) -> Function {
        Function {
            fun,
            params: &[],
            free_keywords: true,
            kind,
            doc: "",
        }
    }

    /// The same function with its documentation (set by `functions!`).
    pub const fn documented(self, doc: &'static str) -> Function {
        Function { doc, ..self }
    }

    /// The module part of the name.
    pub fn module(&self) -> &'static str {
        self.fun.split_once('.').map_or(self.fun, |(m, _)| m)
    }

    /// The function part of the name.
    pub fn name(&self) -> &'static str {
        self.fun.split_once('.').map_or("", |(_, f)| f)
    }
}

/// One module and its functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Module {
    /// Module name.
    pub name: &'static str,
    /// The function meant when a job names the module alone.
    pub default: Option<&'static str>,
    /// Its functions.
    pub functions: &'static [Function],
}

impl Module {
    /// Function names (without the module), as declared.
    pub fn names(&self) -> Vec<&'static str> {
        self.functions.iter().map(Function::name).collect()
    }

    /// The function of that (short) name.
    pub fn function(&self, name: &str) -> Option<&'static Function> {
        self.functions.iter().find(|f| f.name() == name)
    }
}

macro_rules! functions {
    ($($(#[doc = $doc:literal])* $id:ident = $value:expr;)*) => {
        $($(#[doc = $doc])* pub const $id: Function = $value.documented(
            concat!($($doc, "\n"),*)
        );)*
    };
}

/// `test`: checks that a minion answers.
pub mod test {
    use super::{Function, Kind::Plain, Module};
    functions! {
        /// `test.ping`.
        PING = Function::new("test.ping", &[], Plain);
        /// `test.echo`.
        ECHO = Function::new("test.echo", &["text"], Plain);
        /// `test.sleep`.
        SLEEP = Function::new("test.sleep", &["seconds"], Plain);
        /// `test.version`.
        VERSION = Function::new("test.version", &[], Plain);
        /// `test.fail`.
        FAIL = Function::new("test.fail", &["message"], Plain);
        /// `test.versions_report`: the minion's version, its platform and
        /// the libraries that matter, one line each (Salt's shape).
        VERSIONS_REPORT = Function::new("test.versions_report", &[], Plain);
        /// `test.arg ARG... KEY=VALUE...`: what the function received,
        /// `{args, kwargs}`, with Salt's `__pub_*` keywords saying who
        /// published it to what target.
        ARG = Function::free("test.arg", Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "test",
        default: None,
        functions: &[PING, ECHO, SLEEP, VERSION, FAIL, VERSIONS_REPORT, ARG],
    };
}

/// `cmd`: commands.
pub mod cmd {
    use super::{Function, Kind::Plain, Module};
    const PARAMS: &[&str] = &[
        "cmd",
        "cwd",
        "stdin",
        "shell",
        "env",
        "timeout",
        "output_cap",
    ];
    functions! {
        /// `cmd.run`: output.
        RUN = Function::new("cmd.run", PARAMS, Plain);
        /// `cmd.run_all`: output, error output and exit code.
        RUN_ALL = Function::new("cmd.run_all", PARAMS, Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "cmd",
        default: None,
        functions: &[RUN, RUN_ALL],
    };
}

/// `grains`: facts about the minion.
pub mod grains {
    use super::{Function, Kind::Plain, Module};
    functions! {
        /// `grains.items`.
        ITEMS = Function::new("grains.items", &[], Plain);
        /// `grains.get`.
        GET = Function::new("grains.get", &["key", "default", "delimiter"], Plain);
        /// `grains.ls`.
        LS = Function::new("grains.ls", &[], Plain);
        /// `grains.item KEY...`: the named grains (`os:family` reaches
        /// into nested ones); a grain the minion lacks is `""`.
        ITEM = Function::free("grains.item", Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "grains",
        default: None,
        functions: &[ITEMS, GET, LS, ITEM],
    };
}

/// `service`: system services.
pub mod service {
    use super::{Function, Kind::Plain, Module};
    const CHANGE: &[&str] = &["name", "timeout"];
    functions! {
        /// `service.start`.
        START = Function::new("service.start", CHANGE, Plain);
        /// `service.stop`.
        STOP = Function::new("service.stop", CHANGE, Plain);
        /// `service.restart`.
        RESTART = Function::new("service.restart", CHANGE, Plain);
        /// `service.reload`.
        RELOAD = Function::new("service.reload", CHANGE, Plain);
        /// `service.enable`.
        ENABLE = Function::new("service.enable", CHANGE, Plain);
        /// `service.disable`.
        DISABLE = Function::new("service.disable", CHANGE, Plain);
        /// `service.status`.
        STATUS = Function::new("service.status", &["name"], Plain);
        /// `service.enabled`.
        ENABLED = Function::new("service.enabled", &["name"], Plain);
        /// `service.available`.
        AVAILABLE = Function::new("service.available", &["name"], Plain);
        /// `service.list`.
        LIST = Function::new("service.list", &[], Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "service",
        default: None,
        functions: &[
            AVAILABLE, DISABLE, ENABLE, ENABLED, LIST, RELOAD, RESTART, START, STATUS, STOP,
        ],
    };
}

/// `git_deploy`: apps released from git.
pub mod git_deploy {
    use super::{Function, Kind::App, Module, PASSWORD, USERNAME};
    functions! {
        /// `git_deploy.deploy`.
        DEPLOY = Function::new(
            "git_deploy.deploy",
            &["tag", "branch", "rev", "app", USERNAME, PASSWORD],
            App,
        );
        /// `git_deploy.rollback`.
        ROLLBACK = Function::new("git_deploy.rollback", &["to", "app", USERNAME, PASSWORD], App);
        /// `git_deploy.releases`.
        RELEASES = Function::new("git_deploy.releases", &["app", USERNAME, PASSWORD], App);
        /// `git_deploy.status`.
        STATUS = Function::new("git_deploy.status", &["app", USERNAME, PASSWORD], App);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "git_deploy",
        default: Some("deploy"),
        functions: &[DEPLOY, ROLLBACK, RELEASES, STATUS],
    };
}

/// `release`: checks of a live app, whatever module released it; what
/// a rollout's gates run on its minions.
pub mod release {
    use super::{Function, Kind::AppCheck, Module};
    functions! {
        /// `release.health app=NAME`: the app's health check (its URL or
        /// command, with its retries) against the live release.
        HEALTH = Function::new("release.health", &["app"], AppCheck);
        /// `release.measure app=NAME samples=N [cmd=...]`: runs the app's
        /// health check (or `cmd`, which prints a number) N times, once
        /// each, and answers each run's latency or number and the errors.
        MEASURE = Function::new("release.measure", &["app", "samples", "cmd"], AppCheck);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "release",
        default: None,
        functions: &[HEALTH, MEASURE],
    };
}

/// `java_tomcat`: WARs on Tomcat.
pub mod java_tomcat {
    use super::{Function, Kind::App, Module, PASSWORD, USERNAME};
    const CONTROL: &[&str] = &["version", "app", USERNAME, PASSWORD];
    const LISTING: &[&str] = &["app", USERNAME, PASSWORD];
    functions! {
        /// `java_tomcat.deploy`.
        DEPLOY = Function::new(
            "java_tomcat.deploy",
            &["url", "sha256", "version", "app", USERNAME, PASSWORD],
            App,
        );
        /// `java_tomcat.rollback`.
        ROLLBACK = Function::new("java_tomcat.rollback", &["to", "app", USERNAME, PASSWORD], App);
        /// `java_tomcat.list`.
        LIST = Function::new("java_tomcat.list", LISTING, App);
        /// `java_tomcat.status`.
        STATUS = Function::new("java_tomcat.status", LISTING, App);
        /// `java_tomcat.start`.
        START = Function::new("java_tomcat.start", CONTROL, App);
        /// `java_tomcat.stop`.
        STOP = Function::new("java_tomcat.stop", CONTROL, App);
        /// `java_tomcat.reload`.
        RELOAD = Function::new("java_tomcat.reload", CONTROL, App);
        /// `java_tomcat.undeploy`.
        UNDEPLOY = Function::new("java_tomcat.undeploy", CONTROL, App);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "java_tomcat",
        default: Some("deploy"),
        functions: &[
            DEPLOY, LIST, RELOAD, ROLLBACK, START, STATUS, STOP, UNDEPLOY,
        ],
    };
}

/// `dotnet_iis`: .NET sites on IIS.
pub mod dotnet_iis {
    use super::{Function, Kind::App, Kind::Plain, Module};
    functions! {
        /// `dotnet_iis.deploy`.
        DEPLOY = Function::new("dotnet_iis.deploy", &["url", "sha256", "version", "app"], App);
        /// `dotnet_iis.rollback`.
        ROLLBACK = Function::new("dotnet_iis.rollback", &["to", "app"], App);
        /// `dotnet_iis.status`.
        STATUS = Function::new("dotnet_iis.status", &["app"], App);
        /// `dotnet_iis.apppool_recycle`.
        APPPOOL_RECYCLE = Function::free("dotnet_iis.apppool_recycle", Plain);
        /// `dotnet_iis.apppool_start`.
        APPPOOL_START = Function::free("dotnet_iis.apppool_start", Plain);
        /// `dotnet_iis.apppool_stop`.
        APPPOOL_STOP = Function::free("dotnet_iis.apppool_stop", Plain);
        /// `dotnet_iis.bindings`.
        BINDINGS = Function::free("dotnet_iis.bindings", Plain);
        /// `dotnet_iis.create_apppool`.
        CREATE_APPPOOL = Function::free("dotnet_iis.create_apppool", Plain);
        /// `dotnet_iis.create_site`.
        CREATE_SITE = Function::free("dotnet_iis.create_site", Plain);
        /// `dotnet_iis.list_apppools`.
        LIST_APPPOOLS = Function::free("dotnet_iis.list_apppools", Plain);
        /// `dotnet_iis.list_sites`.
        LIST_SITES = Function::free("dotnet_iis.list_sites", Plain);
        /// `dotnet_iis.site_start`.
        SITE_START = Function::free("dotnet_iis.site_start", Plain);
        /// `dotnet_iis.site_stop`.
        SITE_STOP = Function::free("dotnet_iis.site_stop", Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "dotnet_iis",
        default: Some("deploy"),
        functions: &[
            APPPOOL_RECYCLE,
            APPPOOL_START,
            APPPOOL_STOP,
            BINDINGS,
            CREATE_APPPOOL,
            CREATE_SITE,
            DEPLOY,
            LIST_APPPOOLS,
            LIST_SITES,
            ROLLBACK,
            SITE_START,
            SITE_STOP,
            STATUS,
        ],
    };
}

/// `win_task`: Windows scheduled tasks.
pub mod win_task {
    use super::{Function, Kind::Plain, Kind::Release, Module};
    functions! {
        /// `win_task.create`: a release of the task's definition.
        CREATE = Function::free("win_task.create", Release);
        /// `win_task.update`: a release of the task's definition.
        UPDATE = Function::free("win_task.update", Release);
        /// `win_task.delete`.
        DELETE = Function::free("win_task.delete", Plain);
        /// `win_task.disable`.
        DISABLE = Function::free("win_task.disable", Plain);
        /// `win_task.enable`.
        ENABLE = Function::free("win_task.enable", Plain);
        /// `win_task.end`.
        END = Function::free("win_task.end", Plain);
        /// `win_task.info`.
        INFO = Function::free("win_task.info", Plain);
        /// `win_task.list`.
        LIST = Function::free("win_task.list", Plain);
        /// `win_task.run`.
        RUN = Function::free("win_task.run", Plain);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "win_task",
        default: None,
        functions: &[
            CREATE, DELETE, DISABLE, ENABLE, END, INFO, LIST, RUN, UPDATE,
        ],
    };
}

/// `saltutil`: what the minion does itself.
pub mod saltutil {
    use super::{Function, Kind::Minion, Module};
    functions! {
        /// `saltutil.kill_job JID`: cancel a running job.
        KILL_JOB = Function::new("saltutil.kill_job", &["jid"], Minion);
        /// `saltutil.sync_modules`: install the master's Lua modules.
        SYNC_MODULES = Function::new("saltutil.sync_modules", &[], Minion);
        /// `saltutil.list_modules`: Lua module versions against the master's.
        LIST_MODULES = Function::free("saltutil.list_modules", Minion);
        /// `saltutil.running`: the jobs running on this minion now.
        RUNNING = Function::new("saltutil.running", &[], Minion);
        /// `saltutil.find_job JID`: that job if it runs here now, else `{}`.
        FIND_JOB = Function::new("saltutil.find_job", &["jid"], Minion);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "saltutil",
        default: None,
        functions: &[FIND_JOB, KILL_JOB, LIST_MODULES, RUNNING, SYNC_MODULES],
    };
}

/// `sys`: what this minion can run, and what each function does.
pub mod sys {
    use super::{Function, Kind::Minion, Module};
    functions! {
        /// `sys.list_functions [GLOB...]`: every function this minion can
        /// run (Lua modules included), sorted; only those matching a glob
        /// or a module name when given.
        LIST_FUNCTIONS = Function::free("sys.list_functions", Minion);
        /// `sys.list_modules`: the modules this minion has, sorted.
        LIST_MODULES = Function::new("sys.list_modules", &[], Minion);
        /// `sys.doc [NAME...]`: what each function does, by name (every
        /// function when no name is given; a module name means its
        /// functions).
        DOC = Function::free("sys.doc", Minion);
    }
    /// The module.
    pub const MODULE: Module = Module {
        name: "sys",
        default: None,
        functions: &[DOC, LIST_FUNCTIONS, LIST_MODULES],
    };
}

/// Every built-in module, by name.
pub const MODULES: &[Module] = &[
    cmd::MODULE,
    dotnet_iis::MODULE,
    git_deploy::MODULE,
    grains::MODULE,
    java_tomcat::MODULE,
    release::MODULE,
    saltutil::MODULE,
    service::MODULE,
    sys::MODULE,
    test::MODULE,
    win_task::MODULE,
];

/// A built-in module.
pub fn module(name: &str) -> Option<&'static Module> {
    MODULES.iter().find(|m| m.name == name)
}

/// The built-in function `fun` names (`git_deploy` alone is its default
/// function), if there is one.
pub fn function(fun: &str) -> Option<&'static Function> {
    let (module_name, name) = match fun.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (fun, None),
    };
    let module = module(module_name)?;
    module.function(name.or(module.default)?)
}

/// Does a job of `fun` work on an app (the master completes it)?
pub fn takes_app(fun: &str) -> bool {
    function(fun).is_some_and(|f| matches!(f.kind, Kind::App | Kind::AppCheck))
}

/// Does `module` read apps of every kind (`release`), rather than only
/// the apps it releases?
pub fn reads_any_app(module: &str) -> bool {
    self::module(module).is_some_and(|m| m.functions.iter().all(|f| f.kind == Kind::AppCheck))
}

/// Are the returns of `fun` release records (and its stages shown live)?
pub fn releases(fun: &str) -> bool {
    function(fun).is_some_and(|f| matches!(f.kind, Kind::App | Kind::Release))
}

/// Is the return of `fun` its output itself (`cmd.*`)? Then its output
/// lines are not also shown live by default (they would print twice).
pub fn returns_its_output(fun: &str) -> bool {
    function(fun).is_some_and(|f| f.module() == cmd::MODULE.name)
}

/// Why a name does not resolve, in the words minions and master share.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    /// No such module.
    #[error("unknown function `{fun}`; the minion has modules: {}", modules.join(", "))]
    NoModule {
        /// The name asked for.
        fun: String,
        /// Every module there is, sorted.
        modules: Vec<String>,
    },
    /// The module has no default function and none was named.
    #[error("`{fun}` is a module without a default function; name one of: {}", functions.join(", "))]
    NoDefault {
        /// The name asked for.
        fun: String,
        /// The module's functions, full names, sorted.
        functions: Vec<String>,
    },
    /// The module has no such function.
    #[error("unknown function `{fun}`; the minion has: {}", functions.join(", "))]
    NoFunction {
        /// The name asked for.
        fun: String,
        /// The module's functions, full names, sorted.
        functions: Vec<String>,
    },
}

/// Resolves `fun` among modules given as (name, default function,
/// function names): to the module's index and the function's short name.
/// Both the minion's registry (with Lua modules) and the master use it.
pub fn resolve<'a, I>(fun: &str, modules: I) -> Result<(usize, &'a str), Unresolved>
where
    I: IntoIterator<Item = (&'a str, Option<&'a str>, Vec<&'a str>)>,
{
    let (module_name, function) = match fun.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (fun, None),
    };
    let all: Vec<(&str, Option<&str>, Vec<&str>)> = modules.into_iter().collect();
    let Some(index) = all.iter().position(|(name, _, _)| *name == module_name) else {
        let mut modules: Vec<String> = all.iter().map(|(n, _, _)| n.to_string()).collect();
        modules.sort();
        return Err(Unresolved::NoModule {
            fun: fun.to_owned(),
            modules,
        });
    };
    let (_, default, names) = &all[index];
    let full_names = || {
        let mut full: Vec<String> = names.iter().map(|f| format!("{module_name}.{f}")).collect();
        full.sort();
        full
    };
    let Some(wanted) = function.or(*default) else {
        return Err(Unresolved::NoDefault {
            fun: fun.to_owned(),
            functions: full_names(),
        });
    };
    match names.iter().find(|f| **f == wanted) {
        Some(found) => Ok((index, *found)),
        None => Err(Unresolved::NoFunction {
            fun: format!("{module_name}.{wanted}"),
            functions: full_names(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_declared_under_its_module_once() {
        let mut seen = std::collections::BTreeSet::new();
        for module in MODULES {
            for function in module.functions {
                assert_eq!(function.module(), module.name, "{}", function.fun);
                assert!(seen.insert(function.fun), "{} twice", function.fun);
                assert!(!function.free_keywords || function.params.is_empty());
            }
            if let Some(default) = module.default {
                assert!(module.function(default).is_some(), "{}", module.name);
            }
        }
        let names: Vec<&str> = MODULES.iter().map(|m| m.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn kinds_decide_apps_and_releases() {
        assert!(takes_app("git_deploy"));
        assert!(takes_app("java_tomcat.list"));
        assert!(!takes_app("dotnet_iis.list_sites"));
        assert!(releases("win_task.create"));
        assert!(!releases("win_task.list"));
        assert!(!releases("cmd.run"));
        assert_eq!(function("git_deploy").unwrap().fun, "git_deploy.deploy");
    }

    #[test]
    fn unknown_names_say_what_there_is() {
        let modules = MODULES.iter().map(|m| (m.name, m.default, m.names()));
        assert_eq!(
            resolve("test.nope", modules.clone())
                .unwrap_err()
                .to_string(),
            "unknown function `test.nope`; the minion has: test.arg, test.echo, test.fail, \
             test.ping, test.sleep, test.version, test.versions_report"
        );
        assert!(matches!(
            resolve("nosuch.thing", modules.clone()),
            Err(Unresolved::NoModule { .. })
        ));
        assert!(matches!(
            resolve("cmd", modules.clone()),
            Err(Unresolved::NoDefault { .. })
        ));
        assert_eq!(resolve("git_deploy", modules).unwrap().1, "deploy");
    }
}
