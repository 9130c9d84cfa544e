//! Storing returns: the collector groups verified returns so one store
//! flush covers many, then acknowledges each.
//!
//! sled makes writes durable only at `flush()` (~1.7 k/s here), so one
//! flush per return would cap a 10 000-minion job at several seconds. The
//! collector takes whatever has queued up (up to [`MAX_BATCH`]), stores
//! it on the blocking pool, flushes once, and only then acknowledges each
//! return. A return is never acknowledged before it is durable: on a store
//! failure nothing is acked and minions re-send.

use std::sync::Arc;

use bytes::Bytes;
use halite_model::{JobRecord, ReturnRecord};
use halite_proto::message::{Return, ReturnAck};
use halite_proto::time::now_ms;
use halite_proto::Jid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Core;
use crate::store::{StoreError, StoredJob};

/// A return waiting to be stored and acknowledged.
pub struct PendingReturn {
    /// Who to send the ack to.
    pub peer: Bytes,
    /// The verified return.
    pub ret: Return,
}

/// Who to acknowledge, with what, once a batch is stored (and whether the
/// return succeeded, for the log line).
type PendingAck = (Bytes, ReturnAck, bool);

/// Most returns stored per flush.
pub const MAX_BATCH: usize = 2048;

/// The collector: stores what queued up, batch by batch, until
/// `shutdown`; then stores and acks what is still queued and returns.
pub async fn collect(
    core: Arc<Core>,
    mut rx: mpsc::Receiver<PendingReturn>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, MAX_BATCH) => received,
            _ = shutdown.cancelled() => {
                // No more returns are accepted; `recv_many` still yields
                // the queued ones, then 0.
                rx.close();
                rx.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            return;
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
        let core = core.clone();
        // The flush blocks on disk: keep it off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || core.store_returns(taken)).await {
            tracing::error!(error = %e, "return collector task failed");
        }
    }
}

impl Core {
    /// Stores a batch of returns, flushes, then acks each. Called by the
    /// collector only, so flushes are grouped.
    pub fn store_returns(&self, batch: Vec<PendingReturn>) {
        let now = now_ms();
        // Returns of jobs another master published (hot multi-master).
        // One per job, however many of its returns are in the batch.
        let mut foreign: Vec<(Jid, String, String, u64)> = batch
            .iter()
            .filter(|p| !p.ret.master.is_empty() && p.ret.master != self.config.id)
            .map(|p| {
                (
                    p.ret.jid.clone(),
                    p.ret.master.clone(),
                    p.ret.fun.clone(),
                    p.ret.started_at,
                )
            })
            .collect();
        foreign.sort_by(|a, b| a.0.cmp(&b.0));
        foreign.dedup_by(|a, b| a.0 == b.0);
        // Each return is split once: what the ack needs, and the record
        // (its data moved, not copied).
        let (acks, records): (Vec<PendingAck>, Vec<(Jid, ReturnRecord)>) = batch
            .into_iter()
            .map(|PendingReturn { peer, ret }| {
                let ack = ReturnAck {
                    jid: ret.jid.clone(),
                    id: ret.id.clone(),
                    nonce: ret.nonce,
                };
                let record = ReturnRecord {
                    id: ret.id,
                    fun: ret.fun,
                    success: ret.success,
                    retcode: ret.retcode,
                    data: ret.data,
                    started_at: ret.started_at,
                    finished_at: ret.finished_at,
                    stored_at: now,
                };
                ((peer, ack, ret.success), (ret.jid, record))
            })
            .unzip();
        let stored = self.store.put_returns(&records).and_then(|new| {
            for (jid, master, fun, started_at) in &foreign {
                self.record_foreign_job(jid, master, fun, *started_at)?;
            }
            for ((jid, record), _) in records.iter().zip(&new).filter(|(_, is_new)| **is_new) {
                if halite_proto::catalog::releases(&record.fun) {
                    let job = self.store.job(jid)?;
                    let deploy =
                        job.and_then(|job| crate::apps::deploy_record(&job.record, record));
                    if let Some(deploy) = deploy {
                        self.store.put_deploy(&deploy)?;
                    }
                }
                self.store
                    .publish(crate::store::return_entry(jid, record))?;
            }
            self.store.flush()?;
            Ok(new)
        });
        let new = match stored {
            Ok(new) => new,
            Err(e) => {
                // Not acknowledged: the minions keep the returns and re-send.
                tracing::error!(error = %e, returns = acks.len(), "cannot store returns; minions will re-send");
                return;
            }
        };
        for ((peer, ack, success), is_new) in acks.into_iter().zip(new) {
            if is_new {
                tracing::info!(jid = %ack.jid, minion = %ack.id, success, "return stored");
            } else {
                tracing::debug!(jid = %ack.jid, minion = %ack.id, "duplicate return acknowledged");
            }
            self.reply(peer, &ack);
        }
    }

    /// Makes sure a job another master published has a record here, so
    /// its returns (sent to every master in hot mode) can be listed and
    /// shown like this master's own. The record says who published it and
    /// has no envelope (it is never offered for catch-up).
    fn record_foreign_job(
        &self,
        jid: &Jid,
        master: &str,
        fun: &str,
        started_at: u64,
    ) -> Result<(), StoreError> {
        if self.store.has_job(jid)? {
            return Ok(());
        }
        let record = JobRecord {
            jid: jid.clone(),
            target: String::new(),
            tgt_type: Default::default(),
            fun: fun.to_owned(),
            arg: Vec::new(),
            kwarg: Default::default(),
            secret_keys: Vec::new(),
            user: String::new(),
            timeout: 0,
            issued_at: started_at,
            expires_at: 0,
            expected: Vec::new(),
            down: Vec::new(),
            published_by: Some(master.to_owned()),
            batch_size: None,
        };
        tracing::info!(%jid, master, "returns of a job published by another master");
        self.store.put_job(&StoredJob {
            record,
            envelope: Vec::new(),
        })
    }
}
