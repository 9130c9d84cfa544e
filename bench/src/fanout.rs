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

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use halite_api::types::JobRequest;
use halite_api::Backend;
use halite_master::backend::ApiBackend;
use halite_master::core::Core;
use halite_proto::TargetType;
use tokio_util::sync::CancellationToken;

use crate::report::{grouped, ms, percentile, Table};
use crate::stored::{StoredCounter, Waited, CHECK_EVERY};
use crate::swarm::{self, SwarmPlan, FDS_PER_MINION};
use crate::sys::{self, Guarded};

/// Most minions one child process is given (it needs 3 fds per minion).
const MAX_PER_CHILD: usize = 5000;
/// Spare file descriptors kept for whatever else a process opens.
const FD_MARGIN: usize = 64;

/// Options of `halite-bench fanout`.
#[derive(Args, Debug)]
pub struct FanoutArgs {
    /// Number of minions (N).
    #[arg(long)]
    pub minions: usize,
    /// Measured rounds (default: 20 for N <= 1000, else 5).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Unmeasured rounds first (connections warm, every SUB subscribed).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// A master TOML file whose keys override the bench's master settings
    /// (e.g. `beacon_interval = 2` to measure with beacons on).
    #[arg(long)]
    pub master_config: Option<PathBuf>,
    /// Child processes for the minions; 0 runs them in this process.
    /// Default: 0 if the open-files limit allows, else as few as fit.
    #[arg(long)]
    pub procs: Option<usize>,
    /// Minions started at once before waiting for their auth.
    #[arg(long, default_value_t = 250)]
    pub wave: usize,
    /// Seconds a wave of minions may take to authenticate.
    #[arg(long, default_value_t = 120)]
    pub wave_timeout: u64,
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
    /// Put minion pki/data dirs in the temp dir on disk instead of tmpfs.
    #[arg(long)]
    pub minion_dirs_on_disk: bool,
    /// Key cache directory (default: target/bench-swarm-keys).
    #[arg(long)]
    pub key_cache: Option<PathBuf>,
    /// Worker threads of the master's runtime.
    #[arg(long, default_value_t = 2)]
    pub master_workers: usize,
    /// Worker threads of each minion runtime (in-process or per child).
    #[arg(long, default_value_t = 2)]
    pub minion_workers: usize,
    /// Print Markdown tables (for bench/RESULTS.md).
    #[arg(long)]
    pub markdown: bool,
    /// Keep the temp dirs (master store, minion dirs) and print where.
    #[arg(long)]
    pub keep_dirs: bool,
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

/// The master settings of the bench, overridden by `--master-config`.
pub(crate) fn master_config(dir: &Path, overrides: Option<&Path>) -> Result<halite_master::Config> {
    let mut table = toml::Table::new();
    table.insert("id".into(), "bench-master".into());
    table.insert("interface".into(), "127.0.0.1".into());
    table.insert("publish_port".into(), 0.into());
    table.insert("return_port".into(), 0.into());
    table.insert("api_bind".into(), "127.0.0.1:0".into());
    table.insert(
        "pki_dir".into(),
        dir.join("pki").display().to_string().into(),
    );
    table.insert(
        "data_dir".into(),
        dir.join("data").display().to_string().into(),
    );
    table.insert("auto_accept".into(), true.into());
    table.insert("heartbeat_interval".into(), 3600.into());
    table.insert("beacon_interval".into(), 3600.into());
    table.insert("check_interval".into(), 3600.into());
    table.insert("job_timeout".into(), 60.into());
    if let Some(path) = overrides {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read --master-config {}", path.display()))?;
        let extra: toml::Table =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        table.extend(extra);
    }
    let text = toml::to_string(&table).context("render the master config")?;
    let file = dir.join("master.toml");
    std::fs::write(&file, &text).with_context(|| format!("write {}", file.display()))?;
    halite_master::Config::from_toml(&file, &text).with_context(|| match overrides {
        Some(path) => format!(
            "master config (bench defaults with {} over them)",
            path.display()
        ),
        None => "master config".to_owned(),
    })
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
    let limit = sys::raise_nofile_limit()? as usize;

    let cache = match &args.key_cache {
        Some(dir) => dir.clone(),
        None => swarm::default_key_cache()?,
    };
    let ids: Vec<String> = (1..=n).map(swarm::minion_id).collect();
    let started = Instant::now();
    let generated = swarm::ensure_keys(&cache, &ids)?;
    if generated > 0 {
        eprintln!(
            "generated {generated} minion keys into {} in {:.1} s",
            cache.display(),
            started.elapsed().as_secs_f64()
        );
    }

    // The master's store and keys on disk (its flush is part of what is
    // measured); the minions' dirs on tmpfs unless asked otherwise.
    let master_dir = tempfile::Builder::new()
        .prefix("halite-bench-master-")
        .tempdir()
        .context("create the master's temp dir")?;
    let minion_root = tempfile::Builder::new()
        .prefix("halite-bench-swarm-")
        .tempdir_in(swarm::default_minion_root(args.minion_dirs_on_disk))
        .context("create the minions' temp dir")?;
    let config = master_config(master_dir.path(), args.master_config.as_deref())?;

    let master_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.master_workers.max(1))
        .thread_name("master")
        .enable_all()
        .build()
        .context("start the master runtime")?;
    let master_shutdown = CancellationToken::new();
    let master = master_rt
        .block_on(halite_master::start(config, master_shutdown.clone()))
        .context("start the master")?;
    let core = master.core.clone();
    let counter = &StoredCounter::default();
    counter.follow(&core.store);
    let master_addr = format!("127.0.0.1:{}", master.return_port);
    let rss_before = sys::memory_kib(std::process::id())?.0;

    // File descriptors: each minion holds FDS_PER_MINION, the master two
    // per minion (its ends of the DEALER and SUB connections).
    let fds_now = sys::open_fds()?;
    let in_process_need = fds_now + (FDS_PER_MINION + 2) * n + FD_MARGIN;
    let per_child_cap =
        ((limit.saturating_sub(FD_MARGIN + 32)) / FDS_PER_MINION).min(MAX_PER_CHILD);
    let procs = match args.procs {
        Some(p) => p,
        None if in_process_need <= limit => 0,
        None => n.div_ceil(per_child_cap.max(1)),
    };
    if procs == 0 && in_process_need > limit {
        bail!(
            "{n} minions in one process need about {in_process_need} file descriptors; the limit is {limit}: use --procs"
        );
    }
    if procs > 0 {
        let master_need = fds_now + 2 * n + 3 * procs + FD_MARGIN;
        if master_need > limit {
            let max_n = limit.saturating_sub(fds_now + 3 * procs + FD_MARGIN) / 2;
            bail!(
                "{n} minions need about {master_need} file descriptors in the master process alone \
                 (2 per minion: its ends of each DEALER and SUB connection, plus {fds_now} open now); \
                 the open-files limit is {limit} and cannot be raised past the hard limit without \
                 CAP_SYS_RESOURCE. The largest swarm this machine allows is about {max_n} minions."
            );
        }
        if n.div_ceil(procs) > per_child_cap {
            bail!("{procs} child processes would each run more than {per_child_cap} minions; use more --procs");
        }
    }

    eprintln!(
        "starting {} minions {} (waves of {})...",
        grouped(n),
        if procs == 0 {
            "in this process".to_owned()
        } else {
            format!("in {procs} child processes")
        },
        args.wave
    );
    let minion_shutdown = CancellationToken::new();
    let auth_started = Instant::now();
    let mut children: Vec<Guarded> = Vec::new();
    let mut minion_rt = None;
    let mut in_process = Vec::new();
    if procs == 0 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.minion_workers.max(1))
            .thread_name("swarm")
            .enable_all()
            .build()
            .context("start the swarm runtime")?;
        let plan = SwarmPlan {
            ids: &ids,
            root: minion_root.path(),
            cache: &cache,
            master: &master_addr,
            wave: args.wave,
            wave_timeout: Duration::from_secs(args.wave_timeout),
            failover: None,
        };
        in_process = swarm::start_minions(&rt, &plan, &minion_shutdown)?;
        minion_rt = Some(rt);
    } else {
        let per = n.div_ceil(procs);
        for k in 0..procs {
            let first = 1 + k * per;
            let count = per.min(n + 1 - first);
            if count == 0 {
                break;
            }
            children.push(spawn_child(
                &args,
                k,
                first,
                count,
                &master_addr,
                minion_root.path(),
                &cache,
                master_dir.path(),
            )?);
        }
    }
    let auth_time = auth_started.elapsed();

    sys::wait_for(
        &format!("the master to accept all {n} minions and see them up"),
        Duration::from_secs(60),
        Duration::from_millis(50),
        |progress| {
            for child in &mut children {
                child.check_alive()?;
            }
            let accepted = core.keys.accepted_ids();
            let up = accepted.iter().filter(|id| core.presence.is_up(id)).count();
            *progress = format!("{} accepted, {up} up", accepted.len());
            Ok((accepted.len() >= n && up >= n).then_some(()))
        },
    )?;
    let swarm_rss_kib = if children.is_empty() {
        sys::memory_kib(std::process::id())?
            .0
            .saturating_sub(rss_before)
    } else {
        let mut sum = 0;
        for child in &children {
            sum += sys::memory_kib(child.pid())?.0;
        }
        sum
    };
    eprintln!(
        "{} minions authenticated in {:.1} s; swarm memory {:.1} MiB ({:.0} KiB per minion)",
        grouped(n),
        auth_time.as_secs_f64(),
        swarm_rss_kib as f64 / 1024.0,
        swarm_rss_kib as f64 / n as f64
    );
    if args.idle_seconds > 0 {
        measure_idle(n, args.idle_seconds, !children.is_empty(), &core)?;
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
        for child in &mut children {
            child.check_alive()?;
        }
        let round = run_round(&core, counter, n, poll, round_timeout)
            .with_context(|| format!("round {}", r + 1))?;
        eprintln!("round {}/{rounds}: {:.1} ms", r + 1, ms(round.total));
        results.push(round);
        if r + 1 < rounds {
            std::thread::sleep(pause);
        }
    }

    // Stop the minions before the master, so they do not log reconnects.
    for mut child in children.drain(..) {
        child.stop(Duration::from_secs(10));
    }
    minion_shutdown.cancel();
    drop(in_process);
    if let Some(rt) = minion_rt.take() {
        rt.shutdown_timeout(Duration::from_secs(5));
    }
    master_shutdown.cancel();
    master_rt.shutdown_timeout(Duration::from_secs(5));

    let mode = if procs == 0 {
        "in-process".to_owned()
    } else {
        format!("master in-process, minions in {procs} child processes")
    };
    print_report(&args, n, &mode, &results, auth_time, swarm_rss_kib);
    if args.keep_dirs {
        eprintln!("kept master dir {}", master_dir.keep().display());
        eprintln!("kept minion dirs {}", minion_root.keep().display());
    }
    Ok(())
}

/// Starts one `halite-bench swarm` child and waits for its `ready` line.
#[allow(clippy::too_many_arguments)]
fn spawn_child(
    args: &FanoutArgs,
    k: usize,
    first: usize,
    count: usize,
    master: &str,
    root: &Path,
    cache: &Path,
    log_dir: &Path,
) -> Result<Guarded> {
    let exe = std::env::current_exe().context("find halite-bench itself")?;
    let log = log_dir.join(format!("swarm-{k}.log"));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(&exe)
        .arg("swarm")
        .args(["--minions", &count.to_string()])
        .args(["--first", &first.to_string()])
        .args(["--master", master])
        .arg("--root")
        .arg(root)
        .arg("--key-cache")
        .arg(cache)
        .args(["--wave", &args.wave.to_string()])
        .args(["--wave-timeout", &args.wave_timeout.to_string()])
        .args(["--workers", &args.minion_workers.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("start {} swarm", exe.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut guarded = Guarded::new(
        format!("swarm child {k} (minions {first}..{})", first + count - 1),
        child,
        Some(log),
    );
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // A wave may take wave_timeout; allow every wave that long, at most.
    let waves = count.div_ceil(args.wave.max(1)) as u64;
    let deadline = Instant::now() + Duration::from_secs(args.wave_timeout * waves + 30);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("ready ") => {
                eprintln!("  {}: {line}", guarded.name);
                return Ok(guarded);
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                guarded.check_alive()?;
                bail!(
                    "{} closed its stdout before it was ready{}",
                    guarded.name,
                    guarded.log_tail()
                );
            }
        }
        guarded.check_alive()?;
        if Instant::now() >= deadline {
            bail!("{} not ready in time{}", guarded.name, guarded.log_tail());
        }
    }
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

    let minion_dirs = if args.minion_dirs_on_disk {
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
