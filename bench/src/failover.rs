//! `failover`: how long a swarm of failover minions takes to move to the
//! second master when the first one dies.
//!
//! Two masters run in this process (each on its own runtime, its store on
//! disk, `auto_accept`, beacons every second); N swarm minions list both
//! (`master_type = "failover"`). Once all N are up on the first master,
//! its runtime is dropped — every socket closes at once, as when the
//! process is killed — and the clock runs until the second master has
//! accepted N minions and sees them up.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::report::{grouped, Table};
use crate::swarm::{self, SwarmPlan};
use crate::sys;

/// Options of `halite-bench failover`.
#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// Number of minions.
    #[arg(long, default_value_t = 1000)]
    minions: usize,
    /// The minions' `master_alive_interval`, seconds.
    #[arg(long, default_value_t = 5)]
    alive: u64,
    /// Minions started at once before waiting for their auth.
    #[arg(long, default_value_t = 250)]
    wave: usize,
    /// Worker threads of each master's runtime.
    #[arg(long, default_value_t = 2)]
    master_workers: usize,
    /// Worker threads of the swarm's runtime.
    #[arg(long, default_value_t = 2)]
    minion_workers: usize,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

struct RunningMaster {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    core: std::sync::Arc<halite_master::core::Core>,
    addr: String,
}

fn start_master(dir: &Path, id: &str, workers: usize) -> Result<RunningMaster> {
    let overrides = dir.join("overrides.toml");
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        &overrides,
        format!("id = \"{id}\"\nbeacon_interval = 1\nheartbeat_interval = 5\n"),
    )?;
    let config = crate::fleet::master_config(dir, Some(&overrides))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .thread_name(id)
        .enable_all()
        .build()
        .context("start a master runtime")?;
    let shutdown = CancellationToken::new();
    let running = runtime
        .block_on(halite_master::start(config, shutdown.clone()))
        .with_context(|| format!("start {id}"))?;
    Ok(RunningMaster {
        addr: format!("127.0.0.1:{}", running.return_port),
        core: running.core.clone(),
        runtime,
        shutdown,
    })
}

fn up_count(core: &halite_master::core::Core) -> usize {
    core.keys
        .accepted_ids()
        .iter()
        .filter(|id| core.presence.is_up(id))
        .count()
}

/// Runs the benchmark.
pub fn run(args: FailoverArgs) -> Result<()> {
    let n = args.minions;
    if n == 0 {
        bail!("--minions must be at least 1");
    }
    let limit = sys::raise_nofile_limit()? as usize;
    let need = sys::open_fds()? + (swarm::FDS_PER_MINION + 4) * n + 64;
    if need > limit {
        bail!("{n} minions and two masters in one process need about {need} file descriptors; the limit is {limit}");
    }
    let cache = swarm::default_key_cache()?;
    let ids: Vec<String> = (1..=n).map(swarm::minion_id).collect();
    swarm::ensure_keys(&cache, &ids)?;
    let dir = tempfile::Builder::new()
        .prefix("halite-bench-failover-")
        .tempdir()
        .context("temp dir")?;
    let minion_root = tempfile::Builder::new()
        .prefix("halite-bench-swarm-")
        .tempdir_in(swarm::default_minion_root(false))
        .context("minion temp dir")?;
    let first = start_master(&dir.path().join("a"), "bench-a", args.master_workers)?;
    let second = start_master(&dir.path().join("b"), "bench-b", args.master_workers)?;

    let swarm_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.minion_workers.max(1))
        .thread_name("swarm")
        .enable_all()
        .build()
        .context("start the swarm runtime")?;
    let minion_shutdown = CancellationToken::new();
    let plan = SwarmPlan {
        ids: &ids,
        root: minion_root.path(),
        cache: &cache,
        master: &first.addr,
        wave: args.wave,
        wave_timeout: Duration::from_secs(120),
        failover: Some((&second.addr, args.alive)),
    };
    eprintln!(
        "starting {} failover minions on {} ...",
        grouped(n),
        first.addr
    );
    let running = swarm::start_minions(&swarm_rt, &plan, &minion_shutdown)?;
    sys::wait_for(
        "all minions up on the first master",
        Duration::from_secs(120),
        Duration::from_millis(50),
        |progress| {
            let up = up_count(&first.core);
            *progress = format!("{up} up");
            Ok((up >= n).then_some(()))
        },
    )?;
    std::thread::sleep(Duration::from_secs(2));

    // The first master dies: every task and socket goes at once.
    let killed = Instant::now();
    first.shutdown.cancel();
    first.runtime.shutdown_background();
    let mut marks: Vec<(usize, Duration)> = Vec::new();
    let targets = [n / 2, n * 99 / 100, n];
    sys::wait_for(
        "all minions up on the second master",
        Duration::from_secs(300),
        Duration::from_millis(5),
        |progress| {
            let up = up_count(&second.core);
            for &t in &targets {
                if up >= t && !marks.iter().any(|(m, _)| *m == t) {
                    marks.push((t, killed.elapsed()));
                }
            }
            *progress = format!("{up} up on the second master");
            Ok((up >= n).then_some(()))
        },
    )?;
    let limit_ms = 2 * args.alive * 1000;
    let mut table = Table::new(&["minions moved", "time after the kill", "goal", "met"]);
    for (count, at) in &marks {
        let ms = at.as_secs_f64() * 1000.0;
        table.row(vec![
            format!("{} of {}", grouped(*count), grouped(n)),
            format!("{ms:.0} ms"),
            format!("≤ 2 × master_alive_interval = {limit_ms} ms"),
            if ms <= limit_ms as f64 { "yes" } else { "no" }.into(),
        ]);
    }
    println!("{}", table.render(args.markdown));

    minion_shutdown.cancel();
    drop(running);
    swarm_rt.shutdown_timeout(Duration::from_secs(5));
    second.shutdown.cancel();
    second.runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
