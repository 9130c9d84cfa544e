//! API users: names and salted, deliberately slow password hashes in a
//! TOML file beside the master config (`users_file`).
//!
//! `master-cli users add/passwd/delete` writes the file on the master host;
//! the master reads it again on every login, so a new user or password
//! needs no restart. Hashes are PBKDF2-HMAC-SHA256 with a random 16-byte
//! salt and [`ITERATIONS`] rounds (OWASP's 2023 figure), stored as
//! `pbkdf2-sha256$<iterations>$<salt hex>$<hash hex>` so the cost can be
//! raised later without breaking stored hashes.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// PBKDF2 rounds for new hashes: slow enough that a stolen file is
/// expensive to attack, fast enough (~0.3 s) for a login.
pub const ITERATIONS: u32 = 600_000;

/// The name the local CLI token authenticates as; no file user may take it.
pub const ROOT: &str = "root";

const SCHEME: &str = "pbkdf2-sha256";
const ALGORITHM: ring::pbkdf2::Algorithm = ring::pbkdf2::PBKDF2_HMAC_SHA256;

/// Why the users file could not be read, written or used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file exists but cannot be read or parsed.
    #[error("{file}: {message}")]
    File {
        /// The users file.
        file: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A user name that is not allowed.
    #[error("invalid user name {name:?}: {why}")]
    Name {
        /// The name given.
        name: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// `add` of a user that exists, or `passwd`/`delete` of one that does not.
    #[error("{0}")]
    Exists(String),
    /// An empty password.
    #[error("the password is empty")]
    EmptyPassword,
    /// A password shorter than [`MIN_PASSWORD_CHARS`].
    #[error("the password is too short: use at least {MIN_PASSWORD_CHARS} characters")]
    ShortPassword,
}

/// The shortest password `add` and `passwd` accept.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// What a login token is checked against on every request: the user
/// still exists, their password is the one the token was issued under,
/// and their tokens were not revoked after it was issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// A fingerprint of the user's stored hash (it changes with the
    /// password); tokens carry the one they were issued under.
    pub credential: String,
    /// Tokens issued at or before this time (unix ms) are dead
    /// (`master-cli users revoke`, `users passwd`).
    pub tokens_after: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: BTreeMap<String, UserRecord>,
}

/// One user as the file holds them: what masters sharing a store copy
/// between their users files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// The password hash (`pbkdf2-sha256$…`).
    pub hash: String,
    /// Unix ms; tokens issued at or before it no longer authenticate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_after: Option<u64>,
}

/// The users file at one path.
#[derive(Clone, Debug)]
pub struct Users {
    file: PathBuf,
}

impl Users {
    /// The users file at `file` (it need not exist: then there are no users).
    pub fn new(file: PathBuf) -> Users {
        Users { file }
    }

    /// The file's path, for messages.
    pub fn file(&self) -> &Path {
        &self.file
    }

    fn load(&self) -> Result<UsersFile, UsersError> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UsersFile::default()),
            Err(e) => return Err(self.error(format!("cannot read: {e}"))),
        };
        let parsed: UsersFile = toml::from_str(&text).map_err(|e| self.error(e.to_string()))?;
        for (name, entry) in &parsed.users {
            Hash::parse(&entry.hash)
                .map_err(|why| self.error(format!("key `users.{name}.hash`: {why}")))?;
        }
        Ok(parsed)
    }

    fn error(&self, message: String) -> UsersError {
        UsersError::File {
            file: self.file.clone(),
            message,
        }
    }

    /// Names of every user.
    pub fn names(&self) -> Result<Vec<String>, UsersError> {
        Ok(self.load()?.users.into_keys().collect())
    }

    /// Checks a name and password. `Ok(false)` for an unknown user or a
    /// wrong password (indistinguishable to the caller, and as slow).
    pub fn verify(&self, name: &str, password: &str) -> Result<bool, UsersError> {
        let users = self.load()?;
        match users.users.get(name) {
            Some(entry) => Ok(Hash::parse(&entry.hash)
                .map(|hash| hash.matches(password))
                .unwrap_or(false)),
            None => {
                // Spend the same time as a real check, so timing does not
                // tell which names exist.
                let _ = Hash::new(password);
                Ok(false)
            }
        }
    }

    /// Adds a user; refuses an existing name.
    pub fn add(&self, name: &str, password: &str) -> Result<(), UsersError> {
        self.change(name, |users| {
            if users.contains_key(name) {
                return Err(UsersError::Exists(format!(
                    "user {name:?} exists; use `users passwd`"
                )));
            }
            check_length(password)?;
            users.insert(
                name.to_owned(),
                UserRecord {
                    hash: Hash::new(password)?.to_string(),
                    tokens_after: None,
                },
            );
            Ok(())
        })
    }

    /// Sets an existing user's password.
    pub fn passwd(&self, name: &str, password: &str) -> Result<(), UsersError> {
        self.change(name, |users| {
            let entry = users
                .get_mut(name)
                .ok_or_else(|| UsersError::Exists(format!("no user {name:?}")))?;
            check_length(password)?;
            entry.hash = Hash::new(password)?.to_string();
            entry.tokens_after = Some(halite_proto::time::now_ms());
            Ok(())
        })
    }

    /// Ends every token `name` holds now (they log in again).
    pub fn revoke(&self, name: &str) -> Result<(), UsersError> {
        self.change(name, |users| {
            let entry = users
                .get_mut(name)
                .ok_or_else(|| UsersError::Exists(format!("no user {name:?}")))?;
            entry.tokens_after = Some(halite_proto::time::now_ms());
            Ok(())
        })
    }

    /// Every user's [`Session`] check, by name.
    pub fn sessions(&self) -> Result<BTreeMap<String, Session>, UsersError> {
        Ok(self
            .load()?
            .users
            .into_iter()
            .map(|(name, entry)| {
                let session = Session {
                    credential: credential_of(&entry.hash),
                    tokens_after: entry.tokens_after,
                };
                (name, session)
            })
            .collect())
    }

    /// Every user as the file holds them, by name.
    pub fn records(&self) -> Result<BTreeMap<String, UserRecord>, UsersError> {
        Ok(self.load()?.users)
    }

    /// Makes `name` what another master's users file says (`None`:
    /// deleted). Returns whether the file changed. A hash this version
    /// cannot check is refused, so the file stays readable.
    pub fn mirror(&self, name: &str, record: Option<&UserRecord>) -> Result<bool, UsersError> {
        if let Some(record) = record {
            Hash::parse(&record.hash)
                .map_err(|why| self.error(format!("user {name:?} from another master: {why}")))?;
        }
        if self.load()?.users.get(name) == record {
            return Ok(false);
        }
        self.change(name, |users| {
            match record {
                Some(record) => users.insert(name.to_owned(), record.clone()),
                None => users.remove(name),
            };
            Ok(())
        })?;
        Ok(true)
    }

    /// Removes a user.
    pub fn delete(&self, name: &str) -> Result<(), UsersError> {
        self.change(name, |users| {
            users
                .remove(name)
                .map(|_| ())
                .ok_or_else(|| UsersError::Exists(format!("no user {name:?}")))
        })
    }

    fn change(
        &self,
        name: &str,
        edit: impl FnOnce(&mut BTreeMap<String, UserRecord>) -> Result<(), UsersError>,
    ) -> Result<(), UsersError> {
        validate_name(name)?;
        let mut users = self.load()?;
        edit(&mut users.users)?;
        let text = toml::to_string(&users).map_err(|e| self.error(e.to_string()))?;
        let text = format!(
            "# halite API users, written by `master-cli users`. Hashes are\n# PBKDF2-HMAC-SHA256; edit only with the CLI.\n{text}"
        );
        crate::write_atomic(&self.file, text.as_bytes(), true)
            .map_err(|e| self.error(format!("cannot write: {e}")))
    }
}

/// The fingerprint tokens carry of the hash they were issued under: not
/// the hash itself (the store need not hold what a password check needs).
fn credential_of(hash: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, hash.as_bytes());
    hex::encode(&digest.as_ref()[..16])
}

fn check_length(password: &str) -> Result<(), UsersError> {
    if password.is_empty() {
        return Err(UsersError::EmptyPassword);
    }
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(UsersError::ShortPassword);
    }
    Ok(())
}

/// A user name: like a minion id (letters, digits, `.-_@`), and not `root`.
pub fn validate_name(name: &str) -> Result<(), UsersError> {
    let bad = |why| UsersError::Name {
        name: name.to_owned(),
        why,
    };
    if name == ROOT {
        return Err(bad("`root` is the local CLI's token"));
    }
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
    {
        return Err(bad("use letters, digits and . - _ @"));
    }
    Ok(())
}

/// A parsed password hash.
struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Hash {
    fn new(password: &str) -> Result<Hash, UsersError> {
        if password.is_empty() {
            return Err(UsersError::EmptyPassword);
        }
        let mut salt = vec![0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), salt.as_mut_slice());
        let iterations = NonZeroU32::new(ITERATIONS).unwrap_or(NonZeroU32::MIN);
        let mut hash = vec![0u8; 32];
        ring::pbkdf2::derive(ALGORITHM, iterations, &salt, password.as_bytes(), &mut hash);
        Ok(Hash {
            iterations,
            salt,
            hash,
        })
    }

    fn parse(text: &str) -> Result<Hash, String> {
        let parts: Vec<&str> = text.split('$').collect();
        let [scheme, iterations, salt, hash] = parts.as_slice() else {
            return Err("not a hash written by `master-cli users`".into());
        };
        if *scheme != SCHEME {
            return Err(format!("unknown scheme {scheme:?} (expected {SCHEME})"));
        }
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or("bad iteration count")?;
        let salt = hex::decode(salt).map_err(|_| "bad salt")?;
        let hash = hex::decode(hash).map_err(|_| "bad hash")?;
        if salt.len() < 8 || hash.len() != 32 {
            return Err("salt or hash has the wrong length".into());
        }
        Ok(Hash {
            iterations,
            salt,
            hash,
        })
    }

    /// Constant-time comparison (ring's verify).
    fn matches(&self, password: &str) -> bool {
        ring::pbkdf2::verify(
            ALGORITHM,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{SCHEME}${}${}${}",
            self.iterations,
            hex::encode(&self.salt),
            hex::encode(&self.hash)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_verify_passwd_delete() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::new(dir.path().join("users.toml"));
        assert!(!users.verify("alice", "pw").unwrap(), "no file, no users");
        users.add("alice", "s3cret-pw").unwrap();
        assert!(users.verify("alice", "s3cret-pw").unwrap());
        assert!(!users.verify("alice", "wrong").unwrap());
        assert!(!users.verify("bob", "s3cret-pw").unwrap());
        assert!(matches!(
            users.add("alice", "x"),
            Err(UsersError::Exists(_))
        ));
        let before = users.sessions().unwrap()["alice"].clone();
        users.passwd("alice", "new-pw-123").unwrap();
        assert!(!users.verify("alice", "s3cret-pw").unwrap());
        assert!(users.verify("alice", "new-pw-123").unwrap());
        let after = users.sessions().unwrap()["alice"].clone();
        assert_ne!(
            before.credential, after.credential,
            "a new password, a new credential"
        );
        assert!(after.tokens_after.is_some());
        let text = std::fs::read_to_string(users.file()).unwrap();
        assert!(!text.contains("new-pw-123"), "no clear password in {text}");
        assert!(text.contains("pbkdf2-sha256$600000$"), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(users.file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        users.delete("alice").unwrap();
        assert!(users.names().unwrap().is_empty());
        assert!(users.passwd("alice", "x").is_err());
    }

    #[test]
    fn bad_names_and_passwords_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::new(dir.path().join("users.toml"));
        for name in ["root", "", "a b", "../x"] {
            assert!(
                matches!(users.add(name, "pw"), Err(UsersError::Name { .. })),
                "{name}"
            );
        }
        assert!(matches!(
            users.add("bob", ""),
            Err(UsersError::EmptyPassword)
        ));
        assert!(matches!(
            users.add("bob", "short"),
            Err(UsersError::ShortPassword)
        ));
        users.add("bob", "long-enough").unwrap();
        assert!(matches!(
            users.passwd("bob", "1234567"),
            Err(UsersError::ShortPassword)
        ));
    }

    #[test]
    fn revoke_ends_the_tokens_issued_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let users = Users::new(dir.path().join("users.toml"));
        users.add("carol", "carol-pw-1").unwrap();
        assert_eq!(users.sessions().unwrap()["carol"].tokens_after, None);
        users.revoke("carol").unwrap();
        let session = users.sessions().unwrap()["carol"].clone();
        assert!(session.tokens_after.is_some());
        assert!(matches!(users.revoke("dave"), Err(UsersError::Exists(_))));
    }

    #[test]
    fn a_broken_file_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(&path, "[users.alice]\nhash = \"md5$abc\"\n").unwrap();
        let err = Users::new(path.clone()).verify("alice", "x").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("users.toml") && text.contains("users.alice.hash"),
            "{text}"
        );
        std::fs::write(&path, "[users.alice\n").unwrap();
        let err = Users::new(path).names().unwrap_err();
        assert!(err.to_string().contains("users.toml"), "{err}");
    }
}
