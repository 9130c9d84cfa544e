//! `halite-bench`: benchmarks of halite with real processes, sockets,
//! keys and signatures, on loopback. Results go in `bench/RESULTS.md`;
//! how to run them is in `bench/README.md`.
//!
//! - `fanout --minions N`: publish-to-all-returns-stored time for a swarm
//!   of N minions ([`fanout`]).
//! - `api --jobs N`: HTTP API requests/s and p99 with N stored jobs ([`api`]).
//! - `cli --minions 30,60 [--salt-bin DIR]`: `master-cli run` against real minion processes, next to Salt's CLI ([`cli`]).
//! - `lua`: a Lua module call against the same Rust module call ([`lua`]).
//! - `rollout --minions N`: a ramp through a swarm, overhead per step ([`rollout`]).
//! - `idle-rss`: resident memory of one idle `halite-minion` ([`idle`]).
//! - `swarm` (hidden): part of a swarm in a child process ([`swarm`]).
//!
//! Build everything in release mode first:
//! `cargo build --release --workspace --bins`.

// The tables on stdout are this program's output.
#![allow(clippy::print_stdout)]

mod accept;
mod api;
mod cli;
mod deploy;
mod failover;
mod fanout;
mod fleet;
mod idle;
mod lua;
mod report;
mod rollout;
mod seal;
mod stored;
mod swarm;
mod sys;
mod vouch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::prelude::*;

/// halite benchmarks (build with `cargo build --release --workspace --bins`).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// From accepting a waiting minion's key to its first job's return.
    Accept(accept::AcceptArgs),
    /// HTTP API requests/s and latency with many stored jobs, under wrk.
    Api(api::ApiArgs),
    /// `master-cli run target='web*' test.ping` against real minion processes (and Salt's CLI).
    Cli(cli::CliArgs),
    /// Time from publishing test.ping until all N returns are stored.
    Fanout(fanout::FanoutArgs),
    /// git_deploy (first deploy, one-file redeploy, rollback) against system git.
    Deploy(deploy::DeployArgs),
    /// Time for failover minions to move to the second master when the first dies.
    Failover(failover::FailoverArgs),
    /// Cost of a Lua module call compared with the same Rust module call.
    Lua(lua::LuaArgs),
    /// Resident memory of one idle halite-minion process.
    IdleRss(idle::IdleArgs),
    /// Cost of sealing a job's secrets for each target under its own key.
    Seal(seal::SealArgs),
    /// Cost of the signed job summary returns carry to the other masters.
    Vouch(vouch::VouchArgs),
    /// A real git_deploy app through a swarm in a ramp: halite's overhead per step.
    Rollout(rollout::RolloutArgs),
    /// Runs part of a swarm for `fanout` (internal).
    #[command(hide = true)]
    Swarm(swarm::SwarmArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs: warnings only by default (a swarm at `info` logs several lines
    // per minion per job); RUST_LOG overrides.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_filter(filter),
        )
        .try_init();
    let result = match cli.command {
        Cmd::Accept(args) => accept::run(args),
        Cmd::Api(args) => api::run(args),
        Cmd::Cli(args) => cli::run(args),
        Cmd::Fanout(args) => fanout::run(args),
        Cmd::IdleRss(args) => idle::run(args),
        Cmd::Lua(args) => lua::run(args),
        Cmd::Deploy(args) => deploy::run(args),
        Cmd::Failover(args) => failover::run(args),
        Cmd::Seal(args) => seal::run(args),
        Cmd::Vouch(args) => vouch::run(args),
        Cmd::Rollout(args) => rollout::run(args),
        Cmd::Swarm(args) => swarm::run_child(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halite-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
