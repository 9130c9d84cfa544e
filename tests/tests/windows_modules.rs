//! The Windows modules through a real master and a Linux minion: what
//! runs on Windows is tested in the modules crate against doubles of
//! appcmd and schtasks; here, the master completes an `iis` app's job,
//! the minion fetches and checks the artifact and then says plainly that
//! it needs Windows, and the failed deploy is recorded like any other (a
//! scheduled task's definition too, under the task's path).

use halite_tests::git::static_files;
use halite_tests::{Master, Minion};

#[test]
fn on_linux_they_fail_saying_they_need_windows_and_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("site-v1.zip"),
        b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
    )
    .unwrap();
    let sum = halite_pki::sha256_hex(&std::fs::read(files.join("site-v1.zip")).unwrap());
    let server = static_files(&files);
    let apps = dir.path().join("master/apps.d");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        apps.join("portal.toml"),
        format!(
            "kind = \"iis\"\ntarget = \"web*\"\npath = \"{}\"\n[iis]\nsite = \"Portal\"\napp_pool = \"PortalPool\"\napp_offline = true\n",
            dir.path().join("srv/portal").display()
        ),
    )
    .unwrap();
    let master = Master::start(dir.path(), "");
    let _web = Minion::start(dir.path(), "web1", master.return_port, "");
    master.accept("web1");

    for args in [
        vec!["run", "target=web1", "dotnet_iis.list_sites", "--json"],
        vec![
            "run",
            "target=web1",
            "win_task.info",
            "name=Rotate",
            "--json",
        ],
    ] {
        let out = master.cli(&args);
        assert_eq!(out.code, 1, "{out:?}");
        let data = out.json()["returns"]["web1"]["data"].clone();
        assert!(
            data.as_str()
                .unwrap_or_default()
                .contains("needs a Windows minion"),
            "{args:?}: {data}"
        );
    }

    let url = format!("url=http://127.0.0.1:{}/site-v1.zip", server.port);
    let sha = format!("sha256={sum}");
    let out = master.cli(&[
        "run",
        "target=web1",
        "dotnet_iis.deploy",
        "app=portal",
        &url,
        &sha,
        "version=v1",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let data = out.json()["returns"]["web1"]["data"].clone();
    assert_eq!(data["failed_stage"], "prepare", "{data}");
    assert!(
        data["error"]
            .as_str()
            .unwrap()
            .contains("needs a Windows minion"),
        "{data}"
    );
    let stages = halite_tests::stage_names(&data);
    assert_eq!(
        stages,
        ["fetch", "prepare"],
        "the artifact was fetched and checked first"
    );

    let out = master.cli(&["releases", "portal", "--history", "--json"]);
    let history = out.json()["history"].clone();
    assert_eq!(history[0]["failed_stage"], "prepare", "{history}");
    assert_eq!(history[0]["result"], "failed");

    // A task definition is a release too, recorded under the task's path
    // (backslashes and a space travel to the API unchanged).
    let out = master.cli(&[
        "run",
        "target=web1",
        "win_task.create",
        "name=Rotate logs",
        "folder=\\Halite",
        "command=C:\\tools\\rotate.exe",
        "triggers=[{\"type\":\"daily\",\"start\":\"2026-11-23T02:00:00\"}]",
        "--json",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    let data = out.json()["returns"]["web1"]["data"].clone();
    assert_eq!(data["failed_stage"], "fetch", "{data}");
    let out = master.cli(&["releases", "\\Halite\\Rotate logs", "--history", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let history = out.json()["history"].clone();
    assert_eq!(history[0]["app"], "\\Halite\\Rotate logs", "{history}");
    assert_eq!(history[0]["failed_stage"], "fetch", "{history}");
    assert!(
        history[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("needs a Windows minion"),
        "{history}"
    );

    // The kind picks the module: a git job refuses the iis app.
    let out = master.cli(&[
        "run",
        "target=web1",
        "git_deploy.deploy",
        "app=portal",
        "tag=v1",
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("dotnet_iis"), "{out:?}");
}
