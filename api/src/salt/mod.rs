//! salt-api (rest_cherrypy) compatible routes, so portals and tools
//! written against Salt (pushguide, `pepper`) work unchanged.
//!
//! `POST /login`, `POST /` with lowstate (clients `local`, `local_async`,
//! `runner`, `runner_async`, `wheel`, `wheel_async`), `GET|POST
//! /minions`, `GET /minions/{id}`, `GET /jobs`, `GET /jobs/{jid}`, `GET
//! /events`, `GET /keys`, `GET /stats`, `POST /logout`. Bodies are JSON or
//! form-encoded; answers are salt-api's `{"return": [...]}` shapes, and
//! errors salt-api's HTML pages with the same status. Everything goes
//! through the same [`Backend`] as `/v1`, so the ACL, audit log and store
//! are the same. `docs/api.md` lists what differs from Salt.

pub(crate) mod event;
mod runner;
mod wheel;
mod yaml;

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
use crate::types::{BusEntry, JobRequest, LoginRequest};
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

/// What salt-api's routes answer besides JSON. Errors are an HTML page
/// naming the status and the reason (clients show it or look at the
/// status only); halite's `/v1` keeps its JSON errors. Every error on
/// salt-api's routes (a bad lowstate, a missing token, a refused grant)
/// becomes that page, with the same status and halite's reason. A client
/// that asks for YAML (`Accept: application/x-yaml`) gets YAML. Also
/// counts the requests `/stats` reports.
pub(crate) async fn salt_answers(request: Request, next: axum::middleware::Next) -> Response {
    let salt_route = is_salt_path(request.uri().path());
    let wants_yaml = request
        .headers()
        .get(header::ACCEPT)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-yaml"));
    let response = next.run(request).await;
    if !salt_route {
        return response;
    }
    REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !json {
        return response;
    }
    if !(status.is_client_error() || status.is_server_error()) {
        if !wants_yaml {
            return response;
        }
        let (mut parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
            // Deeper than serde_json reads (or not JSON after all): as it was.
            return Response::from_parts(parts, axum::body::Body::from(bytes));
        };
        parts.headers.insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-yaml"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::from(yaml::to_yaml(&value)));
    }
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .unwrap_or_default();
    let reason = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let page = format!(
        "<!DOCTYPE html>\n<html>\n<head>\n    <meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"></meta>\n    <title>{title}</title>\n</head>\n    <body>\n        <h2>{title}</h2>\n        <p>{}</p>\n    </body>\n</html>\n",
        escape_html(&reason)
    );
    parts.headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/html;charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(page))
}

/// Is `path` one of salt-api's routes (which answer errors as pages)?
/// (Quotes stay as they are in the page, as salt-api leaves them.)
fn is_salt_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(
        first,
        "" | "login" | "logout" | "minions" | "jobs" | "events" | "keys" | "stats" | "run"
    )
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Routes that need no token.
pub(crate) fn open_routes() -> Router<Shared> {
    Router::new()
        .route("/login", post(login))
        .route("/run", post(run_with_credentials))
        .route("/", get(welcome))
        .layer(axum::middleware::map_response(salt_version))
}

/// The lowstate clients halite serves (salt-api's `GET /` lists them).
const CLIENTS: [&str; 6] = [
    "local",
    "local_async",
    "runner",
    "runner_async",
    "wheel",
    "wheel_async",
];

/// `GET /`: what salt-api answers there, so clients can probe the API;
/// a browser (asking for HTML first) is sent to the portal.
async fn welcome(headers: axum::http::HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    let html_first = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| first.trim().starts_with("text/html"));
    if html_first {
        return axum::response::Redirect::to("/ui/").into_response();
    }
    Json(json!({ "return": "Welcome", "clients": CLIENTS })).into_response()
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
        .route("/keys/{id}", get(key))
        .route("/stats", get(stats))
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
        serde_json::from_slice::<Value>(&wide_integers_as_text(&bytes))
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("body: {e}")))
}

/// Python clients send a jid given as `jid=2026...` as a JSON integer
/// (Python's are unbounded); past 64 bits serde_json would read it as a
/// float and lose digits. Integer literals of 20 digits or more outside
/// strings become strings of the same digits before parsing.
fn wide_integers_as_text(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let (mut in_string, mut escaped, mut i) = (false, false, 0);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            in_string = escaped || b != b'"';
            escaped = !escaped && b == b'\\';
        } else if b == b'"' {
            in_string = true;
        } else if b.is_ascii_digit()
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || matches!(bytes[i - 1], b'.' | b'-' | b'+')))
        {
            let end = bytes[i..]
                .iter()
                .position(|c| !c.is_ascii_digit())
                .map_or(bytes.len(), |n| i + n);
            let integer = !matches!(bytes.get(end), Some(b'.' | b'e' | b'E'));
            if end - i >= 20 && integer {
                let out = out.get_or_insert_with(|| bytes[..i].to_vec());
                out.push(b'"');
                out.extend_from_slice(&bytes[i..end]);
                out.push(b'"');
                i = end;
                continue;
            }
            if let Some(out) = out.as_mut() {
                out.extend_from_slice(&bytes[i..end]);
            }
            i = end;
            continue;
        }
        if let Some(out) = out.as_mut() {
            out.push(b);
        }
        i += 1;
    }
    match out {
        Some(out) => std::borrow::Cow::Owned(out),
        None => std::borrow::Cow::Borrowed(bytes),
    }
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
    // Salt lists the grants sorted (target tables after the names).
    let mut perms = token.perms.clone();
    perms.sort_by_key(|p| (p.as_str().is_none(), p.as_str().map(str::to_owned)));
    let answer = json!({ "return": [{
        "token": token.token,
        "start": token.issued_at as f64 / 1000.0,
        "expire": token.expires_at as f64 / 1000.0,
        "user": token.user,
        "eauth": eauth,
        "perms": perms,
    }]});
    let cookie = format!("session_id={}; Path=/; HttpOnly", token.token);
    // salt-api also hands the token back as a header.
    let token_header = token.token.clone();
    Ok((
        [
            (header::SET_COOKIE, cookie),
            (
                header::HeaderName::from_static("x-auth-token"),
                token_header,
            ),
        ],
        Json(answer),
    )
        .into_response())
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
    /// `wheel` / `runner` (and their `_async`): run on the master.
    Master(MasterCall),
}

/// A wheel or runner call, checked.
struct MasterCall {
    kind: MasterClient,
    fun: String,
    args: CallArgs,
    /// `wheel` / `runner` (the answer) rather than their `_async` (a tag).
    wait: bool,
    /// A runner's whole ret event instead of its bare return.
    full_return: bool,
}

/// The two clients that run functions on the master itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MasterClient {
    Wheel,
    Runner,
}

impl MasterClient {
    /// Salt's tag prefix for its events (`salt/wheel/<jid>`).
    fn tag(self) -> &'static str {
        match self {
            MasterClient::Wheel => "salt/wheel",
            MasterClient::Runner => "salt/run",
        }
    }
}

/// A wheel or runner function's arguments as Salt collects them: the
/// chunk's `arg` list (its `key=value` words are keywords), its `kwarg`
/// table, and every other key of the chunk (`match`, `jid`, ...).
#[derive(Clone, Debug, Default)]
pub(crate) struct CallArgs {
    positional: Vec<Value>,
    named: Map<String, Value>,
}

impl CallArgs {
    fn of(chunk: &Chunk) -> CallArgs {
        let mut args = CallArgs::default();
        let words = match &chunk.arg {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.clone(),
            Some(one) => vec![one.clone()],
        };
        for word in words {
            match word.as_str().and_then(keyword) {
                Some((key, value)) => {
                    args.named.insert(key.to_owned(), value_of(value));
                }
                None => args.positional.push(word),
            }
        }
        if let Some(kwarg) = &chunk.kwarg {
            args.named.extend(kwarg.clone());
        }
        for (key, value) in &chunk.rest {
            // Credentials and client settings are not arguments.
            if !matches!(
                key.as_str(),
                "username" | "password" | "eauth" | "token" | "batch" | "ret" | "print_event"
            ) {
                args.named.insert(key.clone(), value.clone());
            }
        }
        if let Some(jid) = &chunk.jid {
            args.named.insert("jid".into(), jid.clone());
        }
        if let Some(tgt) = &chunk.tgt {
            args.named.insert("tgt".into(), tgt.clone());
        }
        args
    }

    /// The argument `name`, by keyword or else at `position`.
    pub(crate) fn get(&self, name: &str, position: usize) -> Option<&Value> {
        self.named
            .get(name)
            .or_else(|| self.positional.get(position))
    }

    /// The keyword argument `name`.
    pub(crate) fn named(&self, name: &str) -> Option<&Value> {
        self.named.get(name)
    }

    /// A yes/no keyword (`true`, `"True"`, `1`); absent is no.
    pub(crate) fn flag(&self, name: &str) -> bool {
        match self.named.get(name) {
            Some(Value::Bool(b)) => *b,
            Some(Value::Number(n)) => n.as_i64() != Some(0),
            Some(Value::String(s)) => {
                matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "1")
            }
            _ => false,
        }
    }

    /// The arguments as Salt's events show them (`fun_args`).
    fn as_fun_args(&self) -> Value {
        let mut list = self.positional.clone();
        if !self.named.is_empty() {
            list.push(Value::Object(self.named.clone()));
        }
        Value::Array(list)
    }
}

/// Checks a chunk as fully as running it would, without running it.
fn check_chunk(backend: &Shared, user: &str, chunk: Chunk) -> Result<(String, Step), ApiError> {
    let client = chunk.client.clone().unwrap_or_else(|| "local".into());
    let fun = chunk.fun.clone().unwrap_or_default();
    let detail = format!("{client} {fun}");
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
        "wheel" | "wheel_async" => {
            backend.require(user, Grant::Wheel)?;
            // An unknown wheel function answers like one that failed
            // (`success: false`), as in Salt; one without a module is
            // not a call at all.
            if !fun.contains('.') {
                return Err(ApiError::bad_request(format!(
                    "wheel: {fun:?} is not module.function; halite serves {}",
                    wheel::FUNCTIONS.join(", ")
                )));
            }
            Step::Master(MasterCall {
                kind: MasterClient::Wheel,
                args: CallArgs::of(&chunk),
                fun,
                wait: client == "wheel",
                full_return: chunk.full_return,
            })
        }
        "runner" | "runner_async" => {
            if !runner::known(&fun) {
                return Err(runner::unknown(&fun));
            }
            backend.require(user, runner::grant(&fun))?;
            // Deleting keys is key management: checked with the rest, so a
            // list with this chunk runs whole or not at all.
            if runner::deletes_keys(&fun, &CallArgs::of(&chunk)) {
                backend.require(user, Grant::Wheel)?;
            }
            Step::Master(MasterCall {
                kind: MasterClient::Runner,
                args: CallArgs::of(&chunk),
                fun,
                wait: client == "runner",
                full_return: chunk.full_return,
            })
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "Client disabled: {other:?}. halite serves {}",
                CLIENTS.join(", ")
            )))
        }
    };
    Ok((detail, step))
}

/// Runs a wheel or runner function and puts it on the event stream as
/// Salt does (`…/new`, then `…/ret`). A wheel call answers Salt's
/// envelope (`{tag, data: {fun, jid, tag, user, return, success}}`), a
/// runner call its bare return; an `_async` call only `{tag, jid}`. A
/// wheel function that fails answers `success: false` with the reason as
/// its return, as Salt's wheel does; a runner's failure is an error.
fn run_on_master(backend: &Shared, user: &str, call: &MasterCall) -> Result<Value, ApiError> {
    let MasterCall {
        kind,
        fun,
        args,
        wait,
        full_return,
    } = call;
    let (kind, fun, wait, full_return) = (*kind, fun.as_str(), *wait, *full_return);
    let jid = MASTER_JIDS.next();
    let tag = format!("{}/{jid}", kind.tag());
    let salt_fun = match kind {
        MasterClient::Wheel => format!("wheel.{fun}"),
        MasterClient::Runner => format!("runner.{fun}"),
    };
    let announce = |suffix: &str, extra: Map<String, Value>| {
        let mut data = Map::new();
        data.insert("fun".into(), json!(salt_fun));
        data.insert("fun_args".into(), args.as_fun_args());
        data.insert("jid".into(), json!(jid));
        data.insert("user".into(), json!(user));
        data.insert("tag".into(), json!(format!("{tag}/{suffix}")));
        data.extend(extra);
        let entry = BusEntry {
            id: 0,
            kind: kind.tag().to_owned(),
            at: halite_proto::time::now_ms(),
            jid: None,
            minion: None,
            data: Value::Object(data),
        };
        if let Err(e) = backend.announce(entry) {
            tracing::warn!(error = %e.message, fun = %salt_fun, "cannot put a call's event on the stream");
        }
    };
    announce("new", Map::new());
    let result = match kind {
        MasterClient::Wheel => wheel::call(backend, fun, args),
        MasterClient::Runner => runner::call(backend, user, fun, args),
    };
    // A refused grant stays an error; any other failure is the call's
    // answer, worded as Salt words it.
    let result = match result {
        Err(e) if e.status == StatusCode::FORBIDDEN || e.status == StatusCode::UNAUTHORIZED => {
            return Err(e)
        }
        other => other,
    };
    let kind_name = match kind {
        MasterClient::Wheel => "wheel",
        MasterClient::Runner => "runner",
    };
    let (ret, success) = match &result {
        Ok(value) => (value.clone(), true),
        Err(e) => (
            json!(format!(
                "Exception occurred in {kind_name} {fun}: {}",
                e.message
            )),
            false,
        ),
    };
    let mut done = Map::new();
    let size = serde_json::to_vec(&ret).map_or(0, |b| b.len());
    let kept = if size <= EVENT_RETURN_LIMIT {
        ret.clone()
    } else {
        json!(format!(
            "({size} bytes: not kept on the event stream; the call's answer has it)"
        ))
    };
    done.insert("return".into(), kept);
    done.insert("success".into(), json!(success));
    announce("ret", done.clone());
    if !wait {
        return Ok(json!({ "tag": tag, "jid": jid }));
    }
    if full_return && kind == MasterClient::Runner {
        // Salt's runner with `full_return`: the whole ret event.
        let mut data = done;
        data.insert("return".into(), ret);
        data.insert("fun".into(), json!(salt_fun));
        data.insert("fun_args".into(), args.as_fun_args());
        data.insert("jid".into(), json!(jid));
        data.insert("user".into(), json!(user));
        data.insert(
            "_stamp".into(),
            json!(halite_proto::time::iso_ms(halite_proto::time::now_ms())),
        );
        return Ok(json!({ "tag": format!("{tag}/ret"), "data": data }));
    }
    match kind {
        MasterClient::Wheel => Ok(json!({
            "tag": tag,
            "data": {
                "fun": salt_fun,
                "jid": jid,
                "tag": tag,
                "user": user,
                "return": ret,
                "success": success,
            }
        })),
        MasterClient::Runner => Ok(ret),
    }
}

/// The grant that lets a user see a runner call's events
/// (`runner.jobs.list_jobs` needs `@jobs`, `runner.manage.up` `@runner`).
pub(crate) fn runner_grant(salt_fun: &str) -> Grant {
    runner::grant(salt_fun.strip_prefix("runner.").unwrap_or(salt_fun))
}

/// A call's return kept on the event stream up to this size; a larger one
/// (a listing of thousands of jobs) is summarised there, not copied.
const EVENT_RETURN_LIMIT: usize = 64 * 1024;

/// Job ids for wheel and runner calls (Salt gives each one).
static MASTER_JIDS: std::sync::LazyLock<halite_proto::jid::JidGenerator> =
    std::sync::LazyLock::new(halite_proto::jid::JidGenerator::new);

/// `POST /`: every chunk is checked first (function, target, ACL), so a
/// list is all or nothing: one refused chunk and none runs. Then each
/// runs in order; the audit log lists exactly the chunks that ran.
async fn lowstate(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    request: Request,
) -> Result<Response, ApiError> {
    let chunks = lowstate_chunks(request).await?;
    let chunks = chunks.into_iter().map(|c| (user.clone(), c)).collect();
    run_lowstate(&backend, chunks).await
}

/// `POST /run`: lowstate whose chunks carry their own credentials
/// (`username`, `password`, `eauth`), no session. Each user is checked
/// like a login (throttled), the chunks run as that user, and the token
/// the check made is ended at once.
async fn run_with_credentials(
    State(backend): State<Shared>,
    Extension(throttle): Extension<Arc<LoginThrottle>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (from, ip) = (client_address(&request), crate::routes::client_ip(&request));
    let chunks = lowstate_chunks(request).await?;
    let mut tokens = Vec::new();
    let result = run_as_their_users(&backend, &throttle, chunks, &from, ip, &mut tokens).await;
    // The tokens the checks made end whatever happened.
    for token in tokens {
        if let Err(e) = backend.logout(&token) {
            tracing::warn!(error = %e.message, "cannot end /run's token");
        }
    }
    result
}

/// `/run`'s work: each chunk's user checked (their tokens pushed to
/// `tokens`), the chunks run, and the request audited as each user.
async fn run_as_their_users(
    backend: &Shared,
    throttle: &LoginThrottle,
    chunks: Vec<Chunk>,
    from: &str,
    ip: Option<std::net::IpAddr>,
    tokens: &mut Vec<String>,
) -> Result<Response, ApiError> {
    let mut users: std::collections::HashMap<(String, String), String> = Default::default();
    let mut runs = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let credential = |key: &str| {
            chunk
                .rest
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::unauthorized(format!(
                        "/run: every chunk needs `username` and `password` (no `{key}`)"
                    ))
                })
        };
        let pair = (credential("username")?, credential("password")?);
        let user = match users.get(&pair) {
            Some(user) => user.clone(),
            None => {
                let login = LoginRequest {
                    username: pair.0.clone(),
                    password: pair.1.clone(),
                    eauth: None,
                };
                let token =
                    crate::routes::check_login(backend, throttle, login, from.to_owned(), ip)
                        .await?;
                tokens.push(token.token);
                users.insert(pair, token.user.clone());
                token.user
            }
        };
        runs.push((user, chunk));
    }
    let mut who: Vec<String> = runs.iter().map(|(user, _)| user.clone()).collect();
    who.sort();
    who.dedup();
    let response = match run_lowstate(backend, runs).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    // No token passed `require_token`, which audits the other routes:
    // the same record here, once per user.
    for user in who {
        backend.audit(crate::types::AuditRecord {
            at: halite_proto::time::now_ms(),
            user,
            from: from.to_owned(),
            method: "POST".into(),
            path: "/run".into(),
            status: response.status().as_u16(),
            detail: response
                .extensions()
                .get::<AuditDetail>()
                .map(|d| d.0.clone()),
        });
    }
    Ok(response)
}

/// Checks every chunk (as its user), then runs them in order.
async fn run_lowstate(
    backend: &Shared,
    chunks: Vec<(String, Chunk)>,
) -> Result<Response, ApiError> {
    if chunks.is_empty() {
        return Err(ApiError::bad_request("lowstate: no chunk"));
    }
    let steps = chunks
        .into_iter()
        .map(|(user, chunk)| check_chunk(backend, &user, chunk).map(|(d, s)| (user, d, s)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let mut results = Vec::with_capacity(steps.len());
    let mut ran = Vec::new();
    for (user, detail, step) in steps {
        let result = match step {
            Step::Local { request, full } => local(backend, &user, request, full).await,
            Step::Async(request) => backend
                .submit(&user, request)
                .map(|s| json!({ "jid": s.jid, "minions": s.minions })),
            Step::Master(call) => {
                let backend = backend.clone();
                let user = user.clone();
                // Key files are written and synced: off the async workers.
                tokio::task::spawn_blocking(move || run_on_master(&backend, &user, &call))
                    .await
                    .map_err(|e| ApiError::internal(format!("the call stopped: {e}")))?
            }
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
            return Ok(runner::returns_by_minion(&view));
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
    let listing = runner::list_jobs(&backend, &CallArgs::default())?;
    Ok(Json(json!({ "return": [listing] })))
}

async fn job(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(jid): Segment,
) -> Result<impl IntoResponse, ApiError> {
    backend.require(&user, Grant::Jobs)?;
    let jid = parse_jid(&jid)?;
    match backend.job(&jid) {
        Ok(view) => Ok(Json(json!({
            "info": [runner::job_info(&view)],
            "return": [runner::returns_by_minion(&view)],
        }))),
        // salt-api answers an unknown jid with 200 and an `Error`.
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(Json(json!({
            "info": [runner::no_such_job(&jid)],
            "return": [{}],
        }))),
        Err(e) => Err(e),
    }
}

/// When this process started serving salt-api routes (for `/stats`).
static STARTED: std::sync::LazyLock<(std::time::Instant, u64)> =
    std::sync::LazyLock::new(|| (std::time::Instant::now(), halite_proto::time::now_ms()));

/// Requests the salt-api routes answered, for `/stats`.
static REQUESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `GET /stats`: rest_cherrypy's server statistics, in its shape
/// (`CherryPy Applications` and `Cheroot HTTPServer` sections), from
/// what halite counts: uptime and the requests its salt-api routes
/// answered. Needs a token, as salt-api does.
async fn stats() -> Json<Value> {
    let (since, started_ms) = *STARTED;
    let uptime = since.elapsed().as_secs_f64();
    let requests = REQUESTS.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "CherryPy Applications": {
            "Enabled": true,
            "Bytes Read/Request": 0.0,
            "Bytes Read/Second": 0.0,
            "Bytes Written/Request": 0.0,
            "Bytes Written/Second": 0.0,
            "Current Requests": 1,
            "Current Time": halite_proto::time::now_ms() as f64 / 1000.0,
            "Requests/Second": if uptime > 0.0 { requests as f64 / uptime } else { 0.0 },
            "Server Version": concat!("halite ", env!("CARGO_PKG_VERSION")),
            "Start Time": started_ms as f64 / 1000.0,
            "Total Bytes Read": 0,
            "Total Bytes Written": 0,
            "Total Requests": requests,
            "Total Time": uptime,
            "Uptime": uptime,
            "Requests": {},
        },
        format!("Cheroot HTTPServer {}", std::process::id()): {
            "Enabled": true,
            "Accepts": requests,
            "Requests": requests,
            "Run time": uptime,
            "Server Version": concat!("halite ", env!("CARGO_PKG_VERSION")),
            "Threads": 0,
            "Worker Threads": {},
        },
    }))
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

/// `GET /keys`: `key.list_all`'s return (salt-api runs the wheel; so it
/// needs `@wheel`).
async fn keys(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
) -> Result<impl IntoResponse, ApiError> {
    backend.require(&user, Grant::Wheel)?;
    let all = wheel::call(&backend, "key.list_all", &CallArgs::default())?;
    Ok(Json(json!({ "return": all })))
}

/// `GET /keys/{id}`: that minion's key fingerprint by state
/// (`key.finger`), `{}` for an id without a key.
async fn key(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    backend.require(&user, Grant::Wheel)?;
    halite_proto::ident::validate_id(&id).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let args = CallArgs {
        positional: vec![json!(id)],
        named: Map::new(),
    };
    let finger = wheel::call(&backend, "key.finger", &args)?;
    Ok(Json(json!({ "return": finger })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_integers_keep_their_digits() {
        let body =
            br#"[{"jid": 20261130085803336012, "n": 12, "x": "20261130085803336012", "f": 1.5}]"#;
        let value: Value = serde_json::from_slice(&wide_integers_as_text(body)).unwrap();
        assert_eq!(value[0]["jid"], "20261130085803336012");
        assert_eq!(value[0]["n"], 12);
        assert_eq!(value[0]["x"], "20261130085803336012");
        assert_eq!(value[0]["f"], 1.5);
        let plain = br#"{"a": "b\"c", "n": -3, "f": 0.123456789012345678901, "g": -12345678901234567890, "e": 1e123456789012345678901}"#;
        assert!(matches!(
            wide_integers_as_text(plain),
            std::borrow::Cow::Borrowed(_)
        ));
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
