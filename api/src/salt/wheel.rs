//! salt-api's `wheel` client: key management (`key.*`), the connected
//! minions and the master's (safe) settings, answered in Salt's shapes.
//! Gated by `@wheel`, like halite's own key routes.

use halite_proto::message::KeyStatus;
use halite_proto::target::Target;
use halite_proto::TargetType;
use serde_json::{json, Map, Value};

use super::CallArgs;
use crate::backend::KeyAction;
use crate::routes::Shared;
use crate::ApiError;

/// The wheel functions halite serves.
pub const FUNCTIONS: &[&str] = &[
    "config.values",
    "key.accept",
    "key.delete",
    "key.finger",
    "key.list",
    "key.list_all",
    "key.print",
    "key.reject",
    "minions.connected",
];

/// Salt's name for the master's own key files in `local`.
const LOCAL: [&str; 2] = ["master.pem", "master.pub"];

/// Salt's directory name for a key state.
fn salt_dir(status: KeyStatus) -> &'static str {
    match status {
        KeyStatus::Accepted => "minions",
        KeyStatus::Pending => "minions_pre",
        KeyStatus::Rejected => "minions_rejected",
        KeyStatus::Denied => "minions_denied",
    }
}

/// `key.list`'s `match`: the states a name starts like (`acc`, `pre` or
/// `un`, `rej`, `den`, `all`), as Salt reads it; anything else is none.
fn states_named(name: &str) -> Vec<KeyStatus> {
    let name = name.to_ascii_lowercase();
    if name.starts_with("acc") {
        vec![KeyStatus::Accepted]
    } else if name.starts_with("pre") || name.starts_with("un") {
        vec![KeyStatus::Pending]
    } else if name.starts_with("rej") {
        vec![KeyStatus::Rejected]
    } else if name.starts_with("den") {
        vec![KeyStatus::Denied]
    } else if name.starts_with("all") {
        vec![
            KeyStatus::Pending,
            KeyStatus::Rejected,
            KeyStatus::Accepted,
            KeyStatus::Denied,
        ]
    } else {
        Vec::new()
    }
}

/// Says whether a minion id is one a `match` names.
type IdMatcher = Box<dyn Fn(&str) -> bool>;

/// Which ids a `match` names: a glob, a comma-separated list, or a list.
fn matcher(args: &CallArgs, fun: &str) -> Result<IdMatcher, ApiError> {
    let value = args
        .get("match", 0)
        .ok_or_else(|| ApiError::bad_request(format!("{fun} needs `match` (a glob or a list)")))?;
    let patterns: Vec<String> = match value {
        Value::Array(list) => list
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        Value::String(text) => text.split(',').map(|p| p.trim().to_owned()).collect(),
        other => vec![other.to_string()],
    };
    let globs = patterns
        .iter()
        .map(|p| Target::parse(TargetType::Glob, p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request(format!("{fun}: match: {e}")))?;
    Ok(Box::new(move |id: &str| {
        globs.iter().any(|g| g.matches(id, &Value::Null))
    }))
}

/// Keys as Salt lists them: `{dir: [ids]}` for the `states` asked.
fn listing(
    backend: &Shared,
    states: &[KeyStatus],
    local: bool,
) -> Result<Map<String, Value>, ApiError> {
    let view = backend.keys()?;
    let mut out = Map::new();
    for status in states {
        let ids: Vec<&str> = view
            .keys
            .iter()
            .filter(|k| k.status == *status)
            .map(|k| k.id.as_str())
            .collect();
        out.insert(salt_dir(*status).into(), json!(ids));
    }
    if local {
        out.insert("local".into(), json!(LOCAL));
    }
    Ok(out)
}

/// Runs a wheel function; answers its `return`.
pub fn call(backend: &Shared, fun: &str, args: &CallArgs) -> Result<Value, ApiError> {
    match fun {
        "key.list_all" => Ok(Value::Object(listing(
            backend,
            &[
                KeyStatus::Pending,
                KeyStatus::Rejected,
                KeyStatus::Accepted,
                KeyStatus::Denied,
            ],
            true,
        )?)),
        "key.list" => {
            let name = args
                .get("match", 0)
                .and_then(|v| v.as_str().map(str::to_owned))
                .ok_or_else(|| {
                    ApiError::bad_request("key.list needs `match`: acc, pre, rej, den or all")
                })?;
            let states = states_named(&name);
            Ok(Value::Object(listing(
                backend,
                &states,
                name.to_ascii_lowercase().starts_with("all"),
            )?))
        }
        // A denied key is a second key for an id that has an accepted
        // one; halite acts on the id, so it would change the accepted
        // key: refused rather than ignored.
        "key.accept" | "key.reject" if args.flag("include_denied") => Err(ApiError::bad_request(
            format!("{fun}: include_denied is not supported: a denied key is another key for an accepted id; key.delete the id and let the minion ask again"),
        )),
        "key.accept" => {
            let mut from = vec![KeyStatus::Pending];
            if args.flag("include_rejected") {
                from.push(KeyStatus::Rejected);
            }
            change(backend, args, fun, &from, KeyAction::Accept)?;
            matching_in(backend, args, fun, KeyStatus::Accepted)
        }
        "key.reject" => {
            let mut from = vec![KeyStatus::Pending];
            if args.flag("include_accepted") {
                from.push(KeyStatus::Accepted);
            }
            change(backend, args, fun, &from, KeyAction::Reject)?;
            matching_in(backend, args, fun, KeyStatus::Rejected)
        }
        "key.delete" => {
            let all = [
                KeyStatus::Accepted,
                KeyStatus::Pending,
                KeyStatus::Rejected,
                KeyStatus::Denied,
            ];
            change(backend, args, "key.delete", &all, KeyAction::Delete).map(|_| json!({}))
        }
        "key.finger" | "key.print" => {
            let matches = matcher(args, fun)?;
            let mut out: Map<String, Value> = Map::new();
            if fun == "key.finger" {
                for key in backend.keys()?.keys {
                    if matches(&key.id) {
                        insert_nested(&mut out, salt_dir(key.status), &key.id, key.fingerprint);
                    }
                }
            } else {
                for key in backend.public_keys()? {
                    if matches(&key.id) {
                        insert_nested(&mut out, salt_dir(key.status), &key.id, key.pem);
                    }
                }
            }
            Ok(Value::Object(out))
        }
        "minions.connected" => {
            let mut up: Vec<String> = backend
                .minions()?
                .into_iter()
                .filter(|m| m.status == "up")
                .map(|m| m.id)
                .collect();
            up.sort();
            Ok(json!(up))
        }
        "config.values" => Ok(Value::Object(backend.config_values()?)),
        other => Err(unknown(other)),
    }
}

/// The error for a wheel function halite does not serve (Salt's words).
fn unknown(fun: &str) -> ApiError {
    ApiError::bad_request(format!(
        "'{fun}' is not available. halite serves {}",
        FUNCTIONS.join(", ")
    ))
}

fn insert_nested(out: &mut Map<String, Value>, dir: &str, id: &str, value: String) {
    let entry = out
        .entry(dir.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(map) = entry {
        map.insert(id.to_owned(), Value::String(value));
    }
}

/// What Salt answers after an accept or reject: the keys `match` names
/// that are now in `status`, `{}` when none.
fn matching_in(
    backend: &Shared,
    args: &CallArgs,
    fun: &str,
    status: KeyStatus,
) -> Result<Value, ApiError> {
    let matches = matcher(args, fun)?;
    let mut ids: Vec<String> = backend
        .keys()?
        .keys
        .into_iter()
        .filter(|k| k.status == status && matches(&k.id))
        .map(|k| k.id)
        .collect();
    ids.sort();
    ids.dedup();
    Ok(if ids.is_empty() {
        json!({})
    } else {
        json!({ salt_dir(status): ids })
    })
}

/// Applies `action` to every key in one of the `from` states that `match`
/// names; answers the ids changed.
fn change(
    backend: &Shared,
    args: &CallArgs,
    fun: &str,
    from: &[KeyStatus],
    action: fn(String) -> KeyAction,
) -> Result<Vec<String>, ApiError> {
    let matches = matcher(args, fun)?;
    let mut ids: Vec<String> = backend
        .keys()?
        .keys
        .into_iter()
        .filter(|k| from.contains(&k.status) && matches(&k.id))
        .map(|k| k.id)
        .collect();
    ids.sort();
    ids.dedup();
    let mut done = Vec::new();
    for id in ids {
        done.extend(backend.key_action(action(id))?);
    }
    done.sort();
    done.dedup();
    Ok(done)
}
