//! The health check after a release went live: an HTTP URL that must
//! answer the expected status, or a command that must exit 0, tried a few
//! times because a service reloading takes a moment.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use halite_proto::app::HealthCheck;
use tokio_util::sync::CancellationToken;

use crate::EventSink;

/// Runs the check up to `health.retries` times. Ok is a one-line summary;
/// Err says what the last attempt saw.
pub(crate) async fn check(
    health: &HealthCheck,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
    roots: Vec<reqwest::Certificate>,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let attempt_timeout = Duration::from_secs(health.timeout);
    let client = match &health.url {
        Some(_) => Some(crate::http::client(roots, attempt_timeout)?),
        None => None,
    };
    let mut last = String::new();
    for attempt in 1..=health.retries {
        let result = match (&client, &health.url, &health.command) {
            (Some(client), Some(url), _) => probe_url(client, url, health.expect_status).await,
            (_, _, Some(command)) => {
                match crate::cmd::run_shell(
                    "git_deploy.health",
                    command,
                    release_dir,
                    env.clone(),
                    attempt_timeout,
                    events,
                    cancel,
                )
                .await
                {
                    Ok(done) if done.retcode == 0 => Ok(format!("`{command}` exited 0")),
                    Ok(done) => Err(format!("`{command}` exited {}", done.retcode)),
                    Err(e) => Err(format!("`{command}`: {e}")),
                }
            }
            _ => return Err("health check has neither url nor command".into()),
        };
        match result {
            Ok(seen) => {
                let summary = format!("healthy on attempt {attempt}/{}: {seen}", health.retries);
                events.progress("log", &summary);
                return Ok(summary);
            }
            Err(seen) => {
                events.progress(
                    "log",
                    &format!(
                        "health check attempt {attempt}/{} failed: {seen}",
                        health.retries
                    ),
                );
                last = seen;
            }
        }
        if attempt < health.retries {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(health.interval)) => {}
                () = cancel.cancelled() => return Err("health check cancelled".into()),
            }
        }
    }
    Err(format!(
        "health check failed after {} attempt(s): {last}",
        health.retries
    ))
}

async fn probe_url(client: &reqwest::Client, url: &str, expect: u16) -> Result<String, String> {
    match client.get(url).send().await {
        Ok(response) if response.status().as_u16() == expect => {
            Ok(format!("GET {url} answered {expect}"))
        }
        Ok(response) => Err(format!(
            "GET {url} answered {}, expected {expect}",
            response.status().as_u16()
        )),
        Err(e) => Err(format!("GET {url}: {}", crate::http::error_chain(&e))),
    }
}
