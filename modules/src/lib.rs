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
//! Every deploy kind runs through one release driver (`kit::ReleaseRun`):
//! the path's deploy lock ([`lock`]), stages of one vocabulary
//! (`halite_proto::release::Stage`), one history format ([`history`]) and
//! the typed release report. [`releases`] is git_deploy's release
//! directories (Capistrano layout, atomic `current` switch, manifests,
//! pruning).
#![deny(missing_docs)]

pub mod args;
pub mod artifact;
mod call;
mod cmd;
mod dotnet_iis;
mod git_deploy;
pub mod grains;
mod health;
pub mod history;
mod http;
mod java_tomcat;
mod kit;
pub mod lock;
pub mod lua;
mod module;
mod outcome;
mod process;
mod registry;
mod release_checks;
pub mod releases;
mod service;
mod test_module;
mod win_task;
mod wintool;

pub use call::{Call, EventSink, Published};
pub use module::Module;
pub use outcome::{
    Outcome, RETCODE_BAD_ARGS, RETCODE_ERROR, RETCODE_TIMEOUT, RETCODE_UNKNOWN_FUNCTION,
};
pub use registry::Registry;
