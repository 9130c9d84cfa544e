//! TLS set-up shared by everything a module fetches over HTTPS (git
//! repositories, health URLs, artifacts).
//!
//! rustls with the ring provider (no C toolchain needed to build the
//! minion, on Linux or Windows), certificates checked against the
//! operating system's trust store, plus an app's own CA file for in-house
//! certificate authorities.

use std::path::Path;
use std::time::Duration;

/// The certificates in `ca_file` (PEM, one or more), to be trusted on top
/// of the system's. Err is a message naming the file.
pub(crate) fn extra_roots(ca_file: Option<&Path>) -> Result<Vec<reqwest::Certificate>, String> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("ca_file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// An async client for one-off requests (health checks), trusting the
/// system roots plus `roots`, giving up after `timeout`.
pub(crate) fn client(
    roots: Vec<reqwest::Certificate>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    halite_pki::install_tls_provider();
    reqwest::Client::builder()
        .tls_certs_merge(roots)
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("halite-minion/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up an HTTP client: {e}"))
}

/// An error and its causes on one line (shared with `halite-git`).
pub(crate) use halite_git::error_chain;
