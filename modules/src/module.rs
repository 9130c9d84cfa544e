//! The one trait every execution module implements, Rust or (through the Lua
//! host) Lua, so the registry runs them all the same way.

use futures::future::BoxFuture;

use halite_proto::catalog;

use crate::{Call, Outcome, RETCODE_UNKNOWN_FUNCTION};

/// A named set of functions a minion can run as `module.function`.
///
/// A module never opens a socket: it reports through [`Call::events`] and
/// returns an [`Outcome`]; the minion carries both to the master.
pub trait Module: Send + Sync {
    /// The module name, the part before the dot (`cmd`).
    fn name(&self) -> &'static str;

    /// A built-in module's entry in the function catalog, where its
    /// functions and their parameters are declared once.
    fn catalog(&self) -> Option<&'static catalog::Module> {
        None
    }

    /// The functions it offers, without the module prefix (`["run", "run_all"]`):
    /// a built-in's from the catalog.
    fn functions(&self) -> Vec<&'static str> {
        self.catalog()
            .map(catalog::Module::names)
            .unwrap_or_default()
    }

    /// The function meant when a job names the module alone
    /// (`git_deploy` means `git_deploy.deploy`); `None` if there is none.
    fn default_function(&self) -> Option<&'static str> {
        self.catalog().and_then(|m| m.default)
    }

    /// Runs `function` (one of [`Module::functions`]) for `call`.
    /// A failure is an [`Outcome`], never a panic.
    fn call<'a>(&'a self, function: &'a str, call: Call) -> BoxFuture<'a, Outcome>;
}

/// The failure for a function a module does not have, listing what it has.
pub(crate) fn unknown_function(module: &dyn Module, function: &str) -> Outcome {
    Outcome::failed(
        RETCODE_UNKNOWN_FUNCTION,
        unknown_function_message(module, function),
    )
}

/// The message for a function a module does not have, listing what it
/// has (the catalog's words, which the master uses too).
pub(crate) fn unknown_function_message(module: &dyn Module, function: &str) -> String {
    let name = module.name();
    let mut functions: Vec<String> = module
        .functions()
        .iter()
        .map(|f| format!("{name}.{f}"))
        .collect();
    functions.sort();
    catalog::Unresolved::NoFunction {
        fun: format!("{name}.{function}"),
        functions,
    }
    .to_string()
}
