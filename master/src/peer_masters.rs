//! The other masters whose jobs this one records (hot and failover
//! multi-master): their public keys, one file each in `<pki_dir>/peers/`.
//!
//! A minion that serves several masters sends each return to all of them.
//! For a job another master published, this master takes nothing from
//! the minion but its own result: what the job was (target, function,
//! arguments, user) comes from the publisher's signed summary the minion
//! carries ([`halite_proto::message::VouchedJob`]), checked against that
//! publisher's key here. Masters that share one key pair (Salt's way of
//! running several masters) need no file: the own key verifies.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use halite_pki::PublicKey;
use halite_proto::message::VouchedJob;

/// Where a peer master's key is looked up, and the keys read so far.
pub struct PeerMasters {
    dir: PathBuf,
    own: PublicKey,
    /// Keys read from `dir`, by master id. A key that stops verifying is
    /// read again (it may have been replaced).
    read: RwLock<HashMap<String, PublicKey>>,
}

/// Why another master's job summary was not taken.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The master id cannot name a key file.
    #[error("master id {0:?} is not a valid id")]
    BadId(String),
    /// No key of that master here, and this master's own key does not
    /// verify it: the operator has not trusted that master (yet).
    #[error("master {master:?} is not trusted here: copy its master.pub to {path}")]
    UnknownMaster {
        /// The master the summary claims.
        master: String,
        /// The key file that would be trusted.
        path: PathBuf,
    },
    /// That master's key (and this master's own) does not verify it: forged
    /// or altered.
    #[error("the summary is not signed by master {master:?} (forged or altered)")]
    NotSigned {
        /// The master the summary claims.
        master: String,
    },
    /// The peer key file exists but cannot be read.
    #[error(transparent)]
    KeyFile(#[from] halite_pki::PkiError),
}

impl PeerMasters {
    /// Peer keys under `<pki_dir>/peers`; `own` is this master's key.
    pub fn new(pki_dir: &Path, own: PublicKey) -> PeerMasters {
        PeerMasters {
            dir: pki_dir.join("peers"),
            own,
            read: RwLock::new(HashMap::new()),
        }
    }

    /// The file that holds `master`'s key (whether or not it exists).
    pub fn key_path(&self, master: &str) -> PathBuf {
        self.dir.join(format!("{master}.pub"))
    }

    /// Checks that `job`'s summary is signed by the master it names: its
    /// key in `peers/`, or this master's own (a shared key pair).
    pub fn verify(&self, job: &VouchedJob) -> Result<(), PeerError> {
        let master = &job.summary.master;
        halite_proto::ident::validate_id(master).map_err(|_| PeerError::BadId(master.clone()))?;
        let cached = self
            .read
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(master)
            .copied();
        if let Some(key) = cached {
            if halite_pki::verify_vouched_job(job, &key).is_ok() {
                return Ok(());
            }
        }
        let listed = match self.read_key(master)? {
            Some(key) if halite_pki::verify_vouched_job(job, &key).is_ok() => return Ok(()),
            Some(_) => true,
            None => false,
        };
        if halite_pki::verify_vouched_job(job, &self.own).is_ok() {
            return Ok(());
        }
        Err(match listed {
            true => PeerError::NotSigned {
                master: master.clone(),
            },
            false => PeerError::UnknownMaster {
                master: master.clone(),
                path: self.key_path(master),
            },
        })
    }

    /// Reads (again) `master`'s key file; `None` if there is none.
    fn read_key(&self, master: &str) -> Result<Option<PublicKey>, PeerError> {
        let path = self.key_path(master);
        if !path.is_file() {
            self.read
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(master);
            return Ok(None);
        }
        let key = PublicKey::read_file(&path)?;
        self.read
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(master.to_owned(), key);
        Ok(Some(key))
    }

    /// Ids of the masters with a key file, for the start-up log line.
    pub fn listed(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|name| name.strip_suffix(".pub"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use halite_pki::KeyPair;
    use halite_proto::message::{Job, JobSummary};

    fn vouched(key: &KeyPair, master: &str) -> VouchedJob {
        let summary = JobSummary {
            jid: halite_proto::Jid::from_unix_us(1),
            master: master.into(),
            tgt: "web*".into(),
            tgt_type: Default::default(),
            fun: "test.ping".into(),
            arg: vec![serde_json::json!(1)],
            kwarg: Default::default(),
            user: "ops".into(),
            timeout: 60,
            issued_at: 1,
            expires_at: 60_001,
        };
        VouchedJob {
            signature: key.sign_job_summary(&summary),
            summary,
        }
    }

    #[test]
    fn a_summary_verifies_with_the_peer_key_file_or_a_shared_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let own = KeyPair::generate().unwrap();
        let peer = KeyPair::generate().unwrap();
        let masters = PeerMasters::new(dir.path(), own.public());
        // Unknown master: refused, naming the file that would be trusted.
        let err = masters.verify(&vouched(&peer, "master-a")).unwrap_err();
        assert!(
            matches!(err, PeerError::UnknownMaster { ref path, .. } if path.ends_with("peers/master-a.pub"))
        );
        std::fs::create_dir_all(dir.path().join("peers")).unwrap();
        peer.public()
            .write_file(&masters.key_path("master-a"))
            .unwrap();
        masters.verify(&vouched(&peer, "master-a")).unwrap();
        // A shared key pair needs no file.
        masters.verify(&vouched(&own, "master-c")).unwrap();
        // Any other signer, or a changed summary, is refused.
        let other = KeyPair::generate().unwrap();
        assert!(matches!(
            masters.verify(&vouched(&other, "master-a")),
            Err(PeerError::NotSigned { .. })
        ));
        let mut changed = vouched(&peer, "master-a");
        changed.summary.tgt = "*".into();
        assert!(masters.verify(&changed).is_err());
        assert!(matches!(
            masters.verify(&vouched(&peer, "../a")),
            Err(PeerError::BadId(_))
        ));
        // A replaced key file is read again.
        let rotated = KeyPair::generate().unwrap();
        rotated
            .public()
            .write_file(&masters.key_path("master-a"))
            .unwrap();
        masters.verify(&vouched(&rotated, "master-a")).unwrap();
        assert_eq!(masters.listed(), vec!["master-a".to_owned()]);
    }

    #[test]
    fn a_summary_survives_a_round_trip_through_msgpack() {
        // The minion decodes the job and encodes the summary again: the
        // signed bytes must not change on the way.
        let key = KeyPair::generate().unwrap();
        let mut job = Job {
            jid: halite_proto::Jid::from_unix_us(7),
            tgt: "G@os:Debian".into(),
            tgt_type: halite_proto::TargetType::Compound,
            fun: "git_deploy.deploy".into(),
            arg: vec![
                serde_json::json!(-3),
                serde_json::json!(2.5),
                serde_json::json!(u64::MAX),
            ],
            kwarg: serde_json::json!({"app": "shop", "tag": "v3", "n": 5})
                .as_object()
                .cloned()
                .unwrap(),
            secret: None,
            secrets: Default::default(),
            timeout: 60,
            issued_at: 1,
            expires_at: 2,
            master: "master-a".into(),
            user: "ops".into(),
            modules: Vec::new(),
            summary_signature: Vec::new(),
        };
        job.summary_signature = key.sign_job_summary(&JobSummary::of(&job));
        let envelope = key.sign_message("master-a", &job).unwrap();
        let decoded: Job = halite_proto::Envelope::from_bytes(&envelope.to_bytes())
            .unwrap()
            .open()
            .unwrap();
        let vouched = VouchedJob::of(&decoded).unwrap();
        halite_pki::verify_vouched_job(&vouched, &key.public()).unwrap();
    }
}
