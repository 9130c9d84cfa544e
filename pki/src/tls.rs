//! The TLS crypto provider every HTTPS client in halite uses.
//!
//! rustls is built with `ring` (the same library as the rest of this
//! crate, and no C toolchain for aws-lc on Windows). reqwest is built
//! without a provider of its own, so whichever binary makes an HTTP client
//! — the minion fetching git or checking health, `master-cli`, the bench —
//! calls [`install_tls_provider`] first; without it reqwest panics when it
//! builds a client, even for plain `http://`.

use std::sync::Once;

/// Installs ring as rustls' process-wide default provider, once; later
/// calls do nothing.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means something else installed a provider first: that one
        // serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn installing_twice_is_harmless() {
        super::install_tls_provider();
        super::install_tls_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
