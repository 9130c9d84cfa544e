//! The `/v1` routes.
//!
//! Every route but `/v1/health` needs a token (`X-Auth-Token` or
//! `Authorization: Bearer`). Bad JSON, unknown fields and bad ids get a
//! 4xx with a JSON body naming the problem.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use halite_proto::Jid;
use serde::Deserialize;

use crate::backend::{Backend, KeyAction};
use crate::types::JobRequest;
use crate::ApiError;

type Shared = Arc<dyn Backend>;

/// The user a request was authenticated as, for handlers that record it.
#[derive(Clone, Debug)]
struct User(String);

/// Builds the API router over a backend.
pub fn router(backend: Arc<dyn Backend>) -> Router {
    let authed = Router::new()
        .route("/v1/jobs", post(submit).get(list_jobs))
        .route("/v1/jobs/{jid}", get(show_job))
        .route("/v1/jobs/{jid}/events", get(job_events))
        .route("/v1/minions", get(minions))
        .route("/v1/presence", get(presence))
        .route("/v1/checks", get(checks))
        .route("/v1/keys", get(keys))
        // `_all` can never be a minion id (ids start with a letter or digit).
        .route("/v1/keys/_all/accept", post(accept_all))
        .route("/v1/keys/{id}/accept", post(accept))
        .route("/v1/keys/{id}/reject", post(reject))
        .route("/v1/keys/{id}", delete(delete_key))
        .route("/v1/apps", get(apps))
        .route("/v1/apps/{name}/releases", get(app_releases))
        .route_layer(middleware::from_fn_with_state(
            backend.clone(),
            require_token,
        ));
    Router::new()
        .route(
            "/v1/health",
            get(|| async { Json(serde_json::json!({"ok": true})) }),
        )
        .merge(authed)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(backend)
}

async fn require_token(
    State(backend): State<Shared>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    let token = headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, token) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(token)
                })
        });
    match token.and_then(|t| backend.authenticate(t.trim())) {
        Some(user) => {
            request.extensions_mut().insert(User(user));
            next.run(request).await
        }
        None => ApiError::unauthorized(
            "missing or invalid token (X-Auth-Token or Authorization: Bearer)",
        )
        .into_response(),
    }
}

/// JSON body whose rejections are JSON errors naming the problem.
struct Body<T>(T);

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
    ApiError { status, message }
}

/// One path segment (`{jid}`, `{id}`), whose rejection (e.g. bad UTF-8)
/// is a JSON 400 naming the segment.
struct Segment(String);

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

fn parse_jid(raw: &str) -> Result<Jid, ApiError> {
    Jid::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn submit(
    State(backend): State<Shared>,
    axum::Extension(User(user)): axum::Extension<User>,
    Body(request): Body<JobRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let submitted = backend.submit(&user, request)?;
    Ok((StatusCode::ACCEPTED, Json(submitted)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    before: Option<String>,
}

async fn list_jobs(
    State(backend): State<Shared>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let before = query.before.as_deref().map(parse_jid).transpose()?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(backend.jobs(limit, before)?))
}

async fn show_job(
    State(backend): State<Shared>,
    Segment(jid): Segment,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.job(&parse_jid(&jid)?)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
}

async fn job_events(
    State(backend): State<Shared>,
    Segment(jid): Segment,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(backend.events(&parse_jid(&jid)?, query.after)?))
}

async fn minions(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.minions()?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceQuery {
    limit: Option<usize>,
}

async fn presence(
    State(backend): State<Shared>,
    query: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
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
    query: Result<Query<ChecksQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(backend.checks(
        query.since.unwrap_or(0),
        query.failed.unwrap_or(false),
        query.limit.unwrap_or(1000).clamp(1, 100_000),
    )?))
}

async fn keys(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.keys()?))
}

fn key_result(ids: Vec<String>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ids": ids }))
}

async fn accept_all(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(key_result(backend.key_action(KeyAction::AcceptAll)?))
}

async fn accept(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    Ok(key_result(backend.key_action(KeyAction::Accept(id))?))
}

async fn reject(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    Ok(key_result(backend.key_action(KeyAction::Reject(id))?))
}

async fn delete_key(
    State(backend): State<Shared>,
    Segment(id): Segment,
) -> Result<impl IntoResponse, ApiError> {
    Ok(key_result(backend.key_action(KeyAction::Delete(id))?))
}

async fn apps(State(backend): State<Shared>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(backend.apps()?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleasesQuery {
    limit: Option<usize>,
}

async fn app_releases(
    State(backend): State<Shared>,
    Segment(name): Segment,
    query: Result<Query<ReleasesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    halite_proto::ident::validate_id(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let limit = query.limit.unwrap_or(200).clamp(1, 100_000);
    Ok(Json(backend.app_releases(&name, limit)?))
}
