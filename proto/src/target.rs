//! Target expressions: which minions a job is for.
//!
//! Each minion matches a job's target against its own id and grains; the
//! master evaluates the same expression against what it knows to compute
//! the set of minions it expects to return.

use serde::{Deserialize, Serialize};

/// How a target expression is read (`tgt_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetType {
    /// Shell glob on the minion id: `web*`, `db[12]`, `app-?`.
    #[default]
    Glob,
    /// Comma-separated ids: `web01,web02`.
    List,
    /// Regular expression on the minion id (anchored at both ends).
    Pcre,
    /// `key:glob` on a grain, nested keys joined by `:`: `os:Linux`.
    Grain,
    /// Salt compound: `G@os:Linux and web* or L@db1,db2`, with `not` and parentheses.
    Compound,
}

impl std::str::FromStr for TargetType {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "glob" => TargetType::Glob,
            "list" => TargetType::List,
            "pcre" => TargetType::Pcre,
            "grain" => TargetType::Grain,
            "compound" => TargetType::Compound,
            other => {
                return Err(TargetError::new(format!(
                    "unknown tgt_type {other:?}: expected glob, list, pcre, grain or compound"
                )))
            }
        })
    }
}

impl std::fmt::Display for TargetType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TargetType::Glob => "glob",
            TargetType::List => "list",
            TargetType::Pcre => "pcre",
            TargetType::Grain => "grain",
            TargetType::Compound => "compound",
        })
    }
}

/// A target expression that cannot be parsed, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(String);

impl TargetError {
    /// An error with this explanation.
    pub fn new(message: impl Into<String>) -> Self {
        TargetError(message.into())
    }
}
