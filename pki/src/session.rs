//! The session key that seals secret job arguments (DESIGN "Keys and
//! trust").
//!
//! Jobs are published to every minion over PUB, so their secret arguments
//! (git tokens, passwords) are sealed with ChaCha20-Poly1305 under a
//! [`SessionKey`] that only the master and its accepted minions hold. The
//! master rotates it (a new epoch) when a minion key is rejected or
//! deleted.
//!
//! A minion gets the key at auth, over an ephemeral X25519 exchange:
//!
//! 1. the minion makes an [`Ephemeral`] and puts its public half in
//!    `Auth.eph_pub`; the `Auth` envelope is signed with the minion's
//!    Ed25519 key;
//! 2. the master, having accepted that key, calls [`grant`] with the
//!    minion's ephemeral public key: a fresh master ephemeral X25519 key,
//!    HKDF-SHA256 of the shared secret with the [`transcript`] as info, and
//!    the session key sealed under the result, sent in the `AuthReply`
//!    signed with the master's Ed25519 key;
//! 3. the minion calls [`Ephemeral::accept`] with the same transcript.
//!
//! The Ed25519 signatures of the `Auth` and `AuthReply` envelopes cover the
//! ephemeral public keys: that is what binds the exchange to both
//! identities (a man in the middle cannot substitute its own ephemeral
//! key without forging a signature). The transcript (both identity keys,
//! the minion id and the auth nonce) additionally ties the derived key to
//! this one exchange. Ephemeral private keys are used once and dropped, so
//! a later theft of either identity key does not reveal past session keys.

use std::fmt;

use halite_proto::message::{Sealed, SessionGrant};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::keys::PublicKey;
use crate::PkiError;

/// Session key length (ChaCha20-Poly1305).
const KEY_LEN: usize = 32;
/// X25519 public key length.
const X25519_PUB_LEN: usize = 32;
/// HKDF salt of the wrapping key.
const HKDF_SALT: &[u8] = b"halite/session/v1";
/// Domain tags in the AEAD associated data, so data sealed for one purpose
/// can never be opened as the other.
const SEAL_DOMAIN: &[u8] = b"halite/seal/v1\0";
const WRAP_DOMAIN: &[u8] = b"halite/session-wrap/v1\0";
const TRANSCRIPT_DOMAIN: &[u8] = b"halite/session/transcript/v1\0";

/// The symmetric key that seals secret job arguments, with its epoch.
/// `Debug` prints only the epoch.
#[derive(Clone)]
pub struct SessionKey {
    epoch: u64,
    key: [u8; KEY_LEN],
}

impl SessionKey {
    /// Generates a fresh random key for `epoch` (the master's counter, so
    /// minions can tell a rotated key from the one they hold).
    pub fn generate(epoch: u64) -> Result<SessionKey, PkiError> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| PkiError::Crypto {
                what: "generate a session key",
            })?;
        Ok(SessionKey { epoch, key })
    }

    /// A key from known bytes: for tests and fuzzing, where sealed inputs
    /// must open run after run. Real keys come from [`SessionKey::generate`].
    pub fn from_bytes(epoch: u64, key: [u8; KEY_LEN]) -> SessionKey {
        SessionKey { epoch, key }
    }

    /// Which epoch this key is (minions hold the key of each epoch).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Seals `plaintext` with ChaCha20-Poly1305 and a random 12-byte nonce.
    /// `aad` binds the ciphertext to its context (e.g. the jid), so a
    /// sealed value cut from one job and pasted into another does not open.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, PkiError> {
        seal_with(&self.aead_key()?, self.epoch, SEAL_DOMAIN, aad, plaintext)
    }

    /// Opens what [`SessionKey::seal`] sealed with the same `aad`. Errors if
    /// it was sealed under another epoch (the minion should re-auth) or
    /// authentication fails (wrong context, wrong key, or tampering).
    pub fn open(&self, aad: &[u8], sealed: &Sealed) -> Result<Vec<u8>, PkiError> {
        if sealed.epoch != self.epoch {
            return Err(PkiError::SessionEpoch {
                expected: self.epoch,
                got: sealed.epoch,
            });
        }
        open_with(
            &self.aead_key()?,
            self.epoch,
            SEAL_DOMAIN,
            aad,
            sealed,
            "sealed data",
        )
    }

    /// The key's bytes, for keys derived from it (`link_key.rs`).
    pub(crate) fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    fn aead_key(&self) -> Result<LessSafeKey, PkiError> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.key)
            .map(LessSafeKey::new)
            .map_err(|_| PkiError::Crypto {
                what: "load the session key",
            })
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        // Best effort; copies made by moves are beyond our reach.
        self.key.fill(0);
        std::hint::black_box(&self.key);
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKey")
            .field("epoch", &self.epoch)
            .field("key", &"***")
            .finish()
    }
}

/// The context both sides bind the exchange to: minion id, minion Ed25519
/// public key, master Ed25519 public key and the auth nonce, each
/// length-prefixed after a domain tag (so no two contexts share bytes).
/// Used as HKDF info: a grant made for one minion, master or auth request
/// does not unwrap for another.
pub fn transcript(
    minion_id: &str,
    minion_pub: &PublicKey,
    master_pub: &PublicKey,
    nonce: &[u8],
) -> Vec<u8> {
    let parts: [&[u8]; 4] = [
        minion_id.as_bytes(),
        minion_pub.as_bytes(),
        master_pub.as_bytes(),
        nonce,
    ];
    let mut out = Vec::with_capacity(
        TRANSCRIPT_DOMAIN.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>(),
    );
    out.extend_from_slice(TRANSCRIPT_DOMAIN);
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// Minion side: a fresh X25519 key pair (ring's ephemeral agreement key)
/// for one auth. It is consumed by [`Ephemeral::accept`], so it can never
/// be reused.
pub struct Ephemeral {
    private: EphemeralPrivateKey,
}

impl Ephemeral {
    /// Makes the key pair; the returned bytes go into `Auth.eph_pub`
    /// (covered by the `Auth` envelope's Ed25519 signature).
    pub fn generate() -> Result<(Ephemeral, Vec<u8>), PkiError> {
        let rng = SystemRandom::new();
        let private =
            EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| PkiError::Crypto {
                what: "generate an X25519 ephemeral key",
            })?;
        let public = private.compute_public_key().map_err(|_| PkiError::Crypto {
            what: "compute an X25519 public key",
        })?;
        Ok((Ephemeral { private }, public.as_ref().to_vec()))
    }

    /// Unwraps the session key granted by the master. Call only after the
    /// `AuthReply` envelope carrying `grant` verified against the master's
    /// pinned key; `transcript` must be built exactly as the master built
    /// it ([`transcript`]), or unwrapping fails.
    ///
    /// Returns the shared session key and, when the grant carries one,
    /// this minion's own key.
    pub fn accept(
        self,
        grant: &SessionGrant,
        transcript: &[u8],
    ) -> Result<(SessionKey, Option<SessionKey>), PkiError> {
        if grant.wrapped.epoch != grant.epoch {
            return Err(PkiError::SessionEpoch {
                expected: grant.epoch,
                got: grant.wrapped.epoch,
            });
        }
        check_x25519_pub("master ephemeral public key", &grant.eph_pub)?;
        let wrap_key = agree(self.private, &grant.eph_pub, transcript)?;
        let unwrap = |sealed: &Sealed, aad: &[u8]| {
            let mut plain = open_with(
                &wrap_key,
                grant.epoch,
                WRAP_DOMAIN,
                aad,
                sealed,
                "session grant",
            )?;
            let key =
                <[u8; KEY_LEN]>::try_from(plain.as_slice()).map_err(|_| PkiError::Malformed {
                    what: "session grant",
                    reason: format!("wrapped key is {} bytes, expected {KEY_LEN}", plain.len()),
                });
            plain.fill(0);
            Ok::<_, PkiError>(SessionKey {
                epoch: grant.epoch,
                key: key?,
            })
        };
        let session = unwrap(&grant.wrapped, &[])?;
        let personal = match &grant.personal {
            Some(sealed) => Some(unwrap(sealed, PERSONAL_AAD)?),
            None => None,
        };
        Ok((session, personal))
    }
}

impl fmt::Debug for Ephemeral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ephemeral(***)")
    }
}

/// Master side: wraps `session` for a minion whose ephemeral public key is
/// `minion_eph_pub` (from its signed `Auth`), using a fresh master
/// ephemeral X25519 key; wrapping key = HKDF-SHA256(shared secret, salt =
/// `"halite/session/v1"`, info = `transcript`). Send the result only in an
/// `AuthReply` signed with the master's Ed25519 key, which covers the
/// master's ephemeral public key.
pub fn grant(
    session: &SessionKey,
    personal: Option<&SessionKey>,
    minion_eph_pub: &[u8],
    transcript: &[u8],
) -> Result<SessionGrant, PkiError> {
    check_x25519_pub("minion ephemeral public key", minion_eph_pub)?;
    let rng = SystemRandom::new();
    let private = EphemeralPrivateKey::generate(&X25519, &rng).map_err(|_| PkiError::Crypto {
        what: "generate an X25519 ephemeral key",
    })?;
    let eph_pub = private
        .compute_public_key()
        .map_err(|_| PkiError::Crypto {
            what: "compute an X25519 public key",
        })?
        .as_ref()
        .to_vec();
    let wrap_key = agree(private, minion_eph_pub, transcript)?;
    let wrapped = seal_with(&wrap_key, session.epoch, WRAP_DOMAIN, &[], &session.key)?;
    let personal = personal
        .map(|key| {
            seal_with(
                &wrap_key,
                session.epoch,
                WRAP_DOMAIN,
                PERSONAL_AAD,
                &key.key,
            )
        })
        .transpose()?;
    Ok(SessionGrant {
        epoch: session.epoch,
        eph_pub,
        wrapped,
        personal,
    })
}

fn check_x25519_pub(what: &'static str, bytes: &[u8]) -> Result<(), PkiError> {
    if bytes.len() != X25519_PUB_LEN {
        return Err(PkiError::Malformed {
            what,
            reason: format!("expected {X25519_PUB_LEN} bytes, got {}", bytes.len()),
        });
    }
    Ok(())
}

/// X25519 with `peer`, then HKDF-SHA256 into a ChaCha20-Poly1305 key.
fn agree(
    private: EphemeralPrivateKey,
    peer: &[u8],
    transcript: &[u8],
) -> Result<LessSafeKey, PkiError> {
    let peer = UnparsedPublicKey::new(&X25519, peer);
    agreement::agree_ephemeral(private, &peer, |shared| {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(shared);
        let info = [transcript];
        prk.expand(&info, &CHACHA20_POLY1305)
            .map(|okm| LessSafeKey::new(UnboundKey::from(okm)))
    })
    .map_err(|_| PkiError::Malformed {
        what: "ephemeral public key",
        reason: "X25519 key agreement failed (invalid peer key)".into(),
    })?
    .map_err(|_| PkiError::Crypto {
        what: "derive the session wrapping key",
    })
}

/// The AEAD associated data: domain tag, epoch, caller context.
fn associated_data(domain: &[u8], epoch: u64, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 8 + aad.len());
    out.extend_from_slice(domain);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(aad);
    out
}

fn seal_with(
    key: &LessSafeKey,
    epoch: u64,
    domain: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, PkiError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| PkiError::Crypto {
            what: "generate a nonce",
        })?;
    let mut ciphertext = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(associated_data(domain, epoch, aad)),
        &mut ciphertext,
    )
    .map_err(|_| PkiError::Crypto { what: "seal" })?;
    Ok(Sealed {
        epoch,
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

fn open_with(
    key: &LessSafeKey,
    epoch: u64,
    domain: &[u8],
    aad: &[u8],
    sealed: &Sealed,
    what: &'static str,
) -> Result<Vec<u8>, PkiError> {
    let nonce =
        <[u8; NONCE_LEN]>::try_from(sealed.nonce.as_slice()).map_err(|_| PkiError::Malformed {
            what: "AEAD nonce",
            reason: format!("expected {NONCE_LEN} bytes, got {}", sealed.nonce.len()),
        })?;
    let mut buf = sealed.ciphertext.clone();
    let len = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(associated_data(domain, epoch, aad)),
            &mut buf,
        )
        .map_err(|_| PkiError::Unseal { what, epoch })?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// What a minion's own key is wrapped with, beside the session key.
const PERSONAL_AAD: &[u8] = b"personal";

/// What a secret sealed for one minion binds to: the job and the minion.
fn personal_aad(jid: &str, minion: &str) -> Vec<u8> {
    [jid.as_bytes(), b"\0", minion.as_bytes()].concat()
}

/// Seals a job's secret arguments for one minion under its own key
/// (given at its auth), bound to the job and the minion: no other
/// minion — accepted or not — can open it.
pub fn seal_for_minion(
    key: &SessionKey,
    jid: &str,
    minion: &str,
    plaintext: &[u8],
) -> Result<Sealed, PkiError> {
    key.seal(&personal_aad(jid, minion), plaintext)
}

/// Opens what [`seal_for_minion`] sealed for `minion`.
pub fn open_for_minion(
    key: &SessionKey,
    jid: &str,
    minion: &str,
    sealed: &Sealed,
) -> Result<Vec<u8>, PkiError> {
    key.open(&personal_aad(jid, minion), sealed)
}

/// What a published job binds its sealing to (the topic goes in too).
const PUBLICATION_AAD: &[u8] = b"halite/publication/v1\0";

/// A job envelope as it goes out on PUB (or in a catch-up reply): sealed
/// under the session key, so only minions the master authenticated can
/// read what it asks (function, target, arguments, user, app); anyone
/// may subscribe, but sees an epoch and ciphertext. The signed envelope
/// inside is still verified after opening.
pub fn seal_publication(
    key: &SessionKey,
    topic: &str,
    envelope: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let aad = [PUBLICATION_AAD, topic.as_bytes()].concat();
    let sealed = key.seal(&aad, envelope)?;
    halite_proto::envelope::encode("publication", &sealed).map_err(PkiError::Publication)
}

/// Opens what [`seal_publication`] sealed, with the session key of its
/// epoch (`key_of`); an unknown epoch or a forged or damaged body is an
/// error.
pub fn open_publication(
    key_of: impl Fn(u64) -> Option<SessionKey>,
    topic: &str,
    body: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let sealed: Sealed =
        halite_proto::envelope::decode("publication", body).map_err(PkiError::Publication)?;
    let key = key_of(sealed.epoch).ok_or(PkiError::SessionEpoch {
        expected: 0,
        got: sealed.epoch,
    })?;
    let aad = [PUBLICATION_AAD, topic.as_bytes()].concat();
    key.open(&aad, &sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;

    struct Setup {
        transcript: Vec<u8>,
    }

    fn setup() -> Setup {
        let minion = KeyPair::generate().unwrap().public();
        let master = KeyPair::generate().unwrap().public();
        Setup {
            transcript: transcript("web01", &minion, &master, b"nonce-123"),
        }
    }

    #[test]
    fn grant_accept_round_trip_gives_the_same_key() {
        let s = setup();
        let session = SessionKey::generate(7).unwrap();
        let (eph, eph_pub) = Ephemeral::generate().unwrap();
        assert_eq!(eph_pub.len(), 32);
        let g = grant(&session, None, &eph_pub, &s.transcript).unwrap();
        assert_eq!(g.epoch, 7);
        assert!(!g
            .wrapped
            .ciphertext
            .windows(KEY_LEN)
            .any(|w| w == session.key));
        let (got, personal) = eph.accept(&g, &s.transcript).unwrap();
        assert!(personal.is_none());
        assert_eq!(got.epoch(), 7);
        assert_eq!(got.key, session.key);
        // And it opens what the master sealed.
        let sealed = session.seal(b"jid-1", b"token").unwrap();
        assert_eq!(got.open(b"jid-1", &sealed).unwrap(), b"token");
    }

    #[test]
    fn wrong_transcript_fails() {
        let s = setup();
        let session = SessionKey::generate(1).unwrap();
        let (eph, eph_pub) = Ephemeral::generate().unwrap();
        let g = grant(&session, None, &eph_pub, &s.transcript).unwrap();
        let other = setup().transcript;
        assert!(matches!(
            eph.accept(&g, &other),
            Err(PkiError::Unseal {
                what: "session grant",
                ..
            })
        ));
    }

    #[test]
    fn grant_for_another_ephemeral_fails() {
        let s = setup();
        let session = SessionKey::generate(1).unwrap();
        let (_eph, eph_pub) = Ephemeral::generate().unwrap();
        let (thief, _) = Ephemeral::generate().unwrap();
        let g = grant(&session, None, &eph_pub, &s.transcript).unwrap();
        assert!(thief.accept(&g, &s.transcript).is_err());
    }

    #[test]
    fn tampered_grant_fails() {
        let s = setup();
        let session = SessionKey::generate(2).unwrap();
        let cases: [fn(&mut SessionGrant); 4] = [
            |g| g.wrapped.ciphertext[0] ^= 1,
            |g| g.eph_pub[3] ^= 1,
            |g| g.epoch += 1,
            |g| {
                g.epoch += 1;
                g.wrapped.epoch += 1;
            },
        ];
        for (i, tamper) in cases.iter().enumerate() {
            let (eph, eph_pub) = Ephemeral::generate().unwrap();
            let mut g = grant(&session, None, &eph_pub, &s.transcript).unwrap();
            tamper(&mut g);
            assert!(eph.accept(&g, &s.transcript).is_err(), "case {i}");
        }
    }

    #[test]
    fn bad_ephemeral_keys_are_errors_not_panics() {
        let s = setup();
        let session = SessionKey::generate(1).unwrap();
        for bad in [&[][..], &[1u8; 31], &[1u8; 33]] {
            assert!(matches!(
                grant(&session, None, bad, &s.transcript),
                Err(PkiError::Malformed { .. })
            ));
        }
        // The all-zero point gives an all-zero shared secret: refused.
        assert!(grant(&session, None, &[0u8; 32], &s.transcript).is_err());
    }

    #[test]
    fn seal_open_round_trip() {
        let key = SessionKey::generate(3).unwrap();
        let sealed = key.seal(b"20261122153012123456", b"s3cr3t").unwrap();
        assert_eq!(sealed.epoch, 3);
        assert_eq!(sealed.nonce.len(), 12);
        assert_ne!(&sealed.ciphertext[..6], b"s3cr3t");
        assert_eq!(
            key.open(b"20261122153012123456", &sealed).unwrap(),
            b"s3cr3t"
        );
        // Fresh nonce each time.
        assert_ne!(
            key.seal(b"x", b"y").unwrap().nonce,
            key.seal(b"x", b"y").unwrap().nonce
        );
        assert_eq!(key.open(b"", &key.seal(b"", b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn wrong_aad_fails() {
        let key = SessionKey::generate(3).unwrap();
        let sealed = key.seal(b"jid-1", b"s3cr3t").unwrap();
        assert!(matches!(
            key.open(b"jid-2", &sealed),
            Err(PkiError::Unseal { epoch: 3, .. })
        ));
    }

    #[test]
    fn wrong_epoch_fails() {
        let key = SessionKey::generate(3).unwrap();
        let sealed = key.seal(b"a", b"s3cr3t").unwrap();
        let newer = SessionKey::generate(4).unwrap();
        assert!(matches!(
            newer.open(b"a", &sealed),
            Err(PkiError::SessionEpoch {
                expected: 4,
                got: 3
            })
        ));
        // Relabelling the epoch does not help either: it is authenticated.
        let mut relabelled = sealed.clone();
        relabelled.epoch = 4;
        assert!(key.open(b"a", &relabelled).is_err());
        let same_epoch_other_key = SessionKey::generate(3).unwrap();
        assert!(same_epoch_other_key.open(b"a", &sealed).is_err());
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let key = SessionKey::generate(3).unwrap();
        let sealed = key.seal(b"a", b"s3cr3t").unwrap();
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 0x40;
            assert!(key.open(b"a", &bad).is_err(), "byte {i}");
        }
        let mut bad = sealed.clone();
        bad.nonce[0] ^= 1;
        assert!(key.open(b"a", &bad).is_err());
        let mut bad = sealed.clone();
        bad.nonce.pop();
        assert!(matches!(
            key.open(b"a", &bad),
            Err(PkiError::Malformed { .. })
        ));
        let mut bad = sealed;
        bad.ciphertext.truncate(3);
        assert!(key.open(b"a", &bad).is_err());
    }

    #[test]
    fn transcript_is_unambiguous() {
        let a = KeyPair::generate().unwrap().public();
        let b = KeyPair::generate().unwrap().public();
        assert_ne!(
            transcript("web01", &a, &b, b"n"),
            transcript("web01", &b, &a, b"n")
        );
        assert_ne!(
            transcript("web0", &a, &b, b"1n"),
            transcript("web01", &a, &b, b"n")
        );
        assert_eq!(transcript("x", &a, &b, b"n"), transcript("x", &a, &b, b"n"));
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SessionKey::generate(9).unwrap();
        let shown = format!("{key:?}");
        assert_eq!(shown, "SessionKey { epoch: 9, key: \"***\" }");
        let (eph, _) = Ephemeral::generate().unwrap();
        assert_eq!(format!("{eph:?}"), "Ephemeral(***)");
    }

    #[test]
    fn a_publication_opens_with_its_epochs_key_and_topic_only() {
        let key = SessionKey::generate(7).unwrap();
        let body = seal_publication(&key, "job", b"signed job envelope").unwrap();
        assert!(!body
            .windows(b"signed job".len())
            .any(|w| w == b"signed job"));
        let opened = open_publication(|e| (e == 7).then(|| key.clone()), "job", &body).unwrap();
        assert_eq!(opened, b"signed job envelope");
        assert!(open_publication(|e| (e == 7).then(|| key.clone()), "beacon", &body).is_err());
        assert!(open_publication(|_| None, "job", &body).is_err());
        let other = SessionKey::generate(7).unwrap();
        assert!(open_publication(|_| Some(other.clone()), "job", &body).is_err());
        assert!(open_publication(|_| Some(key.clone()), "job", b"garbage").is_err());
    }

    #[test]
    fn a_minions_own_key_opens_only_its_own_secrets() {
        let s = setup();
        let session = SessionKey::generate(7).unwrap();
        let (mine, theirs) = (
            SessionKey::generate(7).unwrap(),
            SessionKey::generate(7).unwrap(),
        );
        let (eph, eph_pub) = Ephemeral::generate().unwrap();
        let g = grant(&session, Some(&mine), &eph_pub, &s.transcript).unwrap();
        let (shared, personal) = eph.accept(&g, &s.transcript).unwrap();
        let personal = personal.expect("a personal key");
        assert_eq!(shared.key, session.key);
        assert_eq!(personal.key, mine.key);
        let for_me = seal_for_minion(&mine, "jid-1", "web01", b"token").unwrap();
        let for_them = seal_for_minion(&theirs, "jid-1", "web02", b"other").unwrap();
        assert_eq!(
            open_for_minion(&personal, "jid-1", "web01", &for_me).unwrap(),
            b"token"
        );
        assert!(open_for_minion(&personal, "jid-1", "web02", &for_them).is_err());
        assert!(open_for_minion(&shared, "jid-1", "web01", &for_me).is_err());
        assert!(open_for_minion(&personal, "jid-2", "web01", &for_me).is_err());
    }
}
