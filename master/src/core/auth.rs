//! Who is asking: the local CLI token, logins and their tokens, and the
//! special grants (`@wheel`, `@jobs`).

use halite_model::{LoginToken, TokenRecord};
use halite_proto::time::now_ms;

use super::{printable, Core, CoreError};

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
        (record.expires_at > now_ms()).then_some(record.user)
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
            },
        )?;
        tracing::info!(user, "login");
        Ok(LoginToken {
            token,
            user: user.to_owned(),
            issued_at,
            expires_at,
            perms: self.config.acl.written(user),
        })
    }

    /// Refuses unless `user` has the special grant.
    pub fn require(&self, user: &str, special: crate::acl::Special) -> Result<(), CoreError> {
        self.config
            .acl
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
