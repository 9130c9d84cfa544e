//! The signed envelope every message travels in.
//!
//! `Envelope { v, kind, sender, payload, sig }`: `payload` is the msgpack
//! encoding of one [`Message`], `sig` the sender's Ed25519 signature over
//! [`Envelope::signing_input`]. Receivers decode the envelope, check the
//! signature against a key they already trust (in `halite-pki`), and only
//! then [`Envelope::open`] the payload.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// The protocol version this build speaks; envelopes of other versions are
/// refused with [`ProtoError::Version`].
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest envelope a peer may send (16 MiB). The sockets refuse a
/// larger message from its frame header, before allocating for it (see
/// `halite_daemon::socket_options`), and drop that connection.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The deepest JSON nesting a return's data may have when the master keeps
/// it: below what every reader parses (serde_json stops at 128 levels, and
/// the API wraps the data in a few more), so any return the master accepts
/// can be shown by `master-cli` and portals.
pub const MAX_DATA_DEPTH: usize = 100;

/// How deeply `value` nests (a scalar is 1), counted without recursion.
pub fn depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 1usize)];
    while let Some((value, level)) = stack.pop() {
        deepest = deepest.max(level);
        match value {
            serde_json::Value::Array(items) => stack.extend(items.iter().map(|v| (v, level + 1))),
            serde_json::Value::Object(map) => stack.extend(map.values().map(|v| (v, level + 1))),
            _ => {}
        }
    }
    deepest
}

/// Domain separation for signatures: a signature made for a halite
/// envelope can never be mistaken for one over other data signed with the
/// same key.
const SIGNATURE_DOMAIN: &[u8] = b"halite/envelope/v1\0";

/// What an envelope carries; part of the signed bytes, so a signed return
/// can never be replayed as a signed heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// master → minions (PUB): run this.
    Job,
    /// master → minions (PUB): the master is alive.
    Beacon,
    /// minion → master: here is my key; accept me and give me the session key.
    Auth,
    /// master → minion: the answer to [`Kind::Auth`].
    AuthReply,
    /// minion → master: the result of a job.
    Return,
    /// master → minion: that return is durably stored.
    ReturnAck,
    /// minion → master: progress line or stage change of a running job.
    Event,
    /// minion → master: I am alive.
    Heartbeat,
    /// master → minion: heard you.
    HeartbeatAck,
    /// minion → master: which jobs did I miss while not subscribed?
    Catchup,
    /// master → minion: the signed jobs still in force.
    CatchupReply,
    /// master → minions: this Lua module (by name and hash) is mine; kept
    /// beside the module on the minion and checked every time it loads.
    ModuleManifest,
}

/// A payload type with a fixed [`Kind`], so encoding and opening cannot
/// pair the wrong kind with the wrong struct.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind written into (and required from) the envelope.
    const KIND: Kind;
    /// A short name for error messages.
    const NAME: &'static str;
}

/// The unit of transfer on every socket. See the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub v: u8,
    /// What the payload is.
    pub kind: Kind,
    /// Who signed it: a minion id, or a master id.
    pub sender: String,
    /// msgpack encoding of the message.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Ed25519 signature over [`Envelope::signing_input`].
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

impl Envelope {
    /// The exact bytes a sender signs: domain tag, version, and each of
    /// kind, sender and payload prefixed by its length, so no two
    /// different envelopes share signing input.
    pub fn signing_input(v: u8, kind: Kind, sender: &str, payload: &[u8]) -> Vec<u8> {
        let kind = kind_tag(kind);
        let mut out = Vec::with_capacity(
            SIGNATURE_DOMAIN.len() + 1 + 12 + kind.len() + sender.len() + payload.len(),
        );
        out.extend_from_slice(SIGNATURE_DOMAIN);
        out.push(v);
        for part in [kind.as_bytes(), sender.as_bytes(), payload] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        out
    }

    /// This envelope's signing input (what `sig` must cover).
    pub fn signed_bytes(&self) -> Vec<u8> {
        Self::signing_input(self.v, self.kind, &self.sender, &self.payload)
    }

    /// Encodes a message into an unsigned envelope; `halite-pki` fills `sig`.
    pub fn unsigned<M: Message>(sender: &str, message: &M) -> Result<Envelope, ProtoError> {
        Ok(Envelope {
            v: PROTOCOL_VERSION,
            kind: M::KIND,
            sender: sender.to_owned(),
            payload: encode(M::NAME, message)?,
            sig: Vec::new(),
        })
    }

    /// The envelope as bytes for a socket frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        // An envelope holds only strings, bytes and an enum: encoding it
        // into a Vec cannot fail.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes a frame; refuses other protocol versions. Does not verify
    /// the signature: that needs a key, and is `halite-pki`'s job.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, ProtoError> {
        let envelope: Envelope = decode("envelope", bytes)?;
        if envelope.v != PROTOCOL_VERSION {
            return Err(ProtoError::Version {
                got: envelope.v,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(envelope)
    }

    /// Decodes the payload as `M`. Call only after the signature checked out.
    pub fn open<M: Message>(&self) -> Result<M, ProtoError> {
        if self.kind != M::KIND {
            return Err(ProtoError::WrongKind {
                expected: M::KIND,
                got: self.kind,
            });
        }
        decode(M::NAME, &self.payload)
    }
}

fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Job => "job",
        Kind::Beacon => "beacon",
        Kind::Auth => "auth",
        Kind::AuthReply => "auth_reply",
        Kind::Return => "return",
        Kind::ReturnAck => "return_ack",
        Kind::Event => "event",
        Kind::Heartbeat => "heartbeat",
        Kind::HeartbeatAck => "heartbeat_ack",
        Kind::Catchup => "catchup",
        Kind::CatchupReply => "catchup_reply",
        Kind::ModuleManifest => "module_manifest",
    }
}

/// msgpack-encodes any value with field names (maps), so that adding a
/// field later does not break older peers.
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, ProtoError> {
    rmp_serde::to_vec_named(value).map_err(|e| ProtoError::Encode {
        what,
        reason: e.to_string(),
    })
}

/// Nesting `decode` follows at most: deeper input is malformed, refused
/// before its recursion can exhaust a worker's stack (a message is a few
/// levels around its data, which [`MAX_DATA_DEPTH`] bounds).
pub const MAX_DECODE_DEPTH: usize = 128;

/// msgpack-decodes a value, naming `what` in the error.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ProtoError> {
    let mut decoder = rmp_serde::Deserializer::from_read_ref(bytes);
    decoder.set_max_depth(MAX_DECODE_DEPTH);
    T::deserialize(&mut decoder).map_err(|e| ProtoError::Malformed {
        what,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Beacon;

    #[test]
    fn round_trips_and_opens() {
        let beacon = Beacon {
            master: "m1".into(),
            at: 42,
            session_epoch: 3,
        };
        let env = Envelope::unsigned("m1", &beacon).unwrap();
        let back = Envelope::from_bytes(&env.to_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.open::<Beacon>().unwrap(), beacon);
    }

    #[test]
    fn signing_input_separates_fields() {
        let a = Envelope::signing_input(1, Kind::Job, "ab", b"c");
        let b = Envelope::signing_input(1, Kind::Job, "a", b"bc");
        assert_ne!(a, b);
        let c = Envelope::signing_input(1, Kind::Return, "ab", b"c");
        assert_ne!(a, c);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"\xff\xff", b"\x85\xa1v\x01", &[0x92, 0x01, 0xc0]] {
            assert!(Envelope::from_bytes(bytes).is_err());
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let mut env = Envelope::unsigned(
            "m",
            &Beacon {
                master: "m".into(),
                at: 1,
                session_epoch: 0,
            },
        )
        .unwrap();
        env.v = 9;
        assert!(matches!(
            Envelope::from_bytes(&env.to_bytes()),
            Err(ProtoError::Version { got: 9, .. })
        ));
    }

    #[test]
    fn opening_as_the_wrong_kind_fails() {
        let env = Envelope::unsigned(
            "m",
            &Beacon {
                master: "m".into(),
                at: 1,
                session_epoch: 0,
            },
        )
        .unwrap();
        assert!(matches!(
            env.open::<crate::message::Heartbeat>(),
            Err(ProtoError::WrongKind { .. })
        ));
    }

    #[test]
    fn depth_counts_nesting_without_recursion() {
        assert_eq!(depth(&serde_json::json!(1)), 1);
        assert_eq!(depth(&serde_json::json!({"a": [1, {"b": []}]})), 4);
        let mut deep = serde_json::json!(0);
        for _ in 0..100_000 {
            deep = serde_json::Value::Array(vec![deep]);
        }
        assert_eq!(depth(&deep), 100_001);
        // Dropping it recursively would overflow the test's stack.
        let mut items = vec![deep];
        while let Some(serde_json::Value::Array(inner)) = items.pop() {
            items.extend(inner);
        }
    }

    #[test]
    fn deeply_nested_input_is_malformed_not_a_stack_overflow() {
        // msgpack: 100 000 one-element arrays around a zero.
        let mut bytes = vec![0x91u8; 100_000];
        bytes.push(0);
        let decoded: Result<serde_json::Value, _> = decode("test", &bytes);
        assert!(matches!(decoded, Err(ProtoError::Malformed { .. })));
        let mut shallow = vec![0x91u8; 50];
        shallow.push(0);
        assert!(decode::<serde_json::Value>("test", &shallow).is_ok());
    }
}
