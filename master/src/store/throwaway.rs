//! A throwaway PostgreSQL cluster for tests and benchmarks: Debian's
//! `postgresql` binaries, a data directory of its own, listening on
//! 127.0.0.1 only. It stops (and its directory goes) when the process
//! that started it ends, however it ends: `postgres` runs under a small
//! shell that waits on a pipe this process holds open.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

/// A running cluster; dropping it stops it.
pub struct Cluster {
    port: u16,
    dir: PathBuf,
    /// The shell watching postgres; it outlives a dropped `Cluster` just
    /// long enough to stop the server.
    _watcher: Child,
    /// Held open: its end tells the watcher to stop the cluster.
    _lifeline: ChildStdin,
    databases: AtomicU32,
}

/// How long `postgres` may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(60);

impl Cluster {
    /// Makes and starts a cluster (`initdb`, then `postgres`); as root,
    /// both run as the `postgres` user, which refuses to run as root.
    pub fn start() -> io::Result<Cluster> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "halite-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        let as_postgres = is_root();
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "chown postgres {}",
                    dir.display()
                )));
            }
        }
        let initdb = run_as(as_postgres, &bin.join("initdb"))
            .args([
                "-U",
                "halite",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        if !initdb.status.success() {
            return Err(io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&initdb.stderr)
            )));
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let postgres = run_as(as_postgres, &bin.join("postgres"));
        // The watcher starts postgres, waits for this process's end (its
        // stdin closing), then stops it fast and removes the directory.
        let mut args = vec![postgres.get_program().to_owned()];
        args.extend(postgres.get_args().map(|a| a.to_owned()));
        let mut watcher = Command::new("sh")
            .arg("-c")
            .arg(
                r#"dir=$1; shift; "$@" & pid=$!; read _ignored; kill -INT $pid; wait $pid; rm -rf "$dir""#,
            )
            .arg("sh")
            .arg(&dir)
            .args(args)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let lifeline = watcher.stdin.take().expect("piped above");
        let cluster = Cluster {
            port,
            dir,
            _watcher: watcher,
            _lifeline: lifeline,
            databases: AtomicU32::new(0),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&self) -> io::Result<()> {
        let started = Instant::now();
        loop {
            match Client::connect(&self.url("postgres"), NoTls) {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > READY_WITHIN => {
                    return Err(io::Error::other(format!("postgres did not start: {e}")))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://halite@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> io::Result<String> {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("halite_{n}");
        let mut client = Client::connect(&self.url("postgres"), NoTls).map_err(io::Error::other)?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(io::Error::other)?;
        Ok(self.url(&name))
    }

    /// The cluster's directory (data and socket).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where Debian keeps the server's binaries (the newest version), else
/// whatever `initdb` is on PATH.
fn bin_dir() -> io::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .ok_or_else(|| {
            io::Error::other(
                "no PostgreSQL server binaries (initdb, postgres): install Debian's postgresql",
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// `program`, as the `postgres` user when `as_postgres`.
fn run_as(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--clear-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}
