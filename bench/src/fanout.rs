//! `halite-bench fanout`: time from publishing a job until the master's
//! store holds the returns of all N minions.
//!
//! Set-up: a master is started in this process with
//! `halite_master::start` (fresh temp dir on disk, loopback, free ports,
//! `auto_accept`, heartbeats, beacons and connectivity checks every hour so that background
//! traffic does not mix into the rounds). Then N real minions
//! (`swarm-00001`...) are started — in this process, or, when one
//! process cannot hold their file descriptors, in child processes of this
//! binary (`halite-bench swarm`) — and the bench waits until the master
//! has accepted all N keys and sees them up.
//!
//! A round: `Core::submit` of `test.ping` to `swarm-*` (validates,
//! writes and flushes the job to the store, signs it and publishes it);
//! the clock starts just before the call. Every minion verifies the
//! master's signature, checks target, expiry and its replay guard, runs
//! `test.ping`, spools and signs its return and sends it; the master
//! verifies each return, stores it in batches and flushes, then emits a
//! `return stored` event per return. The clock stops at the event that
//! completes N (counted by [`crate::stored`], no polling; afterwards the
//! store is scanned once to check it really holds N returns). Should the
//! events be missing, the store is polled instead (`Store::returns`
//! every `--poll-ms`, or twice the cost of the previous scan) and the
//! clock stops when the scan that found N ends, so a round is never
//! reported shorter than it was. Rounds are separated by a pause so that
//! the acknowledgements of one round do not overlap the next.
//!
//! Reported: each round, p50/p99 over rounds (nearest rank: with 20
//! rounds p99 is the slowest round), and the distribution of the
//! per-return latency `stored_at - issued_at` recorded by the master.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use halite_api::types::JobRequest;
use halite_api::Backend;
use halite_master::backend::ApiBackend;
use halite_master::core::Core;
use halite_proto::TargetType;

use crate::fleet::{Fleet, FleetArgs};
use crate::report::{grouped, ms, percentile, Table};
use crate::stored::{StoredCounter, Waited, CHECK_EVERY};
use crate::sys;

/// Options of `halite-bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Number of minions (N).
    #[arg(long)]
    pub minions: usize,
    /// The master and the swarm.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Measured rounds (default: 20 for N <= 1000, else 5).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Unmeasured rounds first (connections warm, every SUB subscribed).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Seconds a round may take before the bench fails.
    #[arg(long, default_value_t = 60)]
    pub round_timeout: u64,
    /// Pause between rounds in ms (default: max(250, N/5)).
    #[arg(long)]
    pub pause_ms: Option<u64>,
    /// Store poll interval in ms (only if the master's `return stored`
    /// events are missing; see `stored.rs`).
    #[arg(long, default_value_t = 2)]
    pub poll_ms: u64,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    pub markdown: bool,
    /// Before the rounds, measure the master's CPU and memory with the N
    /// minions connected and idle for this many seconds (use with
    /// `--master-config` giving production heartbeat/beacon intervals).
    #[arg(long, default_value_t = 0)]
    pub idle_seconds: u64,
    /// Goal for p99 in ms (default: the issue's, 1000 for N = 1000 and
    /// 5000 for N = 10000; none for other N).
    #[arg(long)]
    pub goal_ms: Option<u64>,
}

/// One measured round.
struct Round {
    total: Duration,
    /// Upper bound of how late the clock may have stopped.
    resolution: Duration,
    /// `stored_at - issued_at` of each return, ms.
    per_return_ms: Vec<f64>,
    failed: usize,
}

/// The goal for N: `--goal-ms`, else the issue's, if it sets one.
fn goal(n: usize, goal_ms: Option<u64>) -> Option<Duration> {
    match (goal_ms, n) {
        (Some(ms), _) => Some(Duration::from_millis(ms)),
        (None, 1000) => Some(Duration::from_secs(1)),
        (None, 10_000) => Some(Duration::from_secs(5)),
        (None, _) => None,
    }
}

/// Runs `halite-bench fanout`.
pub fn run(args: FanoutArgs) -> Result<()> {
    let n = args.minions;
    if n == 0 || n > 99_999 {
        bail!("--minions must be 1 to 99999");
    }
    let rounds = args.rounds.unwrap_or(if n <= 1000 { 20 } else { 5 });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let pause = Duration::from_millis(args.pause_ms.unwrap_or((n as u64 / 5).max(250)));
    let mut fleet = Fleet::start(&args.fleet, n, |_| Ok(()))?;
    let core = fleet.core.clone();
    let counter = &StoredCounter::default();
    counter.follow(&core.store);
    let (auth_time, swarm_rss_kib) = (fleet.auth_time, fleet.swarm_rss_kib);
    if args.idle_seconds > 0 {
        measure_idle(n, args.idle_seconds, fleet.in_children(), &core)?;
    }
    // The API's minion listing at this size (informational).
    let listing = Instant::now();
    let listed = ApiBackend(core.clone())
        .minions()
        .map_err(|e| anyhow!("list minions: {e}"))?
        .len();
    eprintln!(
        "the API's minion listing (GET /v1/minions, backend call only) of {} minions took {:.1} ms",
        grouped(listed),
        ms(listing.elapsed())
    );

    let round_timeout = Duration::from_secs(args.round_timeout);
    let poll = Duration::from_millis(args.poll_ms.max(1));
    for w in 0..args.warmup {
        let round = run_round(&core, counter, n, poll, round_timeout)
            .with_context(|| format!("warm-up round {}", w + 1))?;
        eprintln!("warm-up round {}: {:.1} ms", w + 1, ms(round.total));
        std::thread::sleep(pause);
    }
    let mut results = Vec::with_capacity(rounds);
    for r in 0..rounds {
        fleet.check_alive()?;
        let round = run_round(&core, counter, n, poll, round_timeout)
            .with_context(|| format!("round {}", r + 1))?;
        eprintln!("round {}/{rounds}: {:.1} ms", r + 1, ms(round.total));
        results.push(round);
        if r + 1 < rounds {
            std::thread::sleep(pause);
        }
    }

    let mode = fleet.mode();
    fleet.stop();
    print_report(&args, n, &mode, &results, auth_time, swarm_rss_kib);
    Ok(())
}

/// Publishes one `test.ping` to `swarm-*` and waits until all `n` returns
/// are in the store: by the master's `return stored` events, or by
/// polling the store if those do not come.
fn run_round(
    core: &Core,
    counter: &StoredCounter,
    n: usize,
    poll: Duration,
    timeout: Duration,
) -> Result<Round> {
    let request = JobRequest {
        target: "swarm-*".into(),
        tgt_type: TargetType::Glob,
        fun: "test.ping".into(),
        timeout: Some(timeout.as_secs().max(1)),
        ..Default::default()
    };
    let start = Instant::now();
    let submitted = core
        .submit(halite_pki::users::ROOT, request)
        .map_err(|e| anyhow!("submit test.ping: {e}"))?;
    let jid = submitted.jid.as_str().to_owned();
    let outcome = wait_stored(core, counter, &submitted.jid, n, start, poll, timeout);
    counter.forget(&jid);
    if submitted.minions.len() != n {
        bail!(
            "the master expects {} minions, not {n}",
            submitted.minions.len()
        );
    }
    let (total, resolution) = outcome?;
    let returns = core.store.returns(&submitted.jid).context("read returns")?;
    if returns.len() < n {
        bail!(
            "job {jid}: {n} returns reported stored, but the store holds {}",
            returns.len()
        );
    }
    let job = core
        .store
        .job(&submitted.jid)
        .context("read the job")?
        .with_context(|| format!("job {jid} vanished from the store"))?;
    let issued = job.record.issued_at;
    Ok(Round {
        total,
        resolution,
        per_return_ms: returns
            .iter()
            .map(|r| r.stored_at.saturating_sub(issued) as f64)
            .collect(),
        failed: returns.iter().filter(|r| !r.success).count(),
    })
}

/// The time from `start` until `n` returns of `jid` were stored, and the
/// measurement's resolution.
fn wait_stored(
    core: &Core,
    counter: &StoredCounter,
    jid: &halite_proto::Jid,
    n: usize,
    start: Instant,
    poll: Duration,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let deadline = start + timeout;
    let mut silent_checks = 0;
    loop {
        let until = (Instant::now() + CHECK_EVERY).min(deadline);
        match counter.wait(jid.as_str(), n, until) {
            Waited::Reached(at) => {
                return Ok((at.saturating_duration_since(start), Duration::ZERO))
            }
            Waited::TimedOut(stored) => {
                if Instant::now() >= deadline {
                    return Err(not_all_stored(core, jid, n, stored, timeout));
                }
                // Returns in the store but none counted, twice: the
                // counter fell behind the live stream; poll the store instead.
                if stored == 0 && !core.store.returns(jid).context("read returns")?.is_empty() {
                    silent_checks += 1;
                    if silent_checks >= 2 {
                        tracing::warn!(
                            "no `job/return` entries counted; polling the store instead"
                        );
                        return poll_stored(core, jid, n, start, poll, deadline, timeout);
                    }
                }
            }
        }
    }
}

/// Fallback: scan the store every `poll` (or twice the last scan's cost).
/// The clock stops when the scan that found all `n` ends.
fn poll_stored(
    core: &Core,
    jid: &halite_proto::Jid,
    n: usize,
    start: Instant,
    poll: Duration,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Duration, Duration)> {
    let mut interval = poll;
    loop {
        std::thread::sleep(interval);
        let scan = Instant::now();
        let stored = core.store.returns(jid).context("read returns")?.len();
        let cost = scan.elapsed();
        if stored >= n {
            return Ok((start.elapsed(), interval + cost));
        }
        if Instant::now() >= deadline {
            return Err(not_all_stored(core, jid, n, stored, timeout));
        }
        interval = poll.max(cost * 2);
    }
}

fn not_all_stored(
    core: &Core,
    jid: &halite_proto::Jid,
    n: usize,
    stored: usize,
    timeout: Duration,
) -> anyhow::Error {
    let missing = match core.job_view(jid) {
        Ok(view) => view
            .missing
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(cannot read the job: {e})"),
    };
    anyhow!(
        "only {stored} of {n} returns stored after {timeout:?} (job {jid}); missing e.g. {missing}"
    )
}

fn print_report(
    args: &FanoutArgs,
    n: usize,
    mode: &str,
    results: &[Round],
    auth: Duration,
    swarm_kib: u64,
) {
    let totals: Vec<f64> = results.iter().map(|r| ms(r.total)).collect();
    let per_return: Vec<f64> = results
        .iter()
        .flat_map(|r| r.per_return_ms.iter().copied())
        .collect();
    let failed: usize = results.iter().map(|r| r.failed).sum();
    let resolution = results
        .iter()
        .map(|r| r.resolution)
        .max()
        .unwrap_or_default();
    let (p50, p99) = (percentile(&totals, 50.0), percentile(&totals, 99.0));
    let min = totals.iter().copied().fold(f64::INFINITY, f64::min);
    let max = totals.iter().copied().fold(0.0, f64::max);
    let (goal_text, met) = match goal(n, args.goal_ms) {
        Some(g) => (
            format!("< {} ms", g.as_millis()),
            if p99 < ms(g) { "yes" } else { "no" }.to_owned(),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };

    let minion_dirs = if args.fleet.minion_dirs_on_disk {
        "disk"
    } else {
        "tmpfs"
    };
    println!(
        "fanout: {} minions ({mode}; minion dirs on {minion_dirs}); authenticated in {:.1} s; \
         swarm RSS {:.1} MiB ({:.0} KiB/minion); clock resolution <= {:.1} ms; failed returns: {failed}",
        grouped(n),
        auth.as_secs_f64(),
        swarm_kib as f64 / 1024.0,
        swarm_kib as f64 / n as f64,
        ms(resolution)
    );
    println!(
        "rounds (ms): {}",
        totals
            .iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut table = Table::new(&[
        "minions",
        "rounds",
        "p50 ms",
        "p99 ms",
        "min ms",
        "max ms",
        "per-return p50/p99 ms",
        "goal",
        "met",
    ]);
    table.row(vec![
        grouped(n),
        results.len().to_string(),
        format!("{p50:.1}"),
        format!("{p99:.1}"),
        format!("{min:.1}"),
        format!("{max:.1}"),
        format!(
            "{:.0} / {:.0}",
            percentile(&per_return, 50.0),
            percentile(&per_return, 99.0)
        ),
        goal_text,
        met,
    ]);
    print!("{}", table.render(args.markdown));
}

/// Samples this process (the master, when the minions run in child
/// processes) while N minions are connected and idle: CPU time used over
/// the window and resident memory at its end.
fn measure_idle(
    n: usize,
    seconds: u64,
    minions_elsewhere: bool,
    core: &std::sync::Arc<halite_master::core::Core>,
) -> Result<()> {
    let pid = std::process::id();
    let cpu_before = sys::cpu_seconds(pid)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = started.elapsed().as_secs_f64();
    let cpu = sys::cpu_seconds(pid)? - cpu_before;
    let (rss, peak) = sys::memory_kib(pid)?;
    let accepted = core.keys.accepted_ids();
    let up = accepted.iter().filter(|id| core.presence.is_up(id)).count();
    eprintln!(
        "idle {:.0} s with {} minions connected ({up} up at the end): master CPU {:.1}% of one core ({:.2} s), RSS {:.1} MiB (peak {:.1} MiB){}",
        wall,
        grouped(n),
        100.0 * cpu / wall,
        cpu,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        if minions_elsewhere { "" } else { " — minions run in this process too: not the master alone" }
    );
    Ok(())
}
