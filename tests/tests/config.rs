//! Bad configuration: the daemons refuse to start, exit 78 and name the
//! file and the key.

use halite_tests::config_error;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn master_config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, key) in [
        ("publish_prot = 4505\n", "publish_prot"),
        ("return_port = 99999\n", "return_port"),
        ("auto_accept = \"yes\"\n", "auto_accept"),
        ("interface = \"not-an-ip\"\n", "interface"),
    ] {
        let path = write(dir.path(), "master.toml", text);
        let out = config_error("halite-master", &path);
        assert_eq!(out.code, 78, "{text}: {out:?}");
        assert!(out.stderr.contains(&path.display().to_string()), "{out:?}");
        assert!(out.stderr.contains(&format!("`{key}`")), "{text}: {out:?}");
    }
    let missing = dir.path().join("nope.toml");
    let out = config_error("halite-master", &missing);
    assert_eq!(out.code, 78);
    assert!(out.stderr.contains("nope.toml: cannot read"), "{out:?}");
}

#[test]
fn broken_app_and_secrets_files_stop_the_master_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "master.toml",
        "data_dir = \"data\"\npki_dir = \"pki\"\n",
    );
    std::fs::create_dir_all(dir.path().join("apps.d")).expect("apps.d");
    let app = dir.path().join("apps.d/shop.toml");
    for (text, key) in [
        (
            "repo = \"git://h/x\"\ntarget = \"web*\"\npath = \"srv\"\n",
            "path",
        ),
        (
            "repo = \"git://h/x\"\ntarget = \"web*\"\npath = \"/srv\"\nkeep = 3\n",
            "keep",
        ),
        (
            "repo = \"git://h/x\"\ntarget = \"web*\"\npath = \"/srv\"\ncredentials = \"nope\"\n",
            "credentials",
        ),
    ] {
        std::fs::write(&app, text).expect("write app");
        let out = config_error("halite-master", &path);
        assert_eq!(out.code, 78, "{text}: {out:?}");
        assert!(out.stderr.contains("apps.d/shop.toml: key"), "{out:?}");
        assert!(out.stderr.contains(&format!("`{key}`")), "{text}: {out:?}");
    }
    std::fs::write(
        &app,
        "repo = \"https://h/x\"\ntarget = \"web*\"\npath = \"/srv\"\ncredentials = \"git\"\n",
    )
    .expect("write app");
    write(
        dir.path(),
        "secrets.toml",
        "[git]\nusername = \"u\"\ntoken = 5\n",
    );
    let out = config_error("halite-master", &path);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("secrets.toml: key `token`"), "{out:?}");
    // The message names the key, never the secret values.
    write(
        dir.path(),
        "secrets.toml",
        "[git]\nusername = \"u\"\ntoken = \"hush-123\"\npassword = \"hush-456\"\n",
    );
    let out = config_error("halite-master", &path);
    assert_eq!(out.code, 78, "{out:?}");
    assert!(out.stderr.contains("secrets.toml: key `git`"), "{out:?}");
    assert!(!out.stderr.contains("hush"), "{out:?}");
}

#[test]
fn minion_config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, key) in [
        ("masters = [\"host:port\"]\n", "masters"),
        ("id = \"../../etc\"\n", "id"),
        ("master_fingerprint = \"abc\"\n", "master_fingerprint"),
        ("grain = 1\n", "grain"),
    ] {
        let path = write(dir.path(), "minion.toml", text);
        let out = config_error("halite-minion", &path);
        assert_eq!(out.code, 78, "{text}: {out:?}");
        assert!(out.stderr.contains("minion.toml: key"), "{out:?}");
        assert!(out.stderr.contains(&format!("`{key}`")), "{text}: {out:?}");
    }
}

#[test]
fn master_cli_explains_a_missing_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        dir.path(),
        "master.toml",
        "data_dir = \"data\"\npki_dir = \"pki\"\n",
    );
    let out = std::process::Command::new(halite_tests::bin("master-cli"))
        .arg("--config")
        .arg(&path)
        .args(["minions"])
        .output()
        .expect("run master-cli");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cli.token"), "{stderr}");
}
