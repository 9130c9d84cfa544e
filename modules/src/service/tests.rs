use std::collections::BTreeMap;
use std::sync::Mutex;

use super::*;
use crate::call::tests::call;

/// A systemctl that keeps units the way systemd reports them: `show`
/// answers from the state, changes change it. `broken` units fail to
/// start with systemd's message; `crashing` ones start and die.
#[derive(Default)]
struct FakeSystemctl {
    units: Mutex<BTreeMap<String, (bool, bool)>>,
    broken: Vec<&'static str>,
    crashing: Vec<&'static str>,
    log: Mutex<Vec<String>>,
}

impl FakeSystemctl {
    fn answer(&self, argv: &[String]) -> Ran {
        self.log.lock().unwrap().push(argv.join(" "));
        let ok = |stdout: String| Ran {
            code: 0,
            stdout,
            stderr: String::new(),
        };
        let verb = argv[1].as_str();
        let name = argv.last().unwrap().clone();
        let mut units = self.units.lock().unwrap();
        if verb == "list-units" {
            return ok(units
                .iter()
                .map(|(n, (run, _))| {
                    let (a, s) = if *run {
                        ("active", "running")
                    } else {
                        ("inactive", "dead")
                    };
                    format!("{n}.service loaded {a} {s} The {n} service\n")
                })
                .collect());
        }
        let Some((running, enabled)) = units.get_mut(&name) else {
            return match verb {
                "show" => ok("LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\n".into()),
                _ => Ran {
                    code: 5,
                    stdout: String::new(),
                    stderr: format!("Failed to {verb} {name}.service: Unit {name}.service not found."),
                },
            };
        };
        match verb {
            "show" => {
                let crashed = !*running && self.crashing.contains(&name.as_str());
                let (active, sub, pid) = match (*running, crashed) {
                    (true, _) => ("active", "running", 4242),
                    (false, true) => ("failed", "failed", 0),
                    (false, false) => ("inactive", "dead", 0),
                };
                let file = if *enabled { "enabled" } else { "disabled" };
                ok(format!("LoadState=loaded\nActiveState={active}\nSubState={sub}\nUnitFileState={file}\nMainPID={pid}\n"))
            }
            "start" | "restart" | "reload" if self.broken.contains(&name.as_str()) => Ran {
                code: 1,
                stdout: String::new(),
                stderr: format!("Job for {name}.service failed because the control process exited with error code."),
            },
            "start" | "restart" | "reload" => {
                *running = !self.crashing.contains(&name.as_str());
                ok(String::new())
            }
            "stop" => {
                *running = false;
                ok(String::new())
            }
            "enable" | "disable" => {
                *enabled = verb == "enable";
                ok(String::new())
            }
            other => panic!("unexpected systemctl {other}"),
        }
    }
}

impl Exec for FakeSystemctl {
    fn run<'a>(
        &'a self,
        argv: Vec<String>,
        _call: &'a Call,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Ran, String>> {
        Box::pin(async move {
            assert_eq!(argv[0], "systemctl");
            Ok(self.answer(&argv))
        })
    }
}

fn with_systemd(fake: Arc<FakeSystemctl>) -> (ServiceModule, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
    let module = ServiceModule {
        exec: fake,
        systemd_marker: dir.path().join("run/systemd/system"),
        etc: dir.path().join("etc"),
    };
    (module, dir)
}

async fn on(module: &ServiceModule, function: &str, name: &str) -> Outcome {
    module
        .call(
            function,
            call(&format!("service.{function}"), vec![json!(name)], json!({})),
        )
        .await
}

#[tokio::test]
async fn systemd_units_through_their_life() {
    let fake = Arc::new(FakeSystemctl::default());
    fake.units
        .lock()
        .unwrap()
        .insert("nginx".into(), (false, false));
    let (m, _dir) = with_systemd(fake.clone());

    let out = on(&m, "start", "nginx").await;
    assert!(out.success, "{out:?}");
    assert_eq!(out.data["running"], true);
    assert_eq!(out.data["changed"], true);
    assert_eq!(out.data["state"], "active (running)");
    assert_eq!(out.data["pid"], 4242);
    assert_eq!(out.data["manager"], "systemd");
    let again = on(&m, "start", "nginx").await;
    assert_eq!(again.data["changed"], false, "{again:?}");

    assert_eq!(on(&m, "enabled", "nginx").await.data, false);
    let out = on(&m, "enable", "nginx").await;
    assert_eq!(
        (out.data["enabled"].clone(), out.data["changed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(on(&m, "enabled", "nginx").await.data, true);
    let out = on(&m, "reload", "nginx").await;
    assert!(out.success, "{out:?}");
    let out = on(&m, "stop", "nginx").await;
    assert_eq!(out.data["running"], false, "{out:?}");
    let out = on(&m, "status", "nginx").await;
    assert_eq!(out.data["state"], "inactive (dead)");
    assert_eq!(on(&m, "available", "nginx").await.data, true);
    assert_eq!(on(&m, "available", "ghost").await.data, false);

    let list = m
        .call("list", call("service.list", vec![], json!({})))
        .await;
    assert_eq!(list.data[0]["name"], "nginx", "{list:?}");
    assert_eq!(list.data[0]["running"], false);

    let log = fake.log.lock().unwrap().clone();
    assert!(
        log.contains(&"systemctl start -- nginx".to_owned()),
        "{log:?}"
    );
}

#[tokio::test]
async fn systemd_failures_name_the_problem() {
    let fake = Arc::new(FakeSystemctl {
        broken: vec!["php-fpm"],
        crashing: vec!["worker"],
        ..Default::default()
    });
    for unit in ["php-fpm", "worker"] {
        fake.units
            .lock()
            .unwrap()
            .insert(unit.into(), (false, true));
    }
    let (m, _dir) = with_systemd(fake.clone());

    let out = on(&m, "start", "php-fpm").await;
    assert!(!out.success);
    let message = out.data.as_str().unwrap();
    assert!(
        message.starts_with(
            "service.start: systemctl start -- php-fpm exited 1: Job for php-fpm.service failed"
        ),
        "{message}"
    );
    // Started, then died: systemctl said yes, the check says no.
    let out = on(&m, "restart", "worker").await;
    assert!(!out.success);
    assert_eq!(
        out.data,
        json!("service.restart: worker: restart succeeded but the service is failed (failed), enabled")
    );
    for function in ["start", "status", "enabled"] {
        let out = on(&m, function, "ghost").await;
        assert_eq!(
            out.data,
            json!(format!("service.{function}: no service ghost"))
        );
    }
    for bad in ["-now", "../etc/passwd", "a b", ""] {
        let out = on(&m, "stop", bad).await;
        assert_eq!(out.retcode, RETCODE_BAD_ARGS, "{bad:?}: {out:?}");
    }
    let out = m
        .call(
            "stop",
            call(
                "service.stop",
                vec![],
                json!({ "name": "worker", "colour": 1 }),
            ),
        )
        .await;
    assert_eq!(out.retcode, RETCODE_BAD_ARGS);
    // Nothing ran for the refused calls.
    let log = fake.log.lock().unwrap().clone();
    assert!(
        !log.iter()
            .any(|l| l.contains("-now") || l.contains("passwd")),
        "{log:?}"
    );
}

#[test]
fn systemd_output_is_read_as_documented() {
    let status = systemd::status(
        "LoadState=loaded\nActiveState=activating\nSubState=start-pre\nUnitFileState=enabled-runtime\nMainPID=0\n",
    )
    .unwrap();
    assert_eq!(
        status,
        Status {
            running: false,
            enabled: Some(true),
            state: "activating (start-pre)".into(),
            pid: None,
        }
    );
    assert_eq!(systemd::status("LoadState=not-found\n"), None);
    let units = systemd::units(
        "cron.service loaded active running Regular background program processing daemon\n\
         halite-minion.service loaded failed failed halite minion\n\
         -.mount loaded active mounted Root Mount\n",
    );
    assert_eq!(units.len(), 2);
    assert_eq!(units[1].0, "halite-minion");
    assert_eq!(units[1].1.state, "failed (failed)");
}

#[test]
fn sysv_status_codes_and_links() {
    assert!(sysv::status(0, "nginx is running.\n").unwrap().running);
    let stopped = sysv::status(3, "").unwrap();
    assert_eq!(
        (stopped.running, stopped.state.as_str()),
        (false, "not running")
    );
    assert_eq!(sysv::status(4, "").unwrap().state, "unknown");
    assert!(sysv::status(127, "env: not found")
        .unwrap_err()
        .contains("127"));

    let etc = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(etc.path().join("rc3.d")).unwrap();
    std::fs::create_dir_all(etc.path().join("rc1.d")).unwrap();
    std::fs::write(etc.path().join("rc1.d/S01single"), "").unwrap();
    std::fs::write(etc.path().join("rc3.d/K01app"), "").unwrap();
    std::fs::write(etc.path().join("rc3.d/S02web"), "").unwrap();
    assert!(sysv::enabled(etc.path(), "web"));
    assert!(!sysv::enabled(etc.path(), "app"), "a K link is not enabled");
    assert!(
        !sysv::enabled(etc.path(), "single"),
        "runlevel 1 does not count"
    );
    assert!(!sysv::enabled(etc.path(), "we"));
}

#[test]
fn which_init_system() {
    let dir = tempfile::tempdir().unwrap();
    let module = |root: &std::path::Path| ServiceModule {
        exec: Arc::new(SystemExec),
        systemd_marker: root.join("run/systemd/system"),
        etc: root.join("etc"),
    };
    let err = module(dir.path()).init("service.status").unwrap_err();
    assert!(
        err.data.as_str().unwrap().contains("no init system found"),
        "{err:?}"
    );
    std::fs::create_dir_all(dir.path().join("etc/init.d")).unwrap();
    assert_eq!(
        module(dir.path()).init("service.status").unwrap(),
        Init::SysV {
            etc: dir.path().join("etc")
        }
    );
    std::fs::create_dir_all(dir.path().join("run/systemd/system")).unwrap();
    assert_eq!(
        module(dir.path()).init("service.status").unwrap(),
        Init::Systemd
    );
}

/// A real LSB init script managing a real background process, with its
/// pid file under `dir` (the whole-system test uses the same file).
#[cfg(unix)]
fn init_script(dir: &std::path::Path) -> String {
    include_str!("haltest.init.sh").replace("@DIR@", &dir.display().to_string())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sysv_scripts_really_run() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir_all(etc.join("init.d")).unwrap();
    let script = etc.join("init.d/haltest");
    std::fs::write(&script, init_script(dir.path())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = ServiceModule {
        exec: Arc::new(SystemExec),
        systemd_marker: dir.path().join("run/systemd/system"),
        etc,
    };
    let out = on(&m, "status", "haltest").await;
    assert_eq!(out.data["running"], false, "{out:?}");
    assert_eq!(out.data["state"], "haltest is not running");
    assert_eq!(out.data["enabled"], false);
    let out = on(&m, "start", "haltest").await;
    assert!(out.success, "{out:?}");
    assert_eq!(
        (out.data["running"].clone(), out.data["changed"].clone()),
        (json!(true), json!(true))
    );
    let pid: i32 = std::fs::read_to_string(dir.path().join("haltest.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let out = on(&m, "restart", "haltest").await;
    assert!(out.success, "{out:?}");
    let out = on(&m, "stop", "haltest").await;
    assert_eq!(out.data["running"], false, "{out:?}");
    assert_eq!(on(&m, "available", "nope").await.data, false);
    let list = m
        .call("list", call("service.list", vec![], json!({})))
        .await;
    assert_eq!(
        list.data,
        json!([{ "name": "haltest", "manager": "sysv", "enabled": false }])
    );
}
