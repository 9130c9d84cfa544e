//! halite minion.
