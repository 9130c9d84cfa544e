//! `halite-bench idle-rss`: resident memory of one idle minion process.
//!
//! Starts the real `halite-master` and `halite-minion` binaries (from the
//! directory of this executable, so build them together:
//! `cargo build --release --workspace --bins`) with temp configs on
//! loopback (`auto_accept`), waits until the master shows the minion up,
//! runs one `test.ping` through the HTTP API with the master's CLI token,
//! lets the minion idle, then reads `VmRSS` (and the peak, `VmHWM`) from
//! `/proc/<pid>/status`. Both processes are stopped by PID (SIGTERM, then
//! SIGKILL after a grace period), also when the bench fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::report::Table;
use crate::sys::{self, Guarded};

/// The goal the issue sets: an idle minion under 20 MB (10^6 bytes) RSS.
const GOAL_BYTES: u64 = 20_000_000;
/// Id of the measured minion.
const MINION_ID: &str = "idle-minion";

/// Options of `halite-bench idle-rss`.
#[derive(Args, Debug)]
pub struct IdleArgs {
    /// Seconds the minion idles after the ping before RSS is read.
    #[arg(long, default_value_t = 5)]
    pub idle_secs: u64,
    /// Directory holding halite-master and halite-minion (default: this
    /// executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds each step (start, auth, ping) may take.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print a Markdown table (for bench/RESULTS.md).
    #[arg(long)]
    pub markdown: bool,
}

fn spawn(name: &str, exe: &Path, config: &Path, log: &Path) -> Result<Guarded> {
    sys::spawn_logged(
        name,
        exe,
        &["--config".as_ref(), config.as_os_str()],
        log,
        "info",
    )
}

fn write_toml(path: &Path, table: toml::Table) -> Result<()> {
    let text = toml::to_string(&table).context("render a config")?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Runs `halite-bench idle-rss`.
pub fn run(args: IdleArgs) -> Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => sys::exe_dir()?,
    };
    let master_bin = sys::binary(&bin_dir, "halite-master")?;
    let minion_bin = sys::binary(&bin_dir, "halite-minion")?;
    let timeout = Duration::from_secs(args.timeout);
    let dir = tempfile::Builder::new()
        .prefix("halite-bench-idle-")
        .tempdir()
        .context("create a temp dir")?;
    let root = dir.path();

    let master_data = root.join("master/data");
    let mut master = toml::Table::new();
    master.insert("id".into(), "idle-master".into());
    master.insert("interface".into(), "127.0.0.1".into());
    master.insert("publish_port".into(), 0.into());
    master.insert("return_port".into(), 0.into());
    master.insert("api_bind".into(), "127.0.0.1:0".into());
    master.insert(
        "pki_dir".into(),
        root.join("master/pki").display().to_string().into(),
    );
    master.insert("data_dir".into(), master_data.display().to_string().into());
    master.insert("auto_accept".into(), true.into());
    let master_toml = root.join("master.toml");
    write_toml(&master_toml, master)?;
    let mut master_proc = spawn(
        "halite-master",
        &master_bin,
        &master_toml,
        &root.join("master.log"),
    )?;

    let ports_file = master_data.join("ports.json");
    let ports: Value = sys::wait_for(
        "the master to write ports.json",
        timeout,
        Duration::from_millis(50),
        |_| {
            master_proc.check_alive()?;
            match std::fs::read_to_string(&ports_file) {
                Ok(text) => Ok(serde_json::from_str(&text).ok()),
                Err(_) => Ok(None),
            }
        },
    )?;
    let return_port = ports["return_port"]
        .as_u64()
        .with_context(|| format!("{}: no return_port", ports_file.display()))?;
    let api = ports["api"]
        .as_str()
        .with_context(|| format!("{}: no api", ports_file.display()))?
        .to_owned();
    let token_file = master_data.join("cli.token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();

    let mut minion = toml::Table::new();
    minion.insert("id".into(), MINION_ID.into());
    minion.insert(
        "masters".into(),
        toml::Value::Array(vec![format!("127.0.0.1:{return_port}").into()]),
    );
    minion.insert(
        "pki_dir".into(),
        root.join("minion/pki").display().to_string().into(),
    );
    minion.insert(
        "data_dir".into(),
        root.join("minion/data").display().to_string().into(),
    );
    minion.insert("auth_retry".into(), 1.into());
    let minion_toml = root.join("minion.toml");
    write_toml(&minion_toml, minion)?;
    let mut minion_proc = spawn(
        "halite-minion",
        &minion_bin,
        &minion_toml,
        &root.join("minion.log"),
    )?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start a runtime for the HTTP client")?;
    halite_pki::install_tls_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("build the HTTP client")?;
    let base = format!("http://{api}");
    let get = |path: String| {
        let request = client
            .get(format!("{base}{path}"))
            .header("X-Auth-Token", &token);
        async move {
            let response = request.send().await.context("HTTP request to the master")?;
            let status = response.status();
            let body: Value = response.json().await.context("decode the master's JSON")?;
            if !status.is_success() {
                bail!("HTTP {status}: {body}");
            }
            Ok(body)
        }
    };

    sys::wait_for(
        "the minion to show up in /v1/minions",
        timeout,
        Duration::from_millis(100),
        |progress| {
            master_proc.check_alive()?;
            minion_proc.check_alive()?;
            let minions = runtime.block_on(get("/v1/minions".into()))?;
            let status = minions
                .as_array()
                .and_then(|list| list.iter().find(|m| m["id"] == MINION_ID))
                .and_then(|m| m["status"].as_str())
                .unwrap_or("absent")
                .to_owned();
            *progress = format!("status {status}");
            Ok((status == "up").then_some(()))
        },
    )?;

    let ping_start = Instant::now();
    let submitted: Value = runtime.block_on(async {
        let response = client
            .post(format!("{base}/v1/jobs"))
            .header("X-Auth-Token", &token)
            .json(&serde_json::json!({"target": MINION_ID, "fun": "test.ping", "timeout": args.timeout}))
            .send()
            .await
            .context("POST /v1/jobs")?;
        let status = response.status();
        let body: Value = response.json().await.context("decode the submit answer")?;
        if !status.is_success() {
            bail!("POST /v1/jobs: HTTP {status}: {body}");
        }
        Ok(body)
    })?;
    let jid = submitted["jid"]
        .as_str()
        .context("no jid in the submit answer")?
        .to_owned();
    let ret = sys::wait_for(
        "the minion's test.ping return",
        timeout,
        Duration::from_millis(20),
        |_| {
            minion_proc.check_alive()?;
            let job = runtime.block_on(get(format!("/v1/jobs/{jid}")))?;
            Ok(job["returns"].get(MINION_ID).cloned())
        },
    )?;
    let ping_ms = ping_start.elapsed().as_secs_f64() * 1000.0;
    if ret["data"] != Value::Bool(true) {
        bail!("test.ping returned {ret}, not true");
    }

    std::thread::sleep(Duration::from_secs(args.idle_secs));
    master_proc.check_alive()?;
    minion_proc.check_alive()?;
    let (minion_rss, minion_hwm) = sys::memory_kib(minion_proc.pid())?;
    let (master_rss, _) = sys::memory_kib(master_proc.pid())?;
    let minion_clean = minion_proc.stop(Duration::from_secs(10));
    let master_clean = master_proc.stop(Duration::from_secs(10));

    let mib = |kib: u64| kib as f64 / 1024.0;
    let met = if minion_rss * 1024 < GOAL_BYTES {
        "yes"
    } else {
        "no"
    };
    println!(
        "idle-rss: minion idle {} s after one test.ping ({ping_ms:.1} ms via the API); \
         stopped by SIGTERM: minion {minion_clean}, master {master_clean}",
        args.idle_secs
    );
    let mut table = Table::new(&[
        "process",
        "VmRSS MiB",
        "VmRSS MB",
        "VmHWM MiB",
        "goal",
        "met",
    ]);
    table.row(vec![
        "halite-minion (idle)".into(),
        format!("{:.1}", mib(minion_rss)),
        format!("{:.1}", minion_rss as f64 * 1024.0 / 1e6),
        format!("{:.1}", mib(minion_hwm)),
        "< 20 MB".into(),
        met.into(),
    ]);
    table.row(vec![
        "halite-master (1 minion)".into(),
        format!("{:.1}", mib(master_rss)),
        format!("{:.1}", master_rss as f64 * 1024.0 / 1e6),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    print!("{}", table.render(args.markdown));
    Ok(())
}
