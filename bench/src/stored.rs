//! Knowing the moment a return is durably stored, without polling.
//!
//! The master puts a `job/return` entry on its event stream for each new
//! return right after the batch holding it was written and flushed, just
//! before the ack is sent; `Store::subscribe` hands those entries to live
//! subscribers. [`StoredCounter::follow`] counts them per jid on a thread
//! of its own and notes when the count reaches what a waiter asked for,
//! so a round's clock stops at the entry itself. Scanning the store
//! instead costs O(returns) per poll and, on a 2-core machine, slows the
//! system it measures. If the subscriber falls behind the live channel,
//! [`crate::fanout`] notices (returns in the store, too few counted) and
//! falls back to polling.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use halite_master::store::Store;
use tokio::sync::broadcast::error::RecvError;

#[derive(Default)]
struct Count {
    stored: usize,
    /// When `stored` reached `want`.
    reached: Option<Instant>,
    want: usize,
}

#[derive(Default)]
struct Shared {
    counts: Mutex<HashMap<String, Count>>,
    changed: Condvar,
}

/// Counts stored returns per jid from the event stream. Cheap to clone.
#[derive(Clone, Default)]
pub struct StoredCounter(Arc<Shared>);

/// The outcome of [`StoredCounter::wait`].
pub enum Waited {
    /// All wanted returns were stored at this instant.
    Reached(Instant),
    /// The deadline passed with this many stored.
    TimedOut(usize),
}

impl StoredCounter {
    /// Waits until `want` returns of `jid` were stored, or `deadline`.
    /// The count is kept until [`StoredCounter::forget`].
    pub fn wait(&self, jid: &str, want: usize, deadline: Instant) -> Waited {
        let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        {
            let entry = counts.entry(jid.to_owned()).or_default();
            entry.want = want;
            if entry.stored >= want && entry.reached.is_none() {
                entry.reached = Some(Instant::now());
            }
        }
        loop {
            let entry = counts.entry(jid.to_owned()).or_default();
            if let Some(at) = entry.reached {
                return Waited::Reached(at);
            }
            let now = Instant::now();
            if now >= deadline {
                return Waited::TimedOut(entry.stored);
            }
            let (guard, _) = self
                .0
                .changed
                .wait_timeout(counts, deadline - now)
                .unwrap_or_else(|p| p.into_inner());
            counts = guard;
        }
    }

    /// Forgets a jid once its round is over.
    pub fn forget(&self, jid: &str) {
        let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.remove(jid);
    }

    /// Counts the `job/return` entries of `store`'s event stream from now
    /// on, on a thread that ends when the store's stream closes.
    pub fn follow(&self, store: &Store) {
        let mut live = store.subscribe();
        let counter = self.clone();
        std::thread::spawn(move || loop {
            match live.blocking_recv() {
                Ok(entry) if entry.kind == "job/return" => {
                    if let Some(jid) = &entry.jid {
                        counter.stored(jid.as_str());
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "the return counter fell behind; rounds fall back to polling"
                    );
                }
                Err(RecvError::Closed) => return,
            }
        });
    }

    fn stored(&self, jid: &str) {
        let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(jid.to_owned()).or_default();
        entry.stored += 1;
        if entry.want > 0 && entry.stored >= entry.want && entry.reached.is_none() {
            entry.reached = Some(Instant::now());
            self.0.changed.notify_all();
        }
    }
}

/// Short waits the fallback check uses.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
