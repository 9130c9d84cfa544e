//! HTTP API of the halite master.
