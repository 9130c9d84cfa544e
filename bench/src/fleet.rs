//! The fleet a swarm benchmark runs against: a master in this process
//! (`halite_master::start`, a fresh temp dir on disk, loopback, free
//! ports, `auto_accept`, background traffic every hour) and N real
//! swarm minions (`swarm-00001`...) in this process or, when one process
//! cannot hold their file descriptors, in child processes of this binary
//! (`halite-bench swarm`); started once the master has accepted every
//! key and sees every minion up. `fanout` and `rollout` share it.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use halite_master::core::Core;
use tokio_util::sync::CancellationToken;

use crate::report::grouped;
use crate::swarm::{self, SwarmPlan, FDS_PER_MINION};
use crate::sys::{self, Guarded};

/// Most minions one child process is given (it needs 3 fds per minion).
const MAX_PER_CHILD: usize = 5000;
/// Spare file descriptors kept for whatever else a process opens.
const FD_MARGIN: usize = 64;

/// How the master and the swarm run.
#[derive(Args, Debug)]
pub struct FleetArgs {
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
    /// Keep the temp dirs (master store, minion dirs) and print where.
    #[arg(long)]
    pub keep_dirs: bool,
}

/// A running master and its swarm.
pub struct Fleet {
    /// The master's core (submit jobs, read the store).
    pub core: Arc<Core>,
    /// How long the swarm took to authenticate.
    pub auth_time: Duration,
    /// The swarm's resident memory.
    pub swarm_rss_kib: u64,
    procs: usize,
    children: Vec<Guarded>,
    /// Holds the master's tasks (dropped, they are aborted).
    master: halite_master::Running,
    master_rt: tokio::runtime::Runtime,
    master_shutdown: CancellationToken,
    minion_rt: Option<tokio::runtime::Runtime>,
    in_process: Vec<halite_minion::Running>,
    minion_shutdown: CancellationToken,
    master_dir: tempfile::TempDir,
    minion_root: tempfile::TempDir,
    keep_dirs: bool,
}

impl Fleet {
    /// Starts a master and `n` minions; `prepare` gets the master's
    /// directory before the master starts (to write `apps.d`, say).
    pub fn start(
        args: &FleetArgs,
        n: usize,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Fleet> {
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
        prepare(master_dir.path())?;

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
                    args,
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
        Ok(Fleet {
            core,
            auth_time,
            swarm_rss_kib,
            procs,
            children,
            master,
            master_rt,
            master_shutdown,
            minion_rt,
            in_process,
            minion_shutdown,
            master_dir,
            minion_root,
            keep_dirs: args.keep_dirs,
        })
    }

    /// Do the minions run in child processes (the master alone here)?
    pub fn in_children(&self) -> bool {
        !self.children.is_empty()
    }

    /// Fails when a child process of the swarm died.
    pub fn check_alive(&mut self) -> Result<()> {
        for child in &mut self.children {
            child.check_alive()?;
        }
        Ok(())
    }

    /// `in-process`, or where the minions run.
    pub fn mode(&self) -> String {
        if self.procs == 0 {
            "in-process".to_owned()
        } else {
            format!(
                "master in-process, minions in {} child processes",
                self.procs
            )
        }
    }

    /// Stops the minions, then the master (so they do not log
    /// reconnects); keeps the temp dirs when asked.
    pub fn stop(self) {
        let Fleet {
            mut children,
            master,
            master_rt,
            master_shutdown,
            mut minion_rt,
            in_process,
            minion_shutdown,
            master_dir,
            minion_root,
            keep_dirs,
            ..
        } = self;
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
        drop(master);
        master_rt.shutdown_timeout(Duration::from_secs(5));
        if keep_dirs {
            eprintln!("kept master dir {}", master_dir.keep().display());
            eprintln!("kept minion dirs {}", minion_root.keep().display());
        }
    }
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

/// Starts one `halite-bench swarm` child and waits for its `ready` line.
#[allow(clippy::too_many_arguments)]
fn spawn_child(
    args: &FleetArgs,
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
