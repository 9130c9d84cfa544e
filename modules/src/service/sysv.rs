//! SysV init: scripts in `/etc/init.d`, run with a clean environment as
//! `service(8)` runs them; `status` read by its LSB exit code (0 running,
//! 1–3 not running, 4 unknown); enabled when a start link `S??NAME`
//! exists in `rc2.d`–`rc5.d`; `update-rc.d` enables and disables.

use std::path::{Path, PathBuf};

use super::{Action, Status};

/// The environment `service(8)` gives a script, so one run by halite
/// behaves as one run by hand.
const CLEAN_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The init script of `name`, if there is one.
pub(crate) fn script(etc: &Path, name: &str) -> Option<PathBuf> {
    let path = etc.join("init.d").join(name);
    path.is_file().then_some(path)
}

/// `script verb`, in a clean environment.
pub(crate) fn command(script: &Path, verb: &str) -> Vec<String> {
    vec![
        "env".to_owned(),
        "-i".to_owned(),
        CLEAN_PATH.to_owned(),
        "LANG=C".to_owned(),
        script.display().to_string(),
        verb.to_owned(),
    ]
}

/// The programs for a change. Enabling makes the default links (when
/// there are none) and then turns them on.
pub(crate) fn action(etc: &Path, action: Action, name: &str) -> Vec<Vec<String>> {
    let script = etc.join("init.d").join(name);
    let update = |what: &str| vec!["update-rc.d".to_owned(), name.to_owned(), what.to_owned()];
    match action {
        Action::Enable => vec![update("defaults"), update("enable")],
        Action::Disable => vec![update("disable")],
        other => vec![command(&script, other.verb())],
    }
}

/// What a `status` run says (LSB exit codes); enabled is filled in by
/// the caller. Err for a code LSB does not define for status.
pub(crate) fn status(code: i32, stdout: &str) -> Result<Status, String> {
    let said = stdout.lines().map(str::trim).find(|l| !l.is_empty());
    let (running, default) = match code {
        0 => (true, "running"),
        1..=3 => (false, "not running"),
        4 => (false, "unknown"),
        other => {
            return Err(format!(
                "init script status exited {other}: {}",
                said.unwrap_or("")
            ))
        }
    };
    Ok(Status {
        running,
        enabled: None,
        state: said.unwrap_or(default).to_owned(),
        pid: None,
    })
}

/// Is there a start link for `name` in a multi-user runlevel?
pub(crate) fn enabled(etc: &Path, name: &str) -> bool {
    (2..=5).any(|level| {
        std::fs::read_dir(etc.join(format!("rc{level}.d")))
            .map(|entries| {
                entries.flatten().any(|e| {
                    let file = e.file_name();
                    let file = file.to_string_lossy();
                    file.strip_prefix('S')
                        .filter(|rest| {
                            rest.len() > 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_digit)
                        })
                        .is_some_and(|rest| &rest[2..] == name)
                })
            })
            .unwrap_or(false)
    })
}

/// Files in `init.d` that are services (not its helpers).
pub(crate) fn scripts(etc: &Path) -> Vec<String> {
    const NOT_SERVICES: &[&str] = &[
        "README",
        "skeleton",
        "rc",
        "rcS",
        "rc.local",
        ".depend.boot",
    ];
    let Ok(entries) = std::fs::read_dir(etc.join("init.d")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !NOT_SERVICES.contains(&n.as_str()) && super::validate_name(n).is_ok())
        .collect();
    names.sort();
    names
}
