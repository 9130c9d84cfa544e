//! systemd through `systemctl`: the argument lists, and the reading of
//! `systemctl show` (`KEY=VALUE` lines) and of `list-units --plain
//! --no-legend` (columns UNIT LOAD ACTIVE SUB DESCRIPTION), as
//! systemctl(1) documents them.

use std::collections::HashMap;

use super::{Action, Status};

fn systemctl(args: &[&str]) -> Vec<String> {
    std::iter::once("systemctl")
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// What `status` asks.
pub(crate) fn show(name: &str) -> Vec<String> {
    systemctl(&[
        "show",
        "--no-pager",
        "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID",
        "--",
        name,
    ])
}

/// A change.
pub(crate) fn action(action: Action, name: &str) -> Vec<String> {
    systemctl(&[action.verb(), "--", name])
}

/// Every service unit systemd has loaded.
pub(crate) fn list_units() -> Vec<String> {
    systemctl(&[
        "list-units",
        "--type=service",
        "--all",
        "--no-legend",
        "--no-pager",
        "--plain",
    ])
}

/// The status `show` printed, or None for a unit systemd does not know
/// (`LoadState=not-found`).
pub(crate) fn status(show: &str) -> Option<Status> {
    let props: HashMap<&str, &str> = show
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let load = props.get("LoadState").copied().unwrap_or("not-found");
    if load == "not-found" {
        return None;
    }
    let active = props.get("ActiveState").copied().unwrap_or("unknown");
    let sub = props.get("SubState").copied().unwrap_or("unknown");
    let file_state = props.get("UnitFileState").copied().unwrap_or("");
    Some(Status {
        running: active == "active",
        enabled: Some(matches!(file_state, "enabled" | "enabled-runtime")),
        state: format!("{active} ({sub})"),
        pid: props
            .get("MainPID")
            .and_then(|p| p.parse::<u64>().ok())
            .filter(|&p| p > 0),
    })
}

/// The services `list-units` printed: name without `.service`, and what
/// it says of each (whether enabled is not in that listing).
pub(crate) fn units(listing: &str) -> Vec<(String, Status)> {
    listing
        .lines()
        .filter_map(|line| {
            let mut columns = line.split_whitespace();
            let unit = columns.next()?;
            let (_load, active, sub) = (columns.next()?, columns.next()?, columns.next()?);
            let name = unit.strip_suffix(".service")?;
            Some((
                name.to_owned(),
                Status {
                    running: active == "active",
                    enabled: None,
                    state: format!("{active} ({sub})"),
                    pid: None,
                },
            ))
        })
        .collect()
}
