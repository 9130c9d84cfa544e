//! halite master.
