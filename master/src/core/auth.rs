//! Who is asking: the local CLI token, logins and their tokens (which die
//! with a new password, the user's deletion, `users revoke` or logout),
//! and the special grants (`@wheel`, `@jobs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use halite_model::{LoginToken, TokenRecord};
use halite_pki::users::{Session, Users, UsersError};
use halite_proto::time::now_ms;

use super::{printable, Core, CoreError};

/// The users file's session checks (credential, revocation), read again
/// only when the file changes: `master-cli users passwd/delete/revoke`
/// edit it on the master host, and the next request sees it.
pub(super) struct UserSessions {
    file: PathBuf,
    cached: Mutex<Option<(FileStamp, Sessions)>>,
}

/// The `[acl]` grants, read again from the master's config file when it
/// changes (like the users file): editing a grant takes effect on the next
/// request, no restart. A config that no longer reads keeps the grants as
/// they were (and says why once per change).
pub(super) struct LiveGrants {
    file: PathBuf,
    cached: Mutex<(FileStamp, LivePolicy)>,
}

/// What is re-read from the config file when it changes.
#[derive(Clone)]
struct LivePolicy {
    acl: Arc<crate::acl::Acl>,
    freezes: Arc<Vec<crate::freeze::FreezeWindow>>,
}

impl LiveGrants {
    pub(super) fn new(
        file: PathBuf,
        acl: crate::acl::Acl,
        freezes: Vec<crate::freeze::FreezeWindow>,
    ) -> LiveGrants {
        let stamp = stamp_of(&file);
        LiveGrants {
            file,
            cached: Mutex::new((
                stamp,
                LivePolicy {
                    acl: Arc::new(acl),
                    freezes: Arc::new(freezes),
                },
            )),
        }
    }

    /// The grants as the config file says now.
    pub(super) fn current(&self) -> Arc<crate::acl::Acl> {
        self.policy().acl
    }

    /// The freeze windows as the config file says now.
    pub(super) fn freezes(&self) -> Arc<Vec<crate::freeze::FreezeWindow>> {
        self.policy().freezes
    }

    fn policy(&self) -> LivePolicy {
        let stamp = stamp_of(&self.file);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != stamp {
            cached.0 = stamp;
            match crate::Config::load(&self.file) {
                Ok(config) => {
                    tracing::info!(file = %self.file.display(), "the master's config changed: [acl], [groups] and [[freeze]] re-read");
                    cached.1 = LivePolicy {
                        acl: Arc::new(config.acl),
                        freezes: Arc::new(config.freezes),
                    };
                }
                Err(e) => {
                    tracing::error!(error = %e, "the master's config changed but does not read; grants and freeze windows stay as they were");
                }
            }
        }
        cached.1.clone()
    }
}

/// A file's modification time, length and inode (`(None, 0, 0)` when
/// missing).
pub(super) fn stamp_of(file: &std::path::Path) -> FileStamp {
    std::fs::metadata(file)
        .map(|m| (m.modified().ok(), m.len(), inode(&m)))
        .unwrap_or((None, 0, 0))
}

/// The inode: a file replaced by rename has a new one, which tells two
/// versions apart even when written within one tick of the coarse clock
/// that stamps modification times, with the same length.
#[cfg(unix)]
fn inode(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Every user's session check, by name.
type Sessions = Arc<BTreeMap<String, Session>>;

/// What tells a changed users or config file: modification time, length
/// and inode (the users file is replaced whole, by rename).
pub(super) type FileStamp = (Option<SystemTime>, u64, u64);

impl UserSessions {
    pub(super) fn new(file: PathBuf) -> UserSessions {
        UserSessions {
            file,
            cached: Mutex::new(None),
        }
    }

    fn current(&self) -> Result<Sessions, UsersError> {
        let stamp = stamp_of(&self.file);
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, sessions)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(Arc::clone(sessions));
            }
        }
        let sessions = Arc::new(Users::new(self.file.clone()).sessions()?);
        *cached = Some((stamp, Arc::clone(&sessions)));
        Ok(sessions)
    }

    /// Does `record` still stand: its user exists, with the password it
    /// was issued under, and was not revoked since?
    fn stands(&self, record: &TokenRecord) -> bool {
        let sessions = match self.current() {
            Ok(sessions) => sessions,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the users file; refusing tokens");
                return false;
            }
        };
        let Some(session) = sessions.get(&record.user) else {
            return false;
        };
        let same_password = record.credential.is_empty() || record.credential == session.credential;
        let revoked = session
            .tokens_after
            .is_some_and(|after| record.issued_at <= after);
        same_password && !revoked
    }

    fn credential(&self, user: &str) -> Result<String, UsersError> {
        Ok(self
            .current()?
            .get(user)
            .map(|s| s.credential.clone())
            .unwrap_or_default())
    }
}

impl Core {
    /// The user a token authenticates: the local CLI token (compared in
    /// constant time) is `root`; others are looked up by their hash
    /// among the unexpired login tokens.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        if halite_pki::Secret::new(token) == self.cli_token {
            return Some(halite_pki::users::ROOT.to_owned());
        }
        let record = match self.store.token(&token_hash(token)) {
            Ok(record) => record?,
            Err(e) => {
                tracing::error!(error = %e, "cannot read tokens");
                return None;
            }
        };
        (record.expires_at > now_ms() && self.sessions.stands(&record)).then_some(record.user)
    }

    /// Ends a login token (`POST /v1/logout`, salt-api's `/logout`).
    pub fn logout(&self, token: &str) -> Result<(), CoreError> {
        self.store.remove_token(&token_hash(token))?;
        Ok(())
    }

    /// Checks a user's password (slowly, by design: call it off the async
    /// workers) and issues a token valid for `token_expire`.
    pub fn login(&self, user: &str, password: &str) -> Result<LoginToken, CoreError> {
        if !self.config.users().verify(user, password)? {
            tracing::warn!(user = %printable(user), "failed login");
            return Err(CoreError::BadCredentials(
                "wrong user name or password".into(),
            ));
        }
        let mut bytes = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
        let token = hex::encode(bytes);
        let issued_at = now_ms();
        let expires_at = issued_at + self.config.token_expire.as_millis() as u64;
        self.store.put_token(
            &token_hash(&token),
            &TokenRecord {
                user: user.to_owned(),
                issued_at,
                expires_at,
                credential: self.sessions.credential(user)?,
            },
        )?;
        tracing::info!(user, "login");
        Ok(LoginToken {
            token,
            user: user.to_owned(),
            issued_at,
            expires_at,
            perms: self.grants.current().written(user),
        })
    }

    /// Refuses unless `user` has the special grant.
    pub fn require(&self, user: &str, special: crate::acl::Special) -> Result<(), CoreError> {
        self.grants
            .current()
            .check_special(user, special)
            .map_err(|denied| CoreError::Forbidden(denied.0))
    }
}

/// SHA-256 of a token: what the store keeps instead of the token.
fn token_hash(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_by_rename_has_a_new_stamp_even_with_the_same_time_and_length() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("users.toml");
        let replace = |text: &str| {
            let aside = dir.path().join("users.toml.new");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, &file).unwrap();
        };
        replace("[users.alice]\nhash = \"one\"\n");
        let first = stamp_of(&file);
        let modified = std::fs::metadata(&file).unwrap().modified().unwrap();
        replace("[users.alice]\nhash = \"two\"\n");
        // As if written within one tick of the clock stamping files.
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let second = stamp_of(&file);
        assert_eq!((first.0, first.1), (second.0, second.1));
        assert_ne!(first, second);
        assert_eq!(stamp_of(&dir.path().join("missing")), (None, 0, 0));
    }
}
