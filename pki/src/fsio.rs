//! Small file helpers shared by the key files and the key store: bounded
//! reads, atomic writes (temp file + rename) and private directories.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::PkiError;

/// Key files are a few hundred bytes; anything much larger is not ours.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Builds the `Io` error for `path`.
pub(crate) fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io {
        action,
        path,
        source,
    }
}

/// Reads a key file as text, refusing oversized or non-UTF-8 content.
pub(crate) fn read_key_text(path: &Path) -> Result<String, PkiError> {
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(PkiError::KeyFile {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_KEY_FILE} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|_| PkiError::KeyFile {
        path: path.to_path_buf(),
        reason: "not UTF-8 text".into(),
    })
}

/// Does `path` exist (as anything)? An unreadable parent counts as an error,
/// not as "no", so a permission problem is never mistaken for a missing key.
pub(crate) fn exists(path: &Path) -> Result<bool, PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Removes a file; a file that is already gone is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<bool, PkiError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Creates `dir` and its parents; new directories are 0700 on unix, since
/// they hold key material or decide who is trusted.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_err("create directory", dir))
}

/// Writes `bytes` to `path` so that readers see the old file or the whole
/// new one, never a torn key: write a temp file beside it, fsync, rename.
/// `private` files get mode 0600 on unix (from creation, so the secret is
/// never readable by others even briefly); others 0644.
///
/// A file that is replaced keeps its owner and group: root editing the
/// users file of a master that runs as `halite` (`master-cli users add`)
/// must not leave the master unable to read it.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    write_replacing(path, bytes, private, true)
}

/// Like [`write_atomic`] without the two syncs: readers still never see a
/// torn file, but a crash may leave it missing or empty. For what its
/// writer sends again by itself (a minion's key presented at auth: the
/// two syncs cost about 1.6 ms per key on this project's test machine).
pub(crate) fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<(), PkiError> {
    write_replacing(path, bytes, false, false)
}

fn write_replacing(path: &Path, bytes: &[u8], private: bool, sync: bool) -> Result<(), PkiError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| PkiError::Io {
            action: "write",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"),
        })?;
    // Starts with '.', so it is never a valid id and the key store skips it.
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = write_new(&tmp, bytes, private, sync)
        .and_then(|()| keep_owner(path, &tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io_err("rename into place", path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    if !sync {
        return Ok(());
    }
    // Make the rename itself durable. Some file systems refuse to fsync a
    // directory; the file is in place either way, so that is not an error.
    #[cfg(unix)]
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Gives `tmp` the owner and group of `path` when `path` exists and they
/// differ (only root can, and only root needs to).
#[cfg(unix)]
fn keep_owner(path: &Path, tmp: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::MetadataExt;
    let old = match fs::metadata(path) {
        Ok(old) => old,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    let new = fs::metadata(tmp).map_err(io_err("inspect", tmp))?;
    if (old.uid(), old.gid()) == (new.uid(), new.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(tmp, Some(old.uid()), Some(old.gid()))
        .map_err(io_err("keep the owner of", path))
}

#[cfg(not(unix))]
fn keep_owner(_path: &Path, _tmp: &Path) -> Result<(), PkiError> {
    Ok(())
}

fn write_new(tmp: &Path, bytes: &[u8], private: bool, sync: bool) -> Result<(), PkiError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(tmp).map_err(io_err("create", tmp))?;
    file.write_all(bytes).map_err(io_err("write", tmp))?;
    if sync {
        file.sync_all().map_err(io_err("sync", tmp))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_replaced_file_keeps_its_owner_and_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        write_atomic(&path, b"old", true).unwrap();
        let me = fs::metadata(&path).unwrap().uid();
        // Only root can give a file away: then the file belongs to
        // "nobody", as the users file belongs to `halite` on a master.
        let owner = if me == 0 { 65534 } else { me };
        std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap_or_else(|e| {
            assert_ne!(me, 0, "root can chown: {e}");
        });
        let before = fs::metadata(&path).unwrap();

        write_atomic(&path, b"new", true).unwrap();
        let after = fs::metadata(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_ne!(before.ino(), after.ino(), "replaced, not rewritten");
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
        assert_eq!(after.permissions().mode() & 0o777, 0o600);
    }
}
