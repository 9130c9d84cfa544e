//! The release history of an artifact-based app on a minion
//! (`<path>/history.json`, newest first): which version went live when,
//! so rollback knows where to go back to.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Entries kept per app.
const KEEP: usize = 100;

/// One deploy or rollback.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) version: String,
    pub(crate) action: String,
    pub(crate) result: String,
    pub(crate) jid: String,
    pub(crate) at: u64,
}

impl Entry {
    pub(crate) fn new(call: &crate::Call, version: &str, action: &str, result: &str) -> Entry {
        Entry {
            version: version.to_owned(),
            action: action.to_owned(),
            result: result.to_owned(),
            jid: call.jid.to_string(),
            at: halite_proto::time::now_ms(),
        }
    }
}

/// The history under `dir` (empty if none yet).
pub(crate) fn read(dir: &Path) -> Vec<Entry> {
    std::fs::read(dir.join("history.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Adds `entry` at the front.
pub(crate) fn record(dir: &Path, entry: Entry) -> Result<(), String> {
    let mut history = read(dir);
    history.insert(0, entry);
    history.truncate(KEEP);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(&history).map_err(|e| e.to_string())?;
    halite_pki::write_atomic(&dir.join("history.json"), &bytes, false)
        .map_err(|e| format!("cannot write the history: {e}"))
}

/// The version live now and the one live before it.
pub(crate) fn live_and_previous(history: &[Entry]) -> (Option<String>, Option<String>) {
    let mut live = history
        .iter()
        .filter(|e| e.result == "live")
        .map(|e| e.version.clone());
    let current = live.next();
    let previous = live.find(|v| Some(v) != current.as_ref());
    (current, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_previous_from_history() {
        let e = |v: &str, r: &str| Entry {
            version: v.into(),
            action: "deploy".into(),
            result: r.into(),
            jid: String::new(),
            at: 0,
        };
        let history = vec![
            e("v3", "rolled_back"),
            e("v2", "live"),
            e("v2", "live"),
            e("v1", "live"),
        ];
        assert_eq!(
            live_and_previous(&history),
            (Some("v2".into()), Some("v1".into()))
        );
        assert_eq!(live_and_previous(&[]), (None, None));
    }
}
