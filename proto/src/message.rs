//! The messages carried in envelopes, one struct per [`Kind`].
//!
//! Times are unix milliseconds. Every request a minion sends carries a
//! random `nonce` that the master's signed reply echoes, so a captured
//! reply cannot be replayed against another request.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::envelope::{Kind, Message};
use crate::target::TargetType;
use crate::Jid;

macro_rules! message {
    ($ty:ty, $kind:ident, $name:literal) => {
        impl Message for $ty {
            const KIND: Kind = Kind::$kind;
            const NAME: &'static str = $name;
        }
    };
}

/// A job published by a master: run `fun` with `arg`/`kwarg` on every
/// minion matching `tgt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Time-ordered unique id.
    pub jid: Jid,
    /// Target expression, interpreted per `tgt_type`.
    pub tgt: String,
    /// How `tgt` is read.
    pub tgt_type: TargetType,
    /// `module.function`.
    pub fun: String,
    /// Positional arguments.
    pub arg: Vec<Value>,
    /// Keyword arguments.
    pub kwarg: Map<String, Value>,
    /// Keyword arguments that must never be seen in clear outside the
    /// master and the minion, sealed under the session key every minion
    /// holds (written by masters before per-minion sealing; still opened).
    #[serde(default)]
    pub secret: Option<Sealed>,
    /// The same, sealed for each targeted minion under its own key (given
    /// at its auth), by minion id: a minion opens only its own copy.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub secrets: std::collections::BTreeMap<String, Sealed>,
    /// Seconds the minion lets the function run before cancelling it.
    pub timeout: u64,
    /// When the master issued it.
    pub issued_at: u64,
    /// After this moment (plus the minion's clock-skew allowance) the job
    /// is refused: a delayed or replayed publication does nothing.
    pub expires_at: u64,
    /// Id of the master that signed it.
    pub master: String,
    /// Who asked for it (for audit on the minion side).
    #[serde(default)]
    pub user: String,
    /// Lua modules the job needs, signed by the master: the minion
    /// installs any it lacks or has another version of before running
    /// the job (and `saltutil.sync_modules` carries them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<SignedModule>,
    /// The master's signature over this job's [`JobSummary`]: a minion
    /// serving several masters hands summary and signature on with its
    /// returns, so the other masters record the job from its publisher's
    /// word rather than the minion's. Empty from masters that predate it.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Vec::is_empty")]
    pub summary_signature: Vec<u8>,
}
message!(Job, Job, "job");

/// What a master vouches for about a job it published: the parts another
/// master needs to record it (who, what, where), without the secrets and
/// modules, which can be large and are none of the other master's
/// business.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Job id.
    pub jid: Jid,
    /// The master that published and signed it.
    pub master: String,
    /// Target expression.
    pub tgt: String,
    /// How `tgt` is read.
    pub tgt_type: TargetType,
    /// `module.function`.
    pub fun: String,
    /// Positional arguments.
    pub arg: Vec<Value>,
    /// Keyword arguments (the secret ones are not among them).
    pub kwarg: Map<String, Value>,
    /// Who asked for it.
    pub user: String,
    /// Seconds the function may run.
    pub timeout: u64,
    /// When the master issued it.
    pub issued_at: u64,
    /// When it expires.
    pub expires_at: u64,
}

impl JobSummary {
    /// Domain separation: a summary signature is never a valid signature
    /// of anything else a master signs.
    const CONTEXT: &'static [u8] = b"halite job summary v1\0";

    /// The summary of `job`.
    pub fn of(job: &Job) -> JobSummary {
        JobSummary {
            jid: job.jid.clone(),
            master: job.master.clone(),
            tgt: job.tgt.clone(),
            tgt_type: job.tgt_type,
            fun: job.fun.clone(),
            arg: job.arg.clone(),
            kwarg: job.kwarg.clone(),
            user: job.user.clone(),
            timeout: job.timeout,
            issued_at: job.issued_at,
            expires_at: job.expires_at,
        }
    }

    /// The bytes the publisher signs and another master verifies. JSON,
    /// not msgpack: a value decoded and encoded again (an integer read
    /// back as unsigned, say) gives the same text, so the minion in
    /// between cannot change the signed bytes by passing them on.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = Self::CONTEXT.to_vec();
        // Plain data (strings, numbers, JSON values): cannot fail.
        serde_json::to_writer(&mut bytes, self).unwrap_or_default();
        bytes
    }
}

/// A job's summary with its publisher's signature, as a minion carries it
/// to the masters that did not publish the job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VouchedJob {
    /// The summary.
    pub summary: JobSummary,
    /// The publisher's Ed25519 signature over [`JobSummary::signed_bytes`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl VouchedJob {
    /// The vouched summary of `job`, if its master signed one.
    pub fn of(job: &Job) -> Option<VouchedJob> {
        (!job.summary_signature.is_empty()).then(|| VouchedJob {
            summary: JobSummary::of(job),
            signature: job.summary_signature.clone(),
        })
    }
}

/// A Lua module with the master's signed manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedModule {
    /// Module name (the file name without `.lua`).
    pub name: String,
    /// The Lua source.
    pub source: String,
    /// A signed [`ModuleManifest`] envelope (bytes) naming the module and
    /// the SHA-256 of `source`.
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

/// What a master signs for each Lua module it hands out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModuleManifest {
    /// Module name.
    pub name: String,
    /// SHA-256 of the source, lower-case hex.
    pub sha256: String,
    /// The master that signed it.
    pub master: String,
}
message!(ModuleManifest, ModuleManifest, "module manifest");

/// The function of a job that installs the master's Lua modules (carried
/// in the job) and removes the ones it no longer has, as Salt's.
pub const SYNC_MODULES: &str = crate::catalog::saltutil::SYNC_MODULES.fun;

/// The function of a job that lists a minion's Lua modules and versions.
pub const LIST_MODULES: &str = crate::catalog::saltutil::LIST_MODULES.fun;

/// Bytes sealed with AEAD under the session key of `epoch`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Sealed {
    /// Which session key sealed this (the key rotates).
    pub epoch: u64,
    /// AEAD nonce (12 bytes).
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// Ciphertext with its tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed(epoch {}, {} bytes)",
            self.epoch,
            self.ciphertext.len()
        )
    }
}

/// Published periodically so minions know the master is alive and which
/// session key is current.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Beacon {
    /// Master id.
    pub master: String,
    /// When it was sent.
    pub at: u64,
    /// Current session key epoch; a minion holding an older one re-auths.
    pub session_epoch: u64,
}
message!(Beacon, Beacon, "beacon");

/// A minion introduces itself. Signed with the key it presents, which
/// proves possession; whether the key is trusted is the master's decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Auth {
    /// Minion id (must equal the envelope's sender).
    pub id: String,
    /// The minion's Ed25519 public key (32 bytes).
    #[serde(with = "serde_bytes")]
    pub pubkey: Vec<u8>,
    /// Random request nonce, echoed in the reply.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// Ephemeral X25519 public key for the session-key exchange.
    #[serde(with = "serde_bytes")]
    pub eph_pub: Vec<u8>,
    /// halite version the minion runs.
    pub version: String,
    /// The minion's grains, so the master can expand grain targets.
    pub grains: Value,
    /// Only asking who the master is (its signed key), before trusting
    /// it: the master answers without recording the minion's key. Sent
    /// first by a minion with `master_fingerprint` and no pin yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe: bool,
    /// The minion checks link MACs (`halite_pki::LinkKey`): the master may
    /// authenticate its heartbeat and return acks to it that way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_macs: bool,
}
message!(Auth, Auth, "auth");

/// Where a minion's key stands on the master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Accepted: the minion may run jobs.
    Accepted,
    /// Waiting for an operator (`master-cli keys accept`).
    Pending,
    /// Refused by an operator.
    Rejected,
    /// A different key than the accepted one for this id: never replaced silently.
    Denied,
}

/// The session key, wrapped for one minion under a fresh X25519 exchange.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// Epoch of the wrapped session key.
    pub epoch: u64,
    /// The master's ephemeral X25519 public key.
    #[serde(with = "serde_bytes")]
    pub eph_pub: Vec<u8>,
    /// The session key sealed under the exchange's derived key.
    pub wrapped: Sealed,
    /// This minion's own key (for the secrets sealed to it alone), sealed
    /// the same way.
    #[serde(default)]
    pub personal: Option<Sealed>,
}

impl std::fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionGrant(epoch {})", self.epoch)
    }
}

/// The master's answer to [`Auth`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthReply {
    /// Echo of the request nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// The minion's key state.
    pub status: KeyStatus,
    /// Master id.
    pub master: String,
    /// The master's Ed25519 public key, pinned by the minion at first contact.
    #[serde(with = "serde_bytes")]
    pub master_pub: Vec<u8>,
    /// Port of the master's PUB socket.
    pub publish_port: u16,
    /// Seconds between heartbeats the master expects.
    pub heartbeat_interval: u64,
    /// The session key, only when `status` is accepted.
    pub session: Option<SessionGrant>,
    /// The master checks link MACs: the minion may authenticate its
    /// heartbeats that way (with the key derived from its personal key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link_macs: bool,
}
message!(AuthReply, AuthReply, "auth_reply");

/// The result of one job on one minion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Return {
    /// Job id.
    pub jid: Jid,
    /// Minion id (must equal the envelope's sender).
    pub id: String,
    /// Function that ran.
    pub fun: String,
    /// Did it do what was asked?
    pub success: bool,
    /// Process-style return code: 0 on success.
    pub retcode: i32,
    /// What the function returned (or the error).
    pub data: Value,
    /// When the minion started it.
    pub started_at: u64,
    /// When it finished.
    pub finished_at: u64,
    /// Random nonce, echoed in the ack.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// Id of the master that published the job. In hot mode a return goes
    /// to every master, so a master can tell another one's job from its own.
    #[serde(default)]
    pub master: String,
    /// The publisher's signed summary of the job, carried by a minion that
    /// serves several masters: the only word another master takes for a
    /// job it did not publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<VouchedJob>,
}
message!(Return, Return, "return");

/// The return `(jid, id)` is durably stored; the minion may forget it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReturnAck {
    /// Job id of the stored return.
    pub jid: Jid,
    /// Minion id of the stored return.
    pub id: String,
    /// Echo of the return's nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
}
message!(ReturnAck, ReturnAck, "return_ack");

/// Progress of a running job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Job id.
    pub jid: Jid,
    /// Minion id.
    pub id: String,
    /// Order within (jid, id), from 0.
    pub seq: u64,
    /// When it happened.
    pub at: u64,
    /// What happened.
    pub body: EventBody,
}
message!(Event, Event, "event");

/// What a job reports while it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A line of output.
    Progress {
        /// The line, without its newline.
        line: String,
        /// `stdout`, `stderr` or `log`.
        stream: String,
    },
    /// A stage started or ended.
    Stage {
        /// Stage name (`prepare`, `deploy`, ...).
        stage: String,
        /// `started`, `succeeded` or `failed`.
        status: String,
        /// Duration, on the ending event.
        duration_ms: Option<u64>,
        /// Optional explanation.
        message: Option<String>,
    },
}

/// A minion is alive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Minion id.
    pub id: String,
    /// Random nonce, echoed in the ack.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// When it was sent.
    pub at: u64,
    /// halite version the minion runs.
    pub version: String,
    /// Session epoch the minion holds.
    pub session_epoch: u64,
    /// Jobs running right now.
    pub running: Vec<Jid>,
    /// Round trip of the previous heartbeat (send to verified ack), so
    /// the master can show each minion's latency without comparing clocks.
    #[serde(default)]
    pub rtt_ms: Option<u64>,
}
message!(Heartbeat, Heartbeat, "heartbeat");

/// The master heard a heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Echo of the heartbeat nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// Is the minion's key (still) accepted? If not it must re-auth.
    pub accepted: bool,
    /// Current session epoch; a minion holding another re-auths.
    pub session_epoch: u64,
}
message!(HeartbeatAck, HeartbeatAck, "heartbeat_ack");

/// After (re)subscribing, a minion asks for jobs it may have missed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catchup {
    /// Minion id.
    pub id: String,
    /// Random nonce, echoed in the reply.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
}
message!(Catchup, Catchup, "catchup");

/// Signed job envelopes (as published) that have not expired and whose
/// target may include the asking minion. The minion verifies each one
/// exactly as if it came from the PUB socket, and its replay guard makes
/// sure none runs twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CatchupReply {
    /// Echo of the request nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// Encoded job envelopes.
    pub jobs: Vec<serde_bytes::ByteBuf>,
}
message!(CatchupReply, CatchupReply, "catchup_reply");

/// PUB topic of jobs for all minions.
pub const TOPIC_JOB: &str = "job";

/// The function of a job that cancels another running job (`arg[0]` is
/// its jid), named as in Salt. Minions handle it themselves.
pub const KILL_JOB: &str = crate::catalog::saltutil::KILL_JOB.fun;
/// PUB topic of master beacons.
pub const TOPIC_BEACON: &str = "beacon";
