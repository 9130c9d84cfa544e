//! salt-api's `runner` client: the job cache (`jobs.*`, with `@jobs` or
//! `@runner`) and the fleet's state (`manage.*`, with `@runner`), in
//! Salt's shapes.

use halite_proto::target::Target;
use halite_proto::TargetType;
use serde_json::{json, Map, Value};

use super::CallArgs;
use crate::backend::{Grant, KeyAction};
use crate::routes::{parse_jid, Shared};
use crate::types::{JobFilter, JobRecord, JobView};
use crate::ApiError;

/// The runner functions halite serves.
pub const FUNCTIONS: &[&str] = &[
    "jobs.active",
    "jobs.list_job",
    "jobs.list_jobs",
    "jobs.lookup_jid",
    "manage.down",
    "manage.present",
    "manage.status",
    "manage.up",
    "manage.versions",
];

/// Is `fun` a runner function halite serves?
pub fn known(fun: &str) -> bool {
    FUNCTIONS.contains(&fun)
}

/// The grant a runner function needs: the job cache is `@jobs` (which
/// `@runner` includes), the rest `@runner`.
pub fn grant(fun: &str) -> Grant {
    if fun.starts_with("jobs.") {
        Grant::Jobs
    } else {
        Grant::Runner
    }
}

/// Does this call delete keys (`manage.down removekeys=True`)? It then
/// needs `@wheel` as well.
pub fn deletes_keys(fun: &str, args: &CallArgs) -> bool {
    fun == "manage.down" && args.flag("removekeys")
}

/// The error for a runner function halite does not serve.
pub fn unknown(fun: &str) -> ApiError {
    ApiError::bad_request(format!(
        "runner function {fun:?} is not available; halite serves {}",
        FUNCTIONS.join(", ")
    ))
}

/// Runs a runner function for `user`; answers its return.
pub fn call(backend: &Shared, user: &str, fun: &str, args: &CallArgs) -> Result<Value, ApiError> {
    match fun {
        // An unknown jid: `{}` and Salt's `Error`, as Salt answers.
        "jobs.lookup_jid" => match backend.job(&jid_arg(args, fun)?) {
            Ok(view) => Ok(returns_by_minion(&view)),
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => Ok(json!({})),
            Err(e) => Err(e),
        },
        "jobs.list_job" => {
            let jid = jid_arg(args, fun)?;
            match backend.job(&jid) {
                Ok(view) => Ok(job_info(&view)),
                Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => Ok(no_such_job(&jid)),
                Err(e) => Err(e),
            }
        }
        "jobs.list_jobs" => list_jobs(backend, args),
        "jobs.active" => active(backend),
        "manage.up" | "manage.present" => Ok(json!(ids_by_status(backend)?.0)),
        "manage.down" => {
            let (_, mut down) = ids_by_status(backend)?;
            // `tgt` (and `tgt_type`) narrow the list, as in Salt.
            if let Some(tgt) = args.named("tgt").and_then(Value::as_str) {
                let tgt_type = args
                    .named("tgt_type")
                    .and_then(Value::as_str)
                    .unwrap_or("glob");
                let tgt_type: TargetType =
                    serde_json::from_value(json!(tgt_type)).map_err(|_| {
                        ApiError::bad_request(format!(
                            "manage.down: tgt_type {tgt_type:?}: use glob, pcre, list or grain"
                        ))
                    })?;
                let target = Target::parse(tgt_type, tgt)
                    .map_err(|e| ApiError::bad_request(format!("manage.down: tgt: {e}")))?;
                let grains: std::collections::HashMap<String, Value> = backend
                    .minions()?
                    .into_iter()
                    .map(|m| (m.id, m.grains))
                    .collect();
                down = narrowed(down, &target, &grains);
            }
            if deletes_keys(fun, args) {
                // Checked with the request's other chunks (`check_chunk`);
                // again here, where the keys go.
                backend.require(user, Grant::Wheel)?;
                for id in &down {
                    backend.key_action(KeyAction::Delete(id.clone()))?;
                }
            }
            Ok(json!(down))
        }
        "manage.status" => {
            let (up, down) = ids_by_status(backend)?;
            Ok(json!({ "up": up, "down": down }))
        }
        "manage.versions" => versions(backend),
        other => Err(unknown(other)),
    }
}

fn jid_arg(args: &CallArgs, fun: &str) -> Result<halite_proto::Jid, ApiError> {
    let jid = args
        .get("jid", 0)
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
        .ok_or_else(|| ApiError::bad_request(format!("{fun} needs jid")))?;
    parse_jid(&jid)
}

/// `{minion: return}` of the minions that returned (Salt's lookup_jid).
pub fn returns_by_minion(view: &JobView) -> Value {
    Value::Object(
        view.returns
            .iter()
            .map(|(id, ret)| (id.clone(), ret.data.clone()))
            .collect(),
    )
}

/// A job as Salt's job cache lists it.
fn job_entry(job: &JobRecord) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("Function".into(), json!(job.fun));
    out.insert("Arguments".into(), json!(job.arg));
    out.insert("Target".into(), json!(job.target));
    out.insert("Target-type".into(), json!(job.tgt_type));
    out.insert("User".into(), json!(job.user));
    out.insert("StartTime".into(), json!(start_time(job.jid.as_str())));
    out
}

/// `jobs.list_job` (and salt-api's `GET /jobs/<jid>` info): the job, its
/// minions and each return with its retcode and success.
pub fn job_info(view: &JobView) -> Value {
    let mut out = job_entry(&view.job);
    out.insert("jid".into(), json!(view.job.jid));
    out.insert("Minions".into(), json!(view.job.expected));
    let result: Map<String, Value> = view
        .returns
        .iter()
        .map(|(id, ret)| {
            (
                id.clone(),
                json!({ "return": ret.data, "retcode": ret.retcode, "success": ret.success }),
            )
        })
        .collect();
    out.insert("Result".into(), Value::Object(result));
    Value::Object(out)
}

/// Salt's answer about a jid its job cache does not know.
pub fn no_such_job(jid: &halite_proto::Jid) -> Value {
    json!({
        "jid": jid,
        "Error": "Cannot contact returner or no job with this jid",
        "StartTime": start_time(jid.as_str()),
        "Result": {},
    })
}

/// `jobs.list_jobs`: `{jid: job}` newest first, filtered as Salt filters:
/// `search_function` and `search_target` are globs (or lists of them),
/// `start_time` / `end_time` times (`2026-11-22 08:15`, ISO, or a
/// listing's `StartTime`).
pub fn list_jobs(backend: &Shared, args: &CallArgs) -> Result<Value, ApiError> {
    let time = |name: &str| -> Result<Option<u64>, ApiError> {
        match args.named(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.is_empty() => Ok(None),
            Some(Value::String(text)) => halite_proto::time::parse_time_ms(text)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "jobs.list_jobs: {name} {text:?} is not a time; use 2026-11-22 08:15 (UTC)"
                    ))
                }),
            Some(other) => Err(ApiError::bad_request(format!(
                "jobs.list_jobs: {name} must be a time as text, not {other}"
            ))),
        }
    };
    let globs = |name: &str| -> Result<Option<Vec<Target>>, ApiError> {
        let patterns: Vec<String> = match args.named(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .collect(),
            // A comma-separated list, as Salt reads it.
            Some(Value::String(text)) => text.split(',').map(|p| p.trim().to_owned()).collect(),
            Some(other) => vec![other.to_string()],
        };
        patterns
            .iter()
            .map(|p| Target::parse(TargetType::Glob, p))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("jobs.list_jobs: {name}: {e}")))
    };
    if args.named("search_metadata").is_some() {
        return Err(ApiError::bad_request(
            "jobs.list_jobs: search_metadata is not supported: halite jobs carry no metadata",
        ));
    }
    let (from, to) = (time("start_time")?, time("end_time")?);
    let (functions, targets) = (globs("search_function")?, globs("search_target")?);
    let hit = |globs: &Option<Vec<Target>>, value: &str| {
        globs
            .as_ref()
            .is_none_or(|g| g.iter().any(|t| t.matches(value, &Value::Null)))
    };
    // Every stored job in the window, page by page (the store keeps
    // `keep_jobs` hours of them), newest first.
    let mut jobs = Vec::new();
    let mut before = None;
    loop {
        let page = backend.jobs(&JobFilter {
            limit: Some(1000),
            before: before.clone(),
            from,
            // Salt's end_time includes the instant itself.
            to: to.map(|t| t.saturating_add(1)),
            ..JobFilter::default()
        })?;
        jobs.extend(page.jobs);
        match page.next {
            // A next page strictly older than this one, or the end.
            Some(next) if before.as_ref() != Some(&next) => before = Some(next),
            _ => break,
        }
    }
    let mut out = Map::new();
    for job in jobs {
        if !hit(&functions, &job.fun) || !hit(&targets, &job.target) {
            continue;
        }
        let mut entry = Map::new();
        entry.insert("Function".into(), json!(job.fun));
        entry.insert("Arguments".into(), json!(job.arg));
        entry.insert("Target".into(), json!(job.target));
        entry.insert("Target-type".into(), json!(job.tgt_type));
        entry.insert("User".into(), json!(job.user));
        entry.insert("StartTime".into(), json!(start_time(job.jid.as_str())));
        out.insert(job.jid.to_string(), Value::Object(entry));
    }
    Ok(Value::Object(out))
}

/// `jobs.active`: jobs some minion is still running, with who runs them
/// (`Running`, each `{minion: pid}`; halite minions run jobs inside the
/// minion process and report no pid, so it is 0) and who returned.
fn active(backend: &Shared) -> Result<Value, ApiError> {
    let page = backend.jobs(&JobFilter {
        limit: Some(1000),
        result: Some("running".into()),
        ..JobFilter::default()
    })?;
    let mut out = Map::new();
    for summary in page.jobs {
        let Ok(view) = backend.job(&summary.jid) else {
            continue;
        };
        if view.done {
            continue;
        }
        let mut entry = job_entry(&view.job);
        let running: Vec<Value> = view.missing.iter().map(|id| json!({ id: 0 })).collect();
        entry.insert("Running".into(), json!(running));
        entry.insert(
            "Returned".into(),
            json!(view.returns.keys().collect::<Vec<_>>()),
        );
        out.insert(view.job.jid.to_string(), Value::Object(entry));
    }
    Ok(Value::Object(out))
}

/// The ids `target` matches (with each one's grains, if known).
fn narrowed(
    ids: Vec<String>,
    target: &Target,
    grains: &std::collections::HashMap<String, Value>,
) -> Vec<String> {
    ids.into_iter()
        .filter(|id| target.matches(id, grains.get(id).unwrap_or(&Value::Null)))
        .collect()
}

/// Accepted minions that are up and those that are down, each sorted.
fn ids_by_status(backend: &Shared) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let accepted: Vec<String> = backend
        .keys()?
        .keys
        .into_iter()
        .filter(|k| k.status == halite_proto::message::KeyStatus::Accepted)
        .map(|k| k.id)
        .collect();
    let up: std::collections::BTreeSet<String> = backend
        .minions()?
        .into_iter()
        .filter(|m| m.status == "up")
        .map(|m| m.id)
        .collect();
    let (mut is_up, mut down): (Vec<String>, Vec<String>) =
        accepted.into_iter().partition(|id| up.contains(id));
    is_up.sort();
    is_up.dedup();
    down.sort();
    down.dedup();
    Ok((is_up, down))
}

/// `manage.versions`: minions grouped by how their version compares with
/// the master's, as Salt groups them.
fn versions(backend: &Shared) -> Result<Value, ApiError> {
    let master = env!("CARGO_PKG_VERSION");
    let parse = |v: &str| -> Vec<u64> {
        v.split(['.', '-', '+'])
            .map_while(|p| p.parse().ok())
            .collect()
    };
    let mut groups: Map<String, Value> = Map::new();
    for minion in backend.minions()? {
        let (label, value) = match minion.version.as_deref() {
            _ if minion.status != "up" => ("Minion offline", json!(false)),
            None => ("Minion offline", json!(false)),
            Some(version) => {
                let label = match parse(version).cmp(&parse(master)) {
                    std::cmp::Ordering::Less => "Minion requires update",
                    std::cmp::Ordering::Equal => "Up to date",
                    std::cmp::Ordering::Greater => "Minion newer than master",
                };
                (label, json!(version))
            }
        };
        if let Value::Object(group) = groups
            .entry(label.to_owned())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            group.insert(minion.id, value);
        }
    }
    groups.insert("Master".into(), json!(master));
    Ok(Value::Object(groups))
}

/// Salt's `StartTime` for a jid (`YYYYMMDDhhmmssffffff`):
/// `2026, Nov 22 15:30:12.123456`.
pub fn start_time(jid: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let part = |from: usize, to: usize| jid.get(from..to).unwrap_or("00");
    let month = part(4, 6)
        .parse::<usize>()
        .ok()
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{}, {month} {} {}:{}:{}.{}",
        part(0, 4),
        part(6, 8),
        part(8, 10),
        part(10, 12),
        part(12, 14),
        jid.get(14..).unwrap_or("0")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_salts_format_and_reads_back() {
        let text = start_time("20261122153012123456");
        assert_eq!(text, "2026, Nov 22 15:30:12.123456");
        assert!(halite_proto::time::parse_time_ms(&text).is_some());
    }

    #[test]
    fn manage_down_narrows_to_its_target() {
        let down = vec!["old1".to_owned(), "old2".to_owned(), "web9".to_owned()];
        let grains = std::collections::HashMap::from([("old2".to_owned(), json!({"role": "db"}))]);
        let glob = Target::parse(TargetType::Glob, "old*").unwrap();
        assert_eq!(narrowed(down.clone(), &glob, &grains), ["old1", "old2"]);
        let grain = Target::parse(TargetType::Grain, "role:db").unwrap();
        assert_eq!(narrowed(down, &grain, &grains), ["old2"]);
    }

    #[test]
    fn grants_follow_salt() {
        assert_eq!(grant("jobs.list_jobs"), Grant::Jobs);
        assert_eq!(grant("manage.up"), Grant::Runner);
        assert!(FUNCTIONS.iter().all(|f| known(f)));
        assert!(!known("state.orchestrate"));
    }
}
