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
        let result = match once(health, client.as_ref(), release_dir, env, events, cancel).await {
            Attempt::Seen(result) => result,
            Attempt::Undefined => return Err("health check has neither url nor command".into()),
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

/// What one attempt of a health check saw.
pub(crate) enum Attempt {
    /// Healthy (Ok) or not (Err), in a line.
    Seen(Result<String, String>),
    /// The check has neither a URL nor a command.
    Undefined,
}

/// One attempt of the check, no retry: what [`check`] repeats and what
/// `release.measure` times. `client` is needed for a URL check.
pub(crate) async fn once(
    health: &HealthCheck,
    client: Option<&reqwest::Client>,
    release_dir: &Path,
    env: &BTreeMap<String, String>,
    events: &EventSink,
    cancel: &CancellationToken,
) -> Attempt {
    let attempt_timeout = Duration::from_secs(health.timeout);
    Attempt::Seen(match (client, &health.url, &health.command) {
        (Some(client), Some(url), _) => probe_url(client, url, health.expect_status).await,
        (_, _, Some(command)) => {
            match crate::process::run_shell(
                "health",
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
        _ => return Attempt::Undefined,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server on 127.0.0.1 answering 503 to the first `failures`
    /// requests, then 200. Returns its URL and the request counter.
    async fn flaky_server(failures: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/health", listener.local_addr().expect("addr"));
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 2048];
                let _ = socket.read(&mut buf).await;
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let status = if n < failures {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = socket.write_all(reply.as_bytes()).await;
            }
        });
        (url, count)
    }

    /// Runs a URL check of `url` with `retries` attempts and no pause.
    async fn probe(url: &str, retries: u32, dir: &std::path::Path) -> Result<String, String> {
        let events = EventSink::discard();
        let cancel = CancellationToken::new();
        check(
            &check_of(url, retries),
            dir,
            &BTreeMap::new(),
            Vec::new(),
            &events,
            &cancel,
        )
        .await
    }

    fn check_of(url: &str, retries: u32) -> HealthCheck {
        HealthCheck {
            url: Some(url.to_owned()),
            command: None,
            expect_status: 200,
            retries,
            interval: 0,
            timeout: 2,
        }
    }

    #[tokio::test]
    async fn url_check_retries_until_the_expected_status() {
        let (url, count) = flaky_server(2).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = probe(&url, 3, dir.path())
            .await
            .expect("healthy on the third attempt");
        assert!(
            ok.contains("attempt 3/3") && ok.contains("answered 200"),
            "{ok}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 3);

        let (url, _) = flaky_server(5).await;
        let err = probe(&url, 2, dir.path()).await.expect_err("still failing");
        assert!(
            err.contains("after 2 attempt(s)") && err.contains("answered 503, expected 200"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("http://127.0.0.1:{port}/");
        let err = probe(&url, 1, dir.path())
            .await
            .expect_err("nothing listens");
        assert!(err.contains(&format!("GET {url}")), "{err}");
        assert!(
            err.to_lowercase().contains("refused") || err.contains("connect"),
            "{err}"
        );
    }
}
