//! Keys, signatures and session keys.
