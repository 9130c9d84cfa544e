//! halite's release portal: server-rendered pages (askama templates,
//! checked at compile time) over the same backend as the API, served by
//! the master on the API port under `/ui` (a browser asking for `/` is
//! sent there). One small script and one stylesheet are embedded; the
//! pages load nothing from anywhere else.
//!
//! Logins are the API's (same users, throttle and audit); the session
//! cookie is HttpOnly and SameSite=Strict (Secure under TLS); every form
//! that changes something carries a CSRF token derived from the session.
//! What a page offers follows the viewer's grants, and every action goes
//! through the backend, which checks them again.

#![deny(missing_docs)]

mod charts;
mod pages;
mod session;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use halite_api::routes::Shared;

/// How the portal is served.
#[derive(Clone, Copy, Debug, Default)]
pub struct PortalOptions {
    /// The API is served over TLS: session cookies are `Secure`.
    pub secure_cookies: bool,
}

/// The portal's routes, to serve beside the API's
/// (`halite_api::router_with`).
pub fn router(options: PortalOptions) -> Router<Shared> {
    Router::new()
        .route(
            "/ui",
            get(|| async { axum::response::Redirect::to("/ui/") }),
        )
        .route("/ui/", get(pages::dashboard))
        .route("/ui/login", get(pages::login_form).post(pages::login))
        .route("/ui/logout", post(pages::logout))
        .route("/ui/apps/{name}", get(pages::app))
        .route("/ui/apps/{name}/release", post(pages::release))
        .route("/ui/requests/{id}", get(pages::request))
        .route("/ui/requests/{id}/{step}", post(pages::request_step))
        .route("/ui/jobs", get(pages::jobs))
        .route("/ui/jobs/{jid}", get(pages::job))
        .route("/ui/minions", get(pages::minions))
        .route("/ui/keys/{id}/{action}", post(pages::key_action))
        .route("/ui/stats", get(pages::stats))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/schedules", get(pages::schedules))
        .route(
            "/ui/schedules/{name}/{action}",
            post(pages::schedule_action),
        )
        .route("/ui/triggers/{app}/{action}", post(pages::trigger_action))
        .route("/ui/rollouts", get(pages::rollouts))
        .route("/ui/rollouts/{id}", get(pages::rollout))
        .route("/ui/rollouts/{id}/{action}", post(pages::rollout_action))
        .route("/ui/static/portal.css", get(css))
        .route("/ui/static/portal.js", get(script))
        .route("/ui/static/icon.svg", get(icon))
        .layer(axum::Extension(options))
        .layer(axum::middleware::map_response(page_headers))
}

/// Pages are never cached and never framed; scripts and styles come
/// from the master alone.
async fn page_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

const CSS: &str = include_str!("../assets/portal.css");
const SCRIPT: &str = include_str!("../assets/portal.js");
const ICON: &str = include_str!("../assets/icon.svg");

async fn icon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        ICON,
    )
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
}
