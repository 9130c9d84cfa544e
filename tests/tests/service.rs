//! `service` through a real master and minion, on a real SysV init: the
//! minion runs in a mount namespace whose `/etc/init.d` and `/etc/rc?.d`
//! are this test's directories, holding a real LSB script that keeps a
//! real background process; `update-rc.d` (Debian's) makes and flips the
//! links. (systemd cannot run here; its side is tested against a
//! systemctl double in the modules crate.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use halite_tests::{Master, Minion};
use serde_json::Value;

const LEVELS: [&str; 8] = ["0", "1", "2", "3", "4", "5", "6", "S"];

fn run(master: &Master, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["run", "target=web1"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = master.cli(&all);
    (out.code, out.json()["returns"]["web1"]["data"].clone())
}

/// `/etc/init.d` and `/etc/rc?.d` replaced by `etc`'s, for one process.
fn private_etc(etc: &Path) -> String {
    let mut setup = format!("mount --bind {0}/init.d /etc/init.d", etc.display());
    for level in LEVELS {
        setup.push_str(&format!(
            " && mount --bind {0}/rc{level}.d /etc/rc{level}.d",
            etc.display()
        ));
    }
    setup
}

#[test]
fn a_sysv_service_started_enabled_disabled_stopped() {
    if Path::new("/run/systemd/system").is_dir() {
        // Under systemd the module drives systemctl, not these scripts.
        eprintln!("systemd runs here: the SysV path is not what the minion would use");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    for level in LEVELS {
        std::fs::create_dir_all(etc.join(format!("rc{level}.d"))).unwrap();
    }
    std::fs::create_dir_all(etc.join("init.d")).unwrap();
    let script = etc.join("init.d/haltest");
    std::fs::write(
        &script,
        include_str!("../../modules/src/service/haltest.init.sh")
            .replace("@DIR@", &dir.path().display().to_string()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let master = Master::start(dir.path(), "");
    let _web = Minion::start_in(
        dir.path(),
        "web1",
        master.return_port,
        "",
        Some(&private_etc(&etc)),
    );
    master.accept("web1");

    let (code, data) = run(&master, &["service.status", "haltest"]);
    assert_eq!(code, 0, "{data}");
    assert_eq!(data["manager"], "sysv");
    assert_eq!(data["running"], false);
    assert_eq!(data["enabled"], false);

    let (code, data) = run(&master, &["service.start", "haltest"]);
    assert_eq!(code, 0, "{data}");
    assert_eq!(data["running"], true);
    let pid = std::fs::read_to_string(dir.path().join("haltest.pid")).unwrap();
    assert!(Path::new(&format!("/proc/{}", pid.trim())).exists());

    let (code, data) = run(&master, &["service.enable", "haltest"]);
    assert_eq!(code, 0, "{data}");
    assert_eq!(data["enabled"], true);
    assert!(
        etc.join("rc2.d/S01haltest").exists(),
        "update-rc.d made the link"
    );
    let (_, data) = run(&master, &["service.enabled", "haltest"]);
    assert_eq!(data, true);
    let (code, data) = run(&master, &["service.disable", "haltest"]);
    assert_eq!(
        (code, data["enabled"].clone()),
        (0, Value::Bool(false)),
        "{data}"
    );

    let (code, data) = run(&master, &["service.stop", "haltest"]);
    assert_eq!(code, 0, "{data}");
    assert_eq!(data["running"], false);
    assert!(!dir.path().join("haltest.pid").exists());

    let (code, data) = run(&master, &["service.start", "ghost"]);
    assert_eq!(code, 1);
    assert_eq!(data, "service.start: no service ghost");
    let (code, data) = run(&master, &["service.restart", "name=-now"]);
    assert_ne!(code, 0);
    assert!(
        data.as_str().unwrap_or_default().contains("service name"),
        "{data}"
    );
}
