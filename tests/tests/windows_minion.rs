//! The Windows minion for real, under Wine: `halite-minion.exe`
//! (cross-built by `scripts/test.sh` for `x86_64-pc-windows-gnu`) against
//! a Linux master on loopback. Its key is accepted, it answers
//! `test.ping`, runs `cmd.run` through `cmd.exe` and reports Windows
//! grains.
//!
//! Wine 8 lacks `ProcessPrng` (bcryptprimitives.dll), which Rust's
//! standard library imports: the test builds a stand-in DLL from
//! `tests/wine/bcryptprimitives.c` with mingw and puts it next to the exe.
//! That is test setup only; the product is the plain exe. What Wine cannot
//! show (IIS, the Task Scheduler) is covered by the modules' own tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use halite_tests::{eventually, windows_minion_exe, Master, Proc};

/// A unix path as Wine's `Z:` drive shows it.
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// A Wine prefix of its own, and the exe with the test-only DLL beside it.
struct Wine {
    prefix: PathBuf,
    dir: PathBuf,
}

impl Wine {
    fn new(root: &Path) -> Wine {
        let dir = root.join("win");
        std::fs::create_dir_all(&dir).expect("win dir");
        // A debug exe is large: linked where the file system allows.
        let exe = dir.join("halite-minion.exe");
        std::fs::hard_link(windows_minion_exe(), &exe)
            .or_else(|_| std::fs::copy(windows_minion_exe(), &exe).map(drop))
            .expect("the exe beside the stand-in DLL");
        let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("wine/bcryptprimitives.c");
        let built = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-o"])
            .arg(dir.join("bcryptprimitives.dll"))
            .arg(&shim)
            .arg("-ladvapi32")
            .status()
            .expect("x86_64-w64-mingw32-gcc (gcc-mingw-w64-x86-64) runs");
        assert!(built.success(), "building the ProcessPrng stand-in");
        Wine {
            prefix: root.join("prefix"),
            dir,
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("wine");
        command
            .arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // The stand-in DLL first; no Mono or Gecko installers.
            .env("WINEDLLOVERRIDES", "bcryptprimitives=n,b;mscoree,mshtml=")
            .env("RUST_LOG", "info")
            .current_dir(&self.dir);
        command
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // The prefix's wineserver and services outlive the exe: end them
        // (Debian keeps wineserver out of PATH).
        self.end_session();
    }
}

#[test]
fn the_windows_minion_answers_runs_cmd_and_reports_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let wine = Wine::new(dir.path());
    let config = wine.dir.join("minion.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"win01\"\nmasters = [\"127.0.0.1:{}\"]\npki_dir = \"pki\"\ndata_dir = \"data\"\nauth_retry = 1\n",
            master.return_port
        ),
    )
    .expect("config");
    let mut command = wine.command("halite-minion.exe");
    command.arg("--config").arg(windows_path(&config));
    let _minion = Proc::spawn_command(command, dir.path().join("win01.log"));
    // The first start creates the Wine prefix: slower than a minion.
    eventually(Duration::from_secs(240), "win01 pending", || {
        master.key_status("win01").as_deref() == Some("pending")
    });
    assert_eq!(master.cli(&["keys", "accept", "win01"]).code, 0);
    master.wait_up("win01");

    let out = master.cli(&["run", "target=win01", "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["returns"]["win01"]["data"], true, "{out:?}");

    let out = master.cli(&[
        "run",
        "target=win01",
        "cmd.run",
        "echo hello from cmd & ver",
        "--json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let output = out.json()["returns"]["win01"]["data"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(output.contains("hello from cmd"), "{out:?}");
    assert!(output.contains("Windows"), "cmd.exe's ver: {out:?}");

    let out = master.cli(&["run", "target=win01", "grains.items", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.json()["returns"]["win01"]["data"]["os"],
        "Windows",
        "{out:?}"
    );
}

impl Wine {
    /// Runs a Wine program to its end. Its output goes to a file: a
    /// service it starts may inherit the handles, and a pipe would then
    /// never reach its end.
    fn run(&self, program: &str, args: &[&str]) -> std::process::ExitStatus {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("wine-commands.log"))
            .expect("wine command log");
        self.command(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .status()
            .unwrap_or_else(|e| panic!("wine {program}: {e}"))
    }

    /// Makes the prefix and lets its services load the stand-in DLL too
    /// (services do not see the test's environment).
    fn boot_with_stand_in(&self) {
        let status = self.run("wineboot", &["-i"]);
        assert!(status.success(), "wineboot: {status}");
        std::fs::copy(
            self.dir.join("bcryptprimitives.dll"),
            self.prefix
                .join("drive_c/windows/system32/bcryptprimitives.dll"),
        )
        .expect("stand-in DLL into system32");
        let status = self.run(
            "reg",
            &[
                "add",
                r"HKCU\Software\Wine\DllOverrides",
                "/v",
                "bcryptprimitives",
                "/d",
                "native,builtin",
                "/f",
            ],
        );
        assert!(status.success(), "reg add: {status}");
    }

    /// Ends every process of the prefix (what a reboot does to Windows).
    fn end_session(&self) {
        for server in [
            "wineserver",
            "/usr/lib/wine/wineserver64",
            "/usr/lib/wine/wineserver",
        ] {
            let ended = Command::new(server)
                .arg("-k")
                .env("WINEPREFIX", &self.prefix)
                .status();
            if ended.is_ok() {
                break;
            }
        }
    }

    fn service_registered(&self) -> bool {
        self.run(
            "reg",
            &[
                "query",
                r"HKLM\System\CurrentControlSet\Services\halite-minion",
            ],
        )
        .success()
    }
}

/// The MSI (packaging/windows/halite-minion.wxs, built with wixl) installs
/// the exe and a default config and registers the service (automatic
/// start, with the master given on the msiexec command line): after a
/// restart the service runs, its key reaches the master and, accepted, it
/// answers. Uninstall stops and removes the service and the exe; the
/// minion's key and config stay, unless uninstalled with `PURGE=1`.
///
/// Wine's msi cannot start a service it registered in the same session
/// (StartServices: 1060, the service manager has not loaded it yet), so the
/// test installs without the StartService feature (`ADDLOCAL=Minion`, a
/// choice the MSI offers anyway) and restarts Wine, whose service manager
/// then starts the automatic service as Windows does at boot.
#[test]
fn the_msi_installs_a_service_that_runs_and_uninstalls_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let master = Master::start(dir.path(), "");
    let wine = Wine::new(dir.path());
    let msi = wine.dir.join("halite-minion.msi");
    let built = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/windows/build-msi.sh"))
        .arg(wine.dir.join("halite-minion.exe"))
        .args(["0.1.0"])
        .arg(&msi)
        .output()
        .expect("build-msi.sh runs");
    assert!(built.status.success(), "build-msi.sh: {built:?}");
    wine.boot_with_stand_in();

    let master_arg = format!("MASTER=127.0.0.1:{}", master.return_port);
    let msi_path = windows_path(&msi);
    let status = wine.run(
        "msiexec",
        &["/i", &msi_path, "/qn", "ADDLOCAL=Minion", &master_arg],
    );
    assert!(status.success(), "msiexec /i: {status}");
    let program_data = wine.prefix.join("drive_c/ProgramData/halite");
    assert!(program_data.join("minion.toml").is_file());

    // "Reboot": the service manager starts the automatic service. Wine
    // ends services with the last ordinary process: keep one running.
    wine.end_session();
    let mut keeper = wine.command("cmd");
    keeper.args(["/c", "ping -n 3600 127.0.0.1 > nul"]);
    let mut keeper = Proc::spawn_command(keeper, dir.path().join("keeper.log"));
    assert!(wine.service_registered());

    let pending = || -> Option<String> {
        let keys = master.cli(&["keys", "list", "--json"]);
        if keys.code != 0 {
            return None;
        }
        keys.json()["keys"].as_array()?.iter().find_map(|k| {
            (k["status"] == "pending")
                .then(|| k["id"].as_str().map(str::to_owned))
                .flatten()
        })
    };
    eventually(
        Duration::from_secs(180),
        "the service's key pending",
        || pending().is_some(),
    );
    let id = pending().expect("a pending key");
    assert_eq!(master.cli(&["keys", "accept", &id]).code, 0);
    master.wait_up(&id);
    let target = format!("target={id}");
    let out = master.cli(&["run", &target, "test.ping", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(program_data.join("logs/minion.log").is_file());

    let status = wine.run("msiexec", &["/x", &msi_path, "/qn"]);
    assert!(status.success(), "msiexec /x: {status}");
    assert!(!wine.service_registered());
    assert!(!wine
        .prefix
        .join("drive_c/Program Files/halite/halite-minion.exe")
        .exists());
    assert!(program_data.join("pki/minion.key").is_file(), "keys stay");
    assert!(
        program_data.join("minion.toml").is_file(),
        "the config stays"
    );

    // Installed again and removed with PURGE=1: the minion is forgotten.
    let status = wine.run("msiexec", &["/i", &msi_path, "/qn", "ADDLOCAL=Minion"]);
    assert!(status.success(), "msiexec /i again: {status}");
    assert!(
        program_data.join("pki/minion.key").is_file(),
        "same identity"
    );
    let status = wine.run("msiexec", &["/x", &msi_path, "/qn", "PURGE=1"]);
    assert!(status.success(), "msiexec /x PURGE=1: {status}");
    assert!(!wine.service_registered());
    assert!(!program_data.join("pki").exists(), "keys purged");
    assert!(!program_data.join("minion.toml").exists(), "config purged");
    keeper.kill();
}
