//! HTTP API of the halite master, independent of the master's internals.
//!
//! The routes ([`router`]) speak JSON under `/v1`; what they need from the
//! master is the [`Backend`] trait, which `halite-master` implements and
//! tests implement with fakes. This crate never opens the store or a
//! ZeroMQ socket.
#![deny(missing_docs)]

pub mod backend;
pub mod error;
pub mod routes;
pub(crate) mod salt;
pub mod sse;
pub mod throttle;
pub mod types;
pub use halite_proto::words;

pub use backend::{AppAction, Backend, Grant, KeyAction, PublicKeyText};
pub use error::ApiError;
pub use routes::{router, router_with};
