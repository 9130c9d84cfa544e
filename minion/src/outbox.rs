//! Where the executor's signed returns and events go, with one or several
//! masters.
//!
//! A route is a spool (returns kept until that route's master
//! acknowledges them) and a queue its link drains. In failover mode there
//! is one route, drained by whichever link is active, so a return whose
//! master died is re-sent to the next one. In hot mode each master has its
//! own route and spool: every return goes to every master and stays
//! spooled for each until that master has it.

use std::sync::Arc;

use halite_proto::Jid;
use tokio::sync::{mpsc, Mutex};

use crate::executor::Outgoing;
use crate::spool::Spool;

/// The queue a link drains; shared by the links of a failover group (one
/// of them active at a time holds the lock).
pub type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Outgoing>>>;

/// One destination: its spool and its queue.
pub struct Route {
    spool: Spool,
    tx: mpsc::UnboundedSender<Outgoing>,
}

/// Every route the minion sends to.
pub struct Outbox {
    routes: Vec<Route>,
}

impl Outbox {
    /// An outbox over `spools`, one route each; returns the queue of each
    /// route, in order, for the links to drain.
    pub fn new(spools: Vec<Spool>) -> (Outbox, Vec<Queue>) {
        let mut routes = Vec::with_capacity(spools.len());
        let mut queues = Vec::with_capacity(spools.len());
        for spool in spools {
            let (tx, rx) = mpsc::unbounded_channel();
            routes.push(Route { spool, tx });
            queues.push(Arc::new(Mutex::new(rx)));
        }
        (Outbox { routes }, queues)
    }

    /// Durably stores a signed return in every route's spool (blocking:
    /// call it off the async workers). Err if any spool failed; the others
    /// keep it.
    pub fn spool(&self, jid: &Jid, envelope: &[u8]) -> std::io::Result<()> {
        let mut result = Ok(());
        for route in &self.routes {
            if let Err(e) = route.spool.put(jid, envelope) {
                result = Err(e);
            }
        }
        result
    }

    /// Can every route's spool take a return now (Err names the spool)?
    pub fn probe(&self) -> Result<(), String> {
        for route in &self.routes {
            route
                .spool
                .probe()
                .map_err(|e| format!("{}: {e}", route.spool.dir().display()))?;
        }
        Ok(())
    }

    /// Does any route's spool hold a return for `jid`?
    pub fn holds(&self, jid: &Jid) -> bool {
        self.routes.iter().any(|route| route.spool.holds(jid))
    }

    /// Queues a message for every route.
    pub fn send(&self, outgoing: Outgoing) {
        for route in &self.routes {
            // A closed queue means the minion is shutting down.
            let _ = route.tx.send(outgoing.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_route_gets_the_message_and_the_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spools: Vec<Spool> = ["a", "b"]
            .iter()
            .map(|m| Spool::open(&dir.path().join(m)).expect("spool"))
            .collect();
        let (outbox, queues) = Outbox::new(spools.clone());
        let jid = Jid::parse("20260101000000000001").expect("jid");
        outbox.spool(&jid, b"signed").expect("spooled");
        outbox.send(Outgoing {
            bytes: b"signed".to_vec(),
            ack: None,
        });
        for (spool, queue) in spools.iter().zip(&queues) {
            assert!(spool.holds(&jid));
            let got = queue.lock().await.try_recv().expect("queued");
            assert_eq!(got.bytes, b"signed");
        }
    }
}
