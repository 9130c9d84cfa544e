//! Harness for whole-system tests: real `halite-master` and
//! `halite-minion` processes on 127.0.0.1 with free ports and temp dirs,
//! `master-cli` runs, and protocol-level fakes for the trust cases.
//!
//! The binaries must be built first (`cargo build --workspace --bins`,
//! which the test command in the README does); [`bin`] refuses binaries
//! older than the source they are built from, so a test never runs
//! yesterday's code. Masters bind port 0 and the harness reads the ports
//! they bound from their `ports.json`. Every process started here is
//! killed, by PID, when its handle drops.

#![deny(missing_docs)]

pub mod api;
pub mod browser;
pub mod fake;
pub mod git;
pub mod proxy;
pub mod receiver;
pub mod tomcat;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Windows minion cross-built by `scripts/test.sh`
/// (`target/x86_64-pc-windows-gnu/debug/halite-minion.exe`). Panics if it
/// is missing or older than the minion's sources.
pub fn windows_minion_exe() -> PathBuf {
    let exe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/x86_64-pc-windows-gnu/debug/halite-minion.exe");
    let built = std::fs::metadata(&exe)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: cargo build -p halite-minion --target x86_64-pc-windows-gnu (scripts/test.sh does)",
                exe.display()
            )
        });
    if let Some((source, changed)) = newest_source("halite-minion") {
        assert!(
            built >= changed,
            "{} is older than {}: cargo build -p halite-minion --target x86_64-pc-windows-gnu",
            exe.display(),
            source.display()
        );
    }
    exe
}

/// Where cargo put the binaries: next to the `deps/` dir of this test.
/// Panics if the binary is missing or older than any source file of the
/// crates it is built from (then `cargo build --workspace --bins`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir of the test executable");
    let path = dir.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build the binaries first (cargo build --workspace --bins)",
                path.display()
            )
        });
    if let Some((source, changed)) = newest_source(name) {
        assert!(
            built >= changed,
            "{} is older than {}: build the binaries again (cargo build --workspace --bins)",
            path.display(),
            source.display()
        );
    }
    path
}

/// A program the tests drive: `name` on PATH, or else the copy
/// `scripts/test.sh` installed under `target/test-tools/` (`relative`), so
/// a plain `cargo test` finds it after one run of the script.
pub fn test_tool(name: &str, relative: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    if on_path {
        return PathBuf::from(name);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-tools")
        .join(relative)
}

/// The workspace crates each binary is built from.
fn crates_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "halite-master" => &[
            "proto",
            "model",
            "pki",
            "git",
            "daemon",
            "api",
            "portal",
            "master",
            "vendor/zeromq",
        ],
        "halite-minion" => &[
            "proto",
            "pki",
            "git",
            "modules",
            "daemon",
            "minion",
            "vendor/zeromq",
        ],
        "master-cli" => &["proto", "model", "pki", "cli"],
        _ => &[],
    }
}

/// The most recently changed source file of the crates `binary` is built
/// from (and of the workspace's manifest and lock file), found once per
/// binary and test process.
fn newest_source(binary: &str) -> Option<(PathBuf, std::time::SystemTime)> {
    type Newest = Option<(PathBuf, std::time::SystemTime)>;
    static FOUND: std::sync::Mutex<Vec<(String, Newest)>> = std::sync::Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, newest)) = found.iter().find(|(b, _)| b == binary) {
        return newest.clone();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let mut newest: Newest = None;
    let mut consider = |path: PathBuf| {
        if let Ok(changed) = std::fs::metadata(&path).and_then(|m| m.modified()) {
            if newest.as_ref().is_none_or(|(_, t)| changed > *t) {
                newest = Some((path, changed));
            }
        }
    };
    // Sources only: a manifest or Cargo.lock change (a new dev-dependency)
    // often leaves a binary as it was, and cargo then does not relink it.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for krate in crates_of(binary) {
        // The portal's templates and assets are compiled in too.
        for part in ["src", "templates", "assets"] {
            dirs.push(root.join(krate).join(part));
        }
    }
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path
                .extension()
                .is_some_and(|e| ["rs", "json", "html", "css", "js", "svg"].iter().any(|x| e == *x))
                // Unit-test modules (`tests.rs`) are not in the binary:
                // cargo does not relink it when they change.
                && path.file_name().is_none_or(|n| n != "tests.rs")
            {
                consider(path);
            }
        }
    }
    found.push((binary.to_owned(), newest.clone()));
    newest
}

/// A two-thread tokio runtime for tests that drive raw sockets.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes,
/// then panics naming `what`.
pub fn eventually(timeout: Duration, what: &str, check: impl FnMut() -> bool) {
    eventually_or(timeout, what, check, String::new);
}

/// Like [`eventually`], with `context` (say, the processes' logs) in the
/// panic message: a timeout in CI must explain itself.
pub fn eventually_or(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out after {timeout:?} waiting for: {what}\n{}",
        context()
    );
}

/// The stage names a deploy return's data lists, in order.
pub fn stage_names(data: &Value) -> Vec<&str> {
    data["stages"]
        .as_array()
        .map(|stages| stages.iter().filter_map(|s| s["stage"].as_str()).collect())
        .unwrap_or_default()
}

/// Checks a job view (`jobs show --json`) of a job run one minion per
/// batch: every minion in `ids` succeeded, and no run began before the
/// previous one ended.
pub fn assert_batches_in_turn(view: &Value, ids: &[&str]) {
    let mut runs: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let ret = &view["returns"][id];
            assert_eq!(ret["success"], true, "{view}");
            let at = |key: &str| {
                ret[key]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{id}: no {key}: {view}"))
            };
            (at("started_at"), at("finished_at"))
        })
        .collect();
    runs.sort();
    for pair in runs.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "batches overlapped: {runs:?}");
    }
}

/// Does the TOML snippet `extra` set top-level `key` itself (so the
/// harness must not write its own)?
fn sets_key(extra: &str, key: &str) -> bool {
    extra.lines().any(|line| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

/// A child process killed (by PID) when dropped.
pub struct Proc {
    child: Option<Child>,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command` with its stderr appended to `log` (a program that
    /// is not one of the workspace's binaries: a Windows minion under
    /// Wine, say).
    pub fn spawn_command(mut command: Command, log: PathBuf) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn");
        Proc {
            child: Some(child),
            log,
        }
    }

    fn spawn(binary: &str, config: &Path, log: PathBuf) -> Proc {
        Proc::spawn_in(binary, config, log, None)
    }

    /// With `setup`, the binary runs in a mount namespace of its own,
    /// after `setup` (shell) ran there: a test can give one process a
    /// full or read-only filesystem that vanishes with it.
    fn spawn_in(binary: &str, config: &Path, log: PathBuf, setup: Option<&str>) -> Proc {
        let mut command = match setup {
            None => Command::new(bin(binary)),
            Some(setup) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!("{setup} && exec \"$0\" \"$@\""))
                    .arg(bin(binary));
                c
            }
        };
        command
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,halite_master=debug,halite_minion=debug")
            .env("NO_COLOR", "1");
        Proc::spawn_command(command, log)
    }

    /// Has the process ended?
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// PID of the running child.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to 10 s for a clean exit.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// The log so far, without ANSI colours.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Result of a `master-cli` run.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// What a finished command printed, and its exit code (-1 if killed).
    pub fn from(output: Output) -> CliOutput {
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// stdout parsed as JSON (panics with the output otherwise).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// A real `halite-master` in its own directory. It binds port 0 and
/// the harness reads the ports it got from its `ports.json`; a restart
/// binds those same ports again, so its minions find it.
pub struct Master {
    /// Directory holding config, pki, data and log.
    pub dir: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// ROUTER port.
    pub return_port: u16,
    /// PUB port.
    pub publish_port: u16,
    /// The process.
    pub proc: Proc,
    /// The config as written, without the port keys.
    base_config: String,
}

impl Master {
    /// Starts a master under `dir` with `extra` TOML appended to the config.
    pub fn start(dir: &Path, extra: &str) -> Master {
        let dir = dir.join("master");
        std::fs::create_dir_all(&dir).expect("master dir");
        let config = dir.join("master.toml");
        // `extra` may name the master itself (several masters in a test).
        let id = if sets_key(extra, "id") {
            ""
        } else {
            "id = \"test-master\"\n"
        };
        let base_config = format!(
            "{id}interface = \"127.0.0.1\"\npki_dir = \"pki\"\ndata_dir = \"data\"\nheartbeat_interval = 1\nbeacon_interval = 1\n{extra}\n"
        );
        let mut master = Master {
            dir: dir.clone(),
            config,
            return_port: 0,
            publish_port: 0,
            proc: Proc {
                child: None,
                log: dir.join("master.log"),
            },
            base_config,
        };
        master.launch(0, 0, 0);
        master
    }

    /// Writes the config with these ports (0: any free one), starts the
    /// master and waits until it serves, then reads the ports it bound.
    fn launch(&mut self, publish_port: u16, return_port: u16, api_port: u16) {
        std::fs::write(
            &self.config,
            format!(
                "publish_port = {publish_port}\nreturn_port = {return_port}\napi_bind = \"127.0.0.1:{api_port}\"\n{}",
                self.base_config
            ),
        )
        .expect("master config");
        self.proc = Proc::spawn("halite-master", &self.config, self.dir.join("master.log"));
        let ports = self.wait_ready();
        let port = |key: &str| -> u16 {
            ports[key]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_else(|| panic!("ports.json has no {key}: {ports}"))
        };
        self.publish_port = port("publish_port");
        self.return_port = port("return_port");
    }

    /// Waits for this run's `ports.json` (its pid in it) and the API;
    /// panics with the log if the master exits or is not up in 60 s.
    fn wait_ready(&mut self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = u64::from(self.proc.pid());
        let ports_file = self.dir.join("data/ports.json");
        while Instant::now() < deadline {
            let ports: Option<Value> = std::fs::read_to_string(&ports_file)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok())
                .filter(|ports: &Value| ports["pid"].as_u64() == Some(pid));
            if let Some(ports) = ports {
                if self.cli(&["keys", "list", "--json"]).code == 0 {
                    return ports;
                }
            }
            if self.proc.exited() {
                panic!("master exited at start; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("master API not up after 60 s; its log:\n{}", self.log());
    }

    /// Trusts `peer` (whose config id is `peer_id`) as another master of
    /// the same minions, as an operator does: its public key copied into
    /// this master's `pki/peers/`. Jobs it publishes are then recorded
    /// here from the returns its minions send.
    pub fn trust_peer(&self, peer: &Master, peer_id: &str) {
        let peers = self.dir.join("pki/peers");
        std::fs::create_dir_all(&peers).expect("peers dir");
        std::fs::copy(
            peer.dir.join("pki/master.pub"),
            peers.join(format!("{peer_id}.pub")),
        )
        .expect("copy the peer's master.pub");
    }

    /// Kills (SIGKILL) and starts again on the same config and ports.
    pub fn restart(&mut self) {
        self.proc.kill();
        let api_port = self
            .api_url()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        self.launch(self.publish_port, self.return_port, api_port);
    }

    /// `master-cli --config <this master> ARGS`.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let output = Command::new(bin("master-cli"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run master-cli");
        CliOutput::from(output)
    }

    /// `master-cli --config <this master> --user USER ARGS`, as that API
    /// user (password from HALITE_PASSWORD), not root.
    pub fn cli_as(&self, user: &str, password: &str, args: &[&str]) -> CliOutput {
        let output = Command::new(bin("master-cli"))
            .arg("--config")
            .arg(&self.config)
            .args(["--user", user])
            .args(args)
            .env("HALITE_PASSWORD", password)
            .output()
            .expect("run master-cli");
        CliOutput::from(output)
    }

    /// `master-cli --config <this master> ARGS` with `input` on stdin.
    pub fn cli_input(&self, args: &[&str], input: &str) -> CliOutput {
        use std::io::Write;
        let mut child = Command::new(bin("master-cli"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run master-cli");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes()).expect("write stdin");
        }
        CliOutput::from(child.wait_with_output().expect("master-cli output"))
    }

    /// The API's base URL (`http://127.0.0.1:PORT`, or https with TLS on),
    /// from the ports file the master writes.
    pub fn api_url(&self) -> String {
        let ports: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("data/ports.json")).expect("ports.json"),
        )
        .expect("ports.json is JSON");
        let tls = std::fs::read_to_string(&self.config)
            .unwrap_or_default()
            .contains("api_tls_cert");
        format!(
            "{}://{}",
            if tls { "https" } else { "http" },
            ports["api"].as_str().expect("api address")
        )
    }

    /// What `GET /metrics` answers on the `metrics_bind` listener (the
    /// address from the ports file); panics when it is not served.
    pub fn metrics(&self) -> String {
        let ports: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("data/ports.json")).expect("ports.json"),
        )
        .expect("ports.json is JSON");
        let address = ports["metrics"]
            .as_str()
            .expect("metrics address: set metrics_bind");
        let response = api::http()
            .get(format!("http://{address}/metrics"))
            .send()
            .expect("GET /metrics");
        assert!(response.status().is_success(), "{response:?}");
        response.text().expect("metrics text")
    }

    /// The local root token (what master-cli uses).
    pub fn root_token(&self) -> String {
        std::fs::read_to_string(self.dir.join("data/cli.token"))
            .expect("cli.token")
            .trim()
            .to_owned()
    }

    /// Starts minions `ids` under `dir` pointed at this master, accepts
    /// their keys and waits until each is up.
    pub fn start_minions(&self, dir: &Path, ids: &[&str]) -> Vec<Minion> {
        let minions: Vec<Minion> = ids
            .iter()
            .map(|id| Minion::start(dir, id, self.return_port, ""))
            .collect();
        for id in ids {
            self.accept(id);
        }
        minions
    }

    /// Accepts `id` once its key is pending, then waits until it is up.
    pub fn accept(&self, id: &str) {
        eventually(
            Duration::from_secs(60),
            &format!("key of {id} pending"),
            || self.key_status(id).as_deref() == Some("pending"),
        );
        let out = self.cli(&["keys", "accept", id]);
        assert_eq!(out.code, 0, "{out:?}");
        self.wait_up(id);
    }

    /// Waits until `minion` is listed up.
    pub fn wait_up(&self, id: &str) {
        eventually(Duration::from_secs(60), &format!("{id} up"), || {
            let out = self.cli(&["minions", "--json"]);
            out.code == 0
                && out
                    .json()
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"] == id && m["status"] == "up"))
        });
    }

    /// The state of a minion's key, if the master has one.
    pub fn key_status(&self, id: &str) -> Option<String> {
        let out = self.cli(&["keys", "list", "--json"]);
        if out.code != 0 {
            return None;
        }
        out.json()["keys"]
            .as_array()?
            .iter()
            .find(|k| k["id"] == id)
            .and_then(|k| k["status"].as_str().map(str::to_owned))
    }

    /// The master's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// A real `halite-minion` in its own directory.
pub struct Minion {
    /// Minion id.
    pub id: String,
    /// Directory holding config, pki, data and log.
    pub dir: PathBuf,
    /// Config file.
    pub config: PathBuf,
    /// The process.
    pub proc: Proc,
}

impl Minion {
    /// Starts minion `id` under `dir`, pointed at `127.0.0.1:return_port`,
    /// with `extra` TOML appended (e.g. `[grains]`).
    pub fn start(dir: &Path, id: &str, return_port: u16, extra: &str) -> Minion {
        Minion::start_in(dir, id, return_port, extra, None)
    }

    /// Like [`Minion::start`], in a mount namespace prepared by `setup`
    /// (see `Proc::spawn_in`); restarts run without it.
    pub fn start_in(
        dir: &Path,
        id: &str,
        return_port: u16,
        extra: &str,
        setup: Option<&str>,
    ) -> Minion {
        let dir = dir.join(id);
        std::fs::create_dir_all(&dir).expect("minion dir");
        let config = dir.join("minion.toml");
        // `extra` may list the masters itself (multi-master tests).
        let masters = if sets_key(extra, "masters") {
            String::new()
        } else {
            format!("masters = [\"127.0.0.1:{return_port}\"]\n")
        };
        let auth_retry = if sets_key(extra, "auth_retry") {
            ""
        } else {
            "auth_retry = 1\n"
        };
        std::fs::write(
            &config,
            format!(
                "id = \"{id}\"\n{masters}pki_dir = \"pki\"\ndata_dir = \"data\"\n{auth_retry}{extra}\n"
            ),
        )
        .expect("minion config");
        let proc = Proc::spawn_in("halite-minion", &config, dir.join("minion.log"), setup);
        Minion {
            id: id.to_owned(),
            dir,
            config,
            proc,
        }
    }

    /// Kills (SIGKILL) and starts again with the same config and state.
    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Proc::spawn("halite-minion", &self.config, self.dir.join("minion.log"));
    }

    /// The minion's log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Returns waiting in the return spool (not yet acknowledged).
    pub fn spooled(&self) -> usize {
        halite_minion::spool::waiting_in(&self.dir.join("data/spool")).expect("read the spool")
    }
}

/// Runs a config-validation case: the binary must exit with 78 and say
/// `expect` on stderr.
pub fn config_error(binary: &str, config: &Path) -> CliOutput {
    let output = Command::new(bin(binary))
        .arg("--config")
        .arg(config)
        .output()
        .expect("run binary");
    CliOutput::from(output)
}
