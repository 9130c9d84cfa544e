//! `accept`: from `master-cli keys accept` to the first job's return, for
//! a minion that waits with its key pending. The master answers the
//! minion's waiting auth when the key is accepted, so the minion does not
//! wait for its next attempt (`auth_retry`, set to an hour here so that a
//! regression shows as a timeout, not as a slower number).
//!
//! A master and one minion run in this process, each on its own runtime;
//! each round is a new minion id with a new key.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use halite_api::types::JobRequest;
use halite_master::core::views::KeyChange;
use halite_proto::message::KeyStatus;
use tokio_util::sync::CancellationToken;

use crate::report::{percentile, Table};

/// Options of `halite-bench accept`.
#[derive(Args, Debug)]
pub struct AcceptArgs {
    /// Minions accepted, one after the other.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Print a Markdown table (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

/// Runs the measurement.
pub fn run(args: AcceptArgs) -> Result<()> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let overrides = dir.path().join("overrides.toml");
    std::fs::write(&overrides, "auto_accept = false\n")?;
    let config = crate::fleet::master_config(dir.path(), Some(&overrides))?;
    let master_rt = tokio::runtime::Runtime::new().context("master runtime")?;
    let shutdown = CancellationToken::new();
    let master = master_rt.block_on(halite_master::start(config, shutdown.clone()))?;
    let core = master.core.clone();
    let address = format!("127.0.0.1:{}", master.return_port);
    let minion_rt = tokio::runtime::Runtime::new().context("minion runtime")?;
    let mut to_return_ms = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let id = format!("accept{round:03}");
        let minion_dir = dir.path().join(&id);
        let text = format!(
            "id = \"{id}\"\nmasters = [\"{address}\"]\npki_dir = \"pki\"\ndata_dir = \"data\"\nauth_retry = 3600\n"
        );
        std::fs::create_dir_all(&minion_dir)?;
        let minion_config =
            halite_minion::Config::from_toml(&minion_dir.join("minion.toml"), &text)?;
        let stop = CancellationToken::new();
        let running = {
            let _guard = minion_rt.enter();
            halite_minion::start(
                minion_config,
                halite_minion::default_registry(),
                stop.clone(),
            )?
        };
        wait(Duration::from_secs(30), "the key pending", || {
            core.keys.status(&id) == Some(KeyStatus::Pending)
        })?;
        let started = Instant::now();
        core.change_keys(KeyChange::Accept(id.clone()))?;
        let submitted = core.submit(
            halite_pki::users::ROOT,
            JobRequest {
                target: id.clone(),
                fun: "test.ping".into(),
                ..JobRequest::default()
            },
        )?;
        wait(Duration::from_secs(30), "the first return", || {
            core.job_view(&submitted.jid)
                .is_ok_and(|view| view.returns.contains_key(&id))
        })?;
        to_return_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        stop.cancel();
        let _ = minion_rt.block_on(running.task);
        remove(&minion_dir);
    }
    shutdown.cancel();
    to_return_ms.sort_by(f64::total_cmp);
    let mut table = Table::new(&[
        "from keys accept to the first return",
        "rounds",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    table.row(vec![
        "test.ping, minion with auth_retry = 3600".into(),
        args.rounds.to_string(),
        format!("{:.1}", percentile(&to_return_ms, 50.0)),
        format!("{:.1}", percentile(&to_return_ms, 99.0)),
        format!("{:.1}", to_return_ms.last().copied().unwrap_or_default()),
    ]);
    println!("{}", table.render(args.markdown));
    Ok(())
}

/// Polls `ready` every 5 ms until it holds or `limit` passes.
fn wait(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
