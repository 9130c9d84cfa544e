//! Groups returns so one store flush covers many, then acks them.
//!
//! sled makes writes durable only at `flush()` (~1.7 k/s here), so one
//! flush per return would cap a 10 000-minion job at several seconds. The
//! collector takes whatever has queued up (up to a batch limit), stores
//! it, flushes once, and only then acknowledges each return.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::core::{Core, PendingReturn};

/// Most returns stored per flush.
const MAX_BATCH: usize = 2048;

/// Runs until the channel closes.
pub async fn run(core: Arc<Core>, mut rx: mpsc::Receiver<PendingReturn>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let core = core.clone();
        // The flush blocks on disk: keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || core.store_returns(taken)).await {
            tracing::error!(error = %e, "return collector task failed");
        }
    }
}
