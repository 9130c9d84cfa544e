//! The event stream as Server-Sent Events, for `/v1/events`,
//! `/v1/jobs/{jid}/events` and salt-api's `/events`.
//!
//! A stream first replays what the store holds after the client's
//! resume point, then follows live entries. It subscribes *before* it
//! reads the store and skips live entries it already sent, and the
//! master hands out ids and sends entries in one order (on a shared
//! store, every master's, through its stream follower), so nothing falls
//! in between; a subscriber that falls too far behind the live channel
//! re-reads from the store. Every entry carries its `id`, so a client
//! that reconnects with `Last-Event-ID` misses nothing.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use halite_proto::Jid;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::types::BusEntry;
use crate::Backend;

/// How many stored entries one read replays.
const PAGE: usize = 1000;

/// How often a job's stream checks whether the job is done while nothing
/// arrives (a minion that never returns ends it at the job's deadline).
const DONE_CHECK: Duration = Duration::from_secs(2);

/// The JSON each entry is sent as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// halite's [`BusEntry`].
    Native,
    /// salt-api's `{"tag": ..., "data": ...}`.
    Salt,
}

struct State {
    backend: Arc<dyn Backend>,
    live: broadcast::Receiver<Arc<BusEntry>>,
    jid: Option<Jid>,
    last: u64,
    pending: VecDeque<BusEntry>,
    /// The last store read was a full page: read again before going live.
    more: bool,
    shape: Shape,
    finished: bool,
    /// A job's stream checks whether the job is done before it waits:
    /// at the start and after each return it sent, so the `done` event
    /// follows the last return at once.
    check_done: bool,
    /// Only entries this user may read (jobs outside their reach are
    /// skipped); `None` sends everything.
    reader: Option<String>,
    /// What `reader` may read, by job (bounded: cleared when large).
    readable: HashMap<Jid, bool>,
    /// Events made from one entry still to send (Salt's shape can turn
    /// one entry into several events).
    outgoing: VecDeque<Event>,
    /// Minions whose `job/return` entries this connection sent.
    returned: std::collections::HashSet<String>,
    /// The stream replays the job from its start (no resume point), so
    /// every return must have been sent before `done` is.
    from_start: bool,
    /// How often `done` waited for a return entry not yet on the stream.
    done_waits: u32,
}

/// How many times a job's `done` waits for a return the store holds but
/// whose stream entry has not been published yet (a moment: returns are
/// stored, then put on the stream, in one flush).
const MAX_DONE_WAITS: u32 = 20;

/// Jobs whose readability a stream remembers before it starts over.
const READABLE_CACHE: usize = 4096;

/// The SSE response for entries after `after` (one job's when `jid` is set).
pub fn stream(
    backend: Arc<dyn Backend>,
    jid: Option<Jid>,
    after: u64,
    shape: Shape,
    reader: Option<String>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = backend.subscribe();
    let state = State {
        backend,
        live,
        last: after,
        pending: VecDeque::new(),
        more: true,
        check_done: jid.is_some(),
        jid,
        shape,
        finished: false,
        reader,
        readable: HashMap::new(),
        returned: std::collections::HashSet::new(),
        from_start: after == 0,
        done_waits: 0,
        // salt-api starts its stream by telling clients to reconnect
        // after 400 ms.
        outgoing: if shape == Shape::Salt {
            VecDeque::from([Event::default().retry(Duration::from_millis(400))])
        } else {
            VecDeque::new()
        },
    };
    let events = futures::stream::unfold(state, |mut state| async move {
        let event = state.next().await?;
        Some((Ok(event), state))
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

impl State {
    async fn next(&mut self) -> Option<Event> {
        if let Some(event) = self.outgoing.pop_front() {
            return Some(event);
        }
        if self.finished {
            return None;
        }
        loop {
            if self.pending.is_empty() && self.more {
                self.refill();
            }
            if let Some(entry) = self.pending.pop_front() {
                if self.may_read(&entry) {
                    if let Some(event) = self.send(entry) {
                        return Some(event);
                    }
                    continue;
                }
                self.last = entry.id;
                continue;
            }
            if std::mem::take(&mut self.check_done) && !self.more {
                if let Some(done) = self.done_event() {
                    return Some(done);
                }
            }
            let received = tokio::time::timeout(DONE_CHECK, self.live.recv()).await;
            match received {
                Ok(Ok(entry)) => {
                    let for_me = self.jid.is_none() || entry.jid == self.jid;
                    if entry.id > self.last && for_me && self.may_read(&entry) {
                        if let Some(event) = self.send((*entry).clone()) {
                            return Some(event);
                        }
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::debug!(
                        missed,
                        "event stream subscriber lagged; re-reading the store"
                    );
                    self.more = true;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_idle) => {
                    if let Some(done) = self.done_event() {
                        return Some(done);
                    }
                }
            }
        }
    }

    /// May the stream's reader see this entry? Entries of no job
    /// (presence) are for everyone; a job's, for those who may read it;
    /// a wheel or runner call's, for those with its grant.
    fn may_read(&mut self, entry: &BusEntry) -> bool {
        // salt-api's wheel and runner calls: for those who may make them.
        if let Some(reader) = &self.reader {
            let grant = match entry.kind.as_str() {
                "salt/wheel" => Some(crate::Grant::Wheel),
                "salt/run" => Some(crate::salt::runner_grant(
                    entry.data["fun"].as_str().unwrap_or_default(),
                )),
                _ => None,
            };
            if let Some(grant) = grant {
                return self.backend.require(reader, grant).is_ok();
            }
        }
        let (Some(reader), Some(jid)) = (&self.reader, &entry.jid) else {
            return true;
        };
        if let Some(known) = self.readable.get(jid) {
            return *known;
        }
        let readable = self
            .backend
            .job(jid)
            .is_ok_and(|view| self.backend.may_read(reader, &view.job));
        if self.readable.len() >= READABLE_CACHE {
            self.readable.clear();
        }
        self.readable.insert(jid.clone(), readable);
        readable
    }

    fn refill(&mut self) {
        match self.backend.stream(self.last, self.jid.as_ref(), PAGE) {
            Ok(entries) => {
                self.more = entries.len() == PAGE;
                self.pending.extend(entries);
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot read the event stream");
                self.more = false;
            }
        }
    }

    /// For a job's stream: the closing `done` event once the job is done.
    fn done_event(&mut self) -> Option<Event> {
        let jid = self.jid.as_ref()?;
        let view = self.backend.job(jid).ok()?;
        if !view.done {
            return None;
        }
        let unsent = view.returns.keys().any(|m| !self.returned.contains(m));
        if self.from_start && unsent && self.done_waits < MAX_DONE_WAITS {
            // Stored but not on the stream yet: read the store again and
            // check once more, so `done` never overtakes a return.
            self.done_waits += 1;
            self.more = true;
            return None;
        }
        self.finished = true;
        let data = json!({ "jid": jid, "missing": view.missing });
        Some(Event::default().event("done").data(data.to_string()))
    }

    /// The entry's first event (the rest wait in `outgoing`). Only the
    /// last event of an entry carries its id, so a client that reconnects
    /// in between gets the whole entry again.
    fn send(&mut self, entry: BusEntry) -> Option<Event> {
        self.last = entry.id;
        self.check_done |= self.jid.is_some() && entry.kind == "job/return";
        if entry.kind == "job/return" {
            if let Some(minion) = &entry.minion {
                self.returned.insert(minion.clone());
            }
        }
        let id = entry.id.to_string();
        let data = match self.shape {
            Shape::Native => vec![serde_json::to_string(&entry).unwrap_or_default()],
            Shape::Salt => {
                let backend = self.backend.clone();
                let up_now = move || -> Vec<String> {
                    backend
                        .minions()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|m| m.status == "up")
                        .map(|m| m.id)
                        .collect()
                };
                crate::salt::event::salt_events(&entry, &up_now)
                    .iter()
                    .map(Value::to_string)
                    .collect()
            }
        };
        let count = data.len();
        for (n, data) in data.into_iter().enumerate() {
            let event = Event::default().data(data);
            self.outgoing.push_back(if n + 1 == count {
                event.id(id.clone())
            } else {
                event
            });
        }
        self.outgoing.pop_front()
    }
}
