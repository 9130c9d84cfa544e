//! Returns kept on disk until the master acknowledges them.
//!
//! Each return is written (temp file, fsync, rename) before it is first
//! sent and removed only when a signed `ReturnAck` for it arrives, so a
//! master or minion restart in between loses nothing: unacknowledged
//! returns are re-sent after every (re)connect.

use std::io::Write;
use std::path::{Path, PathBuf};

use halite_proto::Jid;

/// The spool directory.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creates) the spool in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, jid: &Jid) -> PathBuf {
        // A Jid is 20 digits: safe as a file name.
        self.dir.join(format!("{jid}.ret"))
    }

    /// Durably stores a signed return envelope.
    pub fn put(&self, jid: &Jid, envelope: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{jid}.tmp"));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(envelope)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, self.path(jid))?;
        #[cfg(unix)]
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Is a return for `jid` waiting here? (A job killed between
    /// spooling its return and dropping its running marker finished.)
    pub fn holds(&self, jid: &Jid) -> bool {
        self.path(jid).exists()
    }

    /// Forgets an acknowledged return.
    pub fn remove(&self, jid: &Jid) {
        match std::fs::remove_file(self.path(jid)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(%jid, error = %e, "cannot remove spooled return"),
        }
    }

    /// Every spooled return, oldest first. Unreadable or foreign files are
    /// skipped with a log line.
    pub fn all(&self) -> Vec<(Jid, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut items: Vec<(Jid, Vec<u8>)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let jid = Jid::parse(path.file_name()?.to_str()?.strip_suffix(".ret")?).ok()?;
                match std::fs::read(&path) {
                    Ok(bytes) => Some((jid, bytes)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read spooled return");
                        None
                    }
                }
            })
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_all_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = Jid::from_unix_us(2_000_000);
        let b = Jid::from_unix_us(1_000_000);
        spool.put(&a, b"first").unwrap();
        spool.put(&b, b"second").unwrap();
        std::fs::write(dir.path().join("junk.ret"), b"x").unwrap();
        let all = spool.all();
        assert_eq!(
            all,
            vec![
                (b.clone(), b"second".to_vec()),
                (a.clone(), b"first".to_vec())
            ]
        );
        assert!(spool.holds(&b));
        spool.remove(&b);
        spool.remove(&b);
        assert!(!spool.holds(&b));
        assert_eq!(
            Spool::open(dir.path()).unwrap().all(),
            vec![(a, b"first".to_vec())]
        );
    }
}
