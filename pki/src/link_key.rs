//! The key one master and one minion share for the messages only they
//! read: heartbeats, their acks and return acks, authenticated with
//! HMAC-SHA256 instead of an Ed25519 signature.
//!
//! Why: an idle fleet is mostly heartbeats and acks, and a job's returns
//! each get an ack. Ed25519 costs tens of microseconds per signature and
//! more per verification; an HMAC over the same bytes costs about one.
//! A MAC proves the message comes from whoever holds the key, which is
//! all these kinds need: each is read once, by the one peer that shares
//! the key, and never kept or shown to a third party. Everything that is
//! kept or checked by others (jobs, returns, events, auth) stays signed.
//!
//! The key is derived (HKDF-SHA256) from the minion's personal key, which
//! the master sends sealed in each `AuthReply` (`session.rs`): so it is
//! new at every auth, and gone when the minion's key is rejected or
//! deleted (the master forgets the personal key). It never authenticates
//! anything but the kinds [`LinkKey::allows`] names, so a MAC can never
//! stand in for a job's or a return's signature.

use halite_proto::envelope::{Envelope, Kind, Message};
use ring::{hkdf, hmac};

use crate::session::SessionKey;
use crate::PkiError;

/// Length of a link MAC in `Envelope::sig`; an Ed25519 signature is 64.
pub const MAC_LEN: usize = 32;

/// Domain tag before the envelope's signing input: a MAC over an envelope
/// never equals one over other data under the same key.
const MAC_DOMAIN: &[u8] = b"halite/link-mac/v1\0";
const HKDF_SALT: &[u8] = b"halite/link-key/v1";

/// The HMAC key of one master–minion link. `Debug` prints nothing secret;
/// clones share the key (the master clones it out of its map per message).
#[derive(Clone)]
pub struct LinkKey {
    key: std::sync::Arc<hmac::Key>,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey")
    }
}

/// HKDF output length for an HMAC-SHA256 key.
struct HmacLen;

impl hkdf::KeyType for HmacLen {
    fn len(&self) -> usize {
        32
    }
}

impl LinkKey {
    /// The link key of the minion that holds `personal`.
    pub fn derive(personal: &SessionKey) -> Result<LinkKey, PkiError> {
        let failed = |_| PkiError::Crypto {
            what: "derive a link key",
        };
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(personal.secret_bytes());
        let mut bytes = [0u8; 32];
        prk.expand(&[b"hmac-sha256"], HmacLen)
            .map_err(failed)?
            .fill(&mut bytes)
            .map_err(failed)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &bytes);
        bytes.fill(0);
        Ok(LinkKey {
            key: std::sync::Arc::new(key),
        })
    }

    /// The kinds a link key authenticates (see the module docs).
    pub fn allows(kind: Kind) -> bool {
        matches!(kind, Kind::Heartbeat | Kind::HeartbeatAck | Kind::ReturnAck)
    }

    /// Is `env` authenticated with a link MAC (not signed)?
    pub fn carries_mac(env: &Envelope) -> bool {
        env.sig.len() == MAC_LEN
    }

    /// Encodes `message` into an envelope from `sender`, authenticated with
    /// this key. Refuses a kind the key may not authenticate.
    pub fn seal_message<M: Message>(
        &self,
        sender: &str,
        message: &M,
    ) -> Result<Envelope, PkiError> {
        if !Self::allows(M::KIND) {
            return Err(PkiError::Crypto {
                what: "authenticate a kept message with a link key",
            });
        }
        let mut env = Envelope::unsigned(sender, message).map_err(|reason| PkiError::Encode {
            sender: sender.chars().take(64).collect(),
            reason,
        })?;
        env.sig = self.tag(&env);
        Ok(env)
    }

    /// Checks `env`'s MAC (in constant time) and that its kind may be
    /// authenticated this way.
    pub fn verify(&self, env: &Envelope) -> Result<(), PkiError> {
        let bad = || PkiError::BadSignature {
            signer: format!(
                "{:?} envelope from {:?} (link MAC)",
                env.kind,
                env.sender.chars().take(64).collect::<String>()
            ),
        };
        if !Self::allows(env.kind) || !Self::carries_mac(env) {
            return Err(bad());
        }
        let mut input = Vec::with_capacity(MAC_DOMAIN.len() + env.payload.len() + 64);
        input.extend_from_slice(MAC_DOMAIN);
        input.extend_from_slice(&env.signed_bytes());
        hmac::verify(&self.key, &input, &env.sig).map_err(|_| bad())
    }

    fn tag(&self, env: &Envelope) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(MAC_DOMAIN);
        context.update(&env.signed_bytes());
        context.sign().as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::message::{Heartbeat, HeartbeatAck, Return};

    fn beat() -> Heartbeat {
        Heartbeat {
            id: "web01".into(),
            nonce: vec![1; 16],
            at: 1,
            version: "0".into(),
            session_epoch: 1,
            running: vec![],
            rtt_ms: None,
        }
    }

    fn key(byte: u8) -> LinkKey {
        LinkKey::derive(&SessionKey::from_bytes(1, [byte; 32])).expect("derive")
    }

    #[test]
    fn a_link_mac_verifies_only_with_its_key_and_unchanged() {
        let env = key(7).seal_message("web01", &beat()).expect("seal");
        assert!(LinkKey::carries_mac(&env));
        key(7).verify(&env).expect("its own key");
        assert!(key(8).verify(&env).is_err(), "another minion's key");
        let mut forged = env.clone();
        forged.sender = "web02".into();
        assert!(key(7).verify(&forged).is_err(), "another sender");
        let mut forged = env.clone();
        forged.payload[0] ^= 1;
        assert!(key(7).verify(&forged).is_err(), "a changed payload");
        // The same bytes as another kind do not verify either.
        let mut forged = env;
        forged.kind = Kind::HeartbeatAck;
        assert!(key(7).verify(&forged).is_err(), "another kind");
    }

    #[test]
    fn a_link_key_never_authenticates_what_is_kept() {
        let ret = Return {
            jid: halite_proto::Jid::from_unix_us(1),
            id: "web01".into(),
            fun: "test.ping".into(),
            success: true,
            retcode: 0,
            data: serde_json::json!(true),
            started_at: 0,
            finished_at: 0,
            nonce: vec![1; 16],
            master: String::new(),
            job: None,
        };
        assert!(key(7).seal_message("web01", &ret).is_err());
        // A return carrying a MAC-sized tag made by the holder of the key
        // does not verify as a link message.
        let mut env = Envelope::unsigned("web01", &ret).expect("encode");
        env.sig = vec![0; MAC_LEN];
        assert!(key(7).verify(&env).is_err());
        let ack = HeartbeatAck {
            nonce: vec![1; 16],
            accepted: true,
            session_epoch: 1,
        };
        key(7)
            .verify(&key(7).seal_message("master", &ack).expect("seal"))
            .expect("an ack");
    }
}
