//! `cli`: `master-cli run target='web*' test.ping` against N real
//! `halite-minion` processes, wall time from starting the CLI to its exit
//! with every return printed — what an operator waits for — and, with
//! `--salt-bin`, Salt's `salt 'web*' test.ping` against N real
//! `salt-minion` processes in the same run on the same machine.
//!
//! Everything runs on loopback under a temp dir: the real `halite-master`
//! (`auto_accept`) and `halite-minion` binaries from this executable's
//! directory (`cargo build --release --workspace --bins`), and for Salt a
//! `salt-master` with `auto_accept: True` and its minions from
//! `--salt-bin` (a virtualenv's `bin`, e.g. `pip install salt==3008.3`).
//! Each side is started, waited for (every minion answering), timed for
//! `--runs` runs after one warm-up run, and stopped by PID before the
//! other side starts, so they never share the CPU.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::report::{percentile, Table};
use crate::sys::{self, Guarded};

/// Options of `halite-bench cli`.
#[derive(Args, Debug)]
pub struct CliArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, default_value = "30,60", value_delimiter = ',')]
    minions: Vec<usize>,
    /// Timed runs per fleet size (after one warm-up run).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Directory with `salt-master`, `salt-minion` and `salt` (a Salt
    /// virtualenv's `bin`); without it only halite is measured.
    #[arg(long)]
    salt_bin: Option<PathBuf>,
    /// Seconds to wait for a fleet to come up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print a Markdown table (for bench/RESULTS.md).
    #[arg(long)]
    markdown: bool,
}

/// Timings of one side at one fleet size, in ms.
struct Timed {
    runs: Vec<f64>,
}

impl Timed {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.runs, p)
    }
}

/// Runs `halite-bench cli`.
pub fn run(args: CliArgs) -> Result<()> {
    let bin_dir = sys::exe_dir()?;
    let timeout = Duration::from_secs(args.timeout);
    let mut table = Table::new(&[
        "minions",
        "tool",
        "runs",
        "min",
        "p50",
        "p90",
        "max",
        "vs halite (p50)",
    ]);
    for &n in &args.minions {
        let halite = halite_side(&bin_dir, n, args.runs, timeout)?;
        let row = |tool: &str, t: &Timed, ratio: String| {
            vec![
                n.to_string(),
                tool.to_owned(),
                t.runs.len().to_string(),
                format!("{:.0} ms", t.p(0.0)),
                format!("{:.0} ms", t.p(50.0)),
                format!("{:.0} ms", t.p(90.0)),
                format!("{:.0} ms", t.p(100.0)),
                ratio,
            ]
        };
        table.row(row("halite master-cli", &halite, "1×".into()));
        if let Some(salt_bin) = &args.salt_bin {
            let salt = salt_side(salt_bin, n, args.runs, timeout)?;
            let ratio = format!("{:.1}×", salt.p(50.0) / halite.p(50.0));
            table.row(row("salt CLI", &salt, ratio));
        }
    }
    println!("{}", table.render(args.markdown));
    Ok(())
}

/// Starts a halite master and `n` minions, waits until all are up, then
/// times the CLI.
fn halite_side(bin_dir: &Path, n: usize, runs: usize, timeout: Duration) -> Result<Timed> {
    let master_bin = sys::binary(bin_dir, "halite-master")?;
    let minion_bin = sys::binary(bin_dir, "halite-minion")?;
    let cli_bin = sys::binary(bin_dir, "master-cli")?;
    let dir = tempfile::Builder::new()
        .prefix("halite-bench-cli-")
        .tempdir()
        .context("create a temp dir")?;
    let root = dir.path();
    let data = root.join("master/data");
    let master_toml = root.join("master.toml");
    std::fs::write(
        &master_toml,
        format!(
            "id = \"bench-master\"\ninterface = \"127.0.0.1\"\npublish_port = 0\nreturn_port = 0\n\
             api_bind = \"127.0.0.1:0\"\npki_dir = {:?}\ndata_dir = {:?}\nauto_accept = true\n",
            root.join("master/pki"),
            data
        ),
    )
    .context("write the master config")?;
    let mut master = spawn("halite-master", &master_bin, "--config", &master_toml, root)?;
    let ports: Value = sys::wait_for(
        "the master's ports.json",
        timeout,
        Duration::from_millis(20),
        |_| {
            master.check_alive()?;
            Ok(std::fs::read_to_string(data.join("ports.json"))
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok()))
        },
    )?;
    let return_port = ports["return_port"].as_u64().context("no return_port")?;
    let mut minions = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("web{i:02}");
        let config = root.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "id = {id:?}\nmasters = [\"127.0.0.1:{return_port}\"]\npki_dir = {:?}\n\
                 data_dir = {:?}\nauth_retry = 1\n",
                root.join(&id).join("pki"),
                root.join(&id).join("data"),
            ),
        )
        .context("write a minion config")?;
        minions.push(spawn(&id, &minion_bin, "--config", &config, root)?);
    }
    let cli = |quiet: bool| -> Result<(Duration, String)> {
        let started = Instant::now();
        let mut command = Command::new(&cli_bin);
        command.arg("--config").arg(&master_toml);
        if quiet {
            command.args(["minions", "--json"]);
        } else {
            command.args(["run", "target=web*", "test.ping"]);
        }
        let out = command.output().context("run master-cli")?;
        let took = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "master-cli failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((took, stdout))
    };
    sys::wait_for(
        &format!("{n} halite minions up"),
        timeout,
        Duration::from_millis(100),
        |progress| {
            master.check_alive()?;
            let (_, text) = cli(true)?;
            let minions: Value = serde_json::from_str(&text).context("minions --json")?;
            let up = minions
                .as_array()
                .map_or(0, |all| all.iter().filter(|m| m["status"] == "up").count());
            *progress = format!("{up} up");
            Ok((up == n).then_some(()))
        },
    )?;
    let expected = format!("{n} succeeded, 0 failed, 0 did not return");
    let mut timed = Vec::with_capacity(runs);
    for run in 0..=runs {
        let (took, text) = cli(false)?;
        if !text.contains(&expected) {
            bail!("master-cli run did not report {expected:?}:\n{text}");
        }
        if run > 0 {
            timed.push(took.as_secs_f64() * 1000.0);
        }
    }
    drop(minions);
    drop(master);
    Ok(Timed { runs: timed })
}

/// Starts a salt-master and `n` salt-minions, waits until every minion
/// answers, then times the `salt` CLI.
fn salt_side(salt_bin: &Path, n: usize, runs: usize, timeout: Duration) -> Result<Timed> {
    let master_bin = sys::binary(salt_bin, "salt-master")?;
    let minion_bin = sys::binary(salt_bin, "salt-minion")?;
    let salt = sys::binary(salt_bin, "salt")?;
    let dir = tempfile::Builder::new()
        .prefix("halite-bench-salt-")
        .tempdir()
        .context("create a temp dir")?;
    let root = dir.path();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let publish_port = free_port()?;
    let ret_port = free_port()?;
    let master_dir = root.join("master");
    std::fs::create_dir_all(&master_dir)?;
    std::fs::write(
        master_dir.join("master"),
        format!(
            "root_dir: {}\ninterface: 127.0.0.1\npublish_port: {publish_port}\n\
             ret_port: {ret_port}\nauto_accept: True\nuser: {user}\n\
             log_file: {}\nlog_level_logfile: warning\n",
            master_dir.display(),
            master_dir.join("master.log").display(),
        ),
    )?;
    let mut master = spawn("salt-master", &master_bin, "-c", &master_dir, root)?;
    let mut minions = Vec::with_capacity(n);
    for i in 1..=n {
        let id = format!("web{i:02}");
        let conf = root.join(&id);
        std::fs::create_dir_all(&conf)?;
        std::fs::write(
            conf.join("minion"),
            format!(
                "id: {id}\nmaster: 127.0.0.1\nmaster_port: {ret_port}\n\
                 publish_port: {publish_port}\nroot_dir: {}\nuser: {user}\n\
                 log_file: {}\nlog_level_logfile: warning\n",
                conf.display(),
                conf.join("minion.log").display(),
            ),
        )?;
        minions.push(spawn(&id, &minion_bin, "-c", &conf, root)?);
    }
    let ping = |timeout_s: u64| -> Result<(Duration, usize)> {
        let started = Instant::now();
        let out = Command::new(&salt)
            .arg("-c")
            .arg(&master_dir)
            .args([
                "-t",
                &timeout_s.to_string(),
                "--out=json",
                "--static",
                "web*",
                "test.ping",
            ])
            .stderr(Stdio::null())
            .output()
            .context("run salt")?;
        let took = started.elapsed();
        let text = String::from_utf8_lossy(&out.stdout);
        let answered: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let ok = answered.as_object().map_or(0, |all| {
            all.values().filter(|v| **v == Value::Bool(true)).count()
        });
        Ok((took, ok))
    };
    sys::wait_for(
        &format!("{n} salt minions answering"),
        timeout,
        Duration::from_secs(2),
        |progress| {
            master.check_alive()?;
            // A master still enrolling dozens of Python minions answers
            // slowly: a short timeout would never see them all.
            let (_, ok) = ping(30)?;
            *progress = format!("{ok} answered");
            Ok((ok == n).then_some(()))
        },
    )?;
    let mut timed = Vec::with_capacity(runs);
    for run in 0..=runs {
        let (took, ok) = ping(30)?;
        if ok != n {
            bail!("salt test.ping: {ok} of {n} minions answered");
        }
        if run > 0 {
            timed.push(took.as_secs_f64() * 1000.0);
        }
    }
    drop(minions);
    drop(master);
    Ok(Timed { runs: timed })
}

/// A loopback port free right now (bound, then released).
fn free_port() -> Result<u16> {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(socket.local_addr()?.port())
}

/// Starts `exe FLAG config`, its stderr in `dir/NAME.log`, stopped by PID
/// when dropped.
fn spawn(name: &str, exe: &Path, flag: &str, config: &Path, dir: &Path) -> Result<Guarded> {
    let log = dir.join(format!("{name}.log"));
    sys::spawn_logged(
        name,
        exe,
        &[flag.as_ref(), config.as_os_str()],
        &log,
        "warn",
    )
}
