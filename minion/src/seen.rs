//! The replay guard: jids this minion has already started, on disk.
//!
//! A jid is recorded (and fsynced) before its job starts, and kept until
//! its job has expired, after which expiry alone refuses it. So neither
//! a replayed publication nor a restart can run a job twice.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use halite_proto::Jid;

/// Jids already run, with the moment after which they can be forgotten.
pub struct SeenJobs {
    path: PathBuf,
    jids: HashMap<Jid, u64>,
    file: std::fs::File,
}

impl SeenJobs {
    /// Loads the guard from `path`, dropping entries that can no longer
    /// matter (`forget_before` in unix ms), and compacts the file.
    pub fn open(path: &Path, forget_before: u64) -> std::io::Result<SeenJobs> {
        let mut jids = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let mut parts = line.split_whitespace();
                let (Some(jid), Some(until)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let (Ok(jid), Ok(until)) = (Jid::parse(jid), until.parse::<u64>()) else {
                    continue;
                };
                if until >= forget_before {
                    jids.insert(jid, until);
                }
            }
        }
        let tmp = path.with_extension("tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            for (jid, until) in &jids {
                writeln!(file, "{jid} {until}")?;
            }
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(SeenJobs {
            path: path.to_path_buf(),
            jids,
            file,
        })
    }

    /// Records `jid` (kept until `until`, unix ms). Returns false if it
    /// was already there: the job must not run again.
    pub fn insert(&mut self, jid: &Jid, until: u64) -> std::io::Result<bool> {
        if self.jids.contains_key(jid) {
            return Ok(false);
        }
        writeln!(self.file, "{jid} {until}")?;
        self.file.sync_data()?;
        self.jids.insert(jid.clone(), until);
        Ok(true)
    }

    /// Drops entries past `forget_before` from memory (the file is compacted
    /// at the next start).
    pub fn prune(&mut self, forget_before: u64) {
        self.jids.retain(|_, until| *until >= forget_before);
    }

    /// Where the guard lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_restart_and_forgets_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen");
        let old = Jid::from_unix_us(1_000_000);
        let new = Jid::from_unix_us(2_000_000);
        {
            let mut seen = SeenJobs::open(&path, 0).unwrap();
            assert!(seen.insert(&old, 100).unwrap());
            assert!(seen.insert(&new, 900).unwrap());
            assert!(!seen.insert(&new, 900).unwrap());
        }
        let mut seen = SeenJobs::open(&path, 500).unwrap();
        assert!(!seen.insert(&new, 900).unwrap(), "replay after restart");
        assert!(
            seen.insert(&old, 100).unwrap(),
            "expired entries are forgotten"
        );
    }
}
