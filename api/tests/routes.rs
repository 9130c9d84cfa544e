//! The `/v1` routes against an in-memory fake [`Backend`]: auth, JSON
//! errors for bad input, and what each route hands to the backend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use halite_api::types::{
    AuditRecord, BusEntry, CheckRecord, DeployStats, EventRecord, JobFilter, JobPage, JobRecord,
    JobRequest, JobSummary, JobView, KeyView, KeysView, LoginToken, MinionView, PresenceEvent,
    ReturnRecord, Submitted,
};
use halite_api::{router, ApiError, AppAction, Backend, Grant, KeyAction, PublicKeyText};
use halite_proto::message::{EventBody, KeyStatus};
use halite_proto::{Jid, TargetType};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

const TOKEN: &str = "good-token";
/// A user without any grant.
const VIEWER_TOKEN: &str = "viewer-token";
/// A user with `@runner` (and so `@jobs`) but not `@wheel`.
const RUNNER_TOKEN: &str = "runner-token";
const KNOWN: &str = "20261122153012123456";
const OLDER: &str = "20261122150000000001";
const UNKNOWN: &str = "20991231235959999999";

/// In-memory master that records what the routes asked of it.
struct Fake {
    submitted: Mutex<Vec<(String, JobRequest)>>,
    listed: Mutex<Vec<JobFilter>>,
    key_actions: Mutex<Vec<KeyAction>>,
    audited: Mutex<Vec<AuditRecord>>,
    stream: Mutex<Vec<BusEntry>>,
    live: tokio::sync::broadcast::Sender<Arc<BusEntry>>,
    logged_out: Mutex<Vec<String>>,
    requests: Mutex<Vec<halite_model::ReleaseRequest>>,
    /// Whether job KNOWN reads as done (its one return is web01's).
    known_done: std::sync::atomic::AtomicBool,
    /// What `request_served` was told: method, route, status.
    served: Mutex<Vec<(String, String, u16)>>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            submitted: Mutex::default(),
            listed: Mutex::default(),
            key_actions: Mutex::default(),
            audited: Mutex::default(),
            stream: Mutex::default(),
            live: tokio::sync::broadcast::channel(64).0,
            logged_out: Mutex::default(),
            requests: Mutex::default(),
            known_done: Default::default(),
            served: Mutex::default(),
        }
    }
}

impl Fake {
    /// Appends a stream entry (ids 1, 2, ...) and tells subscribers.
    fn publish(&self, kind: &str, jid: Option<&str>) -> u64 {
        let mut stream = self.stream.lock().unwrap();
        let entry = BusEntry {
            id: stream.len() as u64 + 1,
            kind: kind.into(),
            at: 1,
            jid: jid.map(self::jid),
            minion: Some("web01".into()),
            data: json!({ "n": stream.len() + 1 }),
        };
        stream.push(entry.clone());
        let _ = self.live.send(Arc::new(entry));
        stream.len() as u64
    }
}

fn jid(s: &str) -> Jid {
    Jid::parse(s).expect("test jid")
}

fn summary(j: &str, fun: &str) -> JobSummary {
    JobSummary {
        jid: jid(j),
        fun: fun.into(),
        target: "web*".into(),
        tgt_type: Default::default(),
        arg: vec![],
        user: "alice".into(),
        issued_at: 1_700_000_000_000,
        expected: 2,
        returned: 1,
        failed: 0,
        done: false,
        app: None,
    }
}

fn event(cursor: u64, line: &str) -> EventRecord {
    EventRecord {
        cursor,
        id: "web01".into(),
        seq: cursor - 1,
        at: 1_700_000_000_000 + cursor,
        body: EventBody::Progress {
            line: line.into(),
            stream: "stdout".into(),
        },
    }
}

impl Backend for Fake {
    fn authenticate(&self, token: &str) -> Option<String> {
        match token {
            TOKEN => Some("alice".to_owned()),
            VIEWER_TOKEN => Some("viewer".to_owned()),
            RUNNER_TOKEN => Some("runner".to_owned()),
            _ => None,
        }
    }

    fn login(&self, user: &str, password: &str) -> Result<LoginToken, ApiError> {
        if (user, password) != ("alice", "pw") {
            return Err(ApiError::unauthorized("wrong user name or password"));
        }
        Ok(LoginToken {
            token: TOKEN.into(),
            user: user.into(),
            issued_at: 1_000,
            expires_at: 2_000,
            perms: vec![json!(".*")],
        })
    }

    fn may_read(&self, user: &str, job: &JobRecord) -> bool {
        user == "alice" || job.user == user
    }

    fn logout(&self, token: &str) -> Result<(), ApiError> {
        self.logged_out.lock().unwrap().push(token.to_owned());
        Ok(())
    }

    fn require(&self, user: &str, grant: Grant) -> Result<(), ApiError> {
        if user == "alice" || (user == "runner" && grant != Grant::Wheel) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("{user} lacks {grant:?}")))
        }
    }

    fn cancel(&self, user: &str, j: &Jid) -> Result<Value, ApiError> {
        if j.as_str() != KNOWN {
            return Err(ApiError::not_found(format!("no job {j}")));
        }
        Ok(json!({ "jid": j, "by": user }))
    }

    fn minion(&self, id: &str) -> Result<MinionView, ApiError> {
        self.minions()?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| ApiError::not_found(format!("no minion {id}")))
    }

    fn app_action(
        &self,
        user: &str,
        app: &str,
        action: AppAction,
        options: serde_json::Map<String, Value>,
    ) -> Result<Submitted, ApiError> {
        if app != "shop" {
            return Err(ApiError::not_found(format!("no app {app:?}")));
        }
        let mut kwarg = options;
        kwarg.insert("app".into(), json!(app));
        self.submit(
            user,
            JobRequest {
                target: "web*".into(),
                fun: format!("git_deploy.{}", format!("{action:?}").to_lowercase()),
                kwarg,
                ..JobRequest::default()
            },
        )
    }

    fn stats(&self, from: u64, to: u64) -> Result<DeployStats, ApiError> {
        Ok(DeployStats {
            from,
            to,
            success_rate: 1.0,
            ..DeployStats::default()
        })
    }

    fn audit(&self, record: AuditRecord) {
        self.audited.lock().unwrap().push(record);
    }

    fn audit_log(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, ApiError> {
        let all = self.audited.lock().unwrap();
        Ok(all
            .iter()
            .rev()
            .filter(|r| r.at >= from && r.at < to)
            .take(limit)
            .cloned()
            .collect())
    }

    fn stream(
        &self,
        after: u64,
        jid: Option<&Jid>,
        limit: usize,
    ) -> Result<Vec<BusEntry>, ApiError> {
        Ok(self
            .stream
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.id > after && (jid.is_none() || e.jid.as_ref() == jid))
            .take(limit)
            .cloned()
            .collect())
    }

    fn stream_head(&self) -> Result<u64, ApiError> {
        Ok(self.stream.lock().unwrap().len() as u64)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<BusEntry>> {
        self.live.subscribe()
    }

    fn check(&self, _user: &str, request: JobRequest) -> Result<(), ApiError> {
        if request.fun.starts_with("secret.") {
            return Err(ApiError::forbidden(format!("may not run {}", request.fun)));
        }
        Ok(())
    }

    fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError> {
        if !request.fun.contains('.') {
            return Err(ApiError::bad_request(format!(
                "function {:?} is not module.function",
                request.fun
            )));
        }
        self.submitted
            .lock()
            .unwrap()
            .push((user.to_owned(), request));
        Ok(Submitted {
            jid: jid(KNOWN),
            minions: vec!["web01".into(), "web02".into()],
            freeze_override: None,
        })
    }

    fn jobs(&self, filter: &JobFilter) -> Result<JobPage, ApiError> {
        self.listed.lock().unwrap().push(filter.clone());
        let before = filter.before.as_deref().map(jid);
        let limit = filter.limit.unwrap_or(50).clamp(1, 1000);
        let all = [summary(KNOWN, "test.ping"), summary(OLDER, "cmd.run")];
        Ok(JobPage {
            jobs: all
                .into_iter()
                .filter(|j| before.as_ref().is_none_or(|b| &j.jid < b))
                .take(limit)
                .collect(),
            next: None,
        })
    }

    fn job(&self, j: &Jid) -> Result<JobView, ApiError> {
        if j.as_str() != KNOWN {
            return Err(ApiError::not_found(format!("no job {j}")));
        }
        let ret = ReturnRecord {
            id: "web01".into(),
            fun: "test.ping".into(),
            success: true,
            retcode: 0,
            data: json!(true),
            started_at: 1,
            finished_at: 2,
            stored_at: 3,
        };
        Ok(JobView {
            job: JobRecord {
                jid: j.clone(),
                target: "web*".into(),
                tgt_type: TargetType::Glob,
                fun: "test.ping".into(),
                arg: vec![],
                kwarg: Default::default(),
                secret_keys: vec![],
                user: "alice".into(),
                timeout: 60,
                issued_at: 1,
                expires_at: 60_001,
                expected: vec!["web01".into(), "web02".into()],
                down: vec![],
                published_by: None,
                batch_size: None,
            },
            returns: BTreeMap::from([("web01".to_owned(), ret)]),
            missing: vec!["web02".into()],
            done: self.known_done.load(std::sync::atomic::Ordering::SeqCst),
        })
    }

    fn events(&self, j: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, ApiError> {
        if j.as_str() != KNOWN {
            return Err(ApiError::not_found(format!("no job {j}")));
        }
        let all = [event(1, "one"), event(2, "two"), event(3, "three")];
        Ok(all
            .into_iter()
            .filter(|e| after.is_none_or(|a| e.cursor > a))
            .collect())
    }

    fn minions(&self) -> Result<Vec<MinionView>, ApiError> {
        Ok(vec![MinionView {
            id: "web01".into(),
            status: "up".into(),
            last_seen: Some(1_700_000_000_000),
            version: Some("0.1.0".into()),
            latency_ms: Some(3),
            os: Some("Linux".into()),
            grains: json!({"os": "Linux", "role": "web"}),
        }])
    }

    fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, ApiError> {
        let all = [
            PresenceEvent {
                id: "web01".into(),
                event: "minion/down".into(),
                at: 2,
            },
            PresenceEvent {
                id: "web01".into(),
                event: "minion/up".into(),
                at: 1,
            },
        ];
        Ok(all.into_iter().take(limit).collect())
    }

    fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, ApiError> {
        let all = [(30, true), (20, false), (10, true)].map(|(at, ok)| CheckRecord {
            id: "web01".into(),
            at,
            ok,
            latency_ms: ok.then_some(2),
            last_seen: Some(at),
        });
        Ok(all
            .into_iter()
            .filter(|c| c.at >= since && (!failed_only || !c.ok))
            .take(limit)
            .collect())
    }

    fn keys(&self) -> Result<KeysView, ApiError> {
        Ok(KeysView {
            master_fingerprint: "ab:cd".into(),
            keys: vec![
                KeyView {
                    id: "web01".into(),
                    status: KeyStatus::Accepted,
                    fingerprint: "11:22".into(),
                },
                KeyView {
                    id: "web02".into(),
                    status: KeyStatus::Pending,
                    fingerprint: "33:44".into(),
                },
            ],
        })
    }

    fn key_action(&self, action: KeyAction) -> Result<Vec<String>, ApiError> {
        self.key_actions.lock().unwrap().push(action.clone());
        match action {
            KeyAction::AcceptAll => Ok(vec!["web02".into()]),
            KeyAction::Accept(id) | KeyAction::Reject(id) | KeyAction::Delete(id)
                if id == "ghost" =>
            {
                Err(ApiError::not_found(format!("no key for minion {id}")))
            }
            KeyAction::Accept(id) | KeyAction::Reject(id) | KeyAction::Delete(id) => Ok(vec![id]),
        }
    }

    fn public_keys(&self) -> Result<Vec<PublicKeyText>, ApiError> {
        Ok(self
            .keys()?
            .keys
            .into_iter()
            .map(|k| PublicKeyText {
                pem: format!("-----BEGIN KEY-----\n{}\n-----END KEY-----\n", k.id),
                id: k.id,
                status: k.status,
            })
            .collect())
    }

    fn config_values(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        Ok(json!({ "id": "fake-master", "ret_port": 4506 })
            .as_object()
            .cloned()
            .unwrap_or_default())
    }

    fn create_request(
        &self,
        user: &str,
        new: halite_model::NewRequest,
    ) -> Result<halite_model::ReleaseRequest, ApiError> {
        let mut requests = self.requests.lock().unwrap();
        let request = halite_model::ReleaseRequest::new(
            requests.len() as u64 + 1,
            &new.app,
            &new.env,
            new.kind,
            new.version,
            Some("a".repeat(40)),
            &new.reason,
            user,
            1,
        );
        requests.push(request.clone());
        Ok(request)
    }

    fn requests(
        &self,
        app: Option<&str>,
        env: Option<&str>,
        limit: usize,
    ) -> Result<Vec<halite_model::ReleaseRequest>, ApiError> {
        Ok(self
            .requests
            .lock()
            .unwrap()
            .iter()
            .rev()
            .filter(|r| app.is_none_or(|a| r.app == a) && env.is_none_or(|e| r.env == e))
            .take(limit)
            .cloned()
            .collect())
    }

    fn request(&self, id: u64) -> Result<halite_model::ReleaseRequest, ApiError> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no request {id}")))
    }

    fn request_step(
        &self,
        user: &str,
        id: u64,
        step: halite_model::Step,
        reason: Option<&str>,
        _override_freeze: bool,
    ) -> Result<halite_model::ReleaseRequest, ApiError> {
        let action = step
            .decision()
            .unwrap_or(halite_model::Action::Deploy(jid(KNOWN)));
        let rules = halite_model::Rules {
            requires_approval: true,
            approvers: vec!["alice".into(), "viewer".into()],
            self_approval: false,
        };
        let mut requests = self.requests.lock().unwrap();
        let request = requests
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| ApiError::not_found(format!("no request {id}")))?;
        request
            .apply(action, user, reason, 2, &rules)
            .map_err(|e| ApiError::conflict(e.to_string()))?;
        Ok(request.clone())
    }

    // The workflow's git views, webhooks and schedules are exercised
    // against a real master (tests/tests/workflow.rs); this double has none.
    fn app_versions(&self, app: &str) -> Result<Value, ApiError> {
        Err(ApiError::not_found(format!("no app {app:?}")))
    }

    fn app_changes(
        &self,
        app: &str,
        _: &str,
        _: serde_json::Map<String, Value>,
    ) -> Result<Value, ApiError> {
        Err(ApiError::not_found(format!("no app {app:?}")))
    }

    fn request_changes(&self, id: u64) -> Result<Value, ApiError> {
        Err(ApiError::not_found(format!("no request {id}")))
    }

    fn webhook(
        &self,
        app: &str,
        _: &std::collections::BTreeMap<String, String>,
        _: &[u8],
    ) -> Result<halite_model::HookOutcome, ApiError> {
        Err(ApiError::not_found(format!("no app {app:?}")))
    }

    fn may_release(&self, user: &str, _: &str, _: Option<&str>) -> bool {
        user == "alice"
    }

    fn create_schedule(
        &self,
        _: &str,
        new: halite_model::NewSchedule,
    ) -> Result<halite_model::Schedule, ApiError> {
        Err(ApiError::forbidden(format!(
            "no schedule {:?} here",
            new.name
        )))
    }

    fn pause_trigger(
        &self,
        _: &str,
        app: &str,
        _: bool,
    ) -> Result<halite_model::TriggerState, ApiError> {
        Err(ApiError::not_found(format!("no app {app:?}")))
    }

    fn triggers(&self) -> Result<Vec<halite_model::TriggerState>, ApiError> {
        Ok(Vec::new())
    }

    fn start_rollout(
        &self,
        _: &str,
        new: halite_model::NewRollout,
    ) -> Result<halite_model::Rollout, ApiError> {
        Err(ApiError::not_found(format!("no app {:?}", new.app)))
    }

    fn rollouts(&self, _: usize) -> Result<Vec<halite_model::Rollout>, ApiError> {
        Ok(Vec::new())
    }

    fn rollout(&self, id: u64) -> Result<halite_model::Rollout, ApiError> {
        Err(ApiError::not_found(format!("no rollout {id}")))
    }

    fn rollout_action(
        &self,
        _: &str,
        id: u64,
        _: halite_model::RolloutAction,
    ) -> Result<halite_model::Rollout, ApiError> {
        Err(ApiError::not_found(format!("no rollout {id}")))
    }

    fn schedules(&self) -> Result<Vec<halite_model::Schedule>, ApiError> {
        Ok(Vec::new())
    }

    fn schedule(&self, name: &str) -> Result<halite_model::Schedule, ApiError> {
        Err(ApiError::not_found(format!("no schedule {name:?}")))
    }

    fn pause_schedule(
        &self,
        _: &str,
        name: &str,
        _: bool,
    ) -> Result<halite_model::Schedule, ApiError> {
        Err(ApiError::not_found(format!("no schedule {name:?}")))
    }

    fn remove_schedule(&self, _: &str, name: &str) -> Result<(), ApiError> {
        Err(ApiError::not_found(format!("no schedule {name:?}")))
    }

    fn request_served(&self, method: &str, route: &str, status: u16, _took: std::time::Duration) {
        self.served
            .lock()
            .unwrap()
            .push((method.to_owned(), route.to_owned(), status));
    }

    fn announce(&self, mut entry: BusEntry) -> Result<u64, ApiError> {
        let mut stream = self.stream.lock().unwrap();
        entry.id = stream.len() as u64 + 1;
        stream.push(entry.clone());
        let _ = self.live.send(Arc::new(entry));
        Ok(stream.len() as u64)
    }

    fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, ApiError> {
        Ok(Vec::new())
    }

    fn app_releases(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<halite_api::types::AppReleases, ApiError> {
        if app != "shop" {
            return Err(ApiError::not_found(format!("no app {app:?}")));
        }
        Ok(halite_api::types::AppReleases {
            app: format!("{app}:{limit}"),
            live: Vec::new(),
            history: Vec::new(),
        })
    }
}

fn app() -> (Arc<Fake>, Router) {
    let fake = Arc::new(Fake::default());
    (fake.clone(), router(fake))
}

/// Sends one request; answers the status and the body parsed as JSON
/// (a body that is not JSON fails the test, showing the text).
async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    if text.starts_with("<!DOCTYPE html>") {
        // salt-api's error page: its reason, as halite's JSON errors carry it.
        let reason = text
            .split_once("<p>")
            .and_then(|(_, rest)| rest.split_once("</p>"))
            .map(|(reason, _)| reason.replace("&quot;", "\"").replace("&#x27;", "'"))
            .unwrap_or_default();
        return (status, json!({ "error": reason, "salt_page": true }));
    }
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn authed(method: Method, uri: &str) -> Request<Body> {
    req(method, uri)
        .header("X-Auth-Token", TOKEN)
        .body(Body::empty())
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    authed(Method::GET, uri)
}

fn post_json(uri: &str, body: &str) -> Request<Body> {
    req(Method::POST, uri)
        .header("X-Auth-Token", TOKEN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// The body is exactly `{"error": "..."}` (or salt-api's error page, read
/// as that plus `salt_page`) and the message contains every `part`.
fn assert_error(body: &Value, parts: &[&str]) {
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    let expected = if object.contains_key("salt_page") {
        2
    } else {
        1
    };
    assert_eq!(
        object.len(),
        expected,
        "error body has only `error`: {body}"
    );
    let message = object["error"]
        .as_str()
        .unwrap_or_else(|| panic!("`error` is not a string: {body}"));
    for part in parts {
        assert!(
            message.contains(part),
            "error {message:?} should mention {part:?}"
        );
    }
}

// ---- auth ------------------------------------------------------------

#[tokio::test]
async fn health_needs_no_token() {
    let (_, app) = app();
    let (status, body) = call(
        &app,
        req(Method::GET, "/v1/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ok": true}));
}

#[tokio::test]
async fn requests_are_reported_by_route_template_and_status() {
    let (fake, app) = app();
    call(&app, authed(Method::GET, &format!("/v1/jobs/{KNOWN}"))).await;
    let unauthed = req(Method::GET, &format!("/v1/jobs/{KNOWN}"))
        .body(Body::empty())
        .unwrap();
    call(&app, unauthed).await;
    call(&app, authed(Method::GET, "/v1/no-such-route")).await;
    let served = fake.served.lock().unwrap().clone();
    assert_eq!(
        served,
        vec![
            ("GET".to_owned(), "/v1/jobs/{jid}".to_owned(), 200),
            ("GET".to_owned(), "/v1/jobs/{jid}".to_owned(), 401),
        ],
        "the raw path is never a label; an unrouted request is not reported"
    );
}

#[tokio::test]
async fn no_token_is_401_on_every_protected_route() {
    let (fake, app) = app();
    for (method, uri) in [
        (Method::GET, "/v1/jobs".to_owned()),
        (Method::POST, "/v1/jobs".to_owned()),
        (Method::GET, format!("/v1/jobs/{KNOWN}")),
        (Method::GET, format!("/v1/jobs/{KNOWN}/events")),
        (Method::GET, "/v1/minions".to_owned()),
        (Method::GET, "/v1/presence".to_owned()),
        (Method::GET, "/v1/checks".to_owned()),
        (Method::GET, "/v1/keys".to_owned()),
        (Method::POST, "/v1/keys/_all/accept".to_owned()),
        (Method::POST, "/v1/keys/web02/accept".to_owned()),
        (Method::POST, "/v1/keys/web02/reject".to_owned()),
        (Method::DELETE, "/v1/keys/web02".to_owned()),
    ] {
        let (status, body) =
            call(&app, req(method.clone(), &uri).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        assert_error(&body, &["token", "X-Auth-Token", "Bearer"]);
    }
    assert!(
        fake.key_actions.lock().unwrap().is_empty(),
        "no key action without a token"
    );
    assert!(fake.submitted.lock().unwrap().is_empty());
    assert!(fake.listed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn wrong_tokens_are_401() {
    let (fake, app) = app();
    for (name, value) in [
        ("X-Auth-Token", "nope"),
        ("X-Auth-Token", ""),
        ("Authorization", "Bearer nope"),
        ("Authorization", "Bearer "),
        // Right token, wrong scheme or no scheme.
        ("Authorization", &format!("Basic {TOKEN}")),
        ("Authorization", TOKEN),
    ] {
        let request = req(Method::GET, "/v1/minions")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {value}");
        assert_error(&body, &["missing or invalid token"]);
    }
    // A header value that is not visible ASCII is refused, not a panic.
    let request = req(Method::GET, "/v1/minions")
        .header(
            "X-Auth-Token",
            axum::http::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, &["token"]);
    // A wrong token never reaches a key action.
    let request = req(Method::POST, "/v1/keys/_all/accept")
        .header("Authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, request).await.0, StatusCode::UNAUTHORIZED);
    assert!(fake.key_actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn both_token_headers_work() {
    let (_, app) = app();
    for (name, value) in [
        ("X-Auth-Token", TOKEN.to_owned()),
        ("Authorization", format!("Bearer {TOKEN}")),
    ] {
        let request = req(Method::GET, "/v1/minions")
            .header(name, value)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(body[0]["id"], "web01", "{name}: {body}");
    }
}

// ---- POST /v1/jobs ---------------------------------------------------

#[tokio::test]
async fn submit_happy_path() {
    let (fake, app) = app();
    let (status, body) = call(
        &app,
        post_json(
            "/v1/jobs",
            r#"{"target": "G@role:web", "tgt_type": "compound", "fun": "cmd.run",
                "arg": ["uname -sr"], "kwarg": {"cwd": "/tmp"}, "timeout": 30}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"jid": KNOWN, "minions": ["web01", "web02"]}));

    let submitted = fake.submitted.lock().unwrap();
    let (user, request) = &submitted[0];
    assert_eq!(user, "alice", "the token's user is passed on");
    assert_eq!(request.target, "G@role:web");
    assert_eq!(request.tgt_type, TargetType::Compound);
    assert_eq!(request.fun, "cmd.run");
    assert_eq!(request.arg, vec![json!("uname -sr")]);
    assert_eq!(request.kwarg["cwd"], "/tmp");
    assert_eq!(request.timeout, Some(30));
}

#[tokio::test]
async fn submit_defaults_and_bearer() {
    let (fake, app) = app();
    let request = req(Method::POST, "/v1/jobs")
        .header("Authorization", format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(r#"{"target": "*", "fun": "test.ping"}"#))
        .unwrap();
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["jid"], KNOWN);
    let submitted = fake.submitted.lock().unwrap();
    let request = &submitted[0].1;
    assert_eq!(request.tgt_type, TargetType::Glob);
    assert!(request.arg.is_empty() && request.kwarg.is_empty() && request.secret.is_empty());
    assert_eq!(request.timeout, None);
}

#[tokio::test]
async fn submit_bad_json_is_400_naming_the_problem() {
    let (fake, app) = app();
    for (text, parts) in [
        (r#"{"target": "*", "fun": "#, &["parse", "JSON"][..]),
        ("not json at all", &["parse", "JSON"]),
        ("", &["JSON"]),
        ("[1, 2]", &["invalid type"]),
        ("null", &["invalid type"]),
    ] {
        let (status, body) = call(&app, post_json("/v1/jobs", text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text:?}: {body}");
        assert_error(&body, parts);
    }
    assert!(fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn submit_unknown_field_is_400_naming_it() {
    let (fake, app) = app();
    let (status, body) = call(
        &app,
        post_json(
            "/v1/jobs",
            r#"{"target": "*", "fun": "test.ping", "colour": "blue"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["unknown field", "colour"]);
    assert!(fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn submit_wrong_types_and_missing_fields_are_400() {
    let (fake, app) = app();
    for (text, parts) in [
        (
            r#"{"target": "*", "fun": "test.ping", "arg": "x"}"#,
            &["arg", "invalid type"][..],
        ),
        (r#"{"target": "*", "fun": 7}"#, &["fun", "invalid type"]),
        (
            r#"{"target": "*", "fun": "test.sleep", "timeout": -1}"#,
            &["timeout"],
        ),
        (
            r#"{"target": "*", "fun": "test.ping", "kwarg": [1]}"#,
            &["kwarg", "invalid type"],
        ),
        (
            r#"{"target": "*", "fun": "test.ping", "secret": {"token": 1}}"#,
            &["secret", "invalid type"],
        ),
        (
            r#"{"target": "*", "fun": "test.ping", "tgt_type": "regex"}"#,
            &["tgt_type", "unknown variant", "regex"],
        ),
        (r#"{"target": "*"}"#, &["missing field", "fun"]),
        (r#"{"fun": "test.ping"}"#, &["missing field", "target"]),
    ] {
        let (status, body) = call(&app, post_json("/v1/jobs", text)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}: {body}");
        assert_error(&body, parts);
    }
    assert!(fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn submit_without_json_content_type_is_415() {
    let (fake, app) = app();
    let body = r#"{"target": "*", "fun": "test.ping"}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = req(Method::POST, "/v1/jobs").header("X-Auth-Token", TOKEN);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let (status, answer) = call(&app, request.body(Body::from(body)).unwrap()).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_error(&answer, &["Content-Type: application/json"]);
    }
    assert!(fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn submit_backend_refusal_is_passed_on_as_json() {
    let (_, app) = app();
    let (status, body) = call(
        &app,
        post_json("/v1/jobs", r#"{"target": "*", "fun": "ping"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["\"ping\"", "module.function"]);
}

// ---- GET /v1/jobs ----------------------------------------------------

#[tokio::test]
async fn list_jobs_with_limit_and_before() {
    let (fake, app) = app();
    let (status, body) = call(&app, get("/v1/jobs")).await;
    assert_eq!(status, StatusCode::OK);
    let body = &body["jobs"];
    let jids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["jid"].as_str().unwrap())
        .collect();
    assert_eq!(jids, [KNOWN, OLDER]);
    assert_eq!(body[1]["fun"], "cmd.run");
    assert_eq!(body[0]["expected"], 2);

    let (status, body) = call(&app, get(&format!("/v1/jobs?before={KNOWN}&limit=10"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(body["jobs"][0]["jid"], OLDER);

    // Limits reach the backend as given (it clamps them into 1..=1000).
    assert_eq!(
        call(&app, get("/v1/jobs?limit=0")).await.1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        call(&app, get("/v1/jobs?limit=5000")).await.0,
        StatusCode::OK
    );
    let listed = fake.listed.lock().unwrap();
    let limits: Vec<Option<usize>> = listed.iter().map(|f| f.limit).collect();
    assert_eq!(limits, [None, Some(10), Some(0), Some(5000)]);
    assert_eq!(listed[1].before.as_deref(), Some(KNOWN));
}

#[tokio::test]
async fn list_jobs_bad_before_is_400() {
    let (fake, app) = app();
    for before in [
        "yesterday",
        "2026",
        "..%2F..%2Fetc",
        "202611221530121234567",
    ] {
        let (status, body) = call(&app, get(&format!("/v1/jobs?before={before}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{before}");
        assert_error(&body, &["jid", "20 digits"]);
    }
    assert!(fake.listed.lock().unwrap().is_empty());
}

#[tokio::test]
async fn list_jobs_bad_query_is_400() {
    let (fake, app) = app();
    for (query, parts) in [
        ("limit=ten", &["limit"][..]),
        ("limit=-1", &["limit"]),
        ("limit=1.5", &["limit"]),
        ("limit=99999999999999999999999", &["limit"]),
        ("colour=blue", &["unknown field", "colour"]),
    ] {
        let (status, body) = call(&app, get(&format!("/v1/jobs?{query}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_error(&body, parts);
    }
    assert!(fake.listed.lock().unwrap().is_empty());
}

// ---- GET /v1/jobs/{jid} and events ------------------------------------

#[tokio::test]
async fn show_job() {
    let (_, app) = app();
    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["jid"], KNOWN,
        "the job record is flattened into the view: {body}"
    );
    assert_eq!(body["fun"], "test.ping");
    assert_eq!(body["tgt_type"], "glob");
    assert_eq!(body["returns"]["web01"]["data"], true);
    assert_eq!(body["missing"], json!(["web02"]));
    assert_eq!(body["done"], false);
}

#[tokio::test]
async fn show_job_malformed_jid_is_400() {
    let (_, app) = app();
    for raw in [
        "123",
        "abcdefghijabcdefghij",
        "..",
        "%2E%2E%2Fkeys",
        "2026112215301212345%00",
    ] {
        let (status, body) = call(&app, get(&format!("/v1/jobs/{raw}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw}");
        assert_error(&body, &["jid", "20 digits"]);
    }
}

#[tokio::test]
async fn show_job_unknown_jid_is_404() {
    let (_, app) = app();
    let (status, body) = call(&app, get(&format!("/v1/jobs/{UNKNOWN}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, &[&format!("no job {UNKNOWN}")]);
}

#[tokio::test]
async fn events_all_and_after_a_cursor() {
    let (_, app) = app();
    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}/events"))).await;
    assert_eq!(status, StatusCode::OK);
    let cursors: Vec<u64> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cursor"].as_u64().unwrap())
        .collect();
    assert_eq!(cursors, [1, 2, 3]);
    // The event body is flattened next to the cursor.
    assert_eq!(body[0]["type"], "progress");
    assert_eq!(body[0]["line"], "one");
    assert_eq!(body[0]["stream"], "stdout");
    assert_eq!(body[0]["id"], "web01");

    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}/events?after=1"))).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["two", "three"]);

    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}/events?after=3"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([]));
}

#[tokio::test]
async fn events_bad_input() {
    let (_, app) = app();
    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}/events?after=soon"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["after"]);

    let (status, body) = call(&app, get(&format!("/v1/jobs/{KNOWN}/events?since=1"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["unknown field", "since"]);

    let (status, body) = call(&app, get("/v1/jobs/12/events")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["jid"]);

    let (status, body) = call(&app, get(&format!("/v1/jobs/{UNKNOWN}/events?after=1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, &[&format!("no job {UNKNOWN}")]);
}

// ---- minions and keys -------------------------------------------------

#[tokio::test]
async fn minions_list() {
    let (_, app) = app();
    let (status, body) = call(&app, get("/v1/minions")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{
            "id": "web01",
            "status": "up",
            "last_seen": 1_700_000_000_000u64,
            "version": "0.1.0",
            "latency_ms": 3,
            "os": "Linux",
            "grains": {"os": "Linux", "role": "web"},
        }])
    );
}

#[tokio::test]
async fn checks_filter_by_time_and_failure() {
    let (_, app) = app();
    let (status, body) = call(&app, get("/v1/checks")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(3));
    let (status, body) = call(&app, get("/v1/checks?failed=true")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{"id": "web01", "at": 20, "ok": false, "latency_ms": null, "last_seen": 20}])
    );
    let (_, body) = call(&app, get("/v1/checks?since=25")).await;
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    for bad in [
        "/v1/checks?failed=maybe",
        "/v1/checks?since=-1",
        "/v1/checks?host=x",
    ] {
        let (status, body) = call(&app, get(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_error(&body, &[]);
    }
}

#[tokio::test]
async fn presence_lists_transitions_newest_first() {
    let (_, app) = app();
    let (status, body) = call(&app, get("/v1/presence")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body[0],
        json!({"id": "web01", "event": "minion/down", "at": 2})
    );
    assert_eq!(body.as_array().map(Vec::len), Some(2));
    let (status, body) = call(&app, get("/v1/presence?limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    for bad in ["/v1/presence?limit=x", "/v1/presence?since=1"] {
        let (status, body) = call(&app, get(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_error(&body, &[]);
    }
}

#[tokio::test]
async fn keys_list() {
    let (fake, app) = app();
    let (status, body) = call(&app, get("/v1/keys")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({
            "master_fingerprint": "ab:cd",
            "keys": [
                {"id": "web01", "status": "accepted", "fingerprint": "11:22"},
                {"id": "web02", "status": "pending", "fingerprint": "33:44"},
            ],
        })
    );
    assert!(
        fake.key_actions.lock().unwrap().is_empty(),
        "listing changes nothing"
    );
}

#[tokio::test]
async fn key_actions_reach_the_backend() {
    let (fake, app) = app();
    for (method, uri, expected, ids) in [
        (
            Method::POST,
            "/v1/keys/web02/accept",
            KeyAction::Accept("web02".into()),
            json!(["web02"]),
        ),
        (
            Method::POST,
            "/v1/keys/_all/accept",
            KeyAction::AcceptAll,
            json!(["web02"]),
        ),
        (
            Method::POST,
            "/v1/keys/web01/reject",
            KeyAction::Reject("web01".into()),
            json!(["web01"]),
        ),
        (
            Method::DELETE,
            "/v1/keys/db01",
            KeyAction::Delete("db01".into()),
            json!(["db01"]),
        ),
    ] {
        let (status, body) = call(&app, authed(method.clone(), uri)).await;
        assert_eq!(status, StatusCode::OK, "{method} {uri}");
        assert_eq!(body, json!({ "ids": ids }), "{method} {uri}");
        assert_eq!(
            fake.key_actions.lock().unwrap().pop(),
            Some(expected),
            "{method} {uri}"
        );
    }
    assert!(
        fake.key_actions.lock().unwrap().is_empty(),
        "one action per request"
    );

    // A JSON body (as master-cli sends) is ignored, not refused.
    let (status, body) = call(&app, post_json("/v1/keys/web02/accept", "{}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ids": ["web02"]}));
}

#[tokio::test]
async fn key_action_errors_are_json() {
    let (fake, app) = app();
    let (status, body) = call(&app, authed(Method::POST, "/v1/keys/ghost/accept")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, &["no key for minion ghost"]);
    assert_eq!(
        fake.key_actions.lock().unwrap().pop(),
        Some(KeyAction::Accept("ghost".into()))
    );

    // The id is percent-decoded and handed over as is: validating it is the backend's job.
    let (status, _) = call(&app, authed(Method::DELETE, "/v1/keys/web%2F01")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fake.key_actions.lock().unwrap().pop(),
        Some(KeyAction::Delete("web/01".into()))
    );

    // A wrong method is refused before auth is even looked at (no handler
    // runs), as JSON.
    let (status, body) = call(
        &app,
        req(Method::GET, "/v1/keys/web02/accept")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&body, &["method"]);
    assert!(fake.key_actions.lock().unwrap().is_empty());
}

// ---- everything else --------------------------------------------------

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let (_, app) = app();
    for uri in [
        "/v1",
        "/v1/nothing",
        "/v2/jobs",
        &format!("/v1/jobs/{KNOWN}/returns"),
    ] {
        for request in [get(uri), req(Method::GET, uri).body(Body::empty()).unwrap()] {
            let (status, body) = call(&app, request).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
            assert_error(&body, &["no such route"]);
        }
    }
}

// ---- regressions: gaps found in routes.rs, now fixed ------------------

#[tokio::test]
async fn wrong_method_is_405_json() {
    let (fake, app) = app();
    for (method, uri) in [
        (Method::PUT, "/v1/jobs"),
        (Method::GET, "/v1/keys/web02/accept"),
    ] {
        let (status, body) = call(&app, authed(method.clone(), uri)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_error(&body, &["method"]);
    }
    assert!(fake.key_actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn non_utf8_path_segment_is_400_json() {
    let (fake, app) = app();
    for (method, uri, part) in [
        (Method::GET, "/v1/jobs/%FF", "jid"),
        (Method::GET, "/v1/jobs/%FF/events", "jid"),
        (Method::POST, "/v1/keys/%FF/accept", "id"),
        (Method::DELETE, "/v1/keys/%FF", "id"),
    ] {
        let (status, body) = call(&app, authed(method.clone(), uri)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {uri}");
        assert_error(&body, &[part]);
    }
    assert!(fake.key_actions.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let (fake, app) = app();
    let big = format!(
        r#"{{"target": "*", "fun": "test.echo", "arg": ["{}"]}}"#,
        "x".repeat(3 << 20)
    );
    let (status, body) = call(&app, post_json("/v1/jobs", &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&body, &["limit"]);
    assert!(fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_minion_named_accept_all_can_be_deleted() {
    let (fake, app) = app();
    let (status, body) = call(&app, authed(Method::DELETE, "/v1/keys/accept-all")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"ids": ["accept-all"]}));
    assert_eq!(
        fake.key_actions.lock().unwrap().pop(),
        Some(KeyAction::Delete("accept-all".into()))
    );
}

#[tokio::test]
async fn app_releases_check_the_name_and_limit() {
    let (_, app) = app();
    let (status, body) = call(&app, get("/v1/apps/shop/releases?limit=7")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["app"], "shop:7");
    let (status, body) = call(&app, get("/v1/apps/nope/releases")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(&app, get("/v1/apps/..%2Fx/releases")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&app, get("/v1/apps/shop/releases?limit=x")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(&app, get("/v1/apps")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));
}

// ---- portal features: login, ACL refusals, audit, SSE, OpenAPI --------

fn post_form(uri: &str, body: &str) -> Request<Body> {
    req(Method::POST, uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn logout_ends_the_requests_own_token_on_both_apis() {
    let (fake, app) = app();
    let (status, body) = call(&app, authed(Method::POST, "/v1/logout")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, authed(Method::POST, "/logout")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return"], "Your token has been cleared");
    assert_eq!(*fake.logged_out.lock().unwrap(), [TOKEN, TOKEN]);
    let (status, _) = call(
        &app,
        req(Method::POST, "/v1/logout").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_logins_of_a_user_are_throttled_with_retry_after() {
    let (_fake, app) = app();
    for _ in 0..halite_api::throttle::PER_USER_FAILURES {
        let (status, _) = call(&app, post_form("/v1/login", "username=alice&password=no")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let response = app
        .clone()
        .oneshot(post_form("/login", "username=alice&password=pw"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another name is not held up by alice's failures.
    let (status, _) = call(&app, post_form("/v1/login", "username=bob&password=no")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn login_by_json_and_form_and_every_attempt_is_audited() {
    let (fake, app) = app();
    let request = req(Method::POST, "/v1/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"username":"alice","password":"pw"}"#))
        .unwrap();
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token"], TOKEN);
    assert_eq!(body["expires_at"], 2000);
    let (status, body) = call(&app, post_form("/v1/login", "username=alice&password=pw")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, post_form("/v1/login", "username=alice&password=no")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, &["wrong user name or password"]);
    let (status, body) = call(&app, post_form("/v1/login", "username=alice")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["password"]);
    let (status, _) = call(&app, post_json("/v1/login", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let audited = fake.audited.lock().unwrap();
    let outcomes: Vec<(u16, &str)> = audited
        .iter()
        .map(|r| (r.status, r.detail.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(
        outcomes,
        [(200, "login"), (200, "login"), (401, "failed login")]
    );
    assert!(audited.iter().all(|r| r.user == "alice"));
}

#[tokio::test]
async fn changes_are_audited_with_user_status_and_detail_and_reads_are_not() {
    let (fake, app) = app();
    let (status, _) = call(
        &app,
        post_json("/v1/jobs", r#"{"target":"web*","fun":"test.ping"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(
        &app,
        post_json("/v1/jobs", r#"{"target":"web*","fun":"ping"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    call(&app, get("/v1/jobs")).await;
    call(&app, authed(Method::POST, "/v1/keys/web02/accept")).await;
    let (status, log) = call(&app, get("/v1/audit")).await;
    assert_eq!(status, StatusCode::OK);
    let rows: Vec<(String, String, u64, String)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
                r["status"].as_u64().unwrap(),
                r["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "alice".into(),
                "/v1/keys/web02/accept".into(),
                200,
                "accept web02".into()
            ),
            ("alice".into(), "/v1/jobs".into(), 400, String::new()),
            (
                "alice".into(),
                "/v1/jobs".into(),
                202,
                "test.ping on web*".into()
            ),
        ]
    );
    assert_eq!(fake.audited.lock().unwrap().len(), 3);
    let (status, body) = call(&app, get("/v1/audit?from=10&to=5")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["from"]);
}

#[tokio::test]
async fn a_user_without_the_grant_gets_403_and_nothing_changes() {
    let (fake, app) = app();
    for (method, uri) in [
        (Method::POST, "/v1/keys/web02/accept"),
        (Method::POST, "/v1/keys/_all/accept"),
        (Method::DELETE, "/v1/keys/web02"),
    ] {
        let request = req(method.clone(), uri)
            .header("x-auth-token", VIEWER_TOKEN)
            .body(Body::empty())
            .unwrap();
        let (status, body) = call(&app, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert_error(&body, &["viewer"]);
    }
    assert!(fake.key_actions.lock().unwrap().is_empty());
    let audited = fake.audited.lock().unwrap();
    assert_eq!(audited.len(), 3);
    assert!(audited
        .iter()
        .all(|r| r.status == 403 && r.user == "viewer"));
}

#[tokio::test]
async fn cancel_minion_detail_app_actions_and_stats() {
    let (fake, app) = app();
    let (status, body) = call(
        &app,
        authed(Method::POST, &format!("/v1/jobs/{KNOWN}/cancel")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["by"], "alice");
    let (status, _) = call(
        &app,
        authed(Method::POST, &format!("/v1/jobs/{UNKNOWN}/cancel")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&app, get("/v1/minions/web01")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], "web01");
    let (status, body) = call(&app, get("/v1/minions/ghost")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, &["ghost"]);
    let (status, _) = call(&app, get("/v1/minions/..%2Fetc")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(&app, get("/v1/minions/web01/jobs?limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        fake.listed.lock().unwrap()[0].minion.as_deref(),
        Some("web01")
    );
    let (status, body) = call(&app, post_json("/v1/apps/shop/deploy", r#"{"tag":"v3"}"#)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _) = call(&app, post_json("/v1/apps/shop/rollback", "{}")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = call(&app, post_json("/v1/apps/nope/deploy", "{}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, post_json("/v1/apps/shop/deploy", "[1]")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    {
        let submitted = fake.submitted.lock().unwrap();
        assert_eq!(submitted[0].1.fun, "git_deploy.deploy");
        assert_eq!(submitted[0].1.kwarg["tag"], "v3");
        assert_eq!(submitted[1].1.fun, "git_deploy.rollback");
    }
    let (status, body) = call(&app, get("/v1/stats?from=5&to=10")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["from"].as_u64(), body["to"].as_u64()),
        (Some(5), Some(10))
    );
    let (status, _) = call(&app, get("/v1/stats?from=soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn job_filters_are_checked() {
    let (fake, app) = app();
    let (status, body) = call(&app, get("/v1/jobs?result=maybe")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["result", "success"]);
    let (status, _) = call(&app, get("/v1/jobs?from=10&to=10")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(fake.listed.lock().unwrap().is_empty());
    let (status, _) = call(
        &app,
        get("/v1/jobs?fun=git_deploy.*&user=bob&result=failed&from=1&to=2&target=web*"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed = fake.listed.lock().unwrap();
    assert_eq!(listed[0].fun.as_deref(), Some("git_deploy.*"));
    assert_eq!(listed[0].result.as_deref(), Some("failed"));
    assert_eq!(listed[0].from, Some(1));
}

/// Reads SSE frames until `want` `data:` lines arrived (bounded wait).
async fn sse_data(body: &mut axum::body::Body, want: usize) -> Vec<(Option<String>, Value)> {
    let mut text = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while out.len() < want {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("SSE frames in time")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:").map(|v| v.trim().to_owned()));
            if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data:")) {
                out.push((id, serde_json::from_str(data.trim()).expect("JSON data")));
            }
        }
    }
    out
}

#[tokio::test]
async fn job_events_stream_resumes_after_last_event_id_and_follows_live() {
    let (fake, app) = app();
    fake.publish("job/event", Some(KNOWN));
    fake.publish("job/event", Some(OLDER));
    fake.publish("job/event", Some(KNOWN));
    fake.publish("job/return", Some(KNOWN));
    let request = req(Method::GET, &format!("/v1/jobs/{KNOWN}/events"))
        .header("x-auth-token", TOKEN)
        .header(header::ACCEPT, "text/event-stream")
        .header("last-event-id", "1")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body();
    let first = sse_data(&mut body, 2).await;
    let ids: Vec<Option<String>> = first.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        ids,
        [Some("3".into()), Some("4".into())],
        "only KNOWN's, after 1"
    );
    assert_eq!(first[1].1["kind"], "job/return");
    fake.publish("job/event", Some(OLDER));
    fake.publish("job/event", Some(KNOWN));
    let live = sse_data(&mut body, 1).await;
    assert_eq!(live[0].0.as_deref(), Some("6"));

    // The global stream starts from now unless told otherwise, and takes
    // the token from the query (EventSource cannot set headers).
    let request = req(Method::GET, &format!("/v1/events?token={TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    fake.publish("minion/up", None);
    let live = sse_data(&mut body, 1).await;
    assert_eq!(live[0].0.as_deref(), Some("7"));
    assert_eq!(live[0].1["kind"], "minion/up");

    // salt-api's /events: the same stream in Salt's tag/data shape.
    let request = req(Method::GET, "/events")
        .header("x-auth-token", TOKEN)
        .header("last-event-id", "3")
        .body(Body::empty())
        .unwrap();
    let mut body = app.clone().oneshot(request).await.unwrap().into_body();
    let salt = sse_data(&mut body, 1).await;
    assert_eq!(salt[0].1["tag"], format!("salt/job/{KNOWN}/ret/web01"));

    let request = req(Method::GET, "/v1/events")
        .header("x-auth-token", TOKEN)
        .header("last-event-id", "yesterday")
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, &["Last-Event-ID"]);
}

/// Returns are stored before their stream entries are published: a job
/// the store already calls done must not end its stream before the
/// return's entry has been sent (the portal's console and `master-cli`
/// would lose the last return).
#[tokio::test]
async fn a_job_stream_never_ends_before_a_stored_return_is_sent() {
    let (fake, app) = app();
    fake.publish("job/event", Some(KNOWN));
    fake.known_done
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let request = req(Method::GET, &format!("/v1/jobs/{KNOWN}/events"))
        .header("x-auth-token", TOKEN)
        .header(header::ACCEPT, "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let mut body = app.clone().oneshot(request).await.unwrap().into_body();
    let first = sse_data(&mut body, 1).await;
    assert_eq!(first[0].1["kind"], "job/event");
    // The return's entry arrives after the store said done.
    fake.publish("job/return", Some(KNOWN));
    let rest = sse_data(&mut body, 2).await;
    assert_eq!(rest[0].1["kind"], "job/return", "{rest:?}");
    assert_eq!(rest[1].1["jid"], KNOWN, "then done: {rest:?}");
}

#[tokio::test]
async fn salt_api_shapes() {
    let (fake, app) = app();
    let (status, body) = call(
        &app,
        post_form("/login", "username=alice&password=pw&eauth=pam"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return"][0]["token"], TOKEN);
    assert_eq!(body["return"][0]["eauth"], "pam");
    assert_eq!(body["return"][0]["expire"], 2.0);

    let (status, body) = call(
        &app,
        post_json(
            "/",
            r#"[{"client":"local_async","tgt":"web*","fun":"git_deploy.deploy","arg":["tag=v3","version=3"]}]"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return"][0]["jid"], KNOWN);
    assert_eq!(body["return"][0]["minions"], json!(["web01", "web02"]));
    {
        let submitted = fake.submitted.lock().unwrap();
        let request = &submitted[0].1;
        assert_eq!(request.kwarg["tag"], "v3");
        assert_eq!(request.kwarg["version"], 3);
        assert!(request.arg.is_empty());
    }
    // A form body: one chunk, repeated `arg`.
    let (status, body) = call(
        &app,
        req(Method::POST, "/")
            .header("x-auth-token", TOKEN)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(
                "client=local_async&tgt=web*&fun=cmd.run&arg=uname+-a",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.submitted.lock().unwrap()[1].1.arg, [json!("uname -a")]);

    let (status, body) = call(
        &app,
        post_json(
            "/",
            &format!(r#"{{"client":"runner","fun":"jobs.lookup_jid","jid":"{KNOWN}"}}"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return"][0]["web01"], true);
    let (status, body) = call(
        &app,
        post_json("/", r#"{"client":"runner","fun":"jobs.list_jobs"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["return"][0][KNOWN]["Function"], "test.ping");

    for (lowstate, parts) in [
        (
            r#"{"client":"wheel","fun":"nodot"}"#,
            &["nodot", "module.function"][..],
        ),
        (r#"{"client":"ssh","tgt":"*","fun":"test.ping"}"#, &["ssh"]),
        (r#"{"client":"local","fun":"test.ping"}"#, &["tgt"]),
        (r#"{"client":"local_async","tgt":"*"}"#, &["fun"]),
        (
            r#"{"client":"local_async","tgt":"*","fun":"test.ping","tgt_type":"magic"}"#,
            &["tgt_type"],
        ),
        (
            r#"{"client":"runner","fun":"state.orchestrate"}"#,
            &["state.orchestrate"],
        ),
        ("[]", &["no chunk"]),
        ("42", &["lowstate"]),
    ] {
        let (status, body) = call(&app, post_json("/", lowstate)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{lowstate}: {body}");
        assert_eq!(body["salt_page"], true, "salt-api's error shape: {body}");
        assert_error(&body, parts);
    }
    let request = req(Method::POST, "/")
        .header("x-auth-token", VIEWER_TOKEN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"client":"runner","fun":"jobs.list_jobs"}"#))
        .unwrap();
    assert_eq!(call(&app, request).await.0, StatusCode::FORBIDDEN);

    let (status, body) = call(&app, get("/keys")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["return"]["minions"], json!(["web01"]));
    assert_eq!(body["return"]["minions_pre"], json!(["web02"]));
    let (status, body) = call(&app, get("/minions")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["return"][0]["web01"].is_object(), "{body}");
    let (status, body) = call(&app, get(&format!("/jobs/{KNOWN}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["info"][0]["Function"], "test.ping");
    assert_eq!(body["info"][0]["Result"]["web01"]["return"], true);
    assert_eq!(body["return"][0]["web01"], true);
    let (status, body) = call(
        &app,
        post_json("/minions", r#"{"tgt":"web*","fun":"test.ping"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["_links"]["jobs"][0]["href"], format!("/jobs/{KNOWN}"));
    // The session cookie /login sets works in place of the header.
    let request = req(Method::GET, "/keys")
        .header(header::COOKIE, format!("other=1; session_id={TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&app, request).await.0, StatusCode::OK);
}

/// `(METHOD, /v1/path)` pairs the router source declares.
fn declared_routes() -> std::collections::BTreeSet<(String, String)> {
    let source = include_str!("../src/routes.rs");
    // One `.route(` call per piece, however rustfmt wrapped it.
    let flat: String = source.split_whitespace().collect::<Vec<_>>().join("");
    let mut routes = std::collections::BTreeSet::new();
    for piece in flat.split(".route(").skip(1) {
        let Some(rest) = piece.strip_prefix('"') else {
            continue;
        };
        let rest = rest.split(".route").next().unwrap_or(rest);
        let Some((path, handlers)) = rest.split_once('"') else {
            continue;
        };
        // `,get(a).post(b))`: up to the call's end.
        let handlers = handlers.split("))").next().unwrap_or(handlers);
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in ["get", "post", "delete", "put", "patch"] {
            if handlers.contains(&format!("{method}(")) {
                routes.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn openapi_documents_every_v1_route_and_is_served() {
    let (_, app) = app();
    let (status, served) = call(
        &app,
        req(Method::GET, "/v1/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let spec: Value = serde_json::from_str(halite_api::routes::OPENAPI).unwrap();
    assert_eq!(served, spec);
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let declared = declared_routes();
    assert!(declared.len() > 20, "{declared:?}");
    assert_eq!(
        documented, declared,
        "api/openapi.json and routes.rs disagree"
    );
    // Every documented route is really routed (no 404 "no such route", no 405).
    for (method, path) in &documented {
        let uri = path
            .replace("{jid}", KNOWN)
            .replace("{id}", "web01")
            .replace("{name}", "shop");
        let request = req(Method::from_bytes(method.as_bytes()).unwrap(), &uri)
            .header("x-auth-token", TOKEN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_ne!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {uri}"
        );
        if response.status() == StatusCode::NOT_FOUND {
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("no such route"),
                "{method} {uri} is documented but not routed"
            );
        }
    }
}

#[tokio::test]
async fn a_lowstate_list_with_a_refused_chunk_runs_none_of_it() {
    let (fake, app) = app();
    let (status, body) = call(
        &app,
        post_json(
            "/",
            r#"[{"client":"local_async","tgt":"web*","fun":"test.ping"},
                {"client":"local_async","tgt":"web*","fun":"secret.run"}]"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        fake.submitted.lock().unwrap().is_empty(),
        "the first chunk was not published"
    );
    let audited = fake.audited.lock().unwrap();
    let row = audited.last().expect("audited");
    assert_eq!((row.status, row.detail.as_deref()), (403, None));
}

fn as_viewer(method: Method, uri: &str) -> Request<Body> {
    req(method, uri)
        .header("x-auth-token", VIEWER_TOKEN)
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn reads_follow_the_acl() {
    let (fake, app) = app();
    // alice's job: not the viewer's, on minions outside their grants.
    for uri in [
        format!("/v1/jobs/{KNOWN}"),
        format!("/v1/jobs/{KNOWN}/events"),
    ] {
        let (status, body) = call(&app, as_viewer(Method::GET, &uri)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri}: {body}");
    }
    let (status, body) = call(&app, as_viewer(Method::GET, "/v1/audit")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The listing asks the master for the viewer's jobs only.
    let (status, _) = call(&app, as_viewer(Method::GET, "/v1/jobs")).await;
    assert_eq!(status, StatusCode::OK);
    let reader = fake
        .listed
        .lock()
        .unwrap()
        .last()
        .and_then(|f| f.reader.clone());
    assert_eq!(reader.as_deref(), Some("viewer"));
    let (status, body) = call(&app, authed(Method::GET, &format!("/v1/jobs/{KNOWN}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// salt-api's wheel and runner clients in Salt's shapes, `/keys/{id}`,
/// `/run`, `/stats`, and what an unknown function or jid answers.
#[tokio::test]
async fn salt_wheel_runner_keys_run_and_stats() {
    let (fake, app) = app();
    let wheel = |fun: &str, extra: &str| format!(r#"{{"client":"wheel","fun":"{fun}"{extra}}}"#);
    let (status, body) = call(&app, post_json("/", &wheel("key.list_all", ""))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["return"][0]["data"];
    assert_eq!(data["fun"], "wheel.key.list_all");
    assert_eq!(data["success"], true);
    assert_eq!(data["user"], "alice");
    assert_eq!(data["tag"], body["return"][0]["tag"]);
    assert_eq!(data["return"]["minions"], json!(["web01"]));
    assert_eq!(data["return"]["minions_pre"], json!(["web02"]));
    assert_eq!(data["return"]["local"], json!(["master.pem", "master.pub"]));

    let (_, body) = call(
        &app,
        post_json("/", &wheel("key.list", r#","match":"pre""#)),
    )
    .await;
    assert_eq!(
        body["return"][0]["data"]["return"],
        json!({ "minions_pre": ["web02"] })
    );
    let (_, body) = call(
        &app,
        post_json("/", &wheel("key.accept", r#","match":"web0*""#)),
    )
    .await;
    // The fake's keys never move: Salt's answer, the matching keys now
    // accepted, is web01 here; what was asked of the master is web02 only.
    assert_eq!(
        body["return"][0]["data"]["return"],
        json!({ "minions": ["web01"] })
    );
    assert_eq!(
        fake.key_actions.lock().unwrap().last(),
        Some(&KeyAction::Accept("web02".into()))
    );
    let (_, body) = call(
        &app,
        post_json("/", &wheel("key.finger", r#","kwarg":{"match":"web01"}"#)),
    )
    .await;
    assert_eq!(
        body["return"][0]["data"]["return"],
        json!({ "minions": { "web01": "11:22" } })
    );
    let (_, body) = call(
        &app,
        post_json("/", &wheel("key.print", r#","arg":["web02"]"#)),
    )
    .await;
    assert!(body["return"][0]["data"]["return"]["minions_pre"]["web02"]
        .as_str()
        .is_some_and(|pem| pem.starts_with("-----BEGIN")));
    let key_actions = |fake: &Fake| fake.key_actions.lock().unwrap().clone();
    let before = key_actions(&fake).len();
    call(
        &app,
        post_json("/", &wheel("key.reject", r#","match":"web*""#)),
    )
    .await;
    assert_eq!(
        key_actions(&fake)[before..],
        [KeyAction::Reject("web02".into())],
        "an accepted key only with include_accepted"
    );
    let before = key_actions(&fake).len();
    call(
        &app,
        post_json(
            "/",
            &wheel("key.reject", r#","match":"web*","include_accepted":true"#),
        ),
    )
    .await;
    assert_eq!(
        key_actions(&fake)[before..],
        [
            KeyAction::Reject("web01".into()),
            KeyAction::Reject("web02".into())
        ]
    );
    // A denied key is another key for an accepted id: refused, not the
    // accepted key rejected in its place.
    let before = key_actions(&fake).len();
    let (status, body) = call(
        &app,
        post_json(
            "/",
            &wheel("key.reject", r#","match":"*","include_denied":true"#),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["return"][0]["data"]["success"], false, "{body}");
    assert_eq!(key_actions(&fake).len(), before, "no key changed");
    let (_, body) = call(
        &app,
        post_json("/", &wheel("key.delete", r#","match":"web02""#)),
    )
    .await;
    assert_eq!(body["return"][0]["data"]["return"], json!({}));
    assert_eq!(
        fake.key_actions.lock().unwrap().last(),
        Some(&KeyAction::Delete("web02".into()))
    );
    let (_, body) = call(&app, post_json("/", &wheel("minions.connected", ""))).await;
    assert_eq!(body["return"][0]["data"]["return"], json!(["web01"]));
    let (_, body) = call(&app, post_json("/", &wheel("config.values", ""))).await;
    assert_eq!(body["return"][0]["data"]["return"]["id"], "fake-master");
    // An unknown wheel function fails as a call, as in Salt.
    let (status, body) = call(&app, post_json("/", &wheel("key.nosuch", ""))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["return"][0]["data"]["success"], false);
    assert!(body["return"][0]["data"]["return"]
        .as_str()
        .is_some_and(|m| m.contains("'key.nosuch' is not available")));
    // wheel_async: the tag and jid; the result goes on the event stream.
    let before = fake.stream.lock().unwrap().len();
    let (_, body) = call(
        &app,
        post_json("/", r#"{"client":"wheel_async","fun":"key.list_all"}"#),
    )
    .await;
    let tag = body["return"][0]["tag"].as_str().expect("tag").to_owned();
    assert!(tag.starts_with("salt/wheel/"), "{body}");
    let kinds: Vec<(String, Value)> = fake.stream.lock().unwrap()[before..]
        .iter()
        .map(|e| (e.kind.clone(), e.data["tag"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("salt/wheel".to_owned(), json!(format!("{tag}/new"))),
            ("salt/wheel".to_owned(), json!(format!("{tag}/ret"))),
        ]
    );

    let runner = |fun: &str, extra: &str| format!(r#"{{"client":"runner","fun":"{fun}"{extra}}}"#);
    let (_, body) = call(&app, post_json("/", &runner("manage.status", ""))).await;
    assert_eq!(body["return"][0], json!({ "up": ["web01"], "down": [] }));
    let (_, body) = call(&app, post_json("/", &runner("manage.up", ""))).await;
    assert_eq!(body["return"][0], json!(["web01"]));
    let (_, body) = call(&app, post_json("/", &runner("manage.versions", ""))).await;
    assert_eq!(body["return"][0]["Up to date"]["web01"], "0.1.0");
    let (_, body) = call(
        &app,
        post_json(
            "/",
            &runner("jobs.list_job", &format!(r#","jid":"{KNOWN}""#)),
        ),
    )
    .await;
    let job = &body["return"][0];
    assert_eq!(
        (&job["jid"], &job["Function"]),
        (&json!(KNOWN), &json!("test.ping"))
    );
    assert_eq!(job["Result"]["web01"]["return"], true);
    let (_, body) = call(
        &app,
        post_json(
            "/",
            &runner("jobs.list_job", &format!(r#","jid":"{UNKNOWN}""#)),
        ),
    )
    .await;
    assert_eq!(
        body["return"][0]["Error"],
        "Cannot contact returner or no job with this jid"
    );
    let (_, body) = call(
        &app,
        post_json(
            "/",
            &runner(
                "jobs.list_jobs",
                r#","search_function":"test.*,cmd.run","start_time":"2020-01-01""#,
            ),
        ),
    )
    .await;
    assert!(body["return"][0].get(KNOWN).is_some(), "{body}");
    let (_, body) = call(
        &app,
        post_json(
            "/",
            &runner("jobs.list_jobs", r#","search_function":"git_deploy.*""#),
        ),
    )
    .await;
    assert_eq!(body["return"][0], json!({}), "filtered out");
    let (_, body) = call(
        &app,
        post_json(
            "/",
            &runner("jobs.list_jobs", r#","start_time":"last tuesday""#),
        ),
    )
    .await;
    assert!(body["return"][0]
        .as_str()
        .is_some_and(|m| m.starts_with("Exception occurred in runner jobs.list_jobs")));
    // The grants: @wheel for wheel, @runner for manage.*.
    for lowstate in [wheel("key.list_all", ""), runner("manage.up", "")] {
        let request = req(Method::POST, "/")
            .header("x-auth-token", VIEWER_TOKEN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(lowstate.clone()))
            .unwrap();
        assert_eq!(
            call(&app, request).await.0,
            StatusCode::FORBIDDEN,
            "{lowstate}"
        );
    }

    let (status, body) = call(&app, get("/keys/web01")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "return": { "minions": { "web01": "11:22" } } })
    );
    let (_, body) = call(&app, get(&format!("/jobs/{UNKNOWN}"))).await;
    assert_eq!(body["return"], json!([{}]));
    assert_eq!(body["info"][0]["Result"], json!({}));
    let (status, body) = call(&app, get("/stats")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["CherryPy Applications"]["Uptime"].is_number(),
        "{body}"
    );

    // /run: credentials in the chunk, no session left behind.
    let run = |password: &str| {
        req(Method::POST, "/run")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!(
                r#"[{{"client":"local_async","tgt":"web*","fun":"test.ping","username":"alice","password":"{password}","eauth":"pam"}}]"#
            )))
            .unwrap()
    };
    let (status, body) = call(&app, run("pw")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(fake.submitted.lock().unwrap().last().unwrap().0, "alice");
    assert_eq!(
        fake.logged_out.lock().unwrap().last().map(String::as_str),
        Some(TOKEN)
    );
    let audited = fake
        .audited
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("audited");
    assert_eq!(
        (audited.user.as_str(), audited.path.as_str()),
        ("alice", "/run")
    );
    assert_eq!(audited.detail.as_deref(), Some("local_async test.ping"));
    let (status, body) = call(&app, run("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["salt_page"], true);

    // Deleting keys through manage.down needs @wheel, checked before any
    // chunk runs: the list runs whole or not at all.
    let submitted = fake.submitted.lock().unwrap().len();
    let request = req(Method::POST, "/")
        .header("x-auth-token", RUNNER_TOKEN)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"[{"client":"local_async","tgt":"web*","fun":"test.ping"},
                {"client":"runner","fun":"manage.down","removekeys":true}]"#,
        ))
        .unwrap();
    assert_eq!(call(&app, request).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        fake.submitted.lock().unwrap().len(),
        submitted,
        "nothing ran"
    );
    // A runner's full_return is its whole ret event.
    let (_, body) = call(
        &app,
        post_json(
            "/",
            r#"{"client":"runner","fun":"manage.up","full_return":true}"#,
        ),
    )
    .await;
    assert_eq!(
        body["return"][0]["data"]["return"],
        json!(["web01"]),
        "{body}"
    );
    assert!(body["return"][0]["tag"].as_str().unwrap().ends_with("/ret"));
}

/// Release requests over the API: made (201), listed, shown; a step the
/// rules refuse is a 409 naming why; steps need a known name.
#[tokio::test]
async fn release_requests_through_the_api() {
    let (_, app) = app();
    let (status, made) = call(
        &app,
        post_json(
            "/v1/requests",
            r#"{"app":"shop","env":"production","version":{"tag":"v3"},"reason":"fixes checkout"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(
        (made["id"].as_u64(), &made["state"]),
        (Some(1), &json!("requested"))
    );
    assert_eq!(made["history"][0]["by"], "alice");
    let (status, body) = call(&app, post_json("/v1/requests/1/approve", "")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, &["may not approve"]);
    let request = req(Method::POST, "/v1/requests/1/approve")
        .header("x-auth-token", VIEWER_TOKEN)
        .body(Body::empty())
        .unwrap();
    let (status, body) = call(&app, request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "approved");
    let (_, listed) = call(&app, get("/v1/requests?app=shop&env=production")).await;
    assert_eq!(listed[0]["history"][1]["by"], "viewer");
    let (status, _) = call(&app, get("/v1/requests/9")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&app, post_json("/v1/requests/1/bless", "")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(
        &app,
        post_json(
            "/v1/requests",
            r#"{"app":"shop","env":"prod uction","reason":"x"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
