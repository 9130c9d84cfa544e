//! Release directories on a minion, shared by every deploy module.
//!
//! The Capistrano layout, which operators already know:
//!
//! ```text
//! <path>/releases/<rev>-<time>/   one directory per deployed revision
//! <path>/shared/<p>               kept across releases (storage/, .env)
//! <path>/current -> releases/…    the live release, switched atomically
//! <path>/.halite/lock             who is deploying here right now (crate::lock)
//! <path>/.halite/history.json     every deploy and rollback, in order
//! ```
//!
//! A new release is built beside the live one and goes live by renaming a
//! fresh symlink over `current` (atomic on POSIX), so a reader sees either
//! the old tree or the new one, never a mix; rolling back is the same
//! switch, without fetching. Deploys to one path are serialized by a lock
//! file naming the job that holds it; a lock left by a process that died
//! is taken over.
//!
//! Windows: `current` is a directory symlink, which needs Developer Mode or
//! the symlink privilege (the minion service runs as SYSTEM, which has it).
//! That path is not compiled or tested on this project's Linux CI.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use halite_proto::release::ReleaseResult;
use serde::Serialize;

pub use crate::history::{History, HistoryError, ReleaseRecord};
pub use crate::lock::{DeployLock, LockError};

/// Why a release operation failed, naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A filesystem operation failed (full disk, read-only path, permissions).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The deploy lock is held or cannot be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A release name that is not one of ours (would escape `releases/`).
    #[error("invalid release name {0:?}")]
    BadName(String),
    /// A shared path that is absolute or climbs out of the deploy path.
    #[error("invalid shared path {0:?}: must be relative, without `..`")]
    BadSharedPath(String),
    /// No kept release of that name.
    #[error("no release {name:?} under {}", path.display())]
    NoSuchRelease {
        /// The deploy path.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// `current` exists but is not a link (someone deployed by hand).
    #[error("{} exists and is not a symlink; move it away so releases can be switched", .0.display())]
    CurrentNotALink(PathBuf),
    /// The history cannot be read or written.
    #[error(transparent)]
    History(#[from] HistoryError),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError {
    let path = path.to_path_buf();
    move |source| ReleaseError::Io {
        action,
        path,
        source,
    }
}

/// What a file looked like when its release was exported: any write to
/// it changes its modification time, and replacing it changes its inode,
/// so an equal stamp means the content is still what git had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i128,
}

impl Stamp {
    /// The stamp of the file at `path` now (not following a symlink).
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        let meta = std::fs::symlink_metadata(path)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Stamp {
            inode: inode_of(&meta),
            size: meta.len(),
            mtime_ns,
        })
    }
}

#[cfg(unix)]
fn inode_of(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode_of(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// A kept release, as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    /// Directory name under `releases/`.
    pub name: String,
    /// Is it what `current` points to?
    pub live: bool,
    /// Its last history record, if it has one.
    pub last: Option<ReleaseRecord>,
}

/// The release layout under one deploy path.
#[derive(Clone, Debug)]
pub struct Releases {
    root: PathBuf,
}

impl Releases {
    /// Opens (creating what is missing) the layout under `root`. A
    /// read-only or missing parent is a clear error here, before anything
    /// is fetched.
    pub fn open(root: &Path) -> Result<Releases, ReleaseError> {
        for dir in [
            root.join("releases"),
            root.join("shared"),
            root.join(".halite"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        }
        Ok(Releases {
            root: root.to_path_buf(),
        })
    }

    /// The deploy path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn releases_dir(&self) -> PathBuf {
        self.root.join("releases")
    }

    fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    fn history_of(&self) -> History {
        History::at(&self.root)
    }

    /// Takes the deploy lock for `jid` (see [`crate::lock`]).
    pub fn lock(&self, jid: &str, wait: Option<Duration>) -> Result<DeployLock, LockError> {
        crate::lock::take(&self.root, jid, wait)
    }

    /// Creates the directory of a new release of `revision` at `now_ms`
    /// and returns its name: `<rev>-<YYYYmmddTHHMMSS>` (with a counter if
    /// the same revision is deployed twice within a second).
    pub fn create(&self, revision: &str, now_ms: u64) -> Result<String, ReleaseError> {
        let rev: String = revision
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_'))
            .take(12)
            .collect();
        let rev = if rev.is_empty() {
            "release".to_owned()
        } else {
            rev
        };
        let stamp = timestamp(now_ms);
        for n in 0..1000 {
            let name = if n == 0 {
                format!("{rev}-{stamp}")
            } else {
                format!("{rev}-{stamp}.{n}")
            };
            let dir = self.releases_dir().join(&name);
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(name),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("create", &dir)(e)),
            }
        }
        Err(ReleaseError::BadName(format!("{rev}-{stamp}")))
    }

    /// The path of a kept release.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, ReleaseError> {
        check_name(name)?;
        let path = self.releases_dir().join(name);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(ReleaseError::NoSuchRelease {
                path: self.root.clone(),
                name: name.to_owned(),
            })
        }
    }

    /// Links each shared path of release `name` to `shared/<p>`. A shared
    /// path missing from `shared/` is seeded from the release (first
    /// deploy), or created empty: a directory, unless its last component
    /// has a dot (`.env`, `config/app.yml`), then a file.
    pub fn link_shared(&self, name: &str, shared: &[String]) -> Result<(), ReleaseError> {
        let release = self.path_of(name)?;
        for entry in shared {
            let relative = shared_path(entry)?;
            let target = self.root.join("shared").join(&relative);
            let in_release = release.join(&relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            if std::fs::symlink_metadata(&target).is_err() {
                if std::fs::symlink_metadata(&in_release).is_ok() {
                    std::fs::rename(&in_release, &target)
                        .map_err(io("seed shared path from", &in_release))?;
                } else if looks_like_file(&relative) {
                    std::fs::File::create(&target).map_err(io("create", &target))?;
                } else {
                    std::fs::create_dir_all(&target).map_err(io("create", &target))?;
                }
            }
            remove_any(&in_release)?;
            if let Some(parent) = in_release.parent() {
                std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            }
            symlink(&target, &in_release)?;
        }
        Ok(())
    }

    /// The live release, if any.
    pub fn current(&self) -> Result<Option<String>, ReleaseError> {
        let link = self.current_link();
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("read", &link)(e)),
            Ok(meta) if !meta.file_type().is_symlink() => {
                return Err(ReleaseError::CurrentNotALink(link))
            }
            Ok(_) => {}
        }
        let target = std::fs::read_link(&link).map_err(io("read link", &link))?;
        Ok(target
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned))
    }

    /// Makes release `name` live: a new link renamed over `current`.
    /// Returns the release that was live before.
    pub fn switch(&self, name: &str) -> Result<Option<String>, ReleaseError> {
        self.path_of(name)?;
        let previous = self.current()?;
        let link = self.current_link();
        let tmp = self.root.join(format!(".current.{}", std::process::id()));
        remove_any(&tmp)?;
        symlink(&PathBuf::from("releases").join(name), &tmp)?;
        std::fs::rename(&tmp, &link).map_err(io("switch", &link))?;
        Ok(previous)
    }

    /// Kept releases, oldest first, with what history says of each.
    pub fn list(&self) -> Result<Vec<ReleaseInfo>, ReleaseError> {
        let dir = self.releases_dir();
        let current = self.current()?;
        let history = self.history()?;
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                entry.file_type().ok()?.is_dir().then_some(())?;
                entry.file_name().into_string().ok()
            })
            .collect();
        // By creation time; within one second, by first appearance in the
        // history (the names' revision prefixes are in no useful order).
        let first_seen = |name: &str| {
            history
                .iter()
                .position(|r| r.release == name)
                .unwrap_or(usize::MAX)
        };
        names.sort_by(|a, b| {
            stamp_of(a)
                .cmp(stamp_of(b))
                .then(first_seen(a).cmp(&first_seen(b)))
                .then(a.cmp(b))
        });
        Ok(names
            .into_iter()
            .map(|name| ReleaseInfo {
                live: current.as_deref() == Some(name.as_str()),
                last: history.iter().rev().find(|r| r.release == name).cloned(),
                name,
            })
            .collect())
    }

    /// The release that was live before the current one and was not taken
    /// back: where a plain rollback goes.
    pub fn previous(&self) -> Result<Option<String>, ReleaseError> {
        let current = self.current()?;
        let kept: HashSet<String> = self.list()?.into_iter().map(|r| r.name).collect();
        let history = self.history()?;
        let bad: HashSet<&str> = history
            .iter()
            .filter(|r| r.result == ReleaseResult::RolledBack)
            .map(|r| r.release.as_str())
            .collect();
        Ok(history
            .iter()
            .rev()
            .filter(|r| r.result == ReleaseResult::Live)
            .map(|r| r.release.clone())
            .find(|name| {
                Some(name) != current.as_ref()
                    && kept.contains(name)
                    && !bad.contains(name.as_str())
            }))
    }

    /// Deletes the oldest releases so that `keep` remain. The live release
    /// and the one a rollback would go to are always kept; releases that
    /// were taken back go first.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>, ReleaseError> {
        let protected: HashSet<String> = [self.current()?, self.previous()?]
            .into_iter()
            .flatten()
            .collect();
        let history = self.history()?;
        let was_bad = |name: &str| {
            history
                .iter()
                .any(|r| r.release == name && r.result == ReleaseResult::RolledBack)
        };
        let mut candidates: Vec<String> = self
            .list()?
            .into_iter()
            .map(|r| r.name)
            .filter(|n| !protected.contains(n))
            .collect();
        let total = candidates.len() + protected.len();
        let excess = total.saturating_sub(keep.max(protected.len()));
        // Bad ones first, then oldest first (list() is oldest first).
        candidates.sort_by_key(|n| !was_bad(n));
        let doomed: Vec<String> = candidates.into_iter().take(excess).collect();
        for name in &doomed {
            let dir = self.releases_dir().join(name);
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
            let _ = std::fs::remove_file(self.manifest_path(name));
        }
        Ok(doomed)
    }

    /// Appends a record to the history (see [`History::record`]).
    pub fn record(&self, record: ReleaseRecord) -> Result<(), ReleaseError> {
        Ok(self.history_of().record(record)?)
    }

    /// Deletes a release that never went live (a failed deploy's
    /// directory). The live release is never deleted.
    pub fn discard(&self, name: &str) -> Result<(), ReleaseError> {
        let dir = self.path_of(name)?;
        if self.current()?.as_deref() == Some(name) {
            return Ok(());
        }
        std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        let _ = std::fs::remove_file(self.manifest_path(name));
        Ok(())
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root.join(".halite").join("manifests").join(name)
    }

    /// Records how each file of release `name` looked right after it was
    /// exported (see [`Stamp`]), so a later deploy can share unchanged
    /// files with it and a rollback can tell whether any was changed.
    pub fn write_manifest(
        &self,
        name: &str,
        files: &[(String, Stamp)],
    ) -> Result<(), ReleaseError> {
        check_name(name)?;
        let path = self.manifest_path(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        let mut text = String::with_capacity(files.len() * 64);
        for (file, stamp) in files {
            // Tab-separated; tree paths never hold tabs or newlines that
            // we accept (they are refused at export).
            text.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                stamp.inode, stamp.size, stamp.mtime_ns, file
            ));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("replace", &path))
    }

    /// The manifest of release `name`, if one was written (releases made
    /// before manifests existed have none).
    pub fn manifest(&self, name: &str) -> Option<std::collections::HashMap<String, Stamp>> {
        check_name(name).ok()?;
        let text = std::fs::read_to_string(self.manifest_path(name)).ok()?;
        let mut files = std::collections::HashMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(4, '\t');
            let (Some(inode), Some(size), Some(mtime), Some(file)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let stamp = Stamp {
                inode: inode.parse().ok()?,
                size: size.parse().ok()?,
                mtime_ns: mtime.parse().ok()?,
            };
            files.insert(file.to_owned(), stamp);
        }
        Some(files)
    }

    /// The job holding the deploy lock right now, if any (for `status`).
    pub fn lock_holder(&self) -> Option<(String, u32, u64)> {
        crate::lock::holder(&self.root)
    }

    /// Every record, oldest first.
    pub fn history(&self) -> Result<Vec<ReleaseRecord>, ReleaseError> {
        Ok(self.history_of().read()?)
    }
}

fn check_name(name: &str) -> Result<(), ReleaseError> {
    let ok = !name.is_empty()
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ReleaseError::BadName(name.to_owned()))
    }
}

fn shared_path(entry: &str) -> Result<PathBuf, ReleaseError> {
    let path = Path::new(entry.trim_end_matches('/'));
    let ok = !entry.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(ReleaseError::BadSharedPath(entry.to_owned()))
    }
}

fn looks_like_file(relative: &Path) -> bool {
    relative
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains('.'))
}

fn remove_any(path: &Path) -> Result<(), ReleaseError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("inspect", path)(e)),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io("remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io("remove", path)),
    }
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> Result<(), ReleaseError> {
    std::os::unix::fs::symlink(target, link).map_err(io("link", link))
}

#[cfg(windows)]
fn symlink(target: &Path, link: &Path) -> Result<(), ReleaseError> {
    std::os::windows::fs::symlink_dir(target, link).map_err(io("link", link))
}

/// `YYYYmmddTHHMMSS` in UTC: sorts as text in time order.
fn timestamp(ms: u64) -> String {
    halite_proto::time::format_ms(ms)
        .replace('-', "")
        .replace(' ', "T")
        .replace(':', "")
}

/// The timestamp part of a release name (for ordering).
fn stamp_of(name: &str) -> &str {
    name.rsplit_once('-').map_or(name, |(_, stamp)| stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn record(release: &str, result: &str, at: u64) -> ReleaseRecord {
        ReleaseRecord {
            release: release.into(),
            revision: release.split('-').next().unwrap_or_default().into(),
            reference: None,
            jid: "20261122000000000001".into(),
            action: halite_proto::release::ReleaseAction::Deploy,
            result: serde_json::from_value(serde_json::json!(result)).unwrap(),
            at,
            duration_ms: 5,
        }
    }

    /// Creates, fills, switches to and records a release.
    fn deploy(releases: &Releases, rev: &str, at: u64) -> String {
        let name = releases.create(rev, at).unwrap();
        std::fs::write(releases.path_of(&name).unwrap().join("index.html"), rev).unwrap();
        releases.switch(&name).unwrap();
        releases.record(record(&name, "live", at)).unwrap();
        name
    }

    fn served(root: &Path) -> String {
        std::fs::read_to_string(root.join("current/index.html")).unwrap()
    }

    #[test]
    fn deploy_switch_and_rollback_are_link_switches() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        assert_eq!(releases.current().unwrap(), None);
        let v1 = deploy(&releases, "aaaaaaaaaaaaaaaa", T0);
        assert_eq!(v1, "aaaaaaaaaaaa-20231114T221320");
        assert_eq!(served(dir.path()), "aaaaaaaaaaaaaaaa");
        let v2 = deploy(&releases, "bbbb", T0 + 60_000);
        assert_eq!(served(dir.path()), "bbbb");
        assert_eq!(releases.previous().unwrap().as_deref(), Some(v1.as_str()));
        // The link is relative, so the deploy path can be moved.
        assert_eq!(
            std::fs::read_link(dir.path().join("current")).unwrap(),
            PathBuf::from("releases").join(&v2)
        );

        assert_eq!(releases.switch(&v1).unwrap().as_deref(), Some(v2.as_str()));
        releases
            .record(record(&v2, "rolled_back", T0 + 120_000))
            .unwrap();
        assert_eq!(served(dir.path()), "aaaaaaaaaaaaaaaa");
        let listed = releases.list().unwrap();
        assert_eq!(
            listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            vec![v1.as_str(), v2.as_str()]
        );
        assert!(listed[0].live && !listed[1].live);
        assert_eq!(
            listed[1].last.as_ref().unwrap().result.as_str(),
            "rolled_back"
        );
        // A rolled-back release is never where a rollback goes.
        assert_eq!(releases.previous().unwrap(), None);
    }

    #[test]
    fn the_same_revision_twice_in_a_second_gets_its_own_dir() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let a = releases.create("abc", T0).unwrap();
        let b = releases.create("abc", T0).unwrap();
        assert_ne!(a, b);
        assert!(b.ends_with(".1"));
    }

    #[test]
    fn prune_keeps_live_and_rollback_target_and_drops_bad_first() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let names: Vec<String> = (0..6)
            .map(|i| deploy(&releases, &format!("r{i}"), T0 + i * 1000))
            .collect();
        // r5 went bad: back to r4.
        releases.switch(&names[4]).unwrap();
        releases
            .record(record(&names[5], "rolled_back", T0 + 10_000))
            .unwrap();
        let removed = releases.prune(3).unwrap();
        assert_eq!(
            removed,
            vec![names[5].clone(), names[0].clone(), names[1].clone()]
        );
        let kept: Vec<String> = releases
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            kept,
            vec![names[2].clone(), names[3].clone(), names[4].clone()]
        );
        assert_eq!(
            releases.current().unwrap().as_deref(),
            Some(names[4].as_str())
        );
        // Even keep=1 keeps the live release and the rollback target.
        releases.prune(1).unwrap();
        let kept: Vec<String> = releases
            .list()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(kept, vec![names[3].clone(), names[4].clone()]);
    }

    #[test]
    fn shared_paths_are_seeded_once_and_linked_into_every_release() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let v1 = releases.create("v1", T0).unwrap();
        let v1_path = releases.path_of(&v1).unwrap();
        std::fs::create_dir_all(v1_path.join("storage")).unwrap();
        std::fs::write(v1_path.join("storage/upload.txt"), "kept").unwrap();
        let shared = vec![
            "storage".to_owned(),
            ".env".to_owned(),
            "var/cache/".to_owned(),
        ];
        releases.link_shared(&v1, &shared).unwrap();
        assert!(
            dir.path().join("shared/storage/upload.txt").is_file(),
            "seeded from the release"
        );
        assert!(
            dir.path().join("shared/.env").is_file(),
            "a dotted name becomes a file"
        );
        assert!(dir.path().join("shared/var/cache").is_dir());
        assert!(std::fs::symlink_metadata(v1_path.join("storage"))
            .unwrap()
            .file_type()
            .is_symlink());

        let v2 = releases.create("v2", T0 + 1000).unwrap();
        let v2_path = releases.path_of(&v2).unwrap();
        std::fs::create_dir_all(v2_path.join("storage")).unwrap();
        std::fs::write(v2_path.join("storage/upload.txt"), "from the repo").unwrap();
        releases.link_shared(&v2, &shared).unwrap();
        assert_eq!(
            std::fs::read_to_string(v2_path.join("storage/upload.txt")).unwrap(),
            "kept"
        );
    }

    #[test]
    fn bad_names_and_shared_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        for bad in ["../x", "", ".hidden", "a/b"] {
            assert!(
                matches!(releases.path_of(bad), Err(ReleaseError::BadName(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            releases.path_of("nope-1"),
            Err(ReleaseError::NoSuchRelease { .. })
        ));
        let v1 = releases.create("v1", T0).unwrap();
        for bad in ["/etc", "../up", "a/../../b", ""] {
            let err = releases.link_shared(&v1, &[bad.to_owned()]).unwrap_err();
            assert!(
                matches!(err, ReleaseError::BadSharedPath(_)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_hand_made_current_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("current")).unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        let v1 = releases.create("v1", T0).unwrap();
        let err = releases.switch(&v1).unwrap_err();
        assert!(err.to_string().contains("is not a symlink"), "{err}");
    }

    #[test]
    fn a_read_only_deploy_path_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let err = Releases::open(&file.join("app")).unwrap_err();
        assert!(err.to_string().starts_with("cannot create"), "{err}");
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn a_corrupt_history_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let releases = Releases::open(dir.path()).unwrap();
        std::fs::write(dir.path().join(".halite/history.json"), "{not json").unwrap();
        let err = releases.history().unwrap_err();
        assert!(
            matches!(err, ReleaseError::History(HistoryError::Corrupt { .. })),
            "{err}"
        );
        assert!(releases.record(record("x-1", "live", T0)).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".halite/history.json")).unwrap(),
            "{not json"
        );
    }
}
