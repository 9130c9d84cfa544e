//! Knowing the moment a return is durably stored, without polling.
//!
//! The master emits a structured `info` event `return stored` (fields
//! `jid`, `minion`, `success`) for each new return right after the batch
//! holding it was written and flushed, just before the ack is sent. This
//! layer counts those events per jid and notes when the count reaches
//! what a waiter asked for, so a round's clock stops at the event itself.
//! Scanning the store instead costs O(returns) per poll and, on a 2-core
//! machine, slows the system it measures.
//!
//! The events are enabled for this layer only; the log output keeps its
//! own filter (`RUST_LOG`, default `warn`). If the master stops emitting
//! the event, [`crate::fanout`] notices (returns in the store, no events)
//! and falls back to polling.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Where the master's `return stored` event comes from.
const TARGET: &str = "halite_master::core";
const MESSAGE: &str = "return stored";

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

/// Counts `return stored` events per jid. Cheap to clone.
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

    /// The filter that enables exactly the events this layer needs.
    pub fn wants(meta: &Metadata<'_>) -> bool {
        meta.is_event() && *meta.level() == Level::INFO && meta.target() == TARGET
    }
}

#[derive(Default)]
struct Fields {
    message: bool,
    jid: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value == MESSAGE,
            "jid" => self.jid = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}") == MESSAGE,
            "jid" => self.jid = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for StoredCounter {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let (true, Some(jid)) = (fields.message, fields.jid) else {
            return;
        };
        let mut counts = self.0.counts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = counts.entry(jid).or_default();
        entry.stored += 1;
        if entry.want > 0 && entry.stored >= entry.want && entry.reached.is_none() {
            entry.reached = Some(Instant::now());
            self.0.changed.notify_all();
        }
    }
}

/// Short waits the fallback check uses.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
