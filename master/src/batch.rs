//! Jobs run in batches (`batch = "10"` or `"25%"`), as Salt's `-b`: one
//! jid, published to one slice of the minions at a time; the next slice
//! starts when every minion of the previous one returned or its time ran
//! out, so a bad release stops hurting after one batch's worth of servers
//! (cancel the job and no further batch starts).
//!
//! The plan is kept in the store and updated after each batch, so a
//! master restarted mid-job picks it up where it was (a cancelled job's
//! plan is deleted).

use std::sync::Arc;
use std::time::Duration;

use crate::error::CoreError;
use halite_proto::message::Job;
use halite_proto::time::now_ms;

use tokio::sync::mpsc;

use crate::core::{Core, RETURN_GRACE_MS};

/// How often the driver looks at a batch's returns.
const POLL: Duration = Duration::from_millis(200);

/// A job's remaining batches.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BatchPlan {
    /// The first batch's job (jid, function, arguments, sealed secrets).
    pub template: Job,
    /// Minions of the batch published last, whose returns are awaited.
    pub waiting_for: Vec<String>,
    /// When the master stops waiting for them (unix ms).
    pub deadline: u64,
    /// The batches still to publish, in order.
    pub rest: Vec<Vec<String>>,
}

/// Minions per batch for `batch` (`"10"` or `"25%"`) of `total` minions.
pub fn parse_size(batch: &str, total: usize) -> Result<usize, CoreError> {
    let bad = || {
        CoreError::invalid(format!(
            "batch {batch:?}: give a number of minions (10) or a percentage (25%)"
        ))
    };
    let size = match batch.trim().strip_suffix('%') {
        Some(percent) => {
            let percent: usize = percent.trim().parse().map_err(|_| bad())?;
            if percent == 0 || percent > 100 {
                return Err(bad());
            }
            (total * percent).div_ceil(100)
        }
        None => batch.trim().parse().map_err(|_| bad())?,
    };
    if size == 0 {
        return Err(bad());
    }
    Ok(size.max(1))
}

/// Drives every batch plan the core sends, each in its own task.
pub async fn run(core: Arc<Core>, mut plans: mpsc::UnboundedReceiver<BatchPlan>) {
    while let Some(plan) = plans.recv().await {
        tokio::spawn(drive(core.clone(), plan));
    }
}

async fn drive(core: Arc<Core>, mut plan: BatchPlan) {
    let jid = plan.template.jid.clone();
    while !plan.rest.is_empty() {
        loop {
            if core.is_cancelled(&jid) {
                tracing::warn!(%jid, "job cancelled; no further batch");
                return;
            }
            let returned = match core.store.returns(&jid) {
                Ok(returns) => returns,
                Err(e) => {
                    tracing::error!(%jid, error = %e, "cannot read returns; batches stopped");
                    return;
                }
            };
            let all_in = plan
                .waiting_for
                .iter()
                .all(|id| returned.iter().any(|r| &r.id == id));
            if all_in || now_ms() >= plan.deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let batch = plan.rest.remove(0);
        match crate::core::blocking(|| core.publish_batch(&plan.template, &batch)) {
            Ok(expires_at) => {
                plan.deadline = expires_at + RETURN_GRACE_MS;
                plan.waiting_for = batch;
            }
            Err(e) => {
                tracing::error!(%jid, error = %e, "cannot publish a batch; batches stopped");
                return;
            }
        }
        let kept = crate::core::blocking(|| {
            if plan.rest.is_empty() {
                core.store.delete_batch(&jid)
            } else {
                core.store.put_batch(&plan)
            }
            .and_then(|()| core.store.flush())
        });
        if let Err(e) = kept {
            tracing::warn!(%jid, error = %e, "cannot record the batch plan; a restart would not resume it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10", 100).unwrap(), 10);
        assert_eq!(parse_size("25%", 10).unwrap(), 3);
        assert_eq!(parse_size("100%", 7).unwrap(), 7);
        assert_eq!(parse_size("1%", 7).unwrap(), 1);
        for bad in ["0", "0%", "101%", "ten", "-1", "%"] {
            let err = parse_size(bad, 10).unwrap_err();
            assert!(matches!(err, CoreError::Invalid(_)), "{bad}: {err}");
        }
    }
}
