//! Execution modules.
