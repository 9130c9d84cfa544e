//! Where inbound messages are handled: in order per peer (a minion's
//! events are stored in the order it sent them, and its return after
//! them), in parallel across peers (signature checks spread over all
//! cores), with at most [`MAX_IN_FLIGHT`] messages accepted and not yet
//! handled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::Core;
use crate::transport::Incoming;

/// Messages accepted and not yet handled; past this the reader waits
/// (and ZeroMQ's queues push back on the minions).
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a peer's worker waits for its next message before it ends
/// (a new one starts with the peer's next message).
const PEER_IDLE: Duration = Duration::from_secs(30);

/// How many messages between sweeps of ended workers out of the map.
const SWEEP_EVERY: usize = 4096;

/// A message waiting for its peer's worker, holding its in-flight permit.
type Queued = (Bytes, OwnedSemaphorePermit);

/// Hands every incoming message to its peer's worker, starting workers
/// as peers appear. Returns when `incoming` closes (the transport
/// stopped); the workers end after draining their queues.
pub async fn route(core: Arc<Core>, mut incoming: mpsc::Receiver<Incoming>) {
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut workers: HashMap<Bytes, mpsc::UnboundedSender<Queued>> = HashMap::new();
    let mut since_sweep = 0usize;
    while let Some(message) = incoming.recv().await {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let mut queued = (message.body, permit);
        loop {
            let worker = workers
                .entry(message.peer.clone())
                .or_insert_with(|| spawn_worker(core.clone(), message.peer.clone()));
            match worker.send(queued) {
                Ok(()) => break,
                // That worker went idle and closed: start another.
                Err(mpsc::error::SendError(back)) => {
                    workers.remove(&message.peer);
                    queued = back;
                }
            }
        }
        since_sweep += 1;
        if since_sweep >= SWEEP_EVERY {
            since_sweep = 0;
            workers.retain(|_, tx| !tx.is_closed());
        }
    }
}

/// One peer's messages, handled one after the other, in a span naming
/// the peer's connection. After [`PEER_IDLE`] without a message the
/// worker closes its queue, handles what is still in it, and ends.
fn spawn_worker(core: Arc<Core>, peer: Bytes) -> mpsc::UnboundedSender<Queued> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let span = tracing::info_span!("peer", peer = %hex::encode(&peer));
    tokio::spawn(
        async move {
            loop {
                match tokio::time::timeout(PEER_IDLE, rx.recv()).await {
                    Ok(Some((body, permit))) => {
                        core.handle(peer.clone(), body).await;
                        drop(permit);
                    }
                    Ok(None) => return,
                    // Idle: refuse new messages; `recv` still yields what is
                    // queued, then None.
                    Err(_idle) => rx.close(),
                }
            }
        }
        .instrument(span),
    );
    tx
}
