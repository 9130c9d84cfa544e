//! Ed25519 identity keys: generation, key files, fingerprints, signing and
//! verification of envelopes.
//!
//! A master and every minion own one [`KeyPair`]; everything they send is
//! signed with it, and a receiver acts on nothing before
//! [`verify_envelope`] succeeded with a key it already trusts.
//!
//! Files: the private key is PKCS#8 in PEM (`-----BEGIN PRIVATE KEY-----`,
//! what `openssl genpkey -algorithm ED25519` writes, mode 0600); the public
//! key is the 32 raw key bytes under `-----BEGIN HALITE ED25519 PUBLIC
//! KEY-----`. Both are written atomically (temp file, fsync, rename).

use std::fmt;
use std::path::Path;

use halite_proto::{ident, Envelope, Message};
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};

use crate::fsio;
use crate::pem;
use crate::PkiError;

/// Length of an Ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;

/// An Ed25519 key pair: the identity of a master or a minion.
///
/// Holds the ring key and the PKCS#8 document it came from (so it can be
/// written to disk). Its `Debug` shows only the public fingerprint, so a
/// stray `{:?}` in a log line never leaks the secret.
pub struct KeyPair {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl KeyPair {
    /// Generates a fresh key pair from the system's secure random source.
    pub fn generate() -> Result<KeyPair, PkiError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| PkiError::Crypto {
            what: "generate an Ed25519 key",
        })?;
        let pkcs8 = doc.as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| PkiError::Crypto {
            what: "parse a freshly generated Ed25519 key",
        })?;
        Ok(KeyPair { pair, pkcs8 })
    }

    /// Loads `<dir>/<stem>.key` (and checks `<stem>.pub` matches if present,
    /// rewriting it if missing), or generates a new pair and writes both
    /// files (creating `dir` if needed, 0700; the private file is 0600 on
    /// unix and written to a temp file then renamed). Returns
    /// `(pair, created)`, so a daemon can log "generated a new key, its
    /// fingerprint is ..." on first start.
    ///
    /// `stem` must be a valid id (it becomes a file name). On unix a private
    /// key file readable by group or others is refused, as ssh does: a key
    /// others could read is not an identity.
    pub fn load_or_generate(dir: &Path, stem: &str) -> Result<(KeyPair, bool), PkiError> {
        ident::validate_id(stem).map_err(|reason| PkiError::InvalidId {
            id: stem.to_owned(),
            reason,
        })?;
        let key_path = dir.join(format!("{stem}.key"));
        let pub_path = dir.join(format!("{stem}.pub"));
        if fsio::exists(&key_path)? {
            let pair = KeyPair::read_private(&key_path)?;
            if fsio::exists(&pub_path)? {
                if PublicKey::read_file(&pub_path)? != pair.public() {
                    return Err(PkiError::KeyMismatch { key_path, pub_path });
                }
            } else {
                pair.public().write_file(&pub_path)?;
            }
            Ok((pair, false))
        } else {
            fsio::create_private_dir(dir)?;
            let pair = KeyPair::generate()?;
            let text = pem::encode(pem::PRIVATE_LABEL, &pair.pkcs8);
            fsio::write_atomic(&key_path, text.as_bytes(), true)?;
            pair.public().write_file(&pub_path)?;
            Ok((pair, true))
        }
    }

    /// Reads a PKCS#8 PEM private key file (v1 or v2 PKCS#8).
    fn read_private(path: &Path) -> Result<KeyPair, PkiError> {
        check_private_mode(path)?;
        let text = fsio::read_key_text(path)?;
        let bad = |reason: String| PkiError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let pkcs8 = pem::decode(pem::PRIVATE_LABEL, &text).map_err(bad)?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
            .map_err(|e| bad(format!("not an Ed25519 PKCS#8 private key ({e})")))?;
        Ok(KeyPair { pair, pkcs8 })
    }

    /// The public half, to publish, pin or compare.
    pub fn public(&self) -> PublicKey {
        let mut bytes = [0u8; PUBLIC_KEY_LEN];
        // ring's Ed25519 public keys are always 32 bytes.
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    /// Signs raw bytes. Prefer [`KeyPair::sign_message`], whose signature
    /// covers a domain tag, the kind and the sender too.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// Encodes `message` into an [`Envelope`] from `sender` and signs it
    /// (`Envelope::unsigned`, then a signature over `env.signed_bytes()`):
    /// the only way halite puts a message on the wire.
    pub fn sign_message<M: Message>(
        &self,
        sender: &str,
        message: &M,
    ) -> Result<Envelope, PkiError> {
        let mut env = Envelope::unsigned(sender, message).map_err(|reason| PkiError::Encode {
            sender: shorten(sender),
            reason,
        })?;
        env.sig = self.sign(&env.signed_bytes());
        Ok(env)
    }

    /// Signs what this master vouches for about a job it publishes
    /// ([`halite_proto::message::JobSummary`]), for `Job::summary_signature`.
    pub fn sign_job_summary(&self, summary: &halite_proto::message::JobSummary) -> Vec<u8> {
        self.sign(&summary.signed_bytes())
    }
}

impl Drop for KeyPair {
    fn drop(&mut self) {
        // Best effort: ring keeps its own copy of the seed, which we cannot
        // reach, but our copy of the document need not outlive us.
        self.pkcs8.fill(0);
        std::hint::black_box(&self.pkcs8);
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public().fingerprint())
            .field("secret", &"***")
            .finish()
    }
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(fsio::io_err("inspect", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyFile {
            path: path.to_path_buf(),
            reason: format!(
                "mode {:o} lets other users read the private key; chmod 600 it",
                mode & 0o777
            ),
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_path: &Path) -> Result<(), PkiError> {
    Ok(())
}

/// An Ed25519 public key: what a master trusts a minion by (and a minion
/// pins its master by). Its `Debug` prints the fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; PUBLIC_KEY_LEN]);

impl PublicKey {
    /// Takes key bytes from the wire (an `Auth` or `AuthReply`); exactly 32
    /// bytes, anything else is refused.
    pub fn from_bytes(bytes: &[u8]) -> Result<PublicKey, PkiError> {
        <[u8; PUBLIC_KEY_LEN]>::try_from(bytes)
            .map(PublicKey)
            .map_err(|_| PkiError::KeyLength { len: bytes.len() })
    }

    /// The raw key bytes, e.g. to put into a message.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0
    }

    /// The key as its file holds it (`-----BEGIN HALITE ED25519 PUBLIC
    /// KEY-----`).
    pub fn to_pem(&self) -> String {
        pem::encode(pem::PUBLIC_LABEL, &self.0)
    }

    /// SHA-256 of the 32 key bytes as lower-case hex pairs joined by `:`
    /// (like Salt's `finger`), for operators to compare keys out of band.
    pub fn fingerprint(&self) -> String {
        let hash = digest::digest(&digest::SHA256, &self.0);
        let pairs: Vec<String> = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        pairs.join(":")
    }

    /// Checks an Ed25519 signature over `msg` made by this key.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<(), PkiError> {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.0)
            .verify(msg, sig)
            .map_err(|_| PkiError::BadSignature {
                signer: format!("key {}", self.fingerprint()),
            })
    }

    /// Reads a public key file (`-----BEGIN HALITE ED25519 PUBLIC KEY-----`);
    /// a malformed file is an error naming the path.
    pub fn read_file(path: &Path) -> Result<PublicKey, PkiError> {
        let text = fsio::read_key_text(path)?;
        let bad = |reason: String| PkiError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = pem::decode(pem::PUBLIC_LABEL, &text).map_err(bad)?;
        PublicKey::from_bytes(&bytes).map_err(|_| {
            bad(format!(
                "expected {PUBLIC_KEY_LEN} key bytes, found {}",
                bytes.len()
            ))
        })
    }

    /// Writes this key as a public key file, atomically (temp file +
    /// rename), so a concurrent reader never sees half a key.
    pub fn write_file(&self, path: &Path) -> Result<(), PkiError> {
        let text = self.to_pem();
        fsio::write_atomic(path, text.as_bytes(), false)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// Verifies `env.sig` over `env.signed_bytes()` with `key`: the check every
/// receiver makes before opening an envelope's payload.
pub fn verify_envelope(env: &Envelope, key: &PublicKey) -> Result<(), PkiError> {
    key.verify(&env.signed_bytes(), &env.sig)
        .map_err(|_| PkiError::BadSignature {
            signer: format!("{:?} envelope from {:?}", env.kind, shorten(&env.sender)),
        })
}

/// Verifies that `key` signed `job`'s summary: how a master checks a job
/// another master published before recording it from a minion's return.
pub fn verify_vouched_job(
    job: &halite_proto::message::VouchedJob,
    key: &PublicKey,
) -> Result<(), PkiError> {
    key.verify(&job.summary.signed_bytes(), &job.signature)
        .map_err(|_| PkiError::BadSignature {
            signer: format!(
                "summary of job {} from {:?}",
                job.summary.jid,
                shorten(&job.summary.master)
            ),
        })
}

/// Normalizes a user-typed fingerprint (any case, with or without `:`
/// separators, surrounding blanks ignored) for comparison with
/// [`PublicKey::fingerprint`]; `None` if it is not 32 hex-encoded bytes.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let hex: String = s.trim().chars().filter(|&c| c != ':').collect();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..32).map(|i| &hex[2 * i..2 * i + 2]).collect();
    Some(pairs.join(":"))
}

/// Truncates a peer-supplied string for an error message.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_proto::message::Heartbeat;
    use std::path::PathBuf;

    /// `<dir>/<stem>.key` and `<dir>/<stem>.pub`.
    fn key_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{stem}.key")),
            dir.join(format!("{stem}.pub")),
        )
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            id: "web01".into(),
            nonce: vec![1, 2, 3],
            at: 1_700_000_000_000,
            version: "0.1.0".into(),
            session_epoch: 4,
            running: vec![],
            rtt_ms: None,
        }
    }

    #[test]
    fn sign_verify_round_trip() {
        let pair = KeyPair::generate().unwrap();
        let sig = pair.sign(b"hello");
        pair.public().verify(b"hello", &sig).unwrap();
        assert!(pair.public().verify(b"hellO", &sig).is_err());
        let env = pair.sign_message("web01", &heartbeat()).unwrap();
        verify_envelope(&env, &pair.public()).unwrap();
        assert_eq!(env.open::<Heartbeat>().unwrap(), heartbeat());
    }

    #[test]
    fn any_flipped_bit_fails_verification() {
        let pair = KeyPair::generate().unwrap();
        let env = pair.sign_message("web01", &heartbeat()).unwrap();
        let key = pair.public();

        for i in 0..env.payload.len() {
            let mut bad = env.clone();
            bad.payload[i] ^= 0x01;
            assert!(verify_envelope(&bad, &key).is_err(), "payload byte {i}");
        }
        let mut bad = env.clone();
        bad.sender = "web02".into();
        assert!(verify_envelope(&bad, &key).is_err());
        let mut bad = env.clone();
        bad.kind = halite_proto::Kind::Return;
        assert!(verify_envelope(&bad, &key).is_err());
        let mut bad = env.clone();
        bad.v ^= 0x80;
        assert!(verify_envelope(&bad, &key).is_err());
        let mut bad = env.clone();
        bad.sig[5] ^= 0x10;
        assert!(verify_envelope(&bad, &key).is_err());
        let mut bad = env.clone();
        bad.sig.clear();
        assert!(verify_envelope(&bad, &key).is_err());
    }

    #[test]
    fn another_key_fails_and_error_names_sender() {
        let pair = KeyPair::generate().unwrap();
        let other = KeyPair::generate().unwrap();
        let env = other.sign_message("web01", &heartbeat()).unwrap();
        let err = verify_envelope(&env, &pair.public()).unwrap_err();
        assert!(matches!(err, PkiError::BadSignature { .. }));
        assert!(err.to_string().contains("web01"), "{err}");
    }

    #[test]
    fn fingerprint_format_and_normalization() {
        let key = PublicKey::from_bytes(&[0u8; 32]).unwrap();
        let fp = key.fingerprint();
        // SHA-256 of 32 zero bytes.
        assert_eq!(
            fp.replace(':', ""),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert_eq!(normalize_fingerprint(&fp).as_deref(), Some(fp.as_str()));
        assert_eq!(
            normalize_fingerprint(&format!("  {}\n", fp.replace(':', "").to_uppercase()))
                .as_deref(),
            Some(fp.as_str())
        );
        assert_eq!(normalize_fingerprint(&fp[3..]), None);
        assert_eq!(normalize_fingerprint(&fp.replace("66", "zz")), None);
        assert_eq!(normalize_fingerprint(""), None);
        assert_eq!(format!("{key:?}"), format!("PublicKey({fp})"));
    }

    #[test]
    fn public_key_length_is_checked() {
        assert!(matches!(
            PublicKey::from_bytes(&[1; 31]),
            Err(PkiError::KeyLength { len: 31 })
        ));
        assert!(PublicKey::from_bytes(&[1; 33]).is_err());
        let key = PublicKey::from_bytes(&[7; 32]).unwrap();
        assert_eq!(key.as_bytes(), &[7; 32]);
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let pair = KeyPair::generate().unwrap();
        let shown = format!("{pair:?}");
        assert!(shown.contains(&pair.public().fingerprint()));
        let seed_hex: String = pair.pkcs8[16..48]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&seed_hex));
        assert!(!shown.contains("pkcs8"));
    }

    #[test]
    fn key_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("pki/master");
        let (pair, created) = KeyPair::load_or_generate(&keys, "master").unwrap();
        assert!(created);
        let (key_path, pub_path) = key_paths(&keys, "master");
        assert!(std::fs::read_to_string(&key_path)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(std::fs::read_to_string(&pub_path)
            .unwrap()
            .starts_with("-----BEGIN HALITE ED25519 PUBLIC KEY-----\n"));

        let (again, created) = KeyPair::load_or_generate(&keys, "master").unwrap();
        assert!(!created);
        assert_eq!(again.public(), pair.public());
        // The reloaded key signs what the original key verifies.
        pair.public().verify(b"x", &again.sign(b"x")).unwrap();
        assert_eq!(PublicKey::read_file(&pub_path).unwrap(), pair.public());

        // A missing .pub is rewritten.
        std::fs::remove_file(&pub_path).unwrap();
        KeyPair::load_or_generate(&keys, "master").unwrap();
        assert_eq!(PublicKey::read_file(&pub_path).unwrap(), pair.public());

        // No temp files are left behind.
        let names: Vec<_> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn private_key_is_0600_and_loose_modes_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        KeyPair::load_or_generate(dir.path(), "minion").unwrap();
        let (key_path, _) = key_paths(dir.path(), "minion");
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(err.to_string().contains("minion.key"), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_key_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        KeyPair::load_or_generate(dir.path(), "minion").unwrap();
        let (key_path, pub_path) = key_paths(dir.path(), "minion");

        // Valid PEM, but not a PKCS#8 key.
        let text = pem::encode(pem::PRIVATE_LABEL, b"definitely not pkcs8");
        fsio::write_atomic(&key_path, text.as_bytes(), true).unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(
            matches!(&err, PkiError::KeyFile { path, .. } if path == &key_path),
            "{err}"
        );
        assert!(err.to_string().contains(&key_path.display().to_string()));

        // Not PEM at all.
        fsio::write_atomic(&key_path, b"garbage\n", true).unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(
            matches!(&err, PkiError::KeyFile { path, .. } if path == &key_path),
            "{err}"
        );

        // A public key file where the private one should be.
        let pub_text = std::fs::read(&pub_path).unwrap();
        fsio::write_atomic(&key_path, &pub_text, true).unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(
            err.to_string()
                .contains("expected `-----BEGIN PRIVATE KEY-----`"),
            "{err}"
        );
    }

    #[test]
    fn corrupt_pub_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        KeyPair::load_or_generate(dir.path(), "minion").unwrap();
        let (_, pub_path) = key_paths(dir.path(), "minion");

        std::fs::write(
            &pub_path,
            "-----BEGIN HALITE ED25519 PUBLIC KEY-----\nAAAA\n",
        )
        .unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(
            matches!(&err, PkiError::KeyFile { path, .. } if path == &pub_path),
            "{err}"
        );
        assert!(err.to_string().contains("missing"), "{err}");

        // Well-formed, wrong length.
        let short = pem::encode(pem::PUBLIC_LABEL, &[1; 16]);
        std::fs::write(&pub_path, short).unwrap();
        let err = PublicKey::read_file(&pub_path).unwrap_err();
        assert!(err.to_string().contains("found 16"), "{err}");
        assert!(
            err.to_string().contains(&pub_path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn mismatched_pub_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        KeyPair::load_or_generate(dir.path(), "minion").unwrap();
        let (key_path, pub_path) = key_paths(dir.path(), "minion");
        KeyPair::generate()
            .unwrap()
            .public()
            .write_file(&pub_path)
            .unwrap();
        let err = KeyPair::load_or_generate(dir.path(), "minion").unwrap_err();
        assert!(
            matches!(&err, PkiError::KeyMismatch { key_path: k, pub_path: p } if k == &key_path && p == &pub_path),
            "{err}"
        );
    }

    #[test]
    fn openssl_style_v1_pkcs8_is_accepted() {
        // PKCS#8 v1 Ed25519 key (RFC 8410 section 10.3), as openssl writes it.
        let text = "-----BEGIN PRIVATE KEY-----\n\
                    MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                    -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let (key_path, _) = key_paths(dir.path(), "master");
        fsio::write_atomic(&key_path, text.as_bytes(), true).unwrap();
        let (pair, created) = KeyPair::load_or_generate(dir.path(), "master").unwrap();
        assert!(!created);
        pair.public().verify(b"m", &pair.sign(b"m")).unwrap();
    }

    #[test]
    fn stem_must_be_a_valid_id() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../evil", "a/b", ".hidden", ""] {
            assert!(matches!(
                KeyPair::load_or_generate(dir.path(), bad),
                Err(PkiError::InvalidId { .. })
            ));
        }
    }
}
