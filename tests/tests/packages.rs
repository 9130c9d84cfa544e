//! The Debian packages for real: a Debian bookworm root (made by
//! `scripts/test.sh` with debootstrap, kept under `target/nspawn/`) boots
//! under `systemd-nspawn` with systemd as PID 1; the master and minion
//! `.deb`s from `scripts/package.sh` are installed in it and their services
//! come up; the packaged master-cli accepts the minion, `test.ping`
//! answers and a `git_deploy` runs; an upgrade to the rebuilt packages
//! (`target/packages-upgrade/`) keeps the minion's key and the master's
//! jobs; a purge stops everything and removes the state.
//!
//! The container shares the host's network: the master listens on its
//! packaged ports (4505, 4506, API 127.0.0.1:8000) and the minion fetches
//! from a `git daemon` the test runs on the host's loopback.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use halite_tests::git::{self, Repo};
use halite_tests::{eventually, Proc};

fn target() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// The one `.deb` of `package` in `dir`.
fn deb(dir: &Path, package: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (bash scripts/package.sh builds it)", dir.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .unwrap_or_else(|| panic!("no {package} .deb in {}", dir.display()))
}

/// A booted container: its root (a copy of the cached one) and its init.
struct Container {
    root: PathBuf,
    nspawn: Proc,
}

impl Container {
    fn boot(dir: &Path) -> Container {
        let cached = target().join("nspawn/bookworm");
        assert!(
            cached.join("usr/lib/systemd/systemd").exists(),
            "{} is not a Debian root with systemd: scripts/test.sh makes it with debootstrap",
            cached.display()
        );
        let root = dir.join("root");
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&cached)
            .arg(&root)
            .status()
            .expect("cp");
        assert!(copied.success(), "copy the cached root");
        let mut command = Command::new("systemd-nspawn");
        command
            // No bus on the host: no scope unit, no machined registration.
            .args(["-q", "--register=no", "--keep-unit", "-b", "-D"])
            .arg(&root);
        let nspawn = Proc::spawn_command(command, dir.join("nspawn.log"));
        let container = Container { root, nspawn };
        eventually(
            Duration::from_secs(120),
            "systemd up in the container",
            || {
                container.init().is_some_and(|_| {
                    let out = container.run(&["systemctl", "is-system-running"]);
                    let state = String::from_utf8_lossy(&out.stdout);
                    state.trim() == "running" || state.trim() == "degraded"
                })
            },
        );
        container
    }

    /// PID (on the host) of the container's systemd: the child of
    /// systemd-nspawn named `systemd`.
    fn init(&self) -> Option<u32> {
        let parent = self.nspawn.pid();
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let after_name = stat.rsplit_once(") ")?.1;
                let ppid: u32 = after_name.split_whitespace().nth(1)?.parse().ok()?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                (ppid == parent && comm.trim() == "systemd").then_some(pid)
            })
    }

    /// Runs a command inside the container (all its namespaces).
    fn run(&self, argv: &[&str]) -> Output {
        let init = self.init().expect("the container's init");
        Command::new("nsenter")
            .args(["-t", &init.to_string(), "-a", "--"])
            .args(argv)
            .output()
            .expect("nsenter")
    }

    fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn active(&self, unit: &str) -> bool {
        self.run(&["systemctl", "is-active", "--quiet", unit])
            .status
            .success()
    }

    /// Copies host files into the container (not into /tmp: a tmpfs
    /// there hides the root's own) and installs them.
    fn install(&self, debs: &[PathBuf]) {
        let mut argv = vec!["dpkg".to_owned(), "-i".to_owned()];
        let inbox = self.root.join("var/cache/halite-test");
        std::fs::create_dir_all(&inbox).expect("inbox");
        for deb in debs {
            let name = deb.file_name().and_then(|n| n.to_str()).expect("name");
            std::fs::copy(deb, inbox.join(name)).expect("copy deb");
            argv.push(format!("/var/cache/halite-test/{name}"));
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        self.ok(&argv);
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut argv = vec!["master-cli"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to the container's PID 1 ends its whole PID namespace
        // (killing systemd-nspawn alone would leave it running).
        if let Some(init) = self.init() {
            let _ = Command::new("kill")
                .args(["-KILL", &init.to_string()])
                .status();
        }
        self.nspawn.kill();
    }
}

#[test]
fn debian_packages_install_run_upgrade_and_purge_under_systemd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = [
        deb(&target().join("packages"), "halite-master"),
        deb(&target().join("packages"), "halite-minion"),
    ];
    let upgrade = [
        deb(&target().join("packages-upgrade"), "halite-master"),
        deb(&target().join("packages-upgrade"), "halite-minion"),
    ];
    let repos = dir.path().join("git");
    let _site = Repo::create(dir.path(), &repos, "site", &[("v1", "one")]);
    let daemon = git::daemon(&repos);

    let container = Container::boot(dir.path());
    container.install(&first);
    eventually(Duration::from_secs(60), "both services active", || {
        container.active("halite-master") && container.active("halite-minion")
    });
    // The packaged minion.toml points at `salt`; this one is the master.
    let config = container.root.join("etc/halite/minion.toml");
    let text = std::fs::read_to_string(&config).expect("minion.toml");
    std::fs::write(
        &config,
        format!("id = \"box01\"\nmasters = [\"127.0.0.1:4506\"]\n{text}"),
    )
    .expect("minion.toml");
    std::fs::write(
        container.root.join("etc/halite/apps.d/site.toml"),
        format!(
            "repo = \"git://127.0.0.1:{}/site.git\"\ntarget = \"box01\"\npath = \"/srv/site\"\n",
            daemon.port
        ),
    )
    .expect("app");
    container.ok(&["systemctl", "restart", "halite-minion"]);
    eventually(Duration::from_secs(60), "box01 pending", || {
        String::from_utf8_lossy(&container.cli(&["keys", "list"]).stdout).contains("box01")
    });
    // The master runs as its own system user; root's `master-cli users
    // add` leaves the users file readable by it, so the user can log in.
    let master_user = container.ok(&[
        "sh",
        "-c",
        "stat -c %U /proc/$(systemctl show -p MainPID --value halite-master)",
    ]);
    assert_eq!(master_user.trim(), "halite");
    container.ok(&["sh", "-c", "echo pw-of-alice | master-cli users add alice"]);
    let (status, body) = halite_tests::api::login("http://127.0.0.1:8000", "alice", "pw-of-alice");
    assert_eq!(status, 200, "{body}");
    container.ok(&["master-cli", "keys", "accept", "box01"]);
    let out = container.ok(&["master-cli", "run", "target=box01", "test.ping", "--json"]);
    assert!(out.contains("\"box01\""), "{out}");
    container.ok(&[
        "master-cli",
        "run",
        "target=box01",
        "git_deploy",
        "app=site",
        "tag=v1",
    ]);
    assert_eq!(
        std::fs::read_to_string(container.root.join("srv/site/current/index.html"))
            .expect("deployed"),
        "one"
    );
    let key = std::fs::read(container.root.join("etc/halite/pki/minion/minion.pub")).expect("key");
    let jobs = container.ok(&["master-cli", "jobs", "list", "--json"]);

    // Upgrade: same keys, same jobs, services back.
    container.install(&upgrade);
    eventually(
        Duration::from_secs(60),
        "services active after the upgrade",
        || container.active("halite-master") && container.active("halite-minion"),
    );
    assert_eq!(
        std::fs::read(container.root.join("etc/halite/pki/minion/minion.pub")).expect("key"),
        key
    );
    let after = container.ok(&["master-cli", "jobs", "list", "--json"]);
    let jids = |text: &str| -> Vec<String> {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|j| j["jid"].as_str().map(str::to_owned))
            .collect()
    };
    let (status, body) = halite_tests::api::login("http://127.0.0.1:8000", "alice", "pw-of-alice");
    assert_eq!(status, 200, "users kept by the upgrade: {body}");
    assert!(!jids(&jobs).is_empty());
    assert_eq!(jids(&jobs), jids(&after));
    assert!(std::fs::read_to_string(&config)
        .expect("minion.toml")
        .contains("box01"));
    eventually(
        Duration::from_secs(60),
        "box01 answers after the upgrade",
        || {
            container
                .cli(&["run", "target=box01", "test.ping"])
                .status
                .success()
        },
    );

    // Purge: services gone, state gone.
    container.ok(&["dpkg", "--purge", "halite-minion", "halite-master"]);
    assert!(!container.active("halite-master") && !container.active("halite-minion"));
    assert!(!container.root.join("var/lib/halite").exists());
    assert!(!container.root.join("etc/halite/pki").exists());
    assert!(!container.root.join("etc/halite/users.toml").exists());
    assert!(
        !container
            .run(&["getent", "passwd", "halite"])
            .status
            .success(),
        "the halite user is gone"
    );
}
