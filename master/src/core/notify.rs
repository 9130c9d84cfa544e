//! Delivering `[[notify]]` notifications: a request's step is queued in
//! the store's outbox (durably, with the exact body), then POSTed by
//! [`deliver`], retried with exponential backoff until the receiver
//! answers 2xx or [`MAX_ATTEMPTS`] are spent. A master restarted with
//! deliveries queued sends them then.

use std::sync::Arc;
use std::time::Duration;

use halite_model::ReleaseRequest;
use halite_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

use super::Core;
use crate::notify::{event_of, signature};
use crate::store::Delivery;

/// Attempts before a notification is given up (about 4 hours of backoff).
pub const MAX_ATTEMPTS: u32 = 15;
/// The first retry waits this long; each next one twice as long.
const FIRST_BACKOFF_MS: u64 = 1_000;
/// No wait between attempts is longer than this.
const MAX_BACKOFF_MS: u64 = 30 * 60_000;
/// A receiver has this long to answer.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries sent per round.
const PER_ROUND: usize = 32;

impl Core {
    /// Queues the request's latest step for every receiver that wants it.
    /// A failure to queue is logged: the request itself is already stored.
    pub(crate) fn notify_request(&self, request: &ReleaseRequest) {
        let event = event_of(request);
        let now = now_ms();
        for target in &self.config.notify {
            if !target.wants(event, &request.app) {
                continue;
            }
            let delivery = Delivery {
                id: 0,
                url: target.url.clone(),
                event: event.to_owned(),
                body: target.body(event, request, &self.config.id, now),
                secret: target.secret.clone(),
                attempts: 0,
                next_at: now,
            };
            if let Err(e) = self.store.queue_delivery(delivery) {
                tracing::error!(request = request.id, event, error = %e, "cannot queue a notification");
            }
        }
        self.deliveries.notify_one();
    }
}

/// Sends queued notifications until `shutdown`: at once when one is
/// queued, and every second for retries that come due.
pub async fn deliver(core: Arc<Core>, shutdown: CancellationToken) {
    if core.config.notify.is_empty() && outbox_empty(&core).await {
        // Nothing configured, nothing left from before: nothing to do
        // until a restart with [[notify]].
        return;
    }
    halite_pki::install_tls_provider();
    let client = match reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .user_agent(concat!("halite/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the notification client; notifications stay queued");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = core.deliveries.notified() => {}
        }
        let worker = core.clone();
        let due =
            tokio::task::spawn_blocking(move || worker.store.due_deliveries(now_ms(), PER_ROUND))
                .await;
        let due = match due {
            Ok(Ok(due)) => due,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the notification outbox");
                continue;
            }
            Err(_) => continue,
        };
        for delivery in due {
            send(&core, &client, delivery).await;
        }
    }
}

async fn outbox_empty(core: &Arc<Core>) -> bool {
    let worker = core.clone();
    tokio::task::spawn_blocking(move || worker.store.due_deliveries(u64::MAX, 1))
        .await
        .ok()
        .and_then(Result::ok)
        .is_some_and(|d| d.is_empty())
}

/// One attempt: delivered (or given up) is removed; failed is put back
/// with its next time.
async fn send(core: &Arc<Core>, client: &reqwest::Client, delivery: Delivery) {
    use tracing::Instrument;
    let span = tracing::info_span!("notify", id = delivery.id, event = %delivery.event, url = %delivery.url);
    attempt(core, client, delivery).instrument(span).await
}

async fn attempt(core: &Arc<Core>, client: &reqwest::Client, delivery: Delivery) {
    let mut post = client
        .post(&delivery.url)
        .header("content-type", "application/json")
        .header("x-halite-event", &delivery.event)
        .header("x-halite-delivery", delivery.id.to_string());
    if let Some(name) = &delivery.secret {
        // Looked up when sent: the secret itself is never in the store.
        let secret = core
            .config
            .apps()
            .credentials()
            .ok()
            .and_then(|all| all.get(name).map(|c| c.secret().to_owned()));
        let Some(secret) = secret else {
            let why = format!("its secret {name:?} is not in the secrets file");
            return retry_later(core, delivery, why).await;
        };
        post = post.header("x-halite-signature-256", signature(&secret, &delivery.body));
    }
    let outcome = post.body(delivery.body.clone()).send().await;
    match outcome {
        Ok(answer) if answer.status().is_success() => {
            tracing::debug!(status = %answer.status(), "notification delivered");
            let worker = core.clone();
            let id = delivery.id;
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || worker.store.remove_delivery(id)).await
            {
                tracing::error!(error = %e, "cannot remove a delivered notification; it may be sent again");
            }
        }
        Ok(answer) => {
            let why = format!("the receiver answered {}", answer.status());
            retry_later(core, delivery, why).await;
        }
        Err(e) => retry_later(core, delivery, halite_git::error_chain(&e)).await,
    }
}

async fn retry_later(core: &Arc<Core>, mut delivery: Delivery, why: String) {
    delivery.attempts += 1;
    let worker = core.clone();
    if delivery.attempts >= MAX_ATTEMPTS {
        tracing::error!(attempts = delivery.attempts, why, "notification given up");
        let id = delivery.id;
        let _ = tokio::task::spawn_blocking(move || worker.store.remove_delivery(id)).await;
        return;
    }
    let wait = backoff_ms(delivery.attempts);
    tracing::warn!(
        attempts = delivery.attempts,
        retry_in_ms = wait,
        why,
        "notification not delivered"
    );
    delivery.next_at = now_ms() + wait;
    if let Ok(Err(e)) =
        tokio::task::spawn_blocking(move || worker.store.put_delivery(&delivery)).await
    {
        tracing::error!(error = %e, "cannot keep a notification for retry");
    }
}

/// The wait after `attempts` failed attempts: 1 s, 2 s, 4 s... at most
/// [`MAX_BACKOFF_MS`].
pub fn backoff_ms(attempts: u32) -> u64 {
    FIRST_BACKOFF_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(MAX_BACKOFF_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(5), 16_000);
        assert_eq!(backoff_ms(40), MAX_BACKOFF_MS);
    }
}
