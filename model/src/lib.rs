//! halite's domain records, below HTTP and below the store.
//!
//! What the master records (jobs, returns, events, deploy records,
//! presence, connectivity checks, tokens, audit) and what it answers with
//! (views, pages, statistics). The master's store keeps these records
//! (msgpack, named fields, under a schema version the store checks); the
//! HTTP API serves their serde form as JSON; `master-cli` reads them back.
//! This crate does no I/O: adding a field with `#[serde(default)]` keeps
//! old stores readable, anything else needs a store schema bump.

#![deny(missing_docs)]

pub mod auth;
pub mod fleet;
pub mod job;
pub mod release;
pub mod request;
pub mod rollout;
pub mod schedule;
pub mod stream;

pub use auth::{AuditRecord, LoginToken, TokenRecord};
pub use fleet::{CheckRecord, KeyView, KeysView, MinionRecord, MinionView, PresenceEvent};
pub use job::{
    EventRecord, JobFilter, JobPage, JobRecord, JobRequest, JobSummary, JobView, ReturnOutcome,
    ReturnRecord, Submitted, RETURN_GRACE_MS,
};
pub use release::{AppDayStats, AppReleases, DeployRecord, DeployStats, EnvStats};
pub use request::{
    Action, HookOutcome, NewRequest, ReleaseRequest, RequestKind, RequestState, Rules, Step,
    Transition, TriggerPause, TriggerState, WorkflowError,
};
pub use rollout::{
    FleetRollback, GateResult, NewGroup, NewRollout, Rollout, RolloutAction, RolloutEvent,
    RolloutGroup, RolloutState, RolloutStep, StepPhase,
};
pub use schedule::{NewSchedule, Schedule, ScheduleOrigin, ScheduleRun};
pub use stream::BusEntry;
