//! Unpacking a zipped site into its release directory: every entry must
//! stay inside it (no `..`, no absolute paths: zip-slip), and a release
//! counts as complete only once a marker is written after the last file,
//! so an interrupted unpack is redone, never used.

use std::io::Read;
use std::path::Path;

/// Written last into a release directory.
pub(crate) const COMPLETE: &str = ".halite-complete";

/// Largest total size unpacked (a zip bomb stops here).
const MAX_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Is `dir` a completely unpacked release?
pub(crate) fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

/// Unpacks `zip` into `dir` (created; an incomplete one is removed first).
pub(crate) fn unpack(zip: &Path, dir: &Path) -> Result<usize, String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    let file =
        std::fs::File::open(zip).map_err(|e| format!("cannot open {}: {e}", zip.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| format!("{} is not a zip file: {e}", zip.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut total = 0u64;
    let mut files = 0;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| format!("zip entry {i}: {e}"))?;
        let Some(relative) = entry.enclosed_name() else {
            return Err(format!(
                "zip entry {:?} would land outside the release (zip-slip); refused",
                entry.name()
            ));
        };
        let target = dir.join(relative);
        if entry.is_dir() {
            std::fs::create_dir_all(&target)
                .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let mut out = std::fs::File::create(&target)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        let copied = std::io::copy(&mut (&mut entry).take(MAX_BYTES - total + 1), &mut out)
            .map_err(|e| format!("cannot unpack {}: {e}", target.display()))?;
        total += copied;
        if total > MAX_BYTES {
            return Err(format!(
                "{} unpacks to more than {MAX_BYTES} bytes; refused",
                zip.display()
            ));
        }
        files += 1;
    }
    std::fs::write(dir.join(COMPLETE), b"")
        .map_err(|e| format!("cannot finish {}: {e}", dir.display()))?;
    Ok(files)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A zip with `files` (name, content).
    pub(crate) fn zip_of(path: &Path, files: &[(&str, &str)]) {
        let file = std::fs::File::create(path).unwrap();
        let mut writer = zip::ZipWriter::new(file);
        for (name, content) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            writer.write_all(content.as_bytes()).unwrap();
        }
        writer.finish().unwrap();
    }

    #[test]
    fn unpacks_and_marks_complete() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("site.zip");
        zip_of(&zip, &[("index.html", "v1"), ("bin/app.dll", "MZ")]);
        let release = dir.path().join("releases/v1");
        assert_eq!(unpack(&zip, &release).unwrap(), 2);
        assert!(is_complete(&release));
        assert_eq!(
            std::fs::read_to_string(release.join("bin/app.dll")).unwrap(),
            "MZ"
        );
    }

    #[test]
    fn zip_slip_and_garbage_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let zip = dir.path().join("evil.zip");
        zip_of(&zip, &[("../../evil.txt", "x")]);
        let err = unpack(&zip, &dir.path().join("r")).unwrap_err();
        assert!(err.contains("zip-slip"), "{err}");
        assert!(!dir.path().join("evil.txt").exists());
        assert!(!is_complete(&dir.path().join("r")));
        std::fs::write(dir.path().join("bad.zip"), "not a zip").unwrap();
        let err = unpack(&dir.path().join("bad.zip"), &dir.path().join("r2")).unwrap_err();
        assert!(err.contains("not a zip"), "{err}");
    }
}
