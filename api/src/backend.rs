//! What the API needs from the master, as a trait.

use halite_proto::Jid;

use crate::types::{
    AppReleases, CheckRecord, EventRecord, JobRequest, JobSummary, JobView, KeysView, MinionView,
    PresenceEvent, Submitted,
};
use crate::ApiError;

/// A change to minion keys requested through the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Accept a pending (or rejected) key.
    Accept(String),
    /// Accept every pending key.
    AcceptAll,
    /// Reject a pending or accepted key.
    Reject(String),
    /// Forget a minion's key in every state.
    Delete(String),
}

/// The master, as the HTTP routes see it. Calls are short and
/// synchronous (store reads, a channel send to the publisher).
pub trait Backend: Send + Sync + 'static {
    /// The user a token belongs to, if the token is valid.
    fn authenticate(&self, token: &str) -> Option<String>;
    /// Validates, records and publishes a job.
    fn submit(&self, user: &str, request: JobRequest) -> Result<Submitted, ApiError>;
    /// Jobs newest first.
    fn jobs(&self, limit: usize, before: Option<Jid>) -> Result<Vec<JobSummary>, ApiError>;
    /// One job with its returns.
    fn job(&self, jid: &Jid) -> Result<JobView, ApiError>;
    /// A job's events after a cursor.
    fn events(&self, jid: &Jid, after: Option<u64>) -> Result<Vec<EventRecord>, ApiError>;
    /// Accepted minions with their status.
    fn minions(&self) -> Result<Vec<MinionView>, ApiError>;
    /// Recent up/down transitions, newest first.
    fn presence(&self, limit: usize) -> Result<Vec<PresenceEvent>, ApiError>;
    /// Connectivity-check results at or after `since` (unix ms), newest
    /// first; only failures when `failed_only`.
    fn checks(
        &self,
        since: u64,
        failed_only: bool,
        limit: usize,
    ) -> Result<Vec<CheckRecord>, ApiError>;
    /// Every key and the master's fingerprint.
    fn keys(&self) -> Result<KeysView, ApiError>;
    /// Changes keys; returns the ids affected.
    fn key_action(&self, action: KeyAction) -> Result<Vec<String>, ApiError>;
    /// Every app definition, by name.
    fn apps(&self) -> Result<Vec<halite_proto::app::AppSpec>, ApiError>;
    /// What is live where for one app, and its last `limit` deploys.
    fn app_releases(&self, app: &str, limit: usize) -> Result<AppReleases, ApiError>;
}
