//! Outgoing notifications (`[[notify]]` in the master's config): each
//! release-request event (created, approved, rejected, returned,
//! deploying, live, failed, rolled back, withdrawn) POSTed as JSON to the
//! URLs that want it, signed with HMAC-SHA256 when the target names a
//! secret, or as a Slack-compatible `{"text": ...}` message.
//!
//! ```toml
//! [[notify]]
//! url = "https://ci.example.com/halite"
//! secret = "notify-ci"          # an entry of the secrets file (its token)
//! events = ["approved", "live", "failed"]   # every event when absent
//!
//! [[notify]]
//! url = "https://hooks.slack.com/services/T0/B0/XXXX"
//! format = "slack"
//! apps = ["shop"]
//! ```
//!
//! Deliveries wait in the store's outbox and are retried with backoff
//! (`core::notify`), so a receiver that is down misses nothing.

use std::path::Path;

use halite_model::ReleaseRequest;
use halite_proto::config::ConfigError;
use serde::{Deserialize, Serialize};

/// Every event a request has, by name.
pub const EVENTS: [&str; 9] = [
    "created",
    "approved",
    "rejected",
    "returned",
    "deploying",
    "live",
    "failed",
    "rolled_back",
    "withdrawn",
];

/// How a payload is shaped.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `{"event", "master", "at", "request"}`.
    #[default]
    Json,
    /// `{"text": "..."}`, what Slack, Mattermost and Rocket.Chat incoming
    /// webhooks accept.
    Slack,
}

/// One receiver.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyTarget {
    /// Where to POST (http or https).
    pub url: String,
    /// Payload shape.
    #[serde(default)]
    pub format: Format,
    /// Entry of the secrets file whose token signs the body.
    #[serde(default)]
    pub secret: Option<String>,
    /// Events sent (every one when empty).
    #[serde(default)]
    pub events: Vec<String>,
    /// Apps whose events are sent (every app when empty).
    #[serde(default)]
    pub apps: Vec<String>,
}

impl NotifyTarget {
    /// Reads `[[notify]]`; errors name `notify[N].KEY`.
    pub fn parse_all(file: &Path, raw: &[toml::Value]) -> Result<Vec<NotifyTarget>, ConfigError> {
        raw.iter()
            .enumerate()
            .map(|(i, value)| {
                let key = |field: &str| format!("notify[{i}]{field}");
                let target: NotifyTarget = value
                    .clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::key(file, &key(""), e.message()))?;
                let url = reqwest::Url::parse(&target.url).map_err(|e| {
                    ConfigError::key(file, &key(".url"), format!("{:?}: {e}", target.url))
                })?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::key(
                        file,
                        &key(".url"),
                        "must be an http or https URL",
                    ));
                }
                if let Some(event) = target.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
                    return Err(ConfigError::key(
                        file,
                        &key(".events"),
                        format!("no event {event:?}; events are {}", EVENTS.join(", ")),
                    ));
                }
                Ok(target)
            })
            .collect()
    }

    /// Does this receiver want `event` of `app`?
    pub fn wants(&self, event: &str, app: &str) -> bool {
        (self.events.is_empty() || self.events.iter().any(|e| e == event))
            && (self.apps.is_empty() || self.apps.iter().any(|a| a == app))
    }

    /// The body sent for an event of a request.
    pub fn body(&self, event: &str, request: &ReleaseRequest, master: &str, at: u64) -> Vec<u8> {
        let value = match self.format {
            Format::Json => serde_json::json!({
                "event": event,
                "master": master,
                "at": at,
                "request": request,
            }),
            Format::Slack => serde_json::json!({ "text": sentence(event, request) }),
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// The event of a request's latest step: `created` for a new one, else
/// the state it reached.
pub fn event_of(request: &ReleaseRequest) -> &'static str {
    if request.history.len() <= 1 {
        "created"
    } else {
        request.state.as_str()
    }
}

/// One line for people: `shop production #3 (tag v3, 1a2b3c4d5e6f):
/// approved by lead — "looks good"`.
pub fn sentence(event: &str, request: &ReleaseRequest) -> String {
    let version = ["tag", "branch", "rev", "version", "to"]
        .iter()
        .find_map(|k| {
            request
                .version
                .get(*k)
                .and_then(|v| v.as_str())
                .map(|v| format!("{k} {v}"))
        })
        .unwrap_or_else(|| "the previous release".into());
    let revision = request
        .revision
        .as_deref()
        .map(|r| format!(", {}", r.get(..12).unwrap_or(r)))
        .unwrap_or_default();
    let last = request.history.last();
    let by = last.map(|t| t.by.as_str()).unwrap_or(&request.requester);
    let why = last
        .and_then(|t| t.reason.as_deref())
        .map(|r| format!(" — {r:?}"))
        .unwrap_or_default();
    let kind = match request.kind {
        halite_model::RequestKind::Deploy => "release",
        halite_model::RequestKind::Rollback => "rollback",
    };
    format!(
        "{} {} {kind} #{} ({version}{revision}): {} by {by}{why}",
        request.app,
        request.env,
        request.id,
        event.replace('_', " "),
    )
}

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`, as GitHub signs
/// its webhooks (receivers can reuse their check).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Result<Vec<NotifyTarget>, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let list = table["notify"].as_array().unwrap().clone();
        NotifyTarget::parse_all(Path::new("/etc/halite/master.toml"), &list)
    }

    #[test]
    fn bad_targets_name_the_key() {
        for (text, key) in [
            ("[[notify]]\nurl = \"ftp://x\"", "notify[0].url"),
            ("[[notify]]\nurl = \"not a url\"", "notify[0].url"),
            (
                "[[notify]]\nurl = \"http://x\"\nevents = [\"exploded\"]",
                "notify[0].events",
            ),
            (
                "[[notify]]\nurl = \"http://x\"\nformat = \"xml\"",
                "notify[0]",
            ),
        ] {
            let err = targets(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn slack_payloads_are_one_text_line_and_json_carries_the_request() {
        let t = targets("[[notify]]\nurl = \"http://x\"\nformat = \"slack\"\napps = [\"shop\"]")
            .unwrap()
            .remove(0);
        let mut version = serde_json::Map::new();
        version.insert("tag".into(), "v3".into());
        let request = ReleaseRequest::new(
            3,
            "shop",
            "production",
            halite_model::RequestKind::Deploy,
            version,
            Some("1a2b3c4d5e6f7a8b".into()),
            "fix",
            "dev",
            1,
        );
        assert!(t.wants("created", "shop") && !t.wants("created", "blog"));
        let body: serde_json::Value =
            serde_json::from_slice(&t.body("created", &request, "m", 1)).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(text.contains("#3") && text.contains("tag v3") && text.contains("1a2b3c4d5e6f"));
        assert_eq!(body.as_object().unwrap().len(), 1);
        let json = NotifyTarget {
            format: Format::Json,
            ..t
        };
        let body: serde_json::Value =
            serde_json::from_slice(&json.body("created", &request, "m", 1)).unwrap();
        assert_eq!(body["request"]["id"], 3);
        assert_eq!(body["event"], "created");
    }

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
