//! The pages: each handler reads through the backend as the viewer,
//! builds a view (strings ready to show) and renders its template. Forms
//! that change something carry the session's CSRF token and go through
//! the same backend calls as the API, so the ACL and the workflow rules
//! decide, whatever the page showed.

use std::collections::{BTreeMap, BTreeSet};

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use halite_api::routes::Shared;
use halite_api::{ApiError, Grant, KeyAction};
use halite_model::{
    JobFilter, NewRequest, ReleaseRequest, RequestKind, RequestState, RolloutState, Step, StepPhase,
};
use halite_proto::time::{format_ms, now_ms};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::charts;
use crate::session::Viewer;

/// What every page's frame shows.
pub struct Chrome {
    /// The viewer.
    pub user: String,
    /// For the logout form (and every other form on the page).
    pub csrf: String,
    /// The nav entry to mark.
    pub active: &'static str,
    /// Admins (`@wheel`) see keys and the audit log.
    pub admin: bool,
    /// A message from the last action (`?error=` / `?done=`).
    pub notice: Option<(bool, String)>,
}

impl Chrome {
    fn new(viewer: &Viewer, backend: &Shared, active: &'static str, flash: &Flash) -> Chrome {
        Chrome {
            user: viewer.user.clone(),
            csrf: viewer.csrf.clone(),
            active,
            admin: backend.require(&viewer.user, Grant::Wheel).is_ok(),
            notice: match (&flash.error, &flash.done) {
                (Some(e), _) => Some((true, e.clone())),
                (None, Some(d)) => Some((false, d.clone())),
                _ => None,
            },
        }
    }
}

/// `?error=...` or `?done=...` after a form was handled.
#[derive(Default, Deserialize)]
pub struct Flash {
    error: Option<String>,
    done: Option<String>,
}

/// Renders a template, or a 500 page naming the failure.
fn render(page: impl Template) -> Response {
    match page.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot render the page: {e}"),
        ),
    }
}

#[derive(Template)]
#[template(path = "problem.html")]
struct Problem<'a> {
    status: u16,
    message: &'a str,
}

/// A plain error page.
pub fn problem(status: StatusCode, message: &str) -> Response {
    let page = Problem {
        status: status.as_u16(),
        message,
    };
    let html = page.render().unwrap_or_else(|_| message.to_owned());
    (status, Html(html)).into_response()
}

fn api_problem(e: ApiError) -> Response {
    problem(e.status, &e.message)
}

/// Back to `to` with a message.
fn back(to: &str, outcome: Result<String, String>) -> Response {
    let (key, text) = match outcome {
        Ok(done) => ("done", done),
        Err(error) => ("error", error),
    };
    let separator = if to.contains('?') { '&' } else { '?' };
    let text: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
    Redirect::to(&format!("{to}{separator}{key}={text}")).into_response()
}

/// `3 min ago`, `2 h ago`, `5 d ago`.
pub fn age(at_ms: u64) -> String {
    let seconds = now_ms().saturating_sub(at_ms) / 1000;
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=86_399 => format!("{} h ago", seconds / 3600),
        _ => format!("{} d ago", seconds / 86_400),
    }
}

/// `tag v3`, `branch main`, `to 2026...`, `version 1.4`.
fn version_of(request: &ReleaseRequest) -> String {
    match (describe_version(&request.version), request.kind) {
        (found, _) if found != "-" => found,
        (_, RequestKind::Rollback) => "previous release".into(),
        (_, RequestKind::Deploy) => "-".into(),
    }
}

/// What a version map names: `tag v3`, `rev 1a2b…`, or `-`.
fn describe_version(version: &Map<String, Value>) -> String {
    for key in ["tag", "branch", "rev", "version", "to"] {
        if let Some(v) = version.get(key).and_then(Value::as_str) {
            return if key == "rev" {
                format!("rev {}", short(v))
            } else {
                format!("{key} {v}")
            };
        }
    }
    "-".into()
}

fn short(id: &str) -> String {
    id.get(..12).unwrap_or(id).to_owned()
}

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
    error: Option<String>,
}

/// Only paths inside the portal are followed after a login.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\'))
        .unwrap_or_else(|| "/ui/".into())
}

pub async fn login_form(Query(query): Query<LoginQuery>) -> Response {
    render(Login {
        next: safe_next(query.next),
        error: query.error,
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
}

pub async fn login(
    State(backend): State<Shared>,
    axum::Extension(options): axum::Extension<crate::PortalOptions>,
    axum::Extension(throttle): axum::Extension<std::sync::Arc<halite_api::throttle::LoginThrottle>>,
    request: axum::extract::Request,
) -> Response {
    let (from, ip) = (
        halite_api::routes::client_address(&request),
        halite_api::routes::client_ip(&request),
    );
    let Ok(Form(form)) = Form::<LoginForm>::from_request(request, &()).await else {
        return problem(
            StatusCode::BAD_REQUEST,
            "the login form needs a user name and a password",
        );
    };
    let next = safe_next(form.next);
    let body = halite_api::types::LoginRequest {
        username: form.username,
        password: form.password,
        eauth: None,
    };
    match halite_api::routes::check_login(&backend, &throttle, body, from, ip).await {
        Ok(token) => (
            [(
                header::SET_COOKIE,
                crate::session::session_cookie(&token.token, options.secure_cookies),
            )],
            Redirect::to(&next),
        )
            .into_response(),
        Err(e) => {
            let error: String = form_urlencoded::byte_serialize(e.message.as_bytes()).collect();
            let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
            Redirect::to(&format!("/ui/login?next={next}&error={error}")).into_response()
        }
    }
}

use axum::extract::FromRequest;

#[derive(Deserialize)]
pub struct CsrfOnly {
    csrf: String,
}

pub async fn logout(
    State(backend): State<Shared>,
    axum::Extension(options): axum::Extension<crate::PortalOptions>,
    viewer: Viewer,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let _ = backend.logout(&viewer.token);
    (
        [(
            header::SET_COOKIE,
            crate::session::cleared_cookie(options.secure_cookies),
        )],
        Redirect::to("/ui/login"),
    )
        .into_response()
}

// ------------------------------------------------------------ dashboard

struct Cell {
    version: String,
    state: String,
    age: String,
    by: String,
    link: String,
}

struct AppRow {
    name: String,
    cells: Vec<Option<Cell>>,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    chrome: Chrome,
    envs: Vec<String>,
    rows: Vec<AppRow>,
    up: usize,
    down: Vec<String>,
    failed_checks: Vec<(String, String)>,
    pending_requests: Vec<(u64, String)>,
}

/// Where each app is in each environment: its latest request that went
/// out (live, deploying, failed, rolled back), or a newer deploy made
/// without a request (its record carries the environment); for an app
/// without environments, its latest live deploy record.
pub async fn dashboard(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let apps = match backend.apps() {
        Ok(apps) => apps,
        Err(e) => return api_problem(e),
    };
    let requests = backend.requests(None, None, 2000).unwrap_or_default();
    let mut envs: BTreeSet<String> = BTreeSet::new();
    for app in &apps {
        if app.env.is_empty() {
            envs.insert("(target)".into());
        }
        envs.extend(app.env.keys().cloned());
    }
    let envs: Vec<String> = envs.into_iter().collect();
    let went_out = |r: &&ReleaseRequest| {
        matches!(
            r.state,
            RequestState::Live
                | RequestState::Deploying
                | RequestState::Failed
                | RequestState::RolledBack
        )
    };
    let rows = apps
        .iter()
        .map(|app| {
            let history = backend
                .app_releases(&app.name, 200)
                .map(|r| r.history)
                .unwrap_or_default();
            let cells = envs
                .iter()
                .map(|env| {
                    let in_env = app.env.contains_key(env);
                    let whole_target = app.env.is_empty() && env == "(target)";
                    if !in_env && !whole_target {
                        return None;
                    }
                    // The newest deploy record here, requests or not...
                    let record = history.iter().find(|r| {
                        if in_env {
                            r.env.as_deref() == Some(env)
                        } else {
                            r.result == "live"
                        }
                    });
                    // ...unless the newest request that went out is as new.
                    let request = requests
                        .iter()
                        .filter(|r| r.app == app.name && &r.env == env)
                        .find(went_out)
                        .filter(|r| {
                            let at = r.history.last().map_or(0, |t| t.at);
                            record.is_none_or(|record| at >= record.at)
                        });
                    if let Some(r) = request {
                        let released = r
                            .history
                            .iter()
                            .rev()
                            .find(|t| t.state == RequestState::Deploying);
                        return Some(Cell {
                            version: version_of(r),
                            state: r.state.to_string(),
                            age: age(r.history.last().map_or(0, |t| t.at)),
                            by: released.map_or_else(|| r.requester.clone(), |t| t.by.clone()),
                            link: format!("/ui/requests/{}", r.id),
                        });
                    }
                    let record = record?;
                    Some(Cell {
                        version: record
                            .reference
                            .clone()
                            .or_else(|| record.revision.as_deref().map(short))
                            .unwrap_or_else(|| "-".into()),
                        state: record.result.clone(),
                        age: age(record.at),
                        by: backend
                            .job(&record.jid)
                            .map(|view| view.job.user)
                            .unwrap_or_default(),
                        link: format!("/ui/jobs/{}", record.jid),
                    })
                })
                .collect();
            AppRow {
                name: app.name.clone(),
                cells,
            }
        })
        .collect();
    let minions = backend.minions().unwrap_or_default();
    let week_ago = now_ms().saturating_sub(7 * 86_400_000);
    let failed_checks = backend
        .checks(week_ago, true, 20)
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.id, format_ms(c.at)))
        .collect();
    let pending_requests = requests
        .iter()
        .filter(|r| {
            matches!(
                r.state,
                RequestState::Requested | RequestState::Approved | RequestState::Returned
            )
        })
        .map(|r| {
            (
                r.id,
                format!(
                    "{} {} {} — {} ({})",
                    r.app,
                    r.env,
                    version_of(r),
                    r.state,
                    r.requester
                ),
            )
        })
        .collect();
    render(Dashboard {
        chrome: Chrome::new(&viewer, &backend, "dashboard", &flash),
        envs,
        rows,
        up: minions.iter().filter(|m| m.status == "up").count(),
        down: minions
            .into_iter()
            .filter(|m| m.status != "up")
            .map(|m| m.id)
            .collect(),
        failed_checks,
        pending_requests,
    })
}

// ------------------------------------------------------------------ app

struct EnvPanel {
    name: String,
    target: String,
    rules: String,
    /// `Request` (approval or promotion) or `Deploy`.
    action: &'static str,
    may_release: bool,
    live: String,
}

struct Change {
    commits: Vec<(String, String, String, String)>,
    files: Vec<(String, String, String, String)>,
    from: String,
    to: String,
    truncated: bool,
}

fn change_view(changes: &Value) -> Change {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let lines = |v: &Value| {
        v.as_u64()
            .map_or_else(|| "bin".to_owned(), |n| n.to_string())
    };
    Change {
        commits: changes["commits"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|c| {
                        (
                            short(&text(&c["id"])),
                            text(&c["subject"]),
                            text(&c["author"]),
                            format_ms(c["time"].as_u64().unwrap_or(0) * 1000),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        files: changes["files"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|f| {
                        (
                            text(&f["change"]),
                            lines(&f["added"]),
                            lines(&f["removed"]),
                            text(&f["path"]),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        from: changes["from"]
            .as_str()
            .map_or_else(|| "nothing live".into(), short),
        to: short(&text(&changes["to"])),
        truncated: changes["truncated"].as_bool().unwrap_or(false),
    }
}

#[derive(Template)]
#[template(path = "app.html")]
struct AppPage {
    chrome: Chrome,
    name: String,
    repo: String,
    versions: Vec<(String, String, String, String, String)>,
    versions_error: Option<String>,
    envs: Vec<EnvPanel>,
    compare: Option<(String, String)>,
    change: Option<Change>,
    change_error: Option<String>,
    history: Vec<(u64, String, String, String, String, String, String)>,
}

#[derive(Default, Deserialize)]
pub struct AppQuery {
    env: Option<String>,
    version: Option<String>,
    error: Option<String>,
    done: Option<String>,
}

/// `tag:v3` / `branch:main` from a version select, as request words.
fn version_words(choice: &str) -> Option<Map<String, Value>> {
    let (kind, name) = choice.split_once(':')?;
    if !matches!(kind, "tag" | "branch" | "rev") || name.is_empty() {
        return None;
    }
    let mut version = Map::new();
    version.insert(kind.into(), Value::String(name.into()));
    Some(version)
}

pub async fn app(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(query): Query<AppQuery>,
) -> Response {
    let apps = match backend.apps() {
        Ok(apps) => apps,
        Err(e) => return api_problem(e),
    };
    let Some(spec) = apps.into_iter().find(|a| a.name == name) else {
        return problem(StatusCode::NOT_FOUND, &format!("no app {name:?}"));
    };
    let (versions, versions_error) = match backend.app_versions(&name) {
        Ok(list) => (
            list.as_array()
                .map(|l| {
                    l.iter()
                        .map(|v| {
                            let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
                            (
                                s("kind"),
                                s("name"),
                                short(&s("commit")),
                                format_ms(v["time"].as_u64().unwrap_or(0) * 1000),
                                s("subject"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.message)),
    };
    let requests = backend.requests(Some(&name), None, 200).unwrap_or_default();
    let envs = spec
        .env
        .iter()
        .map(|(env, rules)| {
            let mut words = Vec::new();
            if rules.requires_approval {
                words.push(format!("approval by {}", rules.approvers.join(", ")));
            }
            if let Some(from) = &rules.promote_from {
                words.push(format!("promoted from {from}"));
            }
            if rules.auto_deploy {
                words.push("deployed automatically by triggers".into());
            }
            let live = requests
                .iter()
                .find(|r| &r.env == env && r.state == RequestState::Live)
                .map_or_else(
                    || "nothing live".into(),
                    |r| format!("{} (#{})", version_of(r), r.id),
                );
            EnvPanel {
                name: env.clone(),
                target: rules.target.clone(),
                rules: if words.is_empty() {
                    "released on request".into()
                } else {
                    words.join("; ")
                },
                action: if rules.requires_approval || rules.promote_from.is_some() {
                    "Request"
                } else {
                    "Deploy"
                },
                may_release: backend.may_release(&viewer.user, &name, Some(env)),
                live,
            }
        })
        .collect();
    let (mut change, mut change_error, mut compare) = (None, None, None);
    if let (Some(env), Some(choice)) = (&query.env, &query.version) {
        match version_words(choice) {
            Some(version) => match backend.app_changes(&name, env, version) {
                Ok(c) => change = Some(change_view(&c)),
                Err(e) => change_error = Some(e.message),
            },
            None => change_error = Some(format!("{choice:?} is not a version")),
        }
        compare = Some((env.clone(), choice.clone()));
    }
    let history = requests
        .iter()
        .map(|r| {
            (
                r.id,
                r.env.clone(),
                format!("{:?}", r.kind).to_lowercase(),
                version_of(r),
                r.state.to_string(),
                r.requester.clone(),
                format_ms(r.at_creation()),
            )
        })
        .collect();
    let flash = Flash {
        error: query.error,
        done: query.done,
    };
    render(AppPage {
        chrome: Chrome::new(&viewer, &backend, "dashboard", &flash),
        name: spec.name,
        repo: spec.repo,
        versions,
        versions_error,
        envs,
        compare,
        change,
        change_error,
        history,
    })
}

#[derive(Deserialize)]
pub struct ReleaseForm {
    csrf: String,
    env: String,
    /// `tag:v3`, `branch:main`; empty for a rollback.
    #[serde(default)]
    version: String,
    reason: String,
    /// `deploy` (request, or request and deploy where no approval is
    /// needed) or `rollback`.
    kind: String,
}

/// A request made from the app page; where the environment needs no
/// approval, deployed at once (the Deploy button).
pub async fn release(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(form): Form<ReleaseForm>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let page = format!("/ui/apps/{name}");
    let (kind, version) = match form.kind.as_str() {
        "rollback" => (RequestKind::Rollback, Map::new()),
        _ => match version_words(&form.version) {
            Some(v) => (RequestKind::Deploy, v),
            None => return back(&page, Err("choose a version".into())),
        },
    };
    let new = NewRequest {
        app: name.clone(),
        env: form.env.clone(),
        kind,
        version,
        reason: form.reason,
    };
    let made = match backend.create_request(&viewer.user, new) {
        Ok(made) => made,
        Err(e) => return back(&page, Err(e.message)),
    };
    let needs_approval = backend
        .apps()
        .ok()
        .and_then(|apps| apps.into_iter().find(|a| a.name == name))
        .and_then(|a| a.env.get(&form.env).map(|e| e.requires_approval))
        .unwrap_or(true);
    if needs_approval {
        return back(
            &format!("/ui/requests/{}", made.id),
            Ok(format!("request {} made; it waits for approval", made.id)),
        );
    }
    match backend.request_step(&viewer.user, made.id, Step::Deploy, None, false) {
        Ok(deployed) => deployed_to(&deployed),
        Err(e) => back(&format!("/ui/requests/{}", made.id), Err(e.message)),
    }
}

/// Where a deployed request is watched: its job's console, or its
/// rollout's page.
fn deployed_to(request: &ReleaseRequest) -> Response {
    match (&request.jid, request.rollout) {
        (Some(jid), _) => Redirect::to(&format!("/ui/jobs/{jid}")).into_response(),
        (None, Some(rollout)) => Redirect::to(&format!("/ui/rollouts/{rollout}")).into_response(),
        (None, None) => back(
            &format!("/ui/requests/{}", request.id),
            Ok("deploying".into()),
        ),
    }
}

// ------------------------------------------------------------- rollouts

#[derive(Template)]
#[template(path = "rollouts.html")]
struct RolloutsPage {
    chrome: Chrome,
    /// id, app, version, state, step, user, started
    rows: Vec<(u64, String, String, String, String, String, String)>,
}

pub async fn rollouts(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let all = match backend.rollouts(200) {
        Ok(all) => all,
        Err(e) => return api_problem(e),
    };
    render(RolloutsPage {
        chrome: Chrome::new(&viewer, &backend, "rollouts", &flash),
        rows: all
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.app.clone(),
                    describe_version(&r.version),
                    r.state.to_string(),
                    format!("{}/{}", (r.current + 1).min(r.steps.len()), r.steps.len()),
                    r.user.clone(),
                    format_ms(r.created_at),
                )
            })
            .collect(),
    })
}

/// One step of a rollout as shown.
struct StepRow {
    number: usize,
    phase: String,
    app: String,
    minions: String,
    released: String,
    failed: String,
    missing: String,
    jid: String,
    gates: String,
}

#[derive(Template)]
#[template(path = "rollout.html")]
struct RolloutPage {
    chrome: Chrome,
    id: u64,
    app: String,
    version: String,
    state: String,
    user: String,
    reason: String,
    request: Option<u64>,
    plan: String,
    failure: String,
    steps: Vec<StepRow>,
    rolled_back: String,
    not_rolled_back: String,
    has_rollback: bool,
    history: Vec<(String, String, String)>,
    /// Which of continue, pause, resume, abort apply now, for a user
    /// whose grants reach the rollout's minions.
    actions: Vec<&'static str>,
    /// Reload every 2 s while it moves by itself (not at a gate, not
    /// paused, not finished): no script needed.
    following: bool,
}

pub async fn rollout(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path(id): Path<u64>,
    Query(flash): Query<Flash>,
) -> Response {
    let r = match backend.rollout(id) {
        Ok(r) => r,
        Err(e) => return api_problem(e),
    };
    let mut actions = Vec::new();
    // The environment a request's rollout goes to, else the app's target.
    let env = r
        .release_request
        .and_then(|id| backend.request(id).ok())
        .map(|request| request.env);
    if !r.state.is_final() && backend.may_release(&viewer.user, &r.app, env.as_deref()) {
        let waiting = r
            .steps
            .get(r.current)
            .is_some_and(|s| s.phase == StepPhase::Waiting);
        if waiting && r.state == RolloutState::Running {
            actions.push("continue");
        }
        match r.state {
            RolloutState::Running if r.aborting.is_none() => actions.push("pause"),
            RolloutState::Paused => actions.push("resume"),
            _ => {}
        }
        if r.state != RolloutState::RollingBack && r.aborting.is_none() {
            actions.push("abort");
        }
    }
    let join = |v: &[String]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.join(", ")
        }
    };
    let plan = &r.plan;
    render(RolloutPage {
        chrome: Chrome::new(&viewer, &backend, "rollouts", &flash),
        id,
        app: r.app.clone(),
        version: describe_version(&r.version),
        state: r.state.to_string(),
        user: r.user.clone(),
        reason: r.reason.clone(),
        request: r.release_request,
        plan: format!(
            "ramp {}; bake {} s; max_fail {}; max_missing {}{}{}{}",
            plan.ramp
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            plan.bake,
            plan.max_fail,
            plan.max_missing,
            if plan.gate == halite_proto::rollout::Gate::Manual {
                "; manual gate"
            } else {
                ""
            },
            if plan.auto_rollback {
                ""
            } else {
                "; no automatic rollback"
            },
            match &plan.canary {
                Some(c) => format!(
                    "; canary: {} samples, margin {}%{}",
                    c.samples,
                    c.margin,
                    c.cmd
                        .as_ref()
                        .map(|cmd| format!(", measured by `{cmd}`"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            },
        ),
        failure: r.failure.clone().unwrap_or_default(),
        steps: r
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRow {
                number: i + 1,
                phase: format!("{:?}", s.phase).to_lowercase(),
                app: r.group(s.group).0.to_owned(),
                minions: join(&s.minions),
                released: join(&s.released),
                failed: join(&s.failed),
                missing: join(&s.missing),
                jid: s.jid.as_ref().map(ToString::to_string).unwrap_or_default(),
                gates: s
                    .gates
                    .iter()
                    .map(|g| {
                        format!(
                            "{} {}: {}",
                            if g.passed { "passed" } else { "FAILED" },
                            g.gate,
                            g.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            })
            .collect(),
        has_rollback: r.rollback.is_some(),
        rolled_back: r
            .rollback
            .as_ref()
            .map(|b| join(&b.rolled_back))
            .unwrap_or_default(),
        not_rolled_back: r
            .rollback
            .as_ref()
            .map(halite_model::FleetRollback::not_back)
            .unwrap_or_default(),
        history: r
            .history
            .iter()
            .map(|e| (format_ms(e.at), e.by.clone(), e.what.clone()))
            .collect(),
        following: r.state == RolloutState::RollingBack
            || (r.state == RolloutState::Running
                && r.steps
                    .get(r.current)
                    .is_none_or(|s| s.phase != StepPhase::Waiting)),
        actions,
    })
}

pub async fn rollout_action(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path((id, action)): Path<(u64, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let Some(step) = halite_model::RolloutAction::parse(&action) else {
        return problem(StatusCode::NOT_FOUND, "continue, pause, resume or abort");
    };
    let page = format!("/ui/rollouts/{id}");
    match backend.rollout_action(&viewer.user, id, step) {
        Ok(r) => back(
            &page,
            Ok(format!("rollout {id}: {action} — now {}", r.state)),
        ),
        Err(e) => back(&page, Err(e.message)),
    }
}

// -------------------------------------------------------------- request

#[derive(Template)]
#[template(path = "request.html")]
struct RequestPage {
    chrome: Chrome,
    id: u64,
    app: String,
    env: String,
    kind: String,
    version: String,
    revision: String,
    reason: String,
    requester: String,
    state: String,
    job: Option<String>,
    rollout: Option<u64>,
    timeline: Vec<(String, String, String, String)>,
    change: Option<Change>,
    change_error: Option<String>,
    can_decide: bool,
    can_deploy: bool,
    can_resubmit: bool,
}

pub async fn request(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path(id): Path<u64>,
    Query(flash): Query<Flash>,
) -> Response {
    let r = match backend.request(id) {
        Ok(r) => r,
        Err(e) => return api_problem(e),
    };
    let (change, change_error) = match backend.request_changes(id) {
        Ok(c) => (Some(change_view(&c)), None),
        Err(e) => (None, Some(e.message)),
    };
    let spec = backend
        .apps()
        .ok()
        .and_then(|a| a.into_iter().find(|a| a.name == r.app));
    let env = spec.as_ref().and_then(|s| s.env.get(&r.env));
    let approval = env.is_some_and(|e| e.requires_approval);
    let open = matches!(r.state, RequestState::Requested);
    render(RequestPage {
        chrome: Chrome::new(&viewer, &backend, "dashboard", &flash),
        id,
        app: r.app.clone(),
        env: r.env.clone(),
        kind: format!("{:?}", r.kind).to_lowercase(),
        version: version_of(&r),
        revision: r.revision.clone().unwrap_or_else(|| "-".into()),
        reason: r.reason.clone(),
        requester: r.requester.clone(),
        state: r.state.to_string(),
        job: r.jid.as_ref().map(ToString::to_string),
        rollout: r.rollout,
        timeline: r
            .history
            .iter()
            .map(|t| {
                (
                    format_ms(t.at),
                    t.state.to_string(),
                    t.by.clone(),
                    t.reason.clone().unwrap_or_default(),
                )
            })
            .collect(),
        change,
        change_error,
        can_decide: open && approval,
        can_deploy: (r.state == RequestState::Approved || (open && !approval))
            && backend.may_release(&viewer.user, &r.app, Some(&r.env)),
        can_resubmit: r.state == RequestState::Returned && r.requester == viewer.user,
    })
}

#[derive(Deserialize)]
pub struct StepForm {
    csrf: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    override_freeze: Option<String>,
}

pub async fn request_step(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path((id, step)): Path<(u64, String)>,
    Form(form): Form<StepForm>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let page = format!("/ui/requests/{id}");
    let Ok(step) = serde_json::from_value::<Step>(Value::String(step.clone())) else {
        return problem(StatusCode::NOT_FOUND, &format!("no step {step:?}"));
    };
    let reason = Some(form.reason.trim()).filter(|r| !r.is_empty());
    match backend.request_step(
        &viewer.user,
        id,
        step,
        reason,
        form.override_freeze.is_some(),
    ) {
        Ok(r) if step == Step::Deploy => deployed_to(&r),
        Ok(r) => back(&page, Ok(format!("request {id} is {}", r.state))),
        Err(e) => back(&page, Err(e.message)),
    }
}

// ----------------------------------------------------------------- jobs

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    chrome: Chrome,
    older: Option<String>,
    jobs: Vec<(String, String, String, String, String, String)>,
    fun: String,
    user: String,
    app: String,
    result: String,
    hours: u64,
}

#[derive(Default, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    fun: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    result: String,
    hours: Option<u64>,
    /// The page after this job (the previous page's last).
    before: Option<String>,
}

/// Rows per page of the jobs list.
const JOBS_PAGE: usize = 50;

pub async fn jobs(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Response {
    let hours = query.hours.unwrap_or(24 * 7).clamp(1, 24 * 365);
    let nonempty = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let filter = JobFilter {
        limit: Some(JOBS_PAGE),
        before: query.before.clone().filter(|b| !b.is_empty()),
        fun: nonempty(&query.fun),
        user: nonempty(&query.user),
        result: nonempty(&query.result),
        app: nonempty(&query.app),
        from: Some(now_ms().saturating_sub(hours * 3_600_000)),
        reader: Some(viewer.user.clone()),
        ..JobFilter::default()
    };
    let page = match backend.jobs(&filter) {
        Ok(page) => page,
        Err(e) => return api_problem(e),
    };
    let app = query.app.trim().to_owned();
    let jobs = page
        .jobs
        .into_iter()
        .map(|j| {
            let result = if j.failed > 0 || (j.done && j.returned < j.expected) {
                "failed"
            } else if j.done {
                "success"
            } else {
                "running"
            };
            (
                j.jid.to_string(),
                format_ms(j.issued_at),
                j.fun.clone(),
                j.target.clone(),
                j.user.clone(),
                format!("{result} ({}/{})", j.returned, j.expected),
            )
        })
        .collect();
    let older = page.next.map(|next| {
        let pairs = [
            ("fun", query.fun.as_str()),
            ("app", app.as_str()),
            ("user", query.user.as_str()),
            ("result", query.result.as_str()),
            ("hours", &hours.to_string()),
            ("before", &next),
        ];
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("/ui/jobs?{query}")
    });
    render(JobsPage {
        chrome: Chrome::new(&viewer, &backend, "jobs", &Flash::default()),
        older,
        jobs,
        fun: query.fun,
        user: query.user,
        app,
        result: query.result,
        hours,
    })
}

struct Lane {
    minion: String,
    state: String,
    stages: Vec<(String, String, String)>,
    lines: Vec<String>,
    result: String,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    jid: String,
    fun: String,
    target: String,
    user: String,
    issued: String,
    done: bool,
    lanes: Vec<Lane>,
    missing: Vec<String>,
}

/// The four stages a release's lanes draw, in order: git releases run
/// their hooks around the switch; artifacts are fetched and verified
/// (`halite_proto::release::Stage`). Other jobs draw no flow.
fn stages_for(fun: &str) -> &'static [&'static str] {
    let (module, function) = fun.split_once('.').unwrap_or((fun, ""));
    if !matches!(function, "deploy" | "rollback") {
        return &[];
    }
    match module {
        "git_deploy" => &["prepare", "pre_deploy", "deploy", "post_deploy"],
        "java_tomcat" | "dotnet_iis" | "win_task" => &["fetch", "prepare", "deploy", "verify"],
        _ => &[],
    }
}

pub async fn job(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path(jid): Path<String>,
) -> Response {
    let Ok(parsed) = halite_proto::Jid::parse(&jid) else {
        return problem(StatusCode::BAD_REQUEST, &format!("{jid:?} is not a job id"));
    };
    let view = match backend.job(&parsed) {
        Ok(view) => view,
        Err(e) => return api_problem(e),
    };
    if !backend.may_read(&viewer.user, &view.job) {
        return problem(
            StatusCode::FORBIDDEN,
            "this job ran where your grants do not reach",
        );
    }
    let events = backend.events(&parsed, None).unwrap_or_default();
    let mut lanes: BTreeMap<String, Lane> = view
        .job
        .expected
        .iter()
        .map(|m| {
            (
                m.clone(),
                Lane {
                    minion: m.clone(),
                    state: "waiting".into(),
                    stages: stages_for(&view.job.fun)
                        .iter()
                        .map(|s| (s.to_string(), "pending".to_owned(), String::new()))
                        .collect(),
                    lines: Vec::new(),
                    result: String::new(),
                },
            )
        })
        .collect();
    for event in &events {
        let Some(lane) = lanes.get_mut(&event.id) else {
            continue;
        };
        lane.state = "running".into();
        match &event.body {
            halite_proto::message::EventBody::Progress { line, .. } => {
                lane.lines.push(line.clone())
            }
            halite_proto::message::EventBody::Stage {
                stage,
                status,
                duration_ms,
                ..
            } => {
                let shown = (
                    stage.clone(),
                    status.clone(),
                    duration_ms
                        .map(|d| format!("{:.1} s", d as f64 / 1000.0))
                        .unwrap_or_default(),
                );
                match lane.stages.iter_mut().find(|s| &s.0 == stage) {
                    Some(slot) => *slot = shown,
                    None => lane.stages.push(shown),
                }
            }
        }
    }
    for (minion, ret) in &view.returns {
        if let Some(lane) = lanes.get_mut(minion) {
            lane.state = if ret.success { "succeeded" } else { "failed" }.into();
            lane.result = serde_json::to_string_pretty(&ret.data).unwrap_or_default();
        }
    }
    render(JobPage {
        chrome: Chrome::new(&viewer, &backend, "jobs", &Flash::default()),
        jid,
        fun: view.job.fun.clone(),
        target: view.job.target.clone(),
        user: view.job.user.clone(),
        issued: format_ms(view.job.issued_at),
        done: view.done,
        lanes: lanes.into_values().collect(),
        // Only a finished job has minions that did not return.
        missing: if view.done {
            view.missing.clone()
        } else {
            Vec::new()
        },
    })
}

// -------------------------------------------------------------- minions

#[derive(Template)]
#[template(path = "minions.html")]
struct MinionsPage {
    chrome: Chrome,
    minions: Vec<(String, String, String, String, String, String, usize)>,
    pending: Vec<(String, String)>,
}

pub async fn minions(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let week_ago = now_ms().saturating_sub(7 * 86_400_000);
    let failed = backend.checks(week_ago, true, 10_000).unwrap_or_default();
    let minions = backend
        .minions()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            let failures = failed.iter().filter(|c| c.id == m.id).count();
            (
                m.id.clone(),
                m.status.clone(),
                m.last_seen.map_or_else(|| "never".into(), age),
                m.latency_ms
                    .map_or_else(|| "-".into(), |l| format!("{l} ms")),
                m.version.clone().unwrap_or_default(),
                m.os.clone().unwrap_or_default(),
                failures,
            )
        })
        .collect();
    let chrome = Chrome::new(&viewer, &backend, "minions", &flash);
    let pending = if chrome.admin {
        backend
            .keys()
            .map(|k| {
                k.keys
                    .into_iter()
                    .filter(|k| k.status == halite_proto::message::KeyStatus::Pending)
                    .map(|k| (k.id, k.fingerprint))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    render(MinionsPage {
        chrome,
        minions,
        pending,
    })
}

pub async fn key_action(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    if let Err(e) = backend.require(&viewer.user, Grant::Wheel) {
        return back("/ui/minions", Err(e.message));
    }
    let action = match action.as_str() {
        "accept" => KeyAction::Accept(id.clone()),
        "reject" => KeyAction::Reject(id.clone()),
        _ => return problem(StatusCode::NOT_FOUND, "accept or reject"),
    };
    backend.audit(halite_model::AuditRecord {
        at: now_ms(),
        user: viewer.user.clone(),
        from: "portal".into(),
        method: "POST".into(),
        path: format!("/ui/keys/{id}"),
        status: 200,
        detail: Some(format!("{action:?}")),
    });
    match backend.key_action(action) {
        Ok(changed) => back(
            "/ui/minions",
            Ok(format!("keys changed: {}", changed.join(", "))),
        ),
        Err(e) => back("/ui/minions", Err(e.message)),
    }
}

// ---------------------------------------------------------------- stats

#[derive(Template)]
#[template(path = "stats.html")]
struct StatsPage {
    chrome: Chrome,
    days: u64,
    total: u64,
    rate: String,
    p50: String,
    p95: String,
    per_day: String,
    by_stage: String,
    by_minion: String,
    per_app: Vec<(String, u64, u64, String)>,
    /// Per app and environment: deploys, failed, success rate, p50, p95.
    per_env: Vec<(String, String, u64, u64, String, String, String)>,
}

#[derive(Default, Deserialize)]
pub struct StatsQuery {
    days: Option<u64>,
}

pub async fn stats(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(query): Query<StatsQuery>,
) -> Response {
    let days = query.days.unwrap_or(14).clamp(1, 365);
    let to = now_ms();
    let from = to.saturating_sub(days * 86_400_000);
    let stats = match backend.stats(from, to) {
        Ok(s) => s,
        Err(e) => return api_problem(e),
    };
    let mut per_day: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_app: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for d in &stats.per_app_day {
        let day = per_day.entry(d.day.clone()).or_default();
        day.0 += d.deploys;
        day.1 += d.failed;
        let app = per_app.entry(d.app.clone()).or_default();
        app.0 += d.deploys;
        app.1 += d.failed;
    }
    render(StatsPage {
        chrome: Chrome::new(&viewer, &backend, "stats", &Flash::default()),
        per_env: stats
            .per_env
            .iter()
            .map(|e| {
                (
                    e.app.clone(),
                    e.env.clone().unwrap_or_else(|| "(target)".into()),
                    e.deploys,
                    e.failed,
                    success_rate(e.deploys, e.failed),
                    seconds(e.median_ms),
                    seconds(e.p95_ms),
                )
            })
            .collect(),
        days,
        total: stats.total,
        rate: format!("{:.0} %", stats.success_rate * 100.0),
        p50: seconds(stats.median_ms),
        p95: seconds(stats.p95_ms),
        per_day: charts::stacked_bars("Deploys per day (failed in red)", &per_day),
        by_stage: charts::bars("Failures by stage", &stats.failures_by_stage),
        by_minion: charts::bars("Failures by minion", &stats.failures_by_minion),
        per_app: per_app
            .into_iter()
            .map(|(app, (n, failed))| (app, n, failed, success_rate(n, failed)))
            .collect(),
    })
}

/// `93 %` of `deploys` that did not fail (`-` when there were none).
fn success_rate(deploys: u64, failed: u64) -> String {
    if deploys == 0 {
        "-".into()
    } else {
        format!(
            "{:.0} %",
            (deploys - failed) as f64 * 100.0 / deploys as f64
        )
    }
}

/// A duration in ms as `1.2 s`.
fn seconds(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

// ---------------------------------------------------------------- audit

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    records: Vec<(String, String, String, String, String, u16, String)>,
}

pub async fn audit(State(backend): State<Shared>, viewer: Viewer) -> Response {
    if let Err(e) = backend.require(&viewer.user, Grant::Wheel) {
        return api_problem(e);
    }
    let records = match backend.audit_log(0, u64::MAX, 500) {
        Ok(r) => r,
        Err(e) => return api_problem(e),
    };
    render(AuditPage {
        chrome: Chrome::new(&viewer, &backend, "audit", &Flash::default()),
        records: records
            .into_iter()
            .map(|r| {
                (
                    format_ms(r.at),
                    r.user,
                    r.from,
                    r.method,
                    r.path,
                    r.status,
                    r.detail.unwrap_or_default(),
                )
            })
            .collect(),
    })
}

// ------------------------------------------------------------ schedules

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    schedules: Vec<(String, String, String, String, String, String, bool)>,
    /// App, environment, webhook, polling, and `paused by …` or empty.
    triggers: Vec<(String, String, String, String, String)>,
}

pub async fn schedules(
    State(backend): State<Shared>,
    viewer: Viewer,
    Query(flash): Query<Flash>,
) -> Response {
    let schedules = backend
        .schedules()
        .unwrap_or_default()
        .into_iter()
        .map(|s| {
            let last = s.runs.last().map_or_else(
                || "-".into(),
                |r| match (&r.jid, &r.error) {
                    (Some(jid), _) => format!("job {jid}"),
                    (None, Some(e)) => format!("not run: {e}"),
                    _ => "-".into(),
                },
            );
            (
                s.name.clone(),
                s.cron.clone(),
                format!("{} on {}", s.job.fun, s.job.target),
                s.next_due.map_or_else(|| "-".into(), format_ms),
                last,
                s.owner.clone(),
                s.paused,
            )
        })
        .collect();
    let paused: BTreeMap<String, String> = backend
        .triggers()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let p = t.paused?;
            Some((t.app, format!("paused by {} {}", p.by, age(p.at))))
        })
        .collect();
    let triggers = backend
        .apps()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| {
            let t = a.trigger?;
            let state = paused.get(&a.name).cloned().unwrap_or_default();
            Some((
                a.name,
                t.env,
                if t.secret.is_some() {
                    "webhook".to_owned()
                } else {
                    "-".to_owned()
                },
                if t.poll > 0 {
                    format!("every {} s, tags {}", t.poll, t.tags)
                } else {
                    "-".to_owned()
                },
                state,
            ))
        })
        .collect();
    render(SchedulesPage {
        chrome: Chrome::new(&viewer, &backend, "schedules", &flash),
        schedules,
        triggers,
    })
}

pub async fn trigger_action(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path((app, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    pause_or_resume(
        &viewer,
        &form,
        &action,
        &format!("trigger of {app}"),
        |paused| backend.pause_trigger(&viewer.user, &app, paused).map(drop),
    )
}

pub async fn schedule_action(
    State(backend): State<Shared>,
    viewer: Viewer,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfOnly>,
) -> Response {
    pause_or_resume(
        &viewer,
        &form,
        &action,
        &format!("schedule {name}"),
        |paused| {
            backend
                .pause_schedule(&viewer.user, &name, paused)
                .map(drop)
        },
    )
}

/// A Pause or Resume button of the schedules page: the CSRF token, the
/// action, then `apply(paused)`; back to the page saying what happened.
fn pause_or_resume(
    viewer: &Viewer,
    form: &CsrfOnly,
    action: &str,
    what: &str,
    apply: impl FnOnce(bool) -> Result<(), ApiError>,
) -> Response {
    if let Err(refused) = viewer.check_csrf(&form.csrf) {
        return refused.into_response();
    }
    let paused = match action {
        "pause" => true,
        "resume" => false,
        _ => return problem(StatusCode::NOT_FOUND, "pause or resume"),
    };
    match apply(paused) {
        Ok(()) => back("/ui/schedules", Ok(format!("{what} {action}d"))),
        Err(e) => back("/ui/schedules", Err(e.message)),
    }
}
