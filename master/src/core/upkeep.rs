//! The master's own upkeep: beacons, the presence sweep, connectivity
//! checks, pruning, and rotating the session key. [`run`] is the one task
//! driving the timers; store work runs on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use halite_model::CheckRecord;
use halite_proto::message::{Beacon, TOPIC_BEACON};
use halite_proto::time::now_ms;
use halite_proto::Jid;
use tokio_util::sync::CancellationToken;

use super::Core;

/// Drives every timer until `shutdown`, then flushes the store. Returns
/// when that last flush is done, so the caller can join it.
pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    let mut beacon = tokio::time::interval(core.config.beacon_interval);
    let mut prune = tokio::time::interval(Duration::from_secs(600));
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    // The first check waits a full interval: right after a start the
    // minions have not reconnected yet.
    let check_every = core.config.check_interval;
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = beacon.tick() => core.beacon(),
            _ = sweep.tick() => {
                core.presence.sweep(now_ms());
                core.metrics.sweep(now_ms());
            }
            _ = check.tick() => {
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || core.check_connectivity()).await;
            }
            _ = prune.tick() => {
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || core.prune()).await;
            }
        }
    }
    let store = core.store.clone();
    match tokio::task::spawn_blocking(move || store.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "final store flush failed"),
        Err(e) => tracing::error!(error = %e, "final store flush task failed"),
    }
}

impl Core {
    /// Publishes a signed beacon.
    pub fn beacon(&self) {
        let beacon = Beacon {
            master: self.config.id.clone(),
            at: now_ms(),
            session_epoch: self.session.current().epoch(),
        };
        match self.sign(&beacon) {
            Ok(envelope) => self.outbound.publish(TOPIC_BEACON, envelope),
            Err(e) => tracing::error!(error = %e, "cannot sign beacon"),
        }
    }

    /// Removes jobs and presence transitions older than `keep_jobs`.
    pub fn prune(&self) {
        let cutoff_ms = now_ms().saturating_sub(self.config.keep_jobs.as_millis() as u64);
        if let Err(e) = self.store.prune_stream_before(cutoff_ms) {
            tracing::warn!(error = %e, "prune of the event stream failed");
        }
        if let Err(e) = self.store.prune_tokens(now_ms()) {
            tracing::warn!(error = %e, "prune of expired tokens failed");
        }
        if let Err(e) = self.store.prune_presence_before(cutoff_ms) {
            tracing::warn!(error = %e, "prune of presence transitions failed");
        }
        let checks_cutoff = now_ms().saturating_sub(self.config.keep_checks.as_millis() as u64);
        if let Err(e) = self.store.prune_checks_before(checks_cutoff) {
            tracing::warn!(error = %e, "prune of connectivity checks failed");
        }
        match self
            .store
            .prune_before(&Jid::from_unix_us(cutoff_ms * 1000))
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "pruned old jobs"),
            Err(e) => tracing::warn!(error = %e, "prune failed"),
        }
    }

    /// Records whether each accepted minion is reachable right now: a
    /// heartbeat acknowledged within `missed_heartbeats` intervals proves
    /// both directions of its connection. Kept `keep_checks` hours.
    pub fn check_connectivity(&self) {
        let now = now_ms();
        let all = self.presence.all();
        // One map, not a scan per minion: listing stays linear in fleet size.
        let records: std::collections::HashMap<&str, &halite_model::MinionRecord> =
            all.iter().map(|r| (r.id.as_str(), r)).collect();
        let checks: Vec<CheckRecord> = self
            .keys
            .accepted_ids()
            .into_iter()
            .map(|id| {
                let record = records.get(id.as_str());
                CheckRecord {
                    ok: self.presence.is_up(&id),
                    latency_ms: record.and_then(|r| r.rtt_ms),
                    last_seen: record.map(|r| r.last_seen).filter(|&t| t > 0),
                    at: now,
                    id,
                }
            })
            .collect();
        let failed = checks.iter().filter(|c| !c.ok).count();
        if failed > 0 {
            tracing::warn!(
                failed,
                checked = checks.len(),
                "connectivity check: minions unreachable"
            );
        }
        if let Err(e) = self.store.put_checks(&checks) {
            tracing::warn!(error = %e, "cannot record connectivity checks");
        }
    }

    /// Rotates the session key after a key was revoked, and tells minions
    /// through an immediate beacon.
    pub fn rotate_session(&self) {
        if let Err(e) = self.session.rotate() {
            tracing::error!(error = %e, "cannot rotate the session key");
        }
        self.beacon();
    }
}
