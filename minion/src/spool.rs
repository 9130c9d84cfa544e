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

    /// Where the spool is.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// Can a return be written here now? A small file written and
    /// removed (a full disk or a broken directory says so before a job
    /// runs, not after).
    pub fn probe(&self, jid: &Jid) -> std::io::Result<()> {
        let probe = self.dir.join(format!("{jid}.probe"));
        std::fs::write(&probe, [0u8; 512])?;
        std::fs::remove_file(&probe)
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
    /// skipped with a log line; a file that is not a return envelope is
    /// moved once into `undecodable/` (kept for a person to look at, never
    /// re-sent).
    pub fn all(&self) -> Vec<(Jid, Vec<u8>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut items: Vec<(Jid, Vec<u8>)> = entries
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let jid = Jid::parse(path.file_name()?.to_str()?.strip_suffix(".ret")?).ok()?;
                match std::fs::read(&path) {
                    Ok(bytes) if is_return(&bytes) => Some((jid, bytes)),
                    Ok(_) => {
                        self.set_aside(&path);
                        None
                    }
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

impl Spool {
    fn set_aside(&self, path: &Path) {
        let aside = self.dir.join("undecodable");
        let moved = std::fs::create_dir_all(&aside).and_then(|()| {
            let name = path.file_name().unwrap_or_default();
            std::fs::rename(path, aside.join(name))
        });
        match moved {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "a spooled file is not a return; moved to undecodable/ and not sent")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a spooled file is not a return and cannot be moved aside")
            }
        }
    }
}

/// Is `bytes` a signed return envelope (as spooled)?
fn is_return(bytes: &[u8]) -> bool {
    halite_proto::Envelope::from_bytes(bytes)
        .is_ok_and(|envelope| envelope.kind == halite_proto::Kind::Return)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signed return for `jid`, as the executor spools it.
    fn envelope(jid: &Jid, data: &str) -> Vec<u8> {
        let key = halite_pki::KeyPair::generate().unwrap();
        let ret = halite_proto::message::Return {
            jid: jid.clone(),
            id: "web01".into(),
            fun: "test.ping".into(),
            success: true,
            retcode: 0,
            data: serde_json::json!(data),
            started_at: 0,
            finished_at: 0,
            nonce: vec![1; 16],
            master: String::new(),
            job: None,
        };
        key.sign_message("web01", &ret).unwrap().to_bytes()
    }

    #[test]
    fn put_all_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let a = Jid::from_unix_us(2_000_000);
        let b = Jid::from_unix_us(1_000_000);
        let (first, second) = (envelope(&a, "first"), envelope(&b, "second"));
        spool.put(&a, &first).unwrap();
        spool.put(&b, &second).unwrap();
        std::fs::write(dir.path().join("junk.ret"), b"x").unwrap();
        let all = spool.all();
        assert_eq!(all, vec![(b.clone(), second), (a.clone(), first.clone())]);
        assert!(spool.holds(&b));
        spool.remove(&b);
        spool.remove(&b);
        assert!(!spool.holds(&b));
        assert_eq!(Spool::open(dir.path()).unwrap().all(), vec![(a, first)]);
    }

    #[test]
    fn a_spooled_file_that_is_no_return_is_moved_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let bad = Jid::from_unix_us(3_000_000);
        spool.put(&bad, b"\x00\xffnot an envelope").unwrap();
        assert!(spool.all().is_empty());
        assert!(!spool.holds(&bad), "not left to be re-sent");
        assert!(dir.path().join(format!("undecodable/{bad}.ret")).exists());
        assert!(spool.all().is_empty());
        spool.probe(&bad).unwrap();
    }
}
