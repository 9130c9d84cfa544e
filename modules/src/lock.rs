//! The deploy lock of a path on a minion (`<path>/.halite/lock`): every
//! deploy kind takes it through the release driver (`kit::ReleaseRun`), so
//! two releases of one app on one server never interleave. The file names
//! the job and process holding it; a lock left by a process that died is
//! taken over.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another deploy holds the lock.
    #[error("another deploy is running on {} (job {jid}, pid {pid}, since {since_ms} ms)", path.display())]
    Locked {
        /// The deploy path.
        path: PathBuf,
        /// Job holding the lock.
        jid: String,
        /// Process holding it.
        pid: u32,
        /// How long it has held it.
        since_ms: u64,
    },
    /// The lock file cannot be written (read-only or missing path).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Holds a deploy path's lock; released when dropped.
#[derive(Debug)]
pub struct DeployLock {
    path: PathBuf,
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    jid: String,
    pid: u32,
    since: u64,
}

fn lock_file(root: &Path) -> PathBuf {
    root.join(".halite").join("lock")
}

/// Takes the lock of `root` for `jid`. With `wait`, polls until the
/// holder is done or the time is up; without, refuses at once. The error
/// names the job holding it. Blocking (it sleeps between polls).
pub fn take(root: &Path, jid: &str, wait: Option<Duration>) -> Result<DeployLock, LockError> {
    let dir = root.join(".halite");
    std::fs::create_dir_all(&dir).map_err(|source| LockError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let path = lock_file(root);
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        match try_lock(&path, jid) {
            Ok(lock) => return Ok(lock),
            Err(Attempt::Io(e)) => return Err(e),
            Err(Attempt::Held(holder)) => {
                if !pid_alive(holder.pid) {
                    tracing::warn!(path = %path.display(), jid = %holder.jid, pid = holder.pid, "taking over a lock left by a process that is gone");
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                let expired = deadline.is_none_or(|d| Instant::now() >= d);
                if expired {
                    return Err(LockError::Locked {
                        path: root.to_path_buf(),
                        jid: holder.jid,
                        pid: holder.pid,
                        since_ms: halite_proto::time::now_ms().saturating_sub(holder.since),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The job holding the lock of `root` right now, if any: its jid, pid
/// and since when (unix ms).
pub fn holder(root: &Path) -> Option<(String, u32, u64)> {
    let bytes = std::fs::read(lock_file(root)).ok()?;
    let holder: Holder = serde_json::from_slice(&bytes).ok()?;
    pid_alive(holder.pid).then_some((holder.jid, holder.pid, holder.since))
}

enum Attempt {
    Held(Holder),
    Io(LockError),
}

fn try_lock(path: &Path, jid: &str) -> Result<DeployLock, Attempt> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| {
            Attempt::Io(LockError::Io {
                action,
                path,
                source,
            })
        }
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(mut file) => {
            let holder = Holder {
                jid: jid.to_owned(),
                pid: std::process::id(),
                since: halite_proto::time::now_ms(),
            };
            let bytes = serde_json::to_vec(&holder).unwrap_or_default();
            // No fsync: a lock only means something while its process
            // lives, and a lock left behind by a crash is taken over.
            file.write_all(&bytes).map_err(io("write"))?;
            Ok(DeployLock {
                path: path.to_path_buf(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A lock being written right now reads as empty: treat it as
            // held by a live process for this round.
            let holder = std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Holder>(&b).ok())
                .unwrap_or(Holder {
                    jid: "unknown".into(),
                    pid: std::process::id(),
                    since: halite_proto::time::now_ms(),
                });
            Err(Attempt::Held(holder))
        }
        Err(e) => Err(io("create lock")(e)),
    }
}

#[cfg(unix)]
fn pid_alive(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

#[cfg(not(unix))]
fn pid_alive(_pid: u32) -> bool {
    // No cheap, safe liveness check here: a stale lock must be removed by
    // hand (the error names its file and job).
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::releases::Releases;

    #[test]
    fn the_lock_names_its_holder_and_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let held = releases.lock("20261122000000000001", None).unwrap();
        let err = releases.lock("20261122000000000002", None).unwrap_err();
        assert!(
            err.to_string().contains("job 20261122000000000001"),
            "{err}"
        );
        let started = Instant::now();
        assert!(releases
            .lock("x", Some(Duration::from_millis(300)))
            .is_err());
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(held);
        releases.lock("20261122000000000002", None).unwrap();
    }

    #[test]
    fn a_waiting_deploy_gets_the_lock_when_the_holder_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let held = releases.lock("first", None).unwrap();
        let waiter = {
            let releases = releases.clone();
            std::thread::spawn(move || {
                releases
                    .lock("second", Some(Duration::from_secs(10)))
                    .map(|_| ())
            })
        };
        std::thread::sleep(Duration::from_millis(250));
        drop(held);
        waiter.join().unwrap().unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        std::fs::write(
            dir.path().join(".halite/lock"),
            serde_json::to_vec(&Holder {
                jid: "old".into(),
                pid: dead_pid,
                since: 1,
            })
            .unwrap(),
        )
        .unwrap();
        releases.lock("new", None).unwrap();
    }
}
