//! salt-api (rest_cherrypy) compatible routes, so portals and tools
//! written against Salt (pushguide, `pepper`) work unchanged.
//!
//! `POST /login`, `POST /` with lowstate (`local`, `local_async`, and
//! `runner` for `jobs.lookup_jid` / `jobs.list_jobs`), `GET|POST /minions`,
//! `GET /minions/{id}`, `GET /jobs`, `GET /jobs/{jid}`, `GET /events`,
//! `GET /keys`. Bodies are JSON or form-encoded; answers are salt-api's
//! `{"return": [...]}` shapes. Everything goes through the same
//! [`Backend`] as `/v1`, so the ACL, audit log and store are the same.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::backend::Grant;
use crate::routes::{client_address, parse_jid, AuditDetail, Segment, Shared, User};
use crate::throttle::LoginThrottle;
use crate::types::{BusEntry, JobFilter, JobRequest, JobView, LoginRequest};
use crate::words::{keyword, value_of};
use crate::ApiError;

/// Largest body accepted (lowstate lists are small).
const BODY_LIMIT: usize = 1024 * 1024;

/// The Salt release whose salt-api behaviour these routes follow, sent
/// as `X-Salt-Version` as salt-api does: clients such as pepper then pass
/// `key=value` arguments through as they are (which keeps 20-digit jids
/// exact) instead of converting them to JSON numbers.
pub const SALT_VERSION: &str = "3006.0";

async fn salt_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        "x-salt-version",
        axum::http::HeaderValue::from_static(SALT_VERSION),
    );
    response
}

/// Routes that need no token.
pub(crate) fn open_routes() -> Router<Shared> {
    Router::new()
        .route("/login", post(login))
        .route("/", get(welcome))
        .layer(axum::middleware::map_response(salt_version))
}

/// `GET /`: what salt-api answers there, so clients can probe the API.
async fn welcome() -> Json<Value> {
    Json(json!({
        "return": "Welcome",
        "clients": ["local", "local_async", "runner"],
    }))
}

/// Routes behind the token check.
pub(crate) fn authed_routes() -> Router<Shared> {
    Router::new()
        .route("/", post(lowstate))
        .route("/minions", get(minions).post(minions_async))
        .route("/minions/{id}", get(minion))
        .route("/jobs", get(jobs))
        .route("/jobs/{jid}", get(job))
        .route("/events", get(events))
        .route("/keys", get(keys))
        .route("/logout", post(logout))
        .layer(axum::middleware::map_response(salt_version))
}

/// `POST /logout`: salt-api's answer, and the session cookie expired.
async fn logout(State(backend): State<Shared>, request: Request) -> Result<Response, ApiError> {
    crate::routes::end_session(&backend, &request)?;
    let cookie = "session_id=; expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/";
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "return": "Your token has been cleared" })),
    )
        .into_response())
}

/// Reads a JSON or form-encoded body into `T`. In a form, a repeated key
/// becomes a list, and `arg` is always one (as salt-api reads it).
pub(crate) async fn json_or_form<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let bytes = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let value = if form {
        form_value(&bytes)
    } else {
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

fn form_value(bytes: &[u8]) -> Value {
    let mut map = Map::new();
    for (key, value) in form_urlencoded::parse(bytes) {
        let key = key.into_owned();
        let value = Value::String(value.into_owned());
        match map.get_mut(&key) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None if key == "arg" => {
                map.insert(key, Value::Array(vec![value]));
            }
            None => {
                map.insert(key, value);
            }
        }
    }
    Value::Object(map)
}

async fn login(
    State(backend): State<Shared>,
    Extension(throttle): Extension<Arc<LoginThrottle>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (from, ip) = (client_address(&request), crate::routes::client_ip(&request));
    let body: LoginRequest = json_or_form(request).await?;
    let eauth = body.eauth.clone().unwrap_or_else(|| "halite".into());
    let token = crate::routes::check_login(&backend, &throttle, body, from, ip).await?;
    let answer = json!({ "return": [{
        "token": token.token,
        "start": token.issued_at as f64 / 1000.0,
        "expire": token.expires_at as f64 / 1000.0,
        "user": token.user,
        "eauth": eauth,
        "perms": token.perms,
    }]});
    let cookie = format!("session_id={}; Path=/; HttpOnly", token.token);
    Ok(([(header::SET_COOKIE, cookie)], Json(answer)).into_response())
}

/// One lowstate chunk, as salt-api reads it.
#[derive(Debug, serde::Deserialize)]
struct Chunk {
    client: Option<String>,
    tgt: Option<Value>,
    fun: Option<String>,
    #[serde(default)]
    arg: Option<Value>,
    #[serde(default)]
    kwarg: Option<Map<String, Value>>,
    tgt_type: Option<String>,
    expr_form: Option<String>,
    timeout: Option<Value>,
    jid: Option<Value>,
    #[serde(default)]
    full_return: bool,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// A lowstate body: one chunk or a list of them, JSON or form.
async fn lowstate_chunks(request: Request) -> Result<Vec<Chunk>, ApiError> {
    let body: Value = json_or_form(request).await?;
    match body {
        Value::Array(list) => list
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>(),
        one => serde_json::from_value(one).map(|c| vec![c]),
    }
    .map_err(|e| ApiError::bad_request(format!("lowstate: {e}")))
}

/// A lowstate chunk, checked and ready to run.
enum Step {
    /// `local`: publish and wait for the returns.
    Local { request: JobRequest, full: bool },
    /// `local_async`: publish, answer the jid.
    Async(JobRequest),
    /// `runner`: a job lookup (`@jobs` checked).
    Runner(Chunk),
}

/// Checks a chunk as fully as running it would, without running it.
fn check_chunk(backend: &Shared, user: &str, chunk: Chunk) -> Result<(String, Step), ApiError> {
    let client = chunk.client.clone().unwrap_or_else(|| "local".into());
    let detail = format!("{client} {}", chunk.fun.as_deref().unwrap_or_default());
    let step = match client.as_str() {
        "local" => {
            let full = chunk.full_return;
            let request = job_request(chunk)?;
            backend.check(user, request.clone())?;
            Step::Local { request, full }
        }
        "local_async" => {
            let request = job_request(chunk)?;
            backend.check(user, request.clone())?;
            Step::Async(request)
        }
        "runner" => {
            backend.require(user, Grant::Jobs)?;
            runner_fun(&chunk)?;
            Step::Runner(chunk)
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "client {other:?} is not supported; use local, local_async or runner"
            )))
        }
    };
    Ok((detail, step))
}

/// `POST /`: every chunk is checked first (function, target, ACL), so a
/// list is all or nothing: one refused chunk and none runs. Then each
/// runs in order; the audit log lists exactly the chunks that ran.
async fn lowstate(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    request: Request,
) -> Result<Response, ApiError> {
    let chunks = lowstate_chunks(request).await?;
    if chunks.is_empty() {
        return Err(ApiError::bad_request("lowstate: no chunk"));
    }
    let steps = chunks
        .into_iter()
        .map(|chunk| check_chunk(&backend, &user, chunk))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut results = Vec::with_capacity(steps.len());
    let mut ran = Vec::new();
    for (detail, step) in steps {
        let result = match step {
            Step::Local { request, full } => local(&backend, &user, request, full).await,
            Step::Async(request) => backend
                .submit(&user, request)
                .map(|s| json!({ "jid": s.jid, "minions": s.minions })),
            Step::Runner(chunk) => runner(&backend, &user, chunk),
        };
        match result {
            Ok(value) => {
                ran.push(detail);
                results.push(value);
            }
            Err(e) => {
                // Checked a moment ago; what ran before this is audited.
                let detail = AuditDetail(format!(
                    "ran: {}; then {detail} failed",
                    if ran.is_empty() {
                        "nothing".to_owned()
                    } else {
                        ran.join("; ")
                    }
                ));
                let mut response = e.into_response();
                response.extensions_mut().insert(detail);
                return Ok(response);
            }
        }
    }
    let detail = AuditDetail(ran.join("; "));
    Ok((axum::Extension(detail), Json(json!({ "return": results }))).into_response())
}

/// A lowstate chunk as a job: `arg` words of the form `key=value` become
/// keyword arguments (Salt's parse_input), values read as JSON when they
/// are (`3`, `true`) and as text otherwise.
fn job_request(chunk: Chunk) -> Result<JobRequest, ApiError> {
    let fun = chunk
        .fun
        .ok_or_else(|| ApiError::bad_request("lowstate: `fun` is missing"))?;
    let target = match chunk.tgt {
        Some(Value::String(t)) => t,
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            })
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "lowstate: `tgt` must be text or a list, not {other}"
            )))
        }
        None => return Err(ApiError::bad_request("lowstate: `tgt` is missing")),
    };
    let tgt_type = chunk
        .tgt_type
        .or(chunk.expr_form)
        .unwrap_or_else(|| "glob".into());
    let tgt_type = serde_json::from_value(Value::String(tgt_type.clone())).map_err(|_| {
        ApiError::bad_request(format!(
            "lowstate: tgt_type {tgt_type:?}: use glob, pcre, list, grain or compound"
        ))
    })?;
    let words = match chunk.arg {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list,
        Some(one) => vec![one],
    };
    let mut arg = Vec::new();
    let mut kwarg = chunk.kwarg.unwrap_or_default();
    for word in words {
        match word.as_str().and_then(keyword) {
            Some((key, value)) => {
                kwarg.insert(key.to_owned(), value_of(value));
            }
            None => arg.push(word),
        }
    }
    let timeout = match chunk.timeout {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("lowstate: timeout {s:?} is not a number"))
        })?),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "lowstate: timeout must be a number, not {other}"
            )))
        }
    };
    // pepper sends `batch: null` unless asked for batches.
    let batch = match chunk.rest.get("batch") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "lowstate: batch must be a number or a percentage, not {other}"
            )))
        }
    };
    Ok(JobRequest {
        target,
        tgt_type,
        fun,
        arg,
        kwarg,
        timeout,
        batch,
        ..JobRequest::default()
    })
}

/// `local`: publish, wait for the returns (the job's timeout at most),
/// answer `{minion: return}` for those that returned, as salt-api does.
/// With `full_return`, each minion's answer is `{ret, retcode, jid}`.
/// It waits on the event stream (subscribed before the job is published,
/// so no return can slip by), not by polling.
async fn local(
    backend: &Shared,
    user: &str,
    request: JobRequest,
    full: bool,
) -> Result<Value, ApiError> {
    let mut live = backend.subscribe();
    let submitted = backend.submit(user, request)?;
    loop {
        let view = backend.job(&submitted.jid)?;
        if view.done && full {
            return Ok(Value::Object(
                view.returns
                    .iter()
                    .map(|(id, ret)| {
                        let full =
                            json!({ "ret": ret.data, "retcode": ret.retcode, "jid": view.job.jid });
                        (id.clone(), full)
                    })
                    .collect(),
            ));
        }
        if view.done {
            return Ok(returns_by_minion(&view));
        }
        // The job's next return, or its deadline (minions that never
        // return): either way, look again.
        let left = view
            .job
            .deadline()
            .saturating_sub(halite_proto::time::now_ms());
        let wait = Duration::from_millis(left.max(1));
        if let Ok(Err(ApiGone)) =
            tokio::time::timeout(wait, next_return(&mut live, &submitted.jid)).await
        {
            return Err(ApiError::internal("the master is stopping"));
        }
    }
}

/// The event stream closed: the master is stopping.
struct ApiGone;

/// Waits for the next return of `jid` on the live stream (or for having
/// missed entries, after which the caller looks at the store again).
async fn next_return(
    live: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<BusEntry>>,
    jid: &halite_proto::Jid,
) -> Result<(), ApiGone> {
    loop {
        match live.recv().await {
            Ok(entry) if entry.kind == "job/return" && entry.jid.as_ref() == Some(jid) => {
                return Ok(())
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Ok(()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Err(ApiGone),
        }
    }
}

fn returns_by_minion(view: &JobView) -> Value {
    Value::Object(
        view.returns
            .iter()
            .map(|(id, ret)| (id.clone(), ret.data.clone()))
            .collect(),
    )
}

/// `runner`: the job lookups portals use.
/// The runner functions halite serves.
const RUNNERS: [&str; 2] = ["jobs.lookup_jid", "jobs.list_jobs"];

/// A chunk's runner function, if halite serves it.
fn runner_fun(chunk: &Chunk) -> Result<&str, ApiError> {
    let fun = chunk.fun.as_deref().unwrap_or_default();
    if RUNNERS.contains(&fun) {
        Ok(fun)
    } else {
        Err(ApiError::bad_request(format!(
            "runner {fun:?} is not supported; use jobs.lookup_jid or jobs.list_jobs"
        )))
    }
}

fn runner(backend: &Shared, user: &str, chunk: Chunk) -> Result<Value, ApiError> {
    backend.require(user, Grant::Jobs)?;
    match runner_fun(&chunk)? {
        "jobs.lookup_jid" => {
            let jid = chunk
                .jid
                .as_ref()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .or_else(|| {
                    chunk
                        .kwarg
                        .as_ref()
                        .and_then(|k| k.get("jid"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                })
                .or_else(|| runner_word(&chunk, "jid"))
                .ok_or_else(|| ApiError::bad_request("jobs.lookup_jid needs jid"))?;
            Ok(returns_by_minion(&backend.job(&parse_jid(&jid)?)?))
        }
        _ => list_jobs(backend),
    }
}

/// A runner argument given as a plain word (`jobs.lookup_jid 2026...`)
/// or as `key=value`.
fn runner_word(chunk: &Chunk, key: &str) -> Option<String> {
    let words = match &chunk.arg {
        Some(Value::Array(list)) => list.clone(),
        Some(one) => vec![one.clone()],
        None => Vec::new(),
    };
    let prefix = format!("{key}=");
    words.iter().filter_map(|w| w.as_str()).find_map(|w| {
        w.strip_prefix(&prefix)
            .map(str::to_owned)
            .or_else(|| (!w.contains('=')).then(|| w.to_owned()))
    })
}

/// Salt's job listing: `{jid: {Function, Arguments, Target, ...}}`.
fn list_jobs(backend: &Shared) -> Result<Value, ApiError> {
    let page = backend.jobs(&JobFilter {
        limit: Some(1000),
        ..JobFilter::default()
    })?;
    let mut out = Map::new();
    for job in page.jobs {
        out.insert(
            job.jid.to_string(),
            json!({
                "Function": job.fun,
                "Target": job.target,
                "Target-type": "glob",
                "User": job.user,
                "StartTime": start_time(job.jid.as_str()),
                "Arguments": [],
            }),
        );
    }
    Ok(Value::Object(out))
}

/// Salt's `StartTime` for a jid (`YYYYMMDDhhmmssffffff`):
/// `2026, Nov 22 15:30:12.123456`.
fn start_time(jid: &str) -> String {
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

async fn minions(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    let all: Map<String, Value> = backend
        .minions()?
        .into_iter()
        .map(|m| (m.id, m.grains))
        .collect();
    Ok(Json(json!({ "return": [all] })))
}

async fn minion(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    halite_proto::ident::validate_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let view = backend.minion(&id)?;
    Ok(Json(json!({ "return": [{ view.id: view.grains }] })))
}

/// `POST /minions`: lowstate without `client`, always asynchronous.
async fn minions_async(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    request: Request,
) -> Result<Response, ApiError> {
    let chunks = lowstate_chunks(request).await?;
    let mut results = Vec::new();
    let mut links = Vec::new();
    for chunk in chunks {
        let submitted = backend.submit(&user, job_request(chunk)?)?;
        links.push(json!({ "href": format!("/jobs/{}", submitted.jid) }));
        results.push(json!({ "jid": submitted.jid, "minions": submitted.minions }));
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Extension(AuditDetail("minions async".into())),
        Json(json!({ "return": results, "_links": { "jobs": links } })),
    )
        .into_response())
}

async fn jobs(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
) -> Result<impl IntoResponse, ApiError> {
    backend.require(&user, Grant::Jobs)?;
    Ok(Json(json!({ "return": [list_jobs(&backend)?] })))
}

async fn job(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(jid): Segment,
) -> Result<impl IntoResponse, ApiError> {
    backend.require(&user, Grant::Jobs)?;
    let view = backend.job(&parse_jid(&jid)?)?;
    let result: Map<String, Value> = view
        .returns
        .iter()
        .map(|(id, ret)| {
            (
                id.clone(),
                json!({ "return": ret.data, "success": ret.success, "retcode": ret.retcode }),
            )
        })
        .collect();
    let info = json!({
        "jid": view.job.jid,
        "Function": view.job.fun,
        "Arguments": view.job.arg,
        "Target": view.job.target,
        "Target-type": view.job.tgt_type,
        "User": view.job.user,
        "StartTime": start_time(view.job.jid.as_str()),
        "Minions": view.job.expected,
        "Result": result,
    });
    Ok(Json(
        json!({ "info": [info], "return": [returns_by_minion(&view)] }),
    ))
}

async fn events(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        Some(after) => after,
        None => backend.stream_head()?,
    };
    let reader = Some(user);
    Ok(crate::sse::stream(backend, None, after, crate::sse::Shape::Salt, reader).into_response())
}

async fn keys(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    use halite_proto::message::KeyStatus;
    let view = backend.keys()?;
    let ids = |status: KeyStatus| -> Vec<String> {
        view.keys
            .iter()
            .filter(|k| k.status == status)
            .map(|k| k.id.clone())
            .collect()
    };
    Ok(Json(json!({ "return": {
        "local": ["master.pem", "master.pub"],
        "minions": ids(KeyStatus::Accepted),
        "minions_pre": ids(KeyStatus::Pending),
        "minions_rejected": ids(KeyStatus::Rejected),
        "minions_denied": ids(KeyStatus::Denied),
    }})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_salts_format() {
        assert_eq!(
            start_time("20261122153012123456"),
            "2026, Nov 22 15:30:12.123456"
        );
    }

    #[test]
    fn forms_repeat_keys_into_lists() {
        let value = form_value(b"client=local&tgt=*&fun=cmd.run&arg=uname+-a&arg=x");
        assert_eq!(value["arg"], json!(["uname -a", "x"]));
        assert_eq!(value["tgt"], json!("*"));
        let value = form_value(b"fun=test.ping&arg=one");
        assert_eq!(value["arg"], json!(["one"]));
    }
}
