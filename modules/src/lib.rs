//! halite execution modules: what a minion can run, as `module.function`.
//!
//! There is one trait, [`Module`], and one [`Registry`] that resolves a
//! function name (`cmd.run`, or `git_deploy` alone for its default function)
//! and runs it. A function gets a [`Call`] — parsed arguments, the minion's
//! grains, a cancellation token and an [`EventSink`] for progress lines and
//! stage changes — and returns an [`Outcome`]: `success`, a process-style
//! `retcode` (see the `RETCODE_*` constants) and JSON data.
//!
//! Modules never open a socket and know nothing of transport: the minion
//! carries their events and outcomes to the master. Arguments are read
//! through [`args`], so every module checks types and refuses unknown
//! keywords the same way.
//!
//! Built in: `test` (ping, echo, sleep, version, fail), `cmd` (run,
//! run_all), `grains` (items, get, ls; [`grains::collect`] builds the
//! grains object once at minion start) and `git_deploy` (deploy, rollback,
//! releases, status: git checkouts fetched with gix, no system git).
//!
//! [`releases`] is the release-directory engine (Capistrano layout, atomic
//! `current` switch, deploy lock, history, pruning) that the deploy
//! modules share.
#![deny(missing_docs)]

pub mod args;
pub mod artifact;
mod call;
mod cmd;
mod dotnet_iis;
mod git_deploy;
pub mod grains;
mod health;
mod history;
mod http;
mod java_tomcat;
mod kit;
pub mod lua;
mod module;
mod outcome;
mod process;
mod registry;
pub mod releases;
mod service;
mod test_module;
mod win_task;
mod wintool;

pub use call::{Call, EventSink};
pub use module::Module;
pub use outcome::{
    Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR, RETCODE_TIMEOUT, RETCODE_UNKNOWN_FUNCTION,
};
pub use registry::Registry;
