//! The minion swarm: many real minions in one process.
//!
//! Every minion is a full `halite_minion::start` — its own Ed25519 key,
//! its own `pki_dir` and `data_dir` (replay guard, return spool, pinned
//! master key), its own DEALER and SUB sockets to the master, its own
//! signature checks of every job and signed return. They only share the
//! tokio runtime and the module registry (which the library allows for
//! exactly this).
//!
//! Keys: generating 10 000 keys writes 20 000 fsynced files, so keys are
//! generated once into a cache (`target/bench-swarm-keys/<id>/`) and
//! copied into each minion's fresh `pki_dir`. Each minion still has its
//! own key; the master still sees each one for the first time.
//!
//! Minions are started in waves; a wave is done when every minion in it
//! has pinned the master key (`pki_dir/masters/<master>.pub`), which
//! happens on the first signed auth reply. This keeps the master from
//! facing thousands of simultaneous first-time auths.
//!
//! The hidden `swarm` subcommand runs part of a swarm in a child process
//! when one process cannot hold enough file descriptors; it prints
//! `ready <count>` once its minions have authenticated and runs until its
//! stdin closes (the parent exits or stops it) or `--max-seconds` pass.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::sys;

/// File descriptors one in-process minion holds: DEALER socket, SUB
/// socket and the append handle of its replay guard.
pub const FDS_PER_MINION: usize = 3;

/// Id of the `i`-th swarm minion (1-based): `swarm-00001`.
pub fn minion_id(i: usize) -> String {
    format!("swarm-{i:05}")
}

/// Default key cache: `<target>/bench-swarm-keys`, beside `target/release`.
pub fn default_key_cache() -> Result<PathBuf> {
    let dir = sys::exe_dir()?;
    let target = dir.parent().unwrap_or(&dir);
    Ok(target.join("bench-swarm-keys"))
}

/// Where minions keep their `pki_dir`/`data_dir`: tmpfs (`/dev/shm`) by
/// default, see the README for why; on disk with `on_disk`.
pub fn default_minion_root(on_disk: bool) -> PathBuf {
    let shm = Path::new("/dev/shm");
    if !on_disk && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Makes sure the cache holds a key pair for each of `ids`; generates the
/// missing ones (into a tmpfs staging dir, then copied: the cache does
/// not need the fsyncs). Returns how many were generated.
pub fn ensure_keys(cache: &Path, ids: &[String]) -> Result<usize> {
    std::fs::create_dir_all(cache)
        .with_context(|| format!("create key cache {}", cache.display()))?;
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| {
            !cache.join(id).join("minion.key").exists()
                || !cache.join(id).join("minion.pub").exists()
        })
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let staging = tempfile::Builder::new()
        .prefix("halite-bench-keygen-")
        .tempdir_in(default_minion_root(false))
        .context("create a staging dir for key generation")?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = missing.len().div_ceil(threads);
    std::thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = missing
            .chunks(chunk.max(1))
            .map(|part| {
                let staging = staging.path();
                scope.spawn(move || -> Result<()> {
                    for id in part {
                        let tmp = staging.join(id);
                        halite_pki::KeyPair::load_or_generate(&tmp, "minion")
                            .with_context(|| format!("generate a key for {id}"))?;
                        let dest = cache.join(id);
                        std::fs::create_dir_all(&dest)
                            .with_context(|| format!("create {}", dest.display()))?;
                        for file in ["minion.pub", "minion.key"] {
                            // The key last: its presence marks the entry complete.
                            std::fs::copy(tmp.join(file), dest.join(file))
                                .with_context(|| format!("copy {file} into {}", dest.display()))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            match worker.join() {
                Ok(result) => result?,
                Err(_) => bail!("a key generation thread panicked"),
            }
        }
        Ok(())
    })?;
    Ok(missing.len())
}

/// Creates the minion's directories, copies its cached key in and builds
/// its configuration through the same validation as `minion.toml`.
pub fn prepare_minion(
    root: &Path,
    cache: &Path,
    id: &str,
    master: &str,
) -> Result<halite_minion::Config> {
    prepare_minion_with(root, cache, id, &[master], toml::Table::new())
}

/// Like [`prepare_minion`] with several masters and extra config keys
/// (`master_type`, `master_alive_interval`, ...).
pub fn prepare_minion_with(
    root: &Path,
    cache: &Path,
    id: &str,
    masters: &[&str],
    extra: toml::Table,
) -> Result<halite_minion::Config> {
    let dir = root.join(id);
    let pki_dir = dir.join("pki");
    let data_dir = dir.join("data");
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(&pki_dir)
        .with_context(|| format!("create {}", pki_dir.display()))?;
    for file in ["minion.key", "minion.pub"] {
        // fs::copy keeps the 0600 mode the key was written with.
        std::fs::copy(cache.join(id).join(file), pki_dir.join(file))
            .with_context(|| format!("copy cached {file} of {id} into {}", pki_dir.display()))?;
    }
    let mut table = toml::Table::new();
    table.insert("id".into(), id.into());
    table.insert(
        "masters".into(),
        toml::Value::Array(masters.iter().map(|m| (*m).into()).collect()),
    );
    table.insert("pki_dir".into(), pki_dir.display().to_string().into());
    table.insert("data_dir".into(), data_dir.display().to_string().into());
    table.insert("auth_retry".into(), 1.into());
    table.extend(extra);
    let text = toml::to_string(&table).context("render a minion config")?;
    halite_minion::Config::from_toml(&dir.join("minion.toml"), &text)
        .with_context(|| format!("minion config of {id}"))
}

/// The pin file a minion writes at its first signed auth reply.
fn pin_file(root: &Path, id: &str, master: &str) -> Result<PathBuf> {
    let addr = halite_minion::config::parse_master(master)
        .map_err(|e| anyhow::anyhow!("master address: {e}"))?;
    Ok(root
        .join(id)
        .join("pki")
        .join("masters")
        .join(format!("{}.pub", addr.file_name())))
}

/// What [`start_minions`] needs.
pub struct SwarmPlan<'a> {
    /// Minion ids to start.
    pub ids: &'a [String],
    /// Where their directories go.
    pub root: &'a Path,
    /// Key cache.
    pub cache: &'a Path,
    /// `host:return_port` of the master.
    pub master: &'a str,
    /// Minions started before waiting for their auth.
    pub wave: usize,
    /// How long one wave may take to authenticate.
    pub wave_timeout: Duration,
    /// Failover minions: the second master and `master_alive_interval`.
    pub failover: Option<(&'a str, u64)>,
}

/// Starts the minions on `runtime` in waves, each wave waiting until all
/// of its minions authenticated. Every minion stops when `shutdown` fires.
pub fn start_minions(
    runtime: &tokio::runtime::Runtime,
    plan: &SwarmPlan<'_>,
    shutdown: &CancellationToken,
) -> Result<Vec<halite_minion::Running>> {
    let registry = halite_minion::default_registry();
    let mut running = Vec::with_capacity(plan.ids.len());
    for wave in plan.ids.chunks(plan.wave.max(1)) {
        let mut pins = Vec::with_capacity(wave.len());
        for id in wave {
            let config = match plan.failover {
                None => prepare_minion(plan.root, plan.cache, id, plan.master)?,
                Some((second, alive)) => {
                    let mut extra = toml::Table::new();
                    extra.insert("master_type".into(), "failover".into());
                    extra.insert("master_alive_interval".into(), (alive as i64).into());
                    prepare_minion_with(plan.root, plan.cache, id, &[plan.master, second], extra)?
                }
            };
            pins.push(pin_file(plan.root, id, plan.master)?);
            let _entered = runtime.enter();
            running.push(
                halite_minion::start(config, registry.clone(), shutdown.clone())
                    .with_context(|| format!("start minion {id}"))?,
            );
        }
        let first = wave.first().map_or("", String::as_str);
        let last = wave.last().map_or("", String::as_str);
        sys::wait_for(
            &format!(
                "minions {first}..{last} to authenticate with {}",
                plan.master
            ),
            plan.wave_timeout,
            Duration::from_millis(20),
            |progress| {
                pins.retain(|pin| !pin.exists());
                *progress = format!("{} of {} not yet authenticated", pins.len(), wave.len());
                Ok(pins.is_empty().then_some(()))
            },
        )?;
    }
    Ok(running)
}

/// `halite-bench swarm` (hidden): part of a swarm in a child process.
#[derive(Args, Debug)]
pub struct SwarmArgs {
    /// How many minions this process runs.
    #[arg(long)]
    pub minions: usize,
    /// Number of the first minion (ids are `swarm-<first>` onwards).
    #[arg(long, default_value_t = 1)]
    pub first: usize,
    /// The master's `host:return_port`.
    #[arg(long)]
    pub master: String,
    /// Directory for the minions' pki_dir/data_dir.
    #[arg(long)]
    pub root: PathBuf,
    /// Key cache (see `fanout --key-cache`).
    #[arg(long)]
    pub key_cache: PathBuf,
    /// Minions started before waiting for their auth.
    #[arg(long, default_value_t = 250)]
    pub wave: usize,
    /// Seconds one wave may take to authenticate.
    #[arg(long, default_value_t = 120)]
    pub wave_timeout: u64,
    /// Worker threads of this process's runtime.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Exit after this many seconds even if the parent did not stop us.
    #[arg(long, default_value_t = 3600)]
    pub max_seconds: u64,
}

/// Runs the child side of a split swarm.
pub fn run_child(args: SwarmArgs) -> Result<()> {
    let limit = sys::raise_nofile_limit()?;
    let need = sys::open_fds()? + FDS_PER_MINION * args.minions + 64;
    if need > limit as usize {
        bail!(
            "{} minions need about {need} file descriptors in this process; the limit is {limit}",
            args.minions
        );
    }
    let ids: Vec<String> = (args.first..args.first + args.minions)
        .map(minion_id)
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .context("start the swarm runtime")?;
    let shutdown = CancellationToken::new();
    let plan = SwarmPlan {
        ids: &ids,
        root: &args.root,
        cache: &args.key_cache,
        master: &args.master,
        wave: args.wave,
        wave_timeout: Duration::from_secs(args.wave_timeout),
        failover: None,
    };
    let started = Instant::now();
    let running = start_minions(&runtime, &plan, &shutdown)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "ready {} {:.3}",
        running.len(),
        started.elapsed().as_secs_f64()
    )
    .context("write to stdout")?;
    stdout.flush().context("flush stdout")?;
    drop(stdout);

    // Stop when the parent closes our stdin (it stopped, or died).
    let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        let mut lock = stdin.lock();
        while matches!(lock.read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
        let _ = eof_tx.send(());
    });
    let _ = eof_rx.recv_timeout(Duration::from_secs(args.max_seconds));
    shutdown.cancel();
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}
