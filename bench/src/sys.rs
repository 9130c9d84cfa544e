//! Operating-system plumbing for the benchmarks: the open-files limit,
//! resident memory from `/proc`, bounded waits, and child processes that
//! are always stopped (by their PID) when the bench is done or fails.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Raises the soft open-files limit to the hard limit (a swarm needs a few
/// file descriptors per minion) and returns the limit now in force.
pub fn raise_nofile_limit() -> Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).with_context(|| {
            format!("raise the open-files limit from {soft} to the hard limit {hard}")
        })?;
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(RLIMIT_NOFILE)")?;
    Ok(soft)
}

/// File descriptors this process has open now.
pub fn open_fds() -> Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")
        .context("list /proc/self/fd")?
        .count())
}

/// `VmRSS` and `VmHWM` (peak) of a process, in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{path} has no {name} line"))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{path}: cannot parse {line:?}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used, in seconds, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: cannot read field {}", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// Calls `check` every `every` until it returns `Some`, or fails after
/// `timeout` with a message naming `what` (and the last progress note
/// `check` left in `progress`).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut progress = String::new();
    loop {
        if let Some(value) = check(&mut progress)? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            if progress.is_empty() {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            bail!("timed out after {timeout:?} waiting for {what} ({progress})");
        }
        std::thread::sleep(every);
    }
}

/// The directory of the running executable (`target/release` when built
/// by cargo), where the other halite binaries are looked for.
pub fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the path of halite-bench")?;
    exe.parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", exe.display()))
}

/// A child process that is stopped when dropped: SIGTERM, a grace
/// period, then SIGKILL. Nothing the bench starts outlives it.
pub struct Guarded {
    /// What it is, for messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its stderr log, shown when it fails.
    pub log: Option<PathBuf>,
}

impl Guarded {
    /// Wraps a started child.
    pub fn new(name: impl Into<String>, child: Child, log: Option<PathBuf>) -> Guarded {
        Guarded {
            name: name.into(),
            child,
            log,
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the child's exit status and log tail if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} (pid {}) exited early: {status}{}",
                self.name,
                self.pid(),
                self.log_tail()
            ),
            Err(e) => bail!("cannot check {} (pid {}): {e}", self.name, self.pid()),
        }
    }

    /// The last lines of the child's log, formatted for an error message.
    pub fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
                format!("\n  last lines of {}:\n    {tail}", path.display())
            }
            Err(e) => format!("\n  (cannot read its log {}: {e})", path.display()),
        }
    }

    /// Stops the child by PID: SIGTERM, wait up to `grace`, then SIGKILL.
    /// Returns whether it stopped on SIGTERM.
    pub fn stop(&mut self, grace: Duration) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// `dir/name`, or an error saying how to build it (or, for a tool of
/// another project, which option points at it).
pub fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build the binaries next to halite-bench with \
             `cargo build --release --workspace --bins` (or point the bench's option at it)",
            path.display()
        );
    }
    Ok(path)
}

/// Starts `exe args…`, its stderr in `log`, `RUST_LOG` passed on (or
/// `default_log`), stopped by PID when dropped.
pub fn spawn_logged(
    name: &str,
    exe: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
    default_log: &str,
) -> Result<Guarded> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let child = std::process::Command::new(exe)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("start {}", exe.display()))?;
    Ok(Guarded::new(name, child, Some(log.to_path_buf())))
}
