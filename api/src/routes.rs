//! The `/v1` routes.
//!
//! Every route but `/v1/health` needs a token (`X-Auth-Token` or
//! `Authorization: Bearer`). Bad JSON, unknown fields and bad ids get a
//! 4xx with a JSON body naming the problem.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use halite_proto::Jid;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::backend::{AppAction, Backend, Grant, KeyAction};
use crate::throttle::{LoginThrottle, Throttled};
use crate::types::{AuditRecord, JobFilter, JobRequest, JobView, LoginRequest, LoginToken};
use crate::ApiError;
use halite_model::{HookOutcome, NewSchedule, Schedule};

/// The backend as the routes share it.
pub type Shared = Arc<dyn Backend>;

/// The user a request was authenticated as, for handlers that record it.
#[derive(Clone, Debug)]
pub(crate) struct User(pub String);

/// Builds the API router over a backend: the native `/v1` routes and
/// salt-api's (see [`crate::salt`]).
pub fn router(backend: Arc<dyn Backend>) -> Router {
    router_with(backend, Router::new())
}

/// [`router`] with more routes (the portal's) served beside the API's,
/// under the same login throttle and error answers.
pub fn router_with(backend: Arc<dyn Backend>, extra: Router<Shared>) -> Router {
    let authed = Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{jid}", get(show_job))
        .route("/v1/jobs/{jid}/cancel", post(cancel))
        .route("/v1/jobs/{jid}/events", get(job_events))
        .route("/v1/events", get(all_events))
        .route("/v1/minions", get(minions))
        .route("/v1/minions/{id}", get(minion))
        .route("/v1/minions/{id}/jobs", get(minion_jobs))
        .route("/v1/presence", get(presence))
        .route("/v1/checks", get(checks))
        .route("/v1/keys", get(keys))
        // `_all` can never be a minion id (ids start with a letter or digit).
        .route("/v1/keys/_all/accept", post(accept_all))
        .route("/v1/keys/{id}", get(key).delete(delete_key))
        .route("/v1/keys/{id}/accept", post(accept))
        .route("/v1/keys/{id}/reject", post(reject))
        .route("/v1/apps", get(apps))
        .route("/v1/apps/{name}", get(app))
        .route("/v1/apps/{name}/releases", get(app_releases))
        .route("/v1/apps/{name}/deploy", post(app_deploy))
        .route("/v1/apps/{name}/rollback", post(app_rollback))
        .route("/v1/apps/{name}/versions", get(app_versions))
        .route("/v1/apps/{name}/changes", get(app_changes))
        .route("/v1/requests", post(create_request).get(list_requests))
        .route("/v1/requests/{id}", get(show_request))
        .route("/v1/requests/{id}/changes", get(request_changes))
        .route("/v1/requests/{id}/{step}", post(request_step))
        .route("/v1/triggers", get(list_triggers))
        .route("/v1/apps/{name}/trigger/{action}", post(trigger_action))
        .route("/v1/rollouts", get(list_rollouts).post(start_rollout))
        .route("/v1/rollouts/{id}", get(show_rollout))
        .route("/v1/rollouts/{id}/{action}", post(rollout_action))
        .route("/v1/schedules", get(list_schedules).post(create_schedule))
        .route(
            "/v1/schedules/{name}",
            get(show_schedule).delete(remove_schedule),
        )
        .route("/v1/schedules/{name}/pause", post(pause_schedule))
        .route("/v1/schedules/{name}/resume", post(resume_schedule))
        .route("/v1/stats", get(stats))
        .route("/v1/audit", get(audit_log).post(audit_note))
        .route("/v1/logout", post(logout))
        .merge(crate::salt::authed_routes())
        .route_layer(middleware::from_fn_with_state(
            backend.clone(),
            require_token,
        ));
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/login", post(login))
        .route("/v1/hooks/{app}", post(webhook))
        .merge(crate::salt::open_routes())
        .merge(authed)
        .merge(extra)
        // After routing, so the route's template is known.
        .route_layer(middleware::from_fn_with_state(
            backend.clone(),
            time_request,
        ))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::Extension(Arc::new(LoginThrottle::default())))
        .layer(middleware::from_fn(crate::salt::salt_answers))
        .with_state(backend)
}

/// Reports each routed request's template, status and duration to the
/// backend's metrics (an event stream counts until its headers are sent).
async fn time_request(State(backend): State<Shared>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    backend.request_served(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn health() -> Json<Value> {
    Json(serde_json::json!({"ok": true}))
}

/// The OpenAPI document of `/v1`, kept in the repository (`api/openapi.json`).
pub const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// What a handler that changed something says about it, for the audit
/// log (put in the response's extensions).
#[derive(Clone, Debug)]
pub(crate) struct AuditDetail(pub String);

/// The client address: the connection's peer when the server was started
/// with connect info, else `unknown`.
pub fn client_address(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(
            || "unknown".to_owned(),
            |ConnectInfo(addr)| addr.to_string(),
        )
}

/// The client's IP address, when the server was started with connect info.
pub fn client_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The portal's session cookie (its value is a login token).
pub const PORTAL_COOKIE: &str = "halite_session";

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then(|| value.to_owned())
        })
}

/// The token a request carries: `X-Auth-Token`, `Authorization: Bearer`,
/// or (for event streams only, since browsers' EventSource cannot set
/// headers, as salt-api allows) a `token` query parameter.
pub(crate) fn request_token(request: &Request) -> Option<String> {
    let headers = request.headers();
    if let Some(token) = headers.get("x-auth-token").and_then(|v| v.to_str().ok()) {
        return Some(token.trim().to_owned());
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        });
    if let Some(token) = bearer {
        return Some(token.trim().to_owned());
    }
    // salt-api's session cookie, set by `/login`.
    let cookie = cookie(headers, "session_id");
    if cookie.is_some() {
        return cookie;
    }
    // The portal's session cookie, for reading only (its pages' event
    // streams): a change through `/v1` needs the token in a header, so a
    // forged cross-site form cannot make one.
    if request.method() == Method::GET || request.method() == Method::HEAD {
        if let Some(token) = self::cookie(headers, PORTAL_COOKIE) {
            return Some(token);
        }
    }
    if request.uri().path().ends_with("/events") {
        let query = request.uri().query().unwrap_or_default();
        return query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == "token").then(|| value.to_owned())
        });
    }
    None
}

/// Authenticates every protected route, and writes requests that may
/// change something (anything but GET/HEAD) to the audit log with the
/// answer's status.
async fn require_token(
    State(backend): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(user) = request_token(&request).and_then(|t| backend.authenticate(&t)) else {
        return ApiError::unauthorized(
            "missing or invalid token (X-Auth-Token or Authorization: Bearer)",
        )
        .into_response();
    };
    let method = request.method().clone();
    let audited = method != Method::GET && method != Method::HEAD;
    let (from, path) = (client_address(&request), request.uri().path().to_owned());
    request.extensions_mut().insert(User(user.clone()));
    let response = next.run(request).await;
    if audited {
        backend.audit(AuditRecord {
            at: now_ms(),
            user,
            from,
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
            detail: response
                .extensions()
                .get::<AuditDetail>()
                .map(|d| d.0.clone()),
        });
    }
    response
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn login(
    State(backend): State<Shared>,
    Extension(throttle): Extension<Arc<LoginThrottle>>,
    request: Request,
) -> Result<Response, ApiError> {
    let (from, ip) = (client_address(&request), client_ip(&request));
    let body: LoginRequest = crate::salt::json_or_form(request).await?;
    let token = check_login(&backend, &throttle, body, from, ip).await?;
    Ok(Json(token).into_response())
}

/// `POST /v1/logout`: the token that authenticated the request stops
/// working.
async fn logout(State(backend): State<Shared>, request: Request) -> Result<Response, ApiError> {
    end_session(&backend, &request)?;
    Ok(Json(serde_json::json!({ "logged_out": true })).into_response())
}

/// Ends the session of the request's token (after `require_token`
/// accepted it). The CLI token is not a session and cannot end.
pub(crate) fn end_session(backend: &Shared, request: &Request) -> Result<(), ApiError> {
    let token = request_token(request).ok_or_else(|| ApiError::unauthorized("missing token"))?;
    backend.logout(&token)
}

/// Password checks run at once, at most.
const LOGIN_CHECKS: usize = 2;

/// Runs the (slow) password check off the async workers and audits the
/// attempt, whatever its outcome.
pub async fn check_login(
    backend: &Shared,
    throttle: &LoginThrottle,
    body: LoginRequest,
    from: String,
    ip: Option<std::net::IpAddr>,
) -> Result<LoginToken, ApiError> {
    if let Err(throttled) = throttle.attempt(ip, &body.username) {
        let (wait, whose) = match throttled {
            Throttled::Source(wait) => (wait, "from this address"),
            Throttled::User(wait) => (wait, "for this user"),
        };
        tracing::warn!(user = %body.username, from = %from, "login throttled");
        return Err(ApiError::too_many_requests(
            format!("too many login attempts {whose}; try again in {wait} s"),
            wait,
        ));
    }
    // Password checks are slow on purpose; a flood of logins queues here
    // instead of taking every core from jobs and returns.
    static CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LOGIN_CHECKS);
    let _permit = CHECKS
        .acquire()
        .await
        .map_err(|e| ApiError::internal(format!("login queue closed: {e}")))?;
    let worker = backend.clone();
    let user = body.username.clone();
    let result = tokio::task::spawn_blocking(move || worker.login(&body.username, &body.password))
        .await
        .map_err(|e| ApiError::internal(format!("login task failed: {e}")))?;
    if result.is_ok()
        || result
            .as_ref()
            .is_err_and(|e| e.status == StatusCode::UNAUTHORIZED)
    {
        throttle.outcome(&user, result.is_ok());
    }
    backend.audit(AuditRecord {
        at: now_ms(),
        user,
        from,
        method: "POST".into(),
        path: "/login".into(),
        status: match &result {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        },
        detail: Some(
            if result.is_ok() {
                "login"
            } else {
                "failed login"
            }
            .into(),
        ),
    });
    result
}

/// JSON body whose rejections are JSON errors naming the problem.
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(rejection_error(rejection)),
        }
    }
}

fn rejection_error(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let message = if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        "send JSON with Content-Type: application/json".to_owned()
    } else {
        rejection.body_text()
    };
    // Keep axum's status (400, 413, 422 become 400 or stay what they are),
    // but always answer in JSON.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError {
        status,
        message,
        retry_after: None,
    }
}

/// One path segment (`{jid}`, `{id}`), whose rejection (e.g. bad UTF-8)
/// is a JSON 400 naming the segment.
pub(crate) struct Segment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Segment(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

pub(crate) fn parse_jid(raw: &str) -> Result<Jid, ApiError> {
    Jid::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn submit(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(request): Body<JobRequest>,
) -> Result<Response, ApiError> {
    let mut detail = AuditDetail(format!("{} on {}", request.fun, request.target));
    let submitted = backend.submit(&user, request)?;
    if let Some(window) = &submitted.freeze_override {
        detail.0 = format!("{}: inside freeze window {window:?} by override", detail.0);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Extension(detail),
        Json(submitted),
    )
        .into_response())
}

async fn cancel(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(jid): Segment,
) -> Result<impl IntoResponse, ApiError> {
    let jid = parse_jid(&jid)?;
    let answer = backend.cancel(&user, &jid)?;
    Ok((
        axum::Extension(AuditDetail(format!("cancel {jid}"))),
        Json(answer),
    ))
}

/// A query string parsed into `T`, whose rejection is a JSON 400.
struct Params<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Params(value))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

fn check_filter(filter: &JobFilter) -> Result<(), ApiError> {
    if let Some(before) = &filter.before {
        parse_jid(before)?;
    }
    if let Some(result) = &filter.result {
        if !matches!(result.as_str(), "success" | "failed" | "running") {
            return Err(ApiError::bad_request(format!(
                "result={result:?}: use success, failed or running"
            )));
        }
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to) {
        if from >= to {
            return Err(ApiError::bad_request("from must be before to"));
        }
    }
    Ok(())
}

async fn list_jobs(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Params(mut filter): Params<JobFilter>,
) -> Result<impl IntoResponse, ApiError> {
    check_filter(&filter)?;
    filter.reader = Some(user);
    Ok(Json(backend.jobs(&filter)?))
}

/// A job `user` may read (403 for one they may not: see
/// [`Backend::may_read`]).
fn readable_job(backend: &Shared, user: &str, jid: &Jid) -> Result<JobView, ApiError> {
    let view = backend.job(jid)?;
    if backend.may_read(user, &view.job) {
        Ok(view)
    } else {
        Err(ApiError::forbidden(format!(
            "job {jid} ran on minions outside your grants; reading it needs the @jobs grant"
        )))
    }
}

async fn show_job(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Segment(jid): Segment,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(readable_job(&backend, &user, &parse_jid(&jid)?)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    token: Option<String>,
}

/// Does the client ask for Server-Sent Events?
fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Where a stream resumes: `Last-Event-ID` (a reconnecting EventSource),
/// else `after`.
fn resume_point(headers: &HeaderMap, after: Option<u64>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a number")),
        None => Ok(after),
    }
}

/// A job's events: JSON (stored events after a cursor) by default; with
/// `Accept: text/event-stream`, a live stream of its stage changes,
/// output lines and returns, from the beginning (or after
/// `Last-Event-ID`), ending with a `done` event when the job is done.
async fn job_events(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Segment(jid): Segment,
    headers: HeaderMap,
    Params(query): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    let _ = query.token;
    let jid = parse_jid(&jid)?;
    readable_job(&backend, &user, &jid)?;
    if wants_sse(&headers) {
        let after = resume_point(&headers, query.after)?.unwrap_or(0);
        return Ok(
            crate::sse::stream(backend, Some(jid), after, crate::sse::Shape::Native, None)
                .into_response(),
        );
    }
    Ok(Json(backend.events(&jid, query.after)?).into_response())
}

/// Every job's and minion's events as Server-Sent Events, from now on (or
/// after `Last-Event-ID` / `after`).
async fn all_events(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    headers: HeaderMap,
    Params(query): Params<EventsQuery>,
) -> Result<Response, ApiError> {
    let _ = query.token;
    let after = match resume_point(&headers, query.after)? {
        Some(after) => after,
        None => backend.stream_head()?,
    };
    let reader = Some(user);
    Ok(crate::sse::stream(backend, None, after, crate::sse::Shape::Native, reader).into_response())
}

async fn minions(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.minions()?))
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    halite_proto::ident::validate_id(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn minion(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    valid_id(&id)?;
    Ok(Json(backend.minion(&id)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn minion_jobs(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Segment(id): Segment,
    Params(query): Params<PageQuery>,
) -> Result<impl IntoResponse, ApiError> {
    valid_id(&id)?;
    backend.minion(&id)?;
    let filter = JobFilter {
        limit: query.limit,
        before: query.before,
        minion: Some(id),
        reader: Some(user),
        ..JobFilter::default()
    };
    check_filter(&filter)?;
    Ok(Json(backend.jobs(&filter)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    limit: Option<usize>,
}

async fn presence(
    State(backend): State<Shared>,
    Params(query): Params<PresenceQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(
        backend.presence(query.limit.unwrap_or(100).clamp(1, 10_000))?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksQuery {
    since: Option<u64>,
    failed: Option<bool>,
    limit: Option<usize>,
}

async fn checks(
    State(backend): State<Shared>,
    Params(query): Params<ChecksQuery>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.checks(
        query.since.unwrap_or(0),
        query.failed.unwrap_or(false),
        query.limit.unwrap_or(1000).clamp(1, 100_000),
    )?))
}

async fn keys(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.keys()?))
}

async fn key(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    let view = backend.keys()?;
    view.keys
        .into_iter()
        .find(|k| k.id == id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no key for {id:?}")))
}

fn key_result(action: &str, ids: Vec<String>) -> Response {
    let detail = AuditDetail(format!("{action} {}", ids.join(", ")));
    (
        axum::Extension(detail),
        Json(serde_json::json!({ "ids": ids })),
    )
        .into_response()
}

fn key_change(backend: &Shared, user: &str, action: KeyAction) -> Result<Vec<String>, ApiError> {
    backend.require(user, Grant::Wheel)?;
    backend.key_action(action)
}

async fn accept_all(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
) -> Result<Response, ApiError> {
    Ok(key_result(
        "accept",
        key_change(&backend, &user, KeyAction::AcceptAll)?,
    ))
}

async fn accept(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    Ok(key_result(
        "accept",
        key_change(&backend, &user, KeyAction::Accept(id))?,
    ))
}

async fn reject(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    Ok(key_result(
        "reject",
        key_change(&backend, &user, KeyAction::Reject(id))?,
    ))
}

async fn delete_key(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(id): Segment,
) -> Result<Response, ApiError> {
    Ok(key_result(
        "delete",
        key_change(&backend, &user, KeyAction::Delete(id))?,
    ))
}

async fn apps(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.apps()?))
}

async fn app(
    State(backend): State<Shared>,
    Segment(name): Segment,
) -> Result<impl IntoResponse, ApiError> {
    valid_id(&name)?;
    backend
        .apps()?
        .into_iter()
        .find(|a| a.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no app {name:?}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleasesQuery {
    limit: Option<usize>,
}

async fn app_releases(
    State(backend): State<Shared>,
    Segment(name): Segment,
    Params(query): Params<ReleasesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    halite_proto::ident::validate_release_name(&name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = query.limit.unwrap_or(200).clamp(1, 100_000);
    Ok(Json(backend.app_releases(&name, limit)?))
}

/// `POST /v1/requests`: a release request, `201` with it.
async fn create_request(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(new): Body<halite_model::NewRequest>,
) -> Result<Response, ApiError> {
    valid_id(&new.app)?;
    valid_id(&new.env)?;
    let request = backend.create_request(&user, new)?;
    let detail = AuditDetail(format!(
        "request {} {} {}",
        request.id, request.app, request.env
    ));
    Ok((StatusCode::CREATED, axum::Extension(detail), Json(request)).into_response())
}

/// `GET /v1/requests?app=&env=&limit=`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestQuery {
    app: Option<String>,
    env: Option<String>,
    limit: Option<usize>,
}

async fn list_requests(
    State(backend): State<Shared>,
    Params(query): Params<RequestQuery>,
) -> Result<Json<Vec<halite_model::ReleaseRequest>>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(backend.requests(
        query.app.as_deref(),
        query.env.as_deref(),
        limit,
    )?))
}

fn request_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("{text:?} is not a request number")))
}

async fn show_request(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<Json<halite_model::ReleaseRequest>, ApiError> {
    Ok(Json(backend.request(request_id(&id)?)?))
}

/// The body of a step: a reason, required to reject or return; for a
/// deploy inside a freeze window, `override_freeze`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    override_freeze: bool,
}

/// `POST /v1/requests/{id}/{approve|reject|return|resubmit|withdraw|deploy}`.
async fn request_step(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path((id, step)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = request_id(&id)?;
    let bytes = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    // No body is no reason; a body is `{"reason": "..."}`.
    let body: StepBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        StepBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))?
    };
    let step: halite_model::Step =
        serde_json::from_value(Value::String(step.clone())).map_err(|_| {
            ApiError::not_found(format!(
                "no step {step:?}; use approve, reject, return, resubmit, withdraw or deploy"
            ))
        })?;
    let request = backend.request_step(
        &user,
        id,
        step,
        body.reason.as_deref(),
        body.override_freeze,
    )?;
    let mut detail = format!("request {id} {step:?}").to_lowercase();
    if let Some(note) = request
        .history
        .last()
        .and_then(|t| t.reason.as_deref())
        .filter(|_| step == halite_model::Step::Deploy)
    {
        // `deployed inside freeze window "x" by override`
        detail = format!("{detail}: {note}");
    }
    Ok((axum::Extension(AuditDetail(detail)), Json(request)).into_response())
}

/// `GET /v1/requests/{id}/changes`.
async fn request_changes(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(backend.request_changes(request_id(&id)?)?))
}

/// `GET /v1/apps/{name}/versions`.
async fn app_versions(
    State(backend): State<Shared>,
    Segment(name): Segment,
) -> Result<Json<Value>, ApiError> {
    valid_id(&name)?;
    Ok(Json(backend.app_versions(&name)?))
}

/// `GET /v1/apps/{name}/changes?env=production&tag=v3` (or `branch=`,
/// `rev=`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    env: String,
    tag: Option<String>,
    branch: Option<String>,
    rev: Option<String>,
}

async fn app_changes(
    State(backend): State<Shared>,
    Segment(name): Segment,
    Params(query): Params<ChangesQuery>,
) -> Result<Json<Value>, ApiError> {
    valid_id(&name)?;
    valid_id(&query.env)?;
    let mut version = Map::new();
    for (key, value) in [
        ("tag", query.tag),
        ("branch", query.branch),
        ("rev", query.rev),
    ] {
        if let Some(value) = value {
            version.insert(key.into(), Value::String(value));
        }
    }
    Ok(Json(backend.app_changes(&name, &query.env, version)?))
}

/// Largest webhook body taken (GitHub caps its payloads at 25 MB, but
/// push payloads with their commit lists stay far under this).
const MAX_HOOK_BODY: usize = 5 * 1024 * 1024;

/// `POST /v1/hooks/{app}`: no token; the sender's signature (or GitLab's
/// token) is checked against the app's `[trigger] secret`. Audited as
/// `webhook`, whatever the outcome.
async fn webhook(
    State(backend): State<Shared>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Path(app) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    valid_id(&app)?;
    let from = client_address(&request);
    let headers: std::collections::BTreeMap<String, String> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str();
            let wanted = name.starts_with("x-github-")
                || name.starts_with("x-gitlab-")
                || name.starts_with("x-gitea-")
                || name.starts_with("x-gogs-")
                || name == "x-hub-signature-256";
            Some((name.to_owned(), value.to_str().ok()?.to_owned())).filter(|_| wanted)
        })
        .collect();
    let bytes = axum::body::to_bytes(request.into_body(), MAX_HOOK_BODY)
        .await
        .map_err(|e| {
            ApiError::bad_request(format!(
                "cannot read the body (at most {MAX_HOOK_BODY} bytes): {e}"
            ))
        })?;
    let outcome = backend.webhook(&app, &headers, &bytes);
    backend.audit(AuditRecord {
        at: now_ms(),
        user: match &outcome {
            Ok(HookOutcome { source, .. }) => format!("webhook:{source}"),
            Err(_) => "webhook".into(),
        },
        from,
        method: "POST".into(),
        path: format!("/v1/hooks/{app}"),
        status: match &outcome {
            Ok(_) => 200,
            Err(e) => e.status.as_u16(),
        },
        detail: Some(match &outcome {
            Ok(HookOutcome {
                request: Some(r), ..
            }) => format!("request {} {} {}", r.id, r.app, r.env),
            Ok(HookOutcome {
                ignored: Some(why), ..
            }) => format!("ignored: {why}"),
            Ok(_) => "nothing done".into(),
            Err(e) => e.message.clone(),
        }),
    });
    Ok(Json(outcome?).into_response())
}

async fn list_triggers(
    State(backend): State<Shared>,
) -> Result<Json<Vec<halite_model::TriggerState>>, ApiError> {
    Ok(Json(backend.triggers()?))
}

/// `POST /v1/apps/{name}/trigger/{pause|resume}`, audited.
async fn trigger_action(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path((app, action)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    valid_id(&app)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return Err(ApiError::not_found("pause or resume")),
    };
    let state = backend.pause_trigger(&user, &app, paused)?;
    Ok((
        axum::Extension(AuditDetail(format!("trigger of {app} {action}d"))),
        Json(state),
    )
        .into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
struct RolloutQuery {
    limit: Option<usize>,
}

async fn list_rollouts(
    State(backend): State<Shared>,
    Params(query): Params<RolloutQuery>,
) -> Result<Json<Vec<halite_model::Rollout>>, ApiError> {
    Ok(Json(
        backend.rollouts(query.limit.unwrap_or(50).clamp(1, 1000))?,
    ))
}

fn rollout_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("{text:?} is not a rollout number")))
}

/// `POST /v1/rollouts`: 201 and the rollout; its steps then go out one by
/// one (follow `rollout/progress` on `/v1/events`).
async fn start_rollout(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(new): Body<halite_model::NewRollout>,
) -> Result<Response, ApiError> {
    let rollout = backend.start_rollout(&user, new)?;
    let groups: Vec<String> = (0..=rollout.then.len())
        .map(|g| {
            let (app, version, fun) = rollout.group(g);
            format!(
                "{app} {} by {fun}",
                serde_json::Value::Object(version.clone())
            )
        })
        .collect();
    let canary_cmd = rollout
        .plan
        .canary
        .as_ref()
        .and_then(|c| c.cmd.as_deref())
        .map(|cmd| format!("; canary cmd {cmd:?}"))
        .unwrap_or_default();
    let detail = AuditDetail(format!(
        "rollout {} of {} to {} minions{canary_cmd}",
        rollout.id,
        groups.join(", then "),
        rollout.minions()
    ));
    Ok((StatusCode::CREATED, axum::Extension(detail), Json(rollout)).into_response())
}

async fn show_rollout(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<Json<halite_model::Rollout>, ApiError> {
    Ok(Json(backend.rollout(rollout_id(&id)?)?))
}

/// `POST /v1/rollouts/{id}/{continue|pause|resume|abort}`, audited.
async fn rollout_action(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, action)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = rollout_id(&id)?;
    let step = halite_model::RolloutAction::parse(&action).ok_or_else(|| {
        ApiError::not_found(format!(
            "no rollout action {action:?}: continue, pause, resume or abort"
        ))
    })?;
    let rollout = backend.rollout_action(&user, id, step)?;
    Ok((
        axum::Extension(AuditDetail(format!("rollout {id} {action}"))),
        Json(rollout),
    )
        .into_response())
}

async fn list_schedules(State(backend): State<Shared>) -> Result<Json<Vec<Schedule>>, ApiError> {
    Ok(Json(backend.schedules()?))
}

async fn create_schedule(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(new): Body<NewSchedule>,
) -> Result<Response, ApiError> {
    let detail = AuditDetail(format!(
        "schedule {} `{}`: {} on {}",
        new.name, new.cron, new.job.fun, new.job.target
    ));
    let schedule = backend.create_schedule(&user, new)?;
    Ok((StatusCode::CREATED, axum::Extension(detail), Json(schedule)).into_response())
}

async fn show_schedule(
    State(backend): State<Shared>,
    Segment(name): Segment,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(backend.schedule(&name)?))
}

async fn remove_schedule(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    backend.remove_schedule(&user, &name)?;
    Ok((
        axum::Extension(AuditDetail(format!("schedule {name} removed"))),
        Json(serde_json::json!({ "removed": name })),
    )
        .into_response())
}

async fn pause_schedule(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let schedule = backend.pause_schedule(&user, &name, true)?;
    Ok((
        axum::Extension(AuditDetail(format!("schedule {name} paused"))),
        Json(schedule),
    )
        .into_response())
}

async fn resume_schedule(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(name): Segment,
) -> Result<Response, ApiError> {
    let schedule = backend.pause_schedule(&user, &name, false)?;
    Ok((
        axum::Extension(AuditDetail(format!("schedule {name} resumed"))),
        Json(schedule),
    )
        .into_response())
}

async fn app_deploy(
    state: State<Shared>,
    user: axum::Extension<User>,
    name: Segment,
    body: Body<Map<String, Value>>,
) -> Result<Response, ApiError> {
    app_action(state, user, name, body, AppAction::Deploy).await
}

async fn app_rollback(
    state: State<Shared>,
    user: axum::Extension<User>,
    name: Segment,
    body: Body<Map<String, Value>>,
) -> Result<Response, ApiError> {
    app_action(state, user, name, body, AppAction::Rollback).await
}

async fn app_action(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Segment(name): Segment,
    Body(options): Body<Map<String, Value>>,
    action: AppAction,
) -> Result<Response, ApiError> {
    valid_id(&name)?;
    let submitted = backend.app_action(&user, &name, action, options)?;
    let mut detail = AuditDetail(format!("{action:?} {name}").to_lowercase());
    if let Some(window) = &submitted.freeze_override {
        detail.0 = format!("{}: inside freeze window {window:?} by override", detail.0);
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Extension(detail),
        Json(submitted),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
}

/// `[from, to)` with defaults: the last 30 days up to now.
fn range(query: &RangeQuery) -> Result<(u64, u64), ApiError> {
    let to = query.to.unwrap_or_else(|| now_ms() + 1);
    let from = query.from.unwrap_or(to.saturating_sub(30 * 86_400_000));
    if from >= to {
        return Err(ApiError::bad_request("from must be before to"));
    }
    Ok((from, to))
}

async fn stats(
    State(backend): State<Shared>,
    Params(query): Params<RangeQuery>,
) -> Result<impl IntoResponse, ApiError> {
    if query.limit.is_some() {
        return Err(ApiError::bad_request("stats take from and to only"));
    }
    let (from, to) = range(&query)?;
    Ok(Json(backend.stats(from, to)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditNote {
    detail: String,
}

/// `POST /v1/audit`: a change made outside the API (`master-cli users`
/// edits the users file) written to the audit log; needs `@wheel`.
async fn audit_note(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(note): Body<AuditNote>,
) -> Result<Response, ApiError> {
    backend.require(&user, Grant::Wheel)?;
    let detail: String = note
        .detail
        .chars()
        .filter(|c| !c.is_control())
        .take(500)
        .collect();
    if detail.trim().is_empty() {
        return Err(ApiError::bad_request("detail must not be empty"));
    }
    Ok((
        axum::Extension(AuditDetail(detail)),
        Json(serde_json::json!({ "recorded": true })),
    )
        .into_response())
}

async fn audit_log(
    State(backend): State<Shared>,
    Extension(User(user)): Extension<User>,
    Params(query): Params<RangeQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // Who did what from where: for admins.
    backend.require(&user, Grant::Wheel)?;
    let (from, to) = range(&query)?;
    let limit = query.limit.unwrap_or(200).clamp(1, 10_000);
    Ok(Json(backend.audit_log(from, to, limit)?))
}
