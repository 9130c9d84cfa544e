//! The halite wire protocol: every byte that crosses a socket is defined here.
//!
//! This crate does no I/O and holds no keys. It defines the signed
//! [`Envelope`] every message travels in, the messages themselves
//! ([`message`]), their msgpack codec, job ids ([`Jid`]), the validation of
//! ids and names that end up in paths and logs ([`ident`]), and target
//! expressions ([`target`]) that minions match themselves against.
//! Signing and verification live in `halite-pki`; this crate only says
//! which bytes are signed ([`Envelope::signing_input`]).
#![deny(missing_docs)]

pub mod app;
pub mod catalog;
pub mod config;
pub mod cron;
pub mod envelope;
pub mod error;
pub mod ident;
pub mod jid;
pub mod message;
pub mod release;
pub mod rollout;
pub mod target;
pub mod time;
pub mod words;

pub use envelope::{Envelope, Kind, Message, PROTOCOL_VERSION};
pub use error::ProtoError;
pub use jid::{Jid, JidGenerator};
pub use target::{Target, TargetError, TargetType};
