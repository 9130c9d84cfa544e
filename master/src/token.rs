//! The local root token: how `master-cli` on the master host proves it
//! may use the API, like Salt's local client reading the root key.

use std::path::Path;

/// Reads the token at `path`, or creates a new random one readable by its
/// owner only.
pub fn ensure(path: &Path) -> std::io::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        let token = existing.trim().to_owned();
        if token.len() >= 32 {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
    let token = hex::encode(bytes);
    halite_pki::write_atomic(path, token.as_bytes(), true).map_err(std::io::Error::other)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_is_created_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cli.token");
        let first = super::ensure(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(super::ensure(&path).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
