//! The task that runs the release workflow's timers: schedules that come
//! due, deploying requests whose job finished (so `live`, `failed` and
//! their notifications happen without anyone reading the request), and
//! polling repositories for new tags. Store and git work runs on the
//! blocking pool; a slow poll never delays a schedule (polls run on
//! their own, one at a time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use halite_model::RequestState;
use halite_proto::time::now_ms;
use tokio_util::sync::CancellationToken;

use super::Core;

/// Runs until `shutdown`.
pub async fn run(core: Arc<Core>, shutdown: CancellationToken) {
    {
        let core = core.clone();
        match tokio::task::spawn_blocking(move || core.sync_config_schedules()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot bring the config's schedules into the store")
            }
            Err(e) => tracing::error!(error = %e, "the schedule sync task failed"),
        }
    }
    let polling = Arc::new(AtomicBool::new(false));
    let mut last_polled: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut round: u64 = 0;
    loop {
        round += 1;
        // Schedules every round (they may be second-level); the requests
        // every second.
        let settle = round.is_multiple_of(4);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let worker = core.clone();
        let ran = tokio::task::spawn_blocking(move || {
            if !worker.drives() {
                return;
            }
            let now = now_ms();
            if let Err(e) = worker.run_due_schedules(now) {
                tracing::error!(error = %e, "cannot run the schedules");
            }
            if settle {
                if let Err(e) = worker.settle_deploying() {
                    tracing::error!(error = %e, "cannot settle deploying requests");
                }
            }
        })
        .await;
        if let Err(e) = ran {
            tracing::error!(error = %e, "the workflow task failed");
        }
        if !polling.load(Ordering::Acquire) {
            start_polls(&core, &polling, &mut last_polled);
        }
    }
}

/// Starts polling the apps whose `[trigger] poll` interval has passed,
/// one after the other on the blocking pool, unless a round still runs.
fn start_polls(
    core: &Arc<Core>,
    polling: &Arc<AtomicBool>,
    last_polled: &mut HashMap<String, u64>,
) {
    let now = now_ms();
    let Ok(apps) = core.apps() else {
        return;
    };
    let due: Vec<_> = apps
        .into_iter()
        .filter(|app| {
            let every = app.trigger.as_ref().map_or(0, |t| t.poll) * 1000;
            every > 0
                && last_polled
                    .get(&app.name)
                    .is_none_or(|at| now >= at + every)
        })
        .collect();
    if due.is_empty() {
        return;
    }
    for app in &due {
        last_polled.insert(app.name.clone(), now);
    }
    polling.store(true, Ordering::Release);
    let (core, polling) = (core.clone(), polling.clone());
    tokio::task::spawn_blocking(move || {
        for app in due {
            let span = tracing::info_span!("poll", app = %app.name);
            let _entered = span.enter();
            match core.poll_app(&app) {
                Ok(Some(request)) => {
                    tracing::info!(request = request.id, "a new tag made a release request")
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "polling for new tags failed"),
            }
        }
        polling.store(false, Ordering::Release);
    });
}

impl Core {
    /// Brings every deploying request up to date with its job.
    pub fn settle_deploying(&self) -> Result<(), super::CoreError> {
        let deploying = self
            .store
            .requests(usize::MAX, |r| r.state == RequestState::Deploying)?;
        for request in deploying {
            self.request(request.id)?;
        }
        Ok(())
    }
}
