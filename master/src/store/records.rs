//! Session tokens (by hash), the audit log and deploy records.

use super::*;

impl Store {
    /// Stores a session token (by its hash).
    pub fn put_token(&self, token_hash: &[u8], record: &TokenRecord) -> Result<(), StoreError> {
        self.tokens
            .insert(token_hash, to_bytes("token", record)?)
            .map_err(failed("write token"))?;
        self.flush()
    }

    /// Removes a session token (logout); true if it was there.
    pub fn remove_token(&self, token_hash: &[u8]) -> Result<bool, StoreError> {
        let removed = self
            .tokens
            .remove(token_hash)
            .map_err(failed("remove token"))?;
        Ok(removed)
    }

    /// The token with this hash, if stored (expired or not).
    pub fn token(&self, token_hash: &[u8]) -> Result<Option<TokenRecord>, StoreError> {
        match self.tokens.get(token_hash).map_err(failed("read token"))? {
            Some(bytes) => Ok(Some(from_bytes("token", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Removes tokens that expired before `now_ms`.
    pub fn prune_tokens(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for item in self.tokens.iter() {
            let (key, bytes) = item.map_err(failed("scan tokens"))?;
            let record: TokenRecord = from_bytes("token", &bytes)?;
            if record.expires_at <= now_ms {
                expired.push(key);
            }
        }
        for key in &expired {
            self.tokens.remove(key).map_err(failed("prune tokens"))?;
        }
        Ok(expired.len())
    }

    /// Appends an audit record (durably: an audit log that loses entries
    /// on a crash is not one).
    pub fn put_audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let mut key = record.at.to_be_bytes().to_vec();
        key.extend_from_slice(
            &self
                .engine
                .generate_id()
                .map_err(failed("audit id"))?
                .to_be_bytes(),
        );
        self.audit
            .insert(key, to_bytes("audit", record)?)
            .map_err(failed("write audit"))?;
        self.flush()
    }

    /// Audit records in `[from, to)`, newest first, at most `limit`.
    pub fn audit(&self, from: u64, to: u64, limit: usize) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit
            .range(from.to_be_bytes().to_vec()..to.to_be_bytes().to_vec())
            .rev()
            .take(limit)
            .map(|item| decode_item("scan audit", "audit", item))
            .collect()
    }

    /// Every deploy record whose time is in `[from, to)`, all apps.
    pub fn deploys_between(&self, from: u64, to: u64) -> Result<Vec<DeployRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.deploys.iter() {
            let record: DeployRecord = decode_item("scan deploys", "deploy", item)?;
            if record.at >= from && record.at < to {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Records a deploy or rollback (key: app, time, minion, jid, so one
    /// app's history is one ordered range and a re-sent return overwrites
    /// its own record). Not durable until [`Store::flush`].
    pub fn put_deploy(&self, record: &DeployRecord) -> Result<(), StoreError> {
        let mut key = app_prefix(&record.app);
        key.extend_from_slice(&record.at.to_be_bytes());
        key.extend_from_slice(record.minion.as_bytes());
        key.push(0);
        key.extend_from_slice(record.jid.as_str().as_bytes());
        self.deploys
            .insert(key, to_bytes("deploy", record)?)
            .map_err(failed("write deploy"))?;
        Ok(())
    }

    /// An app's deploys and rollbacks, newest first, at most `limit`.
    pub fn deploys(&self, app: &str, limit: usize) -> Result<Vec<DeployRecord>, StoreError> {
        self.deploys
            .scan_prefix(app_prefix(app))
            .rev()
            .take(limit)
            .map(|item| decode_item("scan deploys", "deploy", item))
            .collect()
    }
}
