//! Returns kept on disk until the master acknowledges them.
//!
//! One append-only log per master (`returns.log`). A return is appended
//! and synced before it is first sent; a signed `ReturnAck` appends its
//! removal, not synced (a removal lost in a crash re-sends a return the
//! master stores once). So a master or minion restart in between loses
//! nothing: unacknowledged returns are re-sent after every (re)connect.
//! When nothing waits any more the log is emptied; past [`COMPACT_AT`]
//! with returns still waiting, those are rewritten into a new log (temp
//! file, sync, rename).
//!
//! One file and not one per return: creating, syncing, renaming and
//! removing a file per return was nearly half of a minion's CPU for a
//! `test.ping` (ext4 inode allocation), `bench/RESULTS.md` 2026-11-30.
//!
//! A record is: kind (1 put, 2 remove), the jid (20 ASCII digits), the
//! payload's length (u32 LE), the payload (a signed return envelope), and
//! the CRC-32 of all of that (u32 LE). A bad record ends the log: a torn
//! tail after a crash mid-append is cut off, and whatever followed a bad
//! record is first copied to `undecodable/` for a person to look at.
//! Spools of earlier versions (one `JID.ret` file per return) are taken
//! into the log when opened.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use halite_proto::Jid;

/// The log's file name in the spool directory.
const LOG: &str = "returns.log";
/// Past this many bytes, a log with returns still waiting is rewritten
/// with only those.
pub const COMPACT_AT: u64 = 1 << 20;
const PUT: u8 = 1;
const REMOVE: u8 = 2;
/// Kind, jid, length.
const HEADER: usize = 1 + 20 + 4;
/// The largest payload a record may say it has (a return envelope is far
/// smaller; a larger length is corruption, not an allocation to make).
const MAX_PAYLOAD: u32 = 256 << 20;

/// The spool of one master: the log and what in it still waits.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    log: Arc<Mutex<Log>>,
}

struct Log {
    file: File,
    len: u64,
    /// Each waiting return: its payload's offset and length in the log.
    waiting: BTreeMap<Jid, (u64, u32)>,
}

impl Spool {
    /// Opens (creates) the spool in `dir`: replays its log, cutting a torn
    /// tail, and takes in the return files of an older spool.
    pub fn open(dir: &Path) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG);
        // Not in append mode: Windows refuses to truncate a file opened
        // for appending; records are written at `len` under the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (waiting, good) = replay(&bytes);
        if good < bytes.len() {
            let aside = dir.join("undecodable");
            std::fs::create_dir_all(&aside)?;
            let name = format!("{LOG}.{}", halite_proto::time::now_ms());
            std::fs::write(aside.join(&name), &bytes[good..])?;
            file.set_len(good as u64)?;
            file.sync_all()?;
            tracing::warn!(
                spool = %dir.display(),
                cut = bytes.len() - good,
                kept = %aside.join(&name).display(),
                "the spool log ends with a bad record (a crash mid-write?): cut off, copied aside"
            );
        }
        let spool = Spool {
            dir: dir.to_path_buf(),
            log: Arc::new(Mutex::new(Log {
                file,
                len: good as u64,
                waiting,
            })),
        };
        spool.take_in_old_files()?;
        Ok(spool)
    }

    /// Where the spool is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Durably stores a signed return envelope (appended, then synced).
    pub fn put(&self, jid: &Jid, envelope: &[u8]) -> std::io::Result<()> {
        let length = u32::try_from(envelope.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD)
            .ok_or_else(|| std::io::Error::other("return too large to spool"))?;
        let mut log = self.lock();
        let offset = log.append(PUT, jid, envelope)?;
        log.file.sync_data()?;
        log.waiting.insert(jid.clone(), (offset, length));
        Ok(())
    }

    /// Can a return be written here now? A small file rewritten in place
    /// (a full disk or a broken directory says so before a job runs, not
    /// after); the same file each time, so no inode is made per job.
    pub fn probe(&self) -> std::io::Result<()> {
        std::fs::write(self.dir.join("probe"), [0u8; 512])
    }

    /// Is a return for `jid` waiting here? (A job killed between
    /// spooling its return and dropping its running marker finished.)
    pub fn holds(&self, jid: &Jid) -> bool {
        self.lock().waiting.contains_key(jid)
    }

    /// Forgets an acknowledged return.
    pub fn remove(&self, jid: &Jid) {
        let mut log = self.lock();
        if log.waiting.remove(jid).is_none() {
            return;
        }
        let done = if log.waiting.is_empty() {
            log.empty()
        } else {
            log.append(REMOVE, jid, &[]).map(|_| ())
        };
        let done = done.and_then(|()| {
            if log.len > COMPACT_AT {
                log.compact(&self.dir)
            } else {
                Ok(())
            }
        });
        if let Err(e) = done {
            // The return may be re-sent after a restart: the master keeps one.
            tracing::warn!(%jid, spool = %self.dir.display(), error = %e, "cannot record an acknowledged return");
        }
    }

    /// Every waiting return, oldest first. A payload that is not a return
    /// envelope is written once into `undecodable/` (kept for a person to
    /// look at, never re-sent) and forgotten.
    pub fn all(&self) -> Vec<(Jid, Vec<u8>)> {
        let mut log = self.lock();
        let mut items = Vec::with_capacity(log.waiting.len());
        let mut bad = Vec::new();
        let waiting: Vec<(Jid, (u64, u32))> =
            log.waiting.iter().map(|(j, at)| (j.clone(), *at)).collect();
        for (jid, (offset, length)) in waiting {
            match log.read(offset, length) {
                Ok(bytes) if is_return(&bytes) => items.push((jid, bytes)),
                Ok(bytes) => bad.push((jid, bytes)),
                Err(e) => {
                    tracing::warn!(%jid, spool = %self.dir.display(), error = %e, "cannot read a spooled return");
                }
            }
        }
        drop(log);
        for (jid, bytes) in bad {
            self.set_aside(&jid, &bytes);
            self.remove(&jid);
        }
        items
    }

    /// Appends each `JID.ret` of an older spool to the log, then removes
    /// the file (and any temp or probe files it left).
    fn take_in_old_files(&self) -> std::io::Result<()> {
        let mut old: Vec<(Jid, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(jid) = name.strip_suffix(".ret").and_then(|j| Jid::parse(j).ok()) {
                old.push((jid, path));
            } else if name.ends_with(".tmp") || name.ends_with(".probe") {
                let _ = std::fs::remove_file(&path);
            }
        }
        old.sort();
        for (jid, path) in old {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    self.put(&jid, &bytes)?;
                    std::fs::remove_file(&path)?;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read spooled return")
                }
            }
        }
        Ok(())
    }

    fn set_aside(&self, jid: &Jid, bytes: &[u8]) {
        let aside = self.dir.join("undecodable");
        let path = aside.join(format!("{jid}.ret"));
        match std::fs::create_dir_all(&aside).and_then(|()| std::fs::write(&path, bytes)) {
            Ok(()) => {
                tracing::warn!(path = %path.display(), "a spooled return is not a return envelope; kept in undecodable/ and not sent")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "a spooled return is not a return envelope and cannot be kept aside")
            }
        }
    }
}

impl Log {
    /// Appends one record in one write; answers the payload's offset.
    fn append(&mut self, kind: u8, jid: &Jid, payload: &[u8]) -> std::io::Result<u64> {
        let mut record = Vec::with_capacity(HEADER + payload.len() + 4);
        record.push(kind);
        record.extend_from_slice(jid.as_str().as_bytes());
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(payload);
        let crc = crc32fast::hash(&record);
        record.extend_from_slice(&crc.to_le_bytes());
        let written = self
            .file
            .seek(SeekFrom::Start(self.len))
            .and_then(|_| self.file.write_all(&record));
        if let Err(e) = written {
            // A partial record would end the log at the next open: cut it now.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        let offset = self.len + HEADER as u64;
        self.len += record.len() as u64;
        Ok(offset)
    }

    fn read(&mut self, offset: u64, length: u32) -> std::io::Result<Vec<u8>> {
        let mut bytes = vec![0; length as usize];
        self.file.seek(SeekFrom::Start(offset))?;
        self.file.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Nothing waits: the log starts again from nothing.
    fn empty(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.len = 0;
        Ok(())
    }

    /// Rewrites the log with only the waiting returns.
    fn compact(&mut self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{LOG}.tmp"));
        let waiting: Vec<(Jid, (u64, u32))> = self
            .waiting
            .iter()
            .map(|(j, at)| (j.clone(), *at))
            .collect();
        let mut fresh = Log {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?,
            len: 0,
            waiting: BTreeMap::new(),
        };
        for (jid, (offset, length)) in waiting {
            let bytes = self.read(offset, length)?;
            let at = fresh.append(PUT, &jid, &bytes)?;
            fresh.waiting.insert(jid, (at, length));
        }
        fresh.file.sync_all()?;
        std::fs::rename(&tmp, dir.join(LOG))?;
        #[cfg(unix)]
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
        *self = fresh;
        Ok(())
    }
}

/// How many returns wait in the spool in `dir`, read without changing it
/// (for tools and tests looking at a running minion's spool).
pub fn waiting_in(dir: &Path) -> std::io::Result<usize> {
    let bytes = match std::fs::read(dir.join(LOG)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    Ok(replay(&bytes).0.len())
}

/// Reads records from the start: the returns still waiting, and how many
/// bytes of the log are good records (the rest is torn or corrupt).
fn replay(bytes: &[u8]) -> (BTreeMap<Jid, (u64, u32)>, usize) {
    let mut waiting = BTreeMap::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            break;
        };
        let kind = header[0];
        let Some(jid) = std::str::from_utf8(&header[1..21])
            .ok()
            .and_then(|j| Jid::parse(j).ok())
        else {
            break;
        };
        let length = u32::from_le_bytes([header[21], header[22], header[23], header[24]]);
        if length > MAX_PAYLOAD || (kind != PUT && kind != REMOVE) {
            break;
        }
        let end = at + HEADER + length as usize;
        let Some(crc) = bytes.get(end..end + 4) else {
            break;
        };
        if crc32fast::hash(&bytes[at..end]).to_le_bytes() != crc {
            break;
        }
        if kind == PUT {
            waiting.insert(jid, ((at + HEADER) as u64, length));
        } else {
            waiting.remove(&jid);
        }
        at = end + 4;
    }
    (waiting, at)
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
        spool.probe().unwrap();
        assert!(Spool::open(dir.path()).unwrap().all().is_empty());
    }

    #[test]
    fn the_log_is_emptied_when_nothing_waits_and_compacted_when_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let log = dir.path().join(LOG);
        let keep = Jid::from_unix_us(1_000_000);
        spool.put(&keep, &envelope(&keep, "kept")).unwrap();
        let big = "x".repeat(64 * 1024);
        let mut largest = 0;
        // Twice COMPACT_AT through the log, one return waiting throughout.
        for n in 0..(2 * COMPACT_AT / (64 * 1024)) {
            let jid = Jid::from_unix_us(2_000_000 + n);
            spool.put(&jid, &envelope(&jid, &big)).unwrap();
            spool.remove(&jid);
            largest = largest.max(std::fs::metadata(&log).unwrap().len());
        }
        assert!(largest > COMPACT_AT - 128 * 1024, "{largest}");
        assert!(
            std::fs::metadata(&log).unwrap().len() < COMPACT_AT,
            "compacted back to what waits"
        );
        let reopened = Spool::open(dir.path()).unwrap();
        assert_eq!(
            reopened.all(),
            vec![(keep.clone(), envelope_data(&spool, &keep))]
        );
        reopened.remove(&keep);
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert!(Spool::open(dir.path()).unwrap().all().is_empty());
    }

    fn envelope_data(spool: &Spool, jid: &Jid) -> Vec<u8> {
        spool
            .all()
            .into_iter()
            .find(|(j, _)| j == jid)
            .map(|(_, bytes)| bytes)
            .unwrap()
    }

    #[test]
    fn a_torn_tail_is_cut_and_kept_aside_and_what_came_before_survives() {
        let dir = tempfile::tempdir().unwrap();
        let a = Jid::from_unix_us(1_000_000);
        let b = Jid::from_unix_us(2_000_000);
        let first = envelope(&a, "first");
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.put(&a, &first).unwrap();
            spool.put(&b, &envelope(&b, "second")).unwrap();
        }
        // A crash in the middle of the second append.
        let log = dir.path().join(LOG);
        let len = std::fs::metadata(&log).unwrap().len();
        let file = OpenOptions::new().write(true).open(&log).unwrap();
        file.set_len(len - 10).unwrap();
        drop(file);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.all(), vec![(a.clone(), first)]);
        assert!(!spool.holds(&b));
        let aside: Vec<_> = std::fs::read_dir(dir.path().join("undecodable"))
            .unwrap()
            .collect();
        assert_eq!(aside.len(), 1, "the cut bytes are kept for a person");
        // Garbage that claims a huge length is not allocated for.
        std::fs::write(
            &log,
            [PUT]
                .iter()
                .chain(b"20260101000000000000")
                .chain(&u32::MAX.to_le_bytes())
                .copied()
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        assert!(Spool::open(dir.path()).unwrap().all().is_empty());
    }

    #[test]
    fn returns_spooled_by_an_older_minion_are_taken_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let a = Jid::from_unix_us(1_000_000);
        let old = envelope(&a, "from before");
        std::fs::write(dir.path().join(format!("{a}.ret")), &old).unwrap();
        std::fs::write(dir.path().join(format!("{a}.tmp")), b"half").unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.all(), vec![(a.clone(), old.clone())]);
        assert!(!dir.path().join(format!("{a}.ret")).exists());
        assert!(!dir.path().join(format!("{a}.tmp")).exists());
        assert_eq!(Spool::open(dir.path()).unwrap().all(), vec![(a, old)]);
    }
}
