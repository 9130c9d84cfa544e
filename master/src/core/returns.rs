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
use halite_proto::message::{JobSummary, Return, ReturnAck};
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
    /// For a job another master published: its checked, signed summary,
    /// from which the job is recorded here.
    pub foreign: Option<JobSummary>,
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
    pub fn store_returns(&self, mut batch: Vec<PendingReturn>) {
        let now = now_ms();
        // Jobs another master published (multi-master), as their
        // publisher signed them. One per job, however many of its returns
        // are in the batch.
        let mut foreign: Vec<JobSummary> =
            batch.iter_mut().filter_map(|p| p.foreign.take()).collect();
        foreign.sort_by(|a, b| a.jid.cmp(&b.jid));
        foreign.dedup_by(|a, b| a.jid == b.jid);
        // Each return is split once: what the ack needs, and the record
        // (its data moved, not copied).
        let (acks, records): (Vec<PendingAck>, Vec<(Jid, ReturnRecord)>) = batch
            .into_iter()
            .map(|PendingReturn { peer, ret, .. }| {
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
            for summary in foreign {
                self.record_foreign_job(summary)?;
            }
            for ((jid, record), _) in records.iter().zip(&new).filter(|(_, is_new)| **is_new) {
                if halite_proto::catalog::releases(&record.fun) {
                    let job = self.store.job(jid)?;
                    let deploy = job.and_then(|job| {
                        let mut deploy = crate::apps::deploy_record(&job.record, record)?;
                        deploy.env = self.environment_of(&job.record, &deploy.minion);
                        Some(deploy)
                    });
                    if let Some(deploy) = deploy {
                        self.store.put_deploy(&deploy)?;
                    }
                }
                self.store
                    .publish(crate::store::return_entry(jid, record))?;
            }
            let flushing = std::time::Instant::now();
            self.store.flush()?;
            self.metrics.store_operation("flush", flushing.elapsed());
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
        for ((jid, record), _) in records.iter().zip(&new).filter(|(_, is_new)| **is_new) {
            self.metrics.return_stored(jid, record, now);
            self.trace_stored(jid, record);
        }
        for ((peer, ack, success), is_new) in acks.into_iter().zip(new) {
            if is_new {
                tracing::info!(jid = %ack.jid, minion = %ack.id, success, "return stored");
            } else {
                tracing::debug!(jid = %ack.jid, minion = %ack.id, "duplicate return acknowledged");
            }
            self.reply_to(&ack.id, peer, &ack);
        }
    }

    /// Makes sure a job another master published has a record here, so
    /// its returns (sent to every master in hot mode, to the one left in
    /// failover) can be listed and shown like this master's own. The
    /// record is the publisher's signed summary; it says who published it
    /// and has no envelope (it is never offered for catch-up). Which
    /// minions it expected is the publisher's to know: left empty.
    fn record_foreign_job(&self, summary: JobSummary) -> Result<(), StoreError> {
        if self.store.has_job(&summary.jid)? {
            return Ok(());
        }
        let jid = summary.jid;
        let master = summary.master;
        let record = JobRecord {
            jid: jid.clone(),
            target: summary.tgt,
            tgt_type: summary.tgt_type,
            fun: summary.fun,
            arg: summary.arg,
            kwarg: summary.kwarg,
            secret_keys: Vec::new(),
            user: summary.user,
            timeout: summary.timeout,
            issued_at: summary.issued_at,
            expires_at: summary.expires_at,
            expected: Vec::new(),
            down: Vec::new(),
            published_by: Some(master.clone()),
            batch_size: None,
        };
        tracing::info!(%jid, %master, "returns of a job published by another master");
        self.store.put_job(&StoredJob {
            record,
            envelope: Vec::new(),
        })
    }
}

impl Core {
    /// The environment of the job's app that `minion` is in, from the app
    /// definition the job carried (so a later edit of the app does not
    /// move past deploys): `None` for an app without environments or a
    /// minion outside them.
    fn environment_of(&self, job: &JobRecord, minion: &str) -> Option<String> {
        let app: halite_proto::app::AppSpec =
            serde_json::from_value(job.kwarg.get("app")?.clone()).ok()?;
        let ids = [minion.to_owned()];
        app.env.iter().find_map(|(name, env)| {
            let target = halite_proto::Target::parse(env.tgt_type, &env.target).ok()?;
            (!self.presence.matching(&ids, &target).is_empty()).then(|| name.clone())
        })
    }
}
