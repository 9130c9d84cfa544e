//! The master's centre: its state, and what it does with each message
//! and request, split by concern.
//!
//! One `Core` is shared (in an `Arc`) by the inbound workers, the return
//! collector, the timers, the batch driver and the HTTP adapter.
//!
//! - [`inbound`]: messages from minions — verify, dispatch, auth,
//!   heartbeats, events, catch-up; [`returns`] stores them in grouped
//!   flushes and acks; [`peers`] keeps one peer's messages in order.
//! - [`jobs`]: submit, publish, cancel, batches.
//! - [`auth`]: logins, tokens, special grants.
//! - [`views`]: what the API reads (jobs, minions, keys, apps, stats) and
//!   key changes.
//! - [`upkeep`]: beacons, pruning, connectivity checks, session rotation.
//! - [`requests`]: release requests; [`schedules`], [`triggers`]
//!   (webhooks, polling) and [`notify`] (outgoing notifications) around
//!   them; [`workflow`] is the task that runs what comes due.
//!
//! Every message from a minion is verified against a key the master
//! already trusts before anything is done with it; a message that fails is
//! dropped with a log line naming the sender and the reason. Requests fail
//! with [`CoreError`], which the HTTP adapter alone maps to statuses.

pub mod auth;
pub mod inbound;
pub mod jobs;
pub mod notify;
pub mod peers;
pub mod requests;
pub mod returns;
pub mod rollouts;
pub mod schedules;
pub mod shared_keys;
pub mod shared_users;
mod traces;
pub mod triggers;
pub mod upkeep;
pub mod views;
pub mod workflow;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use halite_pki::{KeyPair, KeyStore, PublicKey};
use halite_proto::time::now_ms;
use halite_proto::{Jid, JidGenerator, Message};
use tokio::sync::mpsc;

use crate::batch::BatchPlan;
use crate::config::Config;
pub use crate::error::CoreError;
use crate::presence::Presence;
use crate::session::SessionKeys;
use crate::store::Store;
use crate::transport::Outbound;

pub use halite_model::RETURN_GRACE_MS;
pub use returns::PendingReturn;

/// A job still within its expiry, kept in memory for catch-up.
struct RecentJob {
    jid: Jid,
    expires_at: u64,
    /// A set: every return and event of the job is checked against it.
    expected: HashSet<String>,
    envelope: Arc<Vec<u8>>,
}

/// How often a line about one peer's dropped messages may be logged.
const DROP_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Shared master state. See the module docs.
pub struct Core {
    /// Validated configuration.
    pub config: Config,
    /// The master's signing key.
    key: KeyPair,
    master_pub: PublicKey,
    /// Minion keys by state.
    pub keys: KeyStore,
    /// Jobs, returns, events, minions.
    pub store: Store,
    /// Who is up.
    pub presence: Presence,
    session: SessionKeys,
    /// Each authenticated minion's own key (from its last auth), for the
    /// secrets sealed to it alone. In memory: after a restart, minions
    /// authenticate again before they are sent secrets.
    personal: RwLock<HashMap<String, halite_pki::SessionKey>>,
    /// The link key (from the personal key) of each minion that said at
    /// auth it checks link MACs: its heartbeats, their acks and its
    /// return acks are authenticated with it instead of Ed25519.
    link_keys: RwLock<HashMap<String, halite_pki::LinkKey>>,
    /// Where spans go, when `otel_endpoint` is set (`traces.rs`).
    traces: std::sync::OnceLock<halite_daemon::traces::Traces>,
    jids: JidGenerator,
    /// Jobs minions may still ask for through catch-up.
    /// Read by every return and event (is it expected?), written when a
    /// job is published and when catch-up drops expired ones.
    recent: RwLock<Vec<RecentJob>>,
    outbound: Arc<dyn Outbound>,
    /// Verified returns on their way to the collector.
    returns: mpsc::Sender<PendingReturn>,
    publish_port: u16,
    cli_token: halite_pki::Secret,
    /// Whether login tokens still stand (see `auth.rs`).
    sessions: auth::UserSessions,
    /// The `[acl]` grants, re-read when the config file changes.
    grants: auth::LiveGrants,
    /// The users file as last shared with the other masters.
    shared_users: shared_users::SharedUsers,
    /// Lines about dropped messages, per peer, at most one per interval.
    drop_log: halite_daemon::LogThrottle,
    /// New batch plans, for the batch driver.
    batches: mpsc::UnboundedSender<BatchPlan>,
    batch_plans: Mutex<Option<mpsc::UnboundedReceiver<BatchPlan>>>,
    /// Jobs cancelled since start: no further batch of theirs starts.
    cancelled: Mutex<HashSet<Jid>>,
    /// Keys of the other masters whose jobs are recorded here.
    peer_masters: crate::peer_masters::PeerMasters,
    /// The last auth of each pending minion and its peer identity,
    /// answered again when its key is accepted (`inbound.rs`).
    waiting: Mutex<HashMap<String, (bytes::Bytes, halite_proto::Envelope)>>,
    /// The key state each minion's last `minion/auth` stream entry
    /// reported: a minion retrying auth while pending is one entry, not
    /// one per attempt (`inbound.rs`).
    auth_reported: Mutex<HashMap<String, halite_proto::message::KeyStatus>>,
    /// Wakes the notification sender when something is queued.
    deliveries: tokio::sync::Notify,
    /// Held while a release request changes (made, decided, deployed,
    /// settled): a double-clicked deploy submits one job, a finished
    /// deploy is settled (and notified) once, and two requests racing
    /// for one environment do not both get in (`requests.rs`).
    request_steps: Mutex<()>,
    /// When each app's git cache was last fetched, so page views within
    /// [`requests::VIEW_FRESHNESS`] read the cache instead of the remote.
    git_fetched: Mutex<HashMap<String, std::time::Instant>>,
    /// Serialises each change of a rollout (the driver's, people's).
    rollout_lock: Mutex<()>,
    /// What `/metrics` exports.
    pub metrics: crate::metrics::Metrics,
    /// Whether this master held the drivers' lease at its last ask.
    driving: std::sync::atomic::AtomicBool,
}

/// The lease under which one master of those sharing a store drives
/// rollouts, schedules, settling requests and resumed batches.
const DRIVERS_LEASE: &str = "drivers";

/// How long the drivers' lease outlives its holder's last renewal (each
/// driver round renews it, several times a second): how long the work
/// waits when the master driving it dies.
pub const DRIVERS_LEASE_MS: u64 = 10_000;

/// Everything `Core::new` needs that is created by the caller.
pub struct CoreParts {
    /// Validated configuration.
    pub config: Config,
    /// Master key.
    pub key: KeyPair,
    /// Minion keys.
    pub keys: KeyStore,
    /// Opened store.
    pub store: Store,
    /// How jobs, beacons and replies leave the master.
    pub outbound: Arc<dyn Outbound>,
    /// Where verified returns go to be stored.
    pub returns: mpsc::Sender<PendingReturn>,
    /// Actual PUB port (told to minions at auth).
    pub publish_port: u16,
    /// Token of the local root CLI.
    pub cli_token: String,
}

impl Core {
    /// Assembles the state and reloads recent jobs for catch-up.
    pub fn new(parts: CoreParts) -> Result<Core, crate::Error> {
        let down_after = parts.config.heartbeat_interval * parts.config.missed_heartbeats
            + std::time::Duration::from_secs(1);
        let presence = Presence::load(parts.store.clone(), down_after, now_ms())?;
        let master_pub = parts.key.public();
        parts.keys.set_max_pending(parts.config.max_pending_keys);
        let (batches, batch_plans) = mpsc::unbounded_channel();
        let peer_masters = crate::peer_masters::PeerMasters::new(&parts.config.pki_dir, master_pub);
        let peers = peer_masters.listed();
        if !peers.is_empty() {
            tracing::info!(
                ?peers,
                "records the jobs of these other masters (pki peers/)"
            );
        }
        let core = Core {
            peer_masters,
            waiting: Mutex::new(HashMap::new()),
            auth_reported: Mutex::new(HashMap::new()),
            deliveries: tokio::sync::Notify::new(),
            request_steps: Mutex::new(()),
            git_fetched: Mutex::new(HashMap::new()),
            rollout_lock: Mutex::new(()),
            driving: std::sync::atomic::AtomicBool::new(false),
            metrics: crate::metrics::Metrics::new(),
            batches,
            batch_plans: Mutex::new(Some(batch_plans)),
            cancelled: Mutex::new(Default::default()),
            presence,
            session: SessionKeys::new()?,
            personal: RwLock::new(HashMap::new()),
            link_keys: RwLock::new(HashMap::new()),
            traces: std::sync::OnceLock::new(),
            jids: JidGenerator::new(),
            recent: RwLock::new(Vec::new()),
            master_pub,
            key: parts.key,
            keys: parts.keys,
            store: parts.store,
            outbound: parts.outbound,
            returns: parts.returns,
            publish_port: parts.publish_port,
            cli_token: halite_pki::Secret::new(parts.cli_token),
            sessions: auth::UserSessions::new(parts.config.users_file.clone()),
            shared_users: Default::default(),
            grants: auth::LiveGrants::new(
                parts.config.file.clone(),
                parts.config.acl.clone(),
                parts.config.freezes.clone(),
            ),
            drop_log: halite_daemon::LogThrottle::new(DROP_LOG_INTERVAL),
            config: parts.config,
        };
        core.reload_recent()?;
        Ok(core)
    }

    fn reload_recent(&self) -> Result<(), crate::Error> {
        let now = now_ms();
        let since = Jid::from_unix_us(now.saturating_sub(7 * 86_400_000) * 1000);
        for job in self.store.jobs_since(&since)? {
            if job.record.expires_at > now {
                self.remember(
                    job.record.jid,
                    job.record.expires_at,
                    job.record.expected,
                    job.envelope,
                );
            }
        }
        Ok(())
    }

    /// Keeps a published job's envelope for catch-up until it expires.
    fn remember(&self, jid: Jid, expires_at: u64, expected: Vec<String>, envelope: Vec<u8>) {
        self.recent
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(RecentJob {
                jid,
                expires_at,
                expected: expected.into_iter().collect(),
                envelope: Arc::new(envelope),
            });
    }

    /// Fingerprint of the master key, which minions pin.
    pub fn fingerprint(&self) -> String {
        self.master_pub.fingerprint()
    }

    /// Signs `message` as this master.
    fn sign<M: Message>(&self, message: &M) -> Result<Vec<u8>, halite_pki::PkiError> {
        Ok(self.key.sign_message(&self.config.id, message)?.to_bytes())
    }

    /// Signs a job for publication: its summary first (for the other
    /// masters its minions hand it to), then the whole.
    fn sign_job(
        &self,
        job: &mut halite_proto::message::Job,
    ) -> Result<Vec<u8>, halite_pki::PkiError> {
        let summary = halite_proto::message::JobSummary::of(job);
        job.summary_signature = self.key.sign_job_summary(&summary);
        self.sign(job)
    }

    /// Publishes a signed job envelope (stored first, if it is to be
    /// stored), sealed under the session key so that only authenticated
    /// minions read it, and remembers it for catch-up.
    fn send_job(&self, job: &halite_proto::message::Job, expected: Vec<String>, envelope: Vec<u8>) {
        use halite_proto::message::TOPIC_JOB;
        let sealed = halite_pki::seal_publication(&self.session.current(), TOPIC_JOB, &envelope);
        self.remember(job.jid.clone(), job.expires_at, expected, envelope);
        match sealed {
            Ok(sealed) => self.outbound.publish(TOPIC_JOB, sealed),
            // Minions get it through catch-up, sealed again then.
            Err(e) => {
                tracing::error!(jid = %job.jid, error = %e, "cannot seal a job for publishing")
            }
        }
    }

    /// Does this master drive the shared work (rollouts, schedules,
    /// settling requests, resumed batches) now? Asks for (or renews) the
    /// store's lease: always granted on sled; on a shared store to one
    /// master at a time, and to another once its holder stops renewing.
    /// Blocks for a store round trip.
    pub fn drives(&self) -> bool {
        use std::sync::atomic::Ordering;
        let holds = match self
            .store
            .hold_lease(DRIVERS_LEASE, &self.config.id, DRIVERS_LEASE_MS)
        {
            Ok(holds) => holds,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the drivers' lease; not driving");
                false
            }
        };
        if self.driving.swap(holds, Ordering::AcqRel) != holds {
            tracing::info!(driving = holds, "the drivers' lease changed hands");
        }
        holds
    }

    /// Whether this master drove the shared work at its last ask.
    pub fn is_driving(&self) -> bool {
        self.driving.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Puts an entry on the event stream; a failure is logged, never
    /// fatal (the record itself is already stored).
    fn announce(&self, entry: halite_model::BusEntry) {
        let jid = entry.jid.clone();
        let kind = entry.kind.clone();
        if let Err(e) = self.store.publish(entry) {
            tracing::warn!(jid = ?jid, kind, error = %e, "cannot put an entry on the event stream");
        }
    }
}

/// Runs work that may block (a store flush, a key file written and
/// synced, signing a large job, reading app and module files) from async
/// code without stalling the worker's other tasks: on the multi-threaded
/// runtime `block_in_place` hands them to another thread for the
/// duration. On a current-thread runtime (unit tests) it runs inline.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A sender name safe to log even when it failed validation.
pub(crate) fn printable(value: &str) -> String {
    value
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}
