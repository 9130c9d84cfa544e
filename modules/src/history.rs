//! The release history of a deploy path on a minion, one format for every
//! deploy kind: `<path>/.halite/history.json`, a JSON array of
//! [`ReleaseRecord`]s, oldest first, at most [`KEEP`] of them. Written
//! only by the release driver (`kit::ReleaseRun`) while it holds the path's
//! deploy lock.
//!
//! It answers "what is live, and where does a plain rollback go": a
//! release that went live and was taken back is marked `rolled_back` in
//! every record, so a rollback never returns to it.
//!
//! Earlier releases of the artifact modules (java_tomcat, dotnet_iis) kept
//! `<path>/history.json`, newest first, with `version` for the release;
//! it is read in (and removed on the next write) when the new file does
//! not exist yet.

use std::io::Write;
use std::path::{Path, PathBuf};

use halite_proto::release::{ReleaseAction, ReleaseResult};
use serde::{Deserialize, Serialize};

/// Records kept per path (the oldest go first).
pub const KEEP: usize = 1000;

/// One deploy or rollback on a path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// The release's name: a directory under `releases/` (git), a
    /// version (artifacts).
    pub release: String,
    /// The revision deployed (a commit id, an artifact's SHA-256).
    pub revision: String,
    /// What was asked for (tag, branch, version), if anything.
    pub reference: Option<String>,
    /// The job that did it.
    pub jid: String,
    /// Deploy or rollback.
    pub action: ReleaseAction,
    /// `live` (it went live), `failed`, or `rolled_back` (it was live and
    /// was taken back: never where a rollback goes).
    pub result: ReleaseResult,
    /// When (unix ms).
    pub at: u64,
    /// How long the action took.
    pub duration_ms: u64,
}

/// Why the history cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file is not a history (left as it is, for a person to look at).
    #[error("corrupt history {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A filesystem operation failed.
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

/// The history of one deploy path.
#[derive(Clone, Debug)]
pub struct History {
    root: PathBuf,
}

/// The artifact modules' earlier entry (`<path>/history.json`).
#[derive(Deserialize)]
struct LegacyEntry {
    version: String,
    action: ReleaseAction,
    result: ReleaseResult,
    jid: String,
    at: u64,
}

impl History {
    /// The history of the deploy path `root`.
    pub fn at(root: &Path) -> History {
        History {
            root: root.to_path_buf(),
        }
    }

    fn file(&self) -> PathBuf {
        self.root.join(".halite").join("history.json")
    }

    fn legacy_file(&self) -> PathBuf {
        self.root.join("history.json")
    }

    /// Every record, oldest first (empty if there is none yet).
    pub fn read(&self) -> Result<Vec<ReleaseRecord>, HistoryError> {
        let path = self.file();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HistoryError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.read_legacy(),
            Err(source) => Err(HistoryError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    fn read_legacy(&self) -> Result<Vec<ReleaseRecord>, HistoryError> {
        let path = self.legacy_file();
        let Ok(bytes) = std::fs::read(&path) else {
            return Ok(Vec::new());
        };
        let entries: Vec<LegacyEntry> =
            serde_json::from_slice(&bytes).map_err(|e| HistoryError::Corrupt {
                path,
                reason: e.to_string(),
            })?;
        Ok(entries
            .into_iter()
            .rev()
            .map(|e| ReleaseRecord {
                reference: Some(e.version.clone()),
                release: e.version,
                revision: String::new(),
                jid: e.jid,
                action: e.action,
                result: e.result,
                at: e.at,
                duration_ms: 0,
            })
            .collect())
    }

    /// Appends a record. A record without a revision (a rollback marking
    /// the release it left) takes the release's revision and reference
    /// from its earlier records; a `rolled_back` record marks the
    /// release's earlier `live` records too, so it is known bad.
    pub fn record(&self, mut record: ReleaseRecord) -> Result<(), HistoryError> {
        let mut history = self.read()?;
        if record.revision.is_empty() {
            if let Some(known) = history
                .iter()
                .rev()
                .find(|r| r.release == record.release && !r.revision.is_empty())
            {
                record.revision = known.revision.clone();
                record.reference = record.reference.or_else(|| known.reference.clone());
            }
        }
        if record.result == ReleaseResult::RolledBack {
            for earlier in history.iter_mut().filter(|r| r.release == record.release) {
                if earlier.result == ReleaseResult::Live {
                    earlier.result = ReleaseResult::RolledBack;
                }
            }
        }
        history.push(record);
        let excess = history.len().saturating_sub(KEEP);
        history.drain(..excess);
        self.write(&history)?;
        let _ = std::fs::remove_file(self.legacy_file());
        Ok(())
    }

    fn write(&self, history: &[ReleaseRecord]) -> Result<(), HistoryError> {
        let path = self.file();
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| HistoryError::Io {
                action,
                path,
                source,
            }
        };
        let dir = self.root.join(".halite");
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(history).map_err(|e| HistoryError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        // Written beside and renamed over: a reader (or a crash) sees the
        // old history or the new one. Not fsynced on purpose: on ext4
        // (data=ordered) an fsync here waits for the whole freshly
        // exported release to reach the disk, which made a 5 000-file
        // redeploy take seconds instead of a few hundred ms; the release
        // tree and `current` are not fsynced either, so after a power
        // loss history and tree stay consistent with each other.
        let mut file = std::fs::File::create(&tmp).map_err(io("write", &tmp))?;
        file.write_all(&bytes).map_err(io("write", &tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io("replace", &path))
    }
}

/// The release live now and the one live before it (which was not taken
/// back), by the history.
pub fn live_and_previous(history: &[ReleaseRecord]) -> (Option<String>, Option<String>) {
    let mut live = history
        .iter()
        .rev()
        .filter(|r| r.result == ReleaseResult::Live)
        .map(|r| r.release.clone());
    let current = live.next();
    let previous = live.find(|v| Some(v) != current.as_ref());
    (current, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(release: &str, result: ReleaseResult) -> ReleaseRecord {
        ReleaseRecord {
            release: release.into(),
            revision: format!("rev-{release}"),
            reference: Some(release.into()),
            jid: String::new(),
            action: ReleaseAction::Deploy,
            result,
            at: 0,
            duration_ms: 0,
        }
    }

    #[test]
    fn live_and_previous_from_history() {
        let history = vec![
            record("v1", ReleaseResult::Live),
            record("v2", ReleaseResult::Live),
            record("v2", ReleaseResult::Live),
            record("v3", ReleaseResult::RolledBack),
        ];
        assert_eq!(
            live_and_previous(&history),
            (Some("v2".into()), Some("v1".into()))
        );
        assert_eq!(live_and_previous(&[]), (None, None));
    }

    #[test]
    fn a_rolled_back_release_is_marked_bad_in_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::at(dir.path());
        history.record(record("v1", ReleaseResult::Live)).unwrap();
        history.record(record("v2", ReleaseResult::Live)).unwrap();
        history
            .record(record("v2", ReleaseResult::RolledBack))
            .unwrap();
        let read = history.read().unwrap();
        assert_eq!(read.len(), 3);
        assert!(read
            .iter()
            .filter(|r| r.release == "v2")
            .all(|r| r.result == ReleaseResult::RolledBack));
        assert_eq!(live_and_previous(&read), (Some("v1".into()), None));
    }

    #[test]
    fn the_history_keeps_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::at(dir.path());
        let many: Vec<ReleaseRecord> = (0..KEEP)
            .map(|i| record(&format!("v{i}"), ReleaseResult::Live))
            .collect();
        history.write(&many).unwrap();
        history.record(record("last", ReleaseResult::Live)).unwrap();
        let read = history.read().unwrap();
        assert_eq!(read.len(), KEEP);
        assert_eq!(read[0].release, "v1");
        assert_eq!(read[KEEP - 1].release, "last");
    }

    #[test]
    fn the_artifact_modules_earlier_history_is_read_in_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("history.json"),
            r#"[{"version":"v2","action":"deploy","result":"live","jid":"j2","at":2},
                {"version":"v1","action":"deploy","result":"live","jid":"j1","at":1}]"#,
        )
        .unwrap();
        let history = History::at(dir.path());
        let read = history.read().unwrap();
        let releases: Vec<&str> = read.iter().map(|r| r.release.as_str()).collect();
        assert_eq!(releases, ["v1", "v2"]);
        assert_eq!(
            live_and_previous(&read),
            (Some("v2".into()), Some("v1".into()))
        );
        history.record(record("v3", ReleaseResult::Live)).unwrap();
        assert!(!dir.path().join("history.json").exists());
        assert_eq!(history.read().unwrap().len(), 3);
    }

    #[test]
    fn a_corrupt_history_is_an_error_and_stays_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".halite")).unwrap();
        std::fs::write(dir.path().join(".halite/history.json"), "{not json").unwrap();
        let history = History::at(dir.path());
        assert!(matches!(history.read(), Err(HistoryError::Corrupt { .. })));
        assert!(history.record(record("v1", ReleaseResult::Live)).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(".halite/history.json")).unwrap(),
            "{not json"
        );
    }
}
