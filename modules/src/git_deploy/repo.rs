//! The minion's side of git: a bare cache per deploy path, fetched and
//! resolved with `halite-git`, and a commit's tree exported into a fresh
//! release directory.
//!
//! Everything here blocks; callers run it on the blocking pool. A fetch
//! stops when `interrupt` is set (the job was cancelled or timed out).

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use std::collections::HashMap;

use gix::bstr::ByteSlice;
use gix::object::tree::EntryKind;

pub(crate) use halite_git::{fetch, open_cache, resolve, GitError, Source, Wanted};

use crate::releases::Stamp;

/// What an export did, for the progress log and the release manifest.
#[derive(Debug, Default)]
pub(crate) struct Exported {
    /// Regular files and symlinks in the release.
    pub(crate) files: usize,
    /// Of those, how many were hard-linked from the live release.
    pub(crate) linked: usize,
    /// Bytes of file content written (linked files not counted).
    pub(crate) bytes: u64,
    /// Submodule paths left empty (their commits are not fetched).
    pub(crate) submodules: Vec<String>,
    /// Each regular file's stamp right after the export.
    pub(crate) stamps: Vec<(String, Stamp)>,
}

/// The live release an export may share unchanged files with: its
/// directory, its tree (path → blob and kind) and its manifest.
pub(crate) struct Base {
    dir: PathBuf,
    entries: HashMap<String, (gix::ObjectId, EntryKind)>,
    manifest: HashMap<String, Stamp>,
}

impl Base {
    /// The base for release directory `dir` deployed from `revision`, if
    /// the cache has that commit.
    pub(crate) fn new(
        repo: &gix::Repository,
        revision: &str,
        dir: PathBuf,
        manifest: HashMap<String, Stamp>,
    ) -> Option<Base> {
        let commit = gix::ObjectId::from_hex(revision.as_bytes()).ok()?;
        let entries = tree_map(repo, commit).ok()?;
        Some(Base {
            dir,
            entries,
            manifest,
        })
    }

    /// The file to hard-link for `relative`, if the live release has the
    /// same blob there, as a regular file, unchanged since its export.
    fn unchanged(&self, relative: &str, oid: gix::ObjectId, kind: EntryKind) -> Option<PathBuf> {
        if !matches!(kind, EntryKind::Blob | EntryKind::BlobExecutable) {
            return None;
        }
        let (base_oid, base_kind) = self.entries.get(relative)?;
        if *base_oid != oid || *base_kind != kind {
            return None;
        }
        let path = self.dir.join(relative);
        let recorded = self.manifest.get(relative)?;
        (Stamp::of(&path).ok()? == *recorded).then_some(path)
    }
}

/// One entry of a commit's tree, with a checked relative path.
struct TreeEntry {
    path: PathBuf,
    oid: gix::ObjectId,
    kind: EntryKind,
}

/// Every entry of `commit`'s tree, parents before children; a path that
/// could leave the release is an error.
fn tree_entries(repo: &gix::Repository, commit: gix::ObjectId) -> Result<Vec<TreeEntry>, GitError> {
    let export_err =
        |what: &str, e: &dyn std::fmt::Display| GitError::Export(format!("{what}: {e}"));
    let tree = repo
        .find_object(commit)
        .map_err(|e| export_err("cannot read the commit", &e))?
        .peel_to_tree()
        .map_err(|e| export_err("cannot read the commit's tree", &e))?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| export_err("cannot walk the tree", &e))?;
    recorder
        .records
        .into_iter()
        .map(|entry| {
            Ok(TreeEntry {
                path: safe_relative(entry.filepath.as_bstr())?,
                oid: entry.oid,
                kind: entry.mode.kind(),
            })
        })
        .collect()
}

/// `commit`'s tree as path → (blob, kind), the form the manifests and
/// the live release are compared in.
fn tree_map(
    repo: &gix::Repository,
    commit: gix::ObjectId,
) -> Result<HashMap<String, (gix::ObjectId, EntryKind)>, GitError> {
    Ok(tree_entries(repo, commit)?
        .into_iter()
        .map(|e| (e.path.to_string_lossy().into_owned(), (e.oid, e.kind)))
        .collect())
}

/// Writes the tree of `commit` into the empty directory `dest`: files with
/// their executable bit, symlinks as symlinks, submodules as empty
/// directories. Paths that could escape `dest` (`..`, `.git`) are refused.
/// A file identical to the one in `base` (same blob, unchanged since its
/// export) is hard-linked instead of written. Work is spread over a few
/// threads; `interrupt` stops it.
pub(crate) fn export(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    dest: &Path,
    base: Option<&Base>,
    interrupt: &AtomicBool,
) -> Result<Exported, GitError> {
    let mut files = Vec::new();
    let mut exported = Exported::default();
    for entry in tree_entries(repo, commit)? {
        let target = dest.join(&entry.path);
        match entry.kind {
            EntryKind::Tree | EntryKind::Commit => {
                std::fs::create_dir(&target).map_err(|e| {
                    GitError::Export(format!("cannot create {}: {e}", target.display()))
                })?;
                if entry.kind == EntryKind::Commit {
                    exported
                        .submodules
                        .push(entry.path.to_string_lossy().into_owned());
                }
            }
            kind => files.push((entry.path, kind, entry.oid)),
        }
    }
    exported.files = files.len();
    let results = write_files(repo, dest, &files, base, interrupt);
    for result in results {
        let (bytes, linked, stamps) = result?;
        exported.bytes += bytes;
        exported.linked += linked;
        exported.stamps.extend(stamps);
    }
    Ok(exported)
}

/// What one export thread did: bytes written, files linked, stamps.
type Written = (u64, usize, Vec<(String, Stamp)>);

/// Writes (or links from `base`) `files` under `dest` on a few threads.
fn write_files(
    repo: &gix::Repository,
    dest: &Path,
    files: &[(PathBuf, EntryKind, gix::ObjectId)],
    base: Option<&Base>,
    interrupt: &AtomicBool,
) -> Vec<Result<Written, GitError>> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
        .min(files.len().max(1));
    let shared = repo.clone().into_sync();
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                let shared = &shared;
                scope.spawn(move || -> Result<Written, GitError> {
                    let mut repo = shared.to_thread_local();
                    repo.object_cache_size_if_unset(4 * 1024 * 1024);
                    let (mut bytes, mut linked, mut stamps) = (0u64, 0usize, Vec::new());
                    for (relative, kind, oid) in part {
                        if interrupt.load(Ordering::Relaxed) {
                            return Err(GitError::Export("export cancelled".into()));
                        }
                        let target = dest.join(relative);
                        let key = relative.to_string_lossy().into_owned();
                        let from = base.and_then(|b| b.unchanged(&key, *oid, *kind));
                        match from.map(|from| std::fs::hard_link(from, &target)) {
                            Some(Ok(())) => linked += 1,
                            // No base, a changed file, or a link refused
                            // (another filesystem): write it.
                            _ => bytes += write_entry(&repo, &target, *kind, *oid)?,
                        }
                        if *kind != EntryKind::Link {
                            let stamp = Stamp::of(&target).map_err(|e| {
                                GitError::Export(format!("cannot stat {}: {e}", target.display()))
                            })?;
                            stamps.push((key, stamp));
                        }
                    }
                    Ok((bytes, linked, stamps))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(GitError::Export("an export thread panicked".into())))
            })
            .collect()
    })
}

/// Rewrites `paths` of the release in `dest` from `commit` (replacing
/// what is there, so a file shared with another release is unshared
/// first) and returns their new stamps. For a rollback target whose files
/// were changed since export.
pub(crate) fn restore(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    dest: &Path,
    paths: &[String],
) -> Result<Vec<(String, Stamp)>, GitError> {
    let entries = tree_map(repo, commit)?;
    let mut stamps = Vec::with_capacity(paths.len());
    for path in paths {
        let (oid, kind) = entries
            .get(path)
            .ok_or_else(|| GitError::Export(format!("{path} is not in commit {commit}")))?;
        let target = dest.join(path);
        match std::fs::remove_file(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(GitError::Export(format!(
                    "cannot replace {}: {e}",
                    target.display()
                )))
            }
        }
        write_entry(repo, &target, *kind, *oid)?;
        let stamp = Stamp::of(&target)
            .map_err(|e| GitError::Export(format!("cannot stat {}: {e}", target.display())))?;
        stamps.push((path.clone(), stamp));
    }
    Ok(stamps)
}

fn write_entry(
    repo: &gix::Repository,
    target: &Path,
    kind: EntryKind,
    oid: gix::ObjectId,
) -> Result<u64, GitError> {
    let blob = repo
        .find_object(oid)
        .map_err(|e| GitError::Export(format!("cannot read object {oid}: {e}")))?;
    let data = &blob.data;
    let write_err =
        |e: std::io::Error| GitError::Export(format!("cannot write {}: {e}", target.display()));
    match kind {
        EntryKind::Link => {
            let link = std::str::from_utf8(data).map_err(|_| {
                GitError::Export(format!("symlink {} is not UTF-8", target.display()))
            })?;
            make_symlink(link, target).map_err(write_err)?;
        }
        EntryKind::BlobExecutable => {
            std::fs::write(target, data).map_err(write_err)?;
            set_executable(target).map_err(write_err)?;
        }
        _ => std::fs::write(target, data).map_err(write_err)?,
    }
    Ok(data.len() as u64)
}

#[cfg(unix)]
fn make_symlink(link: &str, target: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(link, target)
}

/// Windows: a symlink needs a privilege a service may lack; the link's
/// text is written as a file, like git with `core.symlinks=false`.
#[cfg(not(unix))]
fn make_symlink(link: &str, target: &Path) -> std::io::Result<()> {
    std::fs::write(target, link)
}

#[cfg(unix)]
fn set_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// A tree path as a relative path that stays under the release: no `..`,
/// no absolute parts, no `.git` (which would plant hooks or config).
fn safe_relative(path: &gix::bstr::BStr) -> Result<PathBuf, GitError> {
    let text = path
        .to_str()
        .map_err(|_| GitError::Export(format!("path {path:?} in the tree is not UTF-8")))?;
    let relative = PathBuf::from(text);
    let ok = !text.is_empty()
        && !text.contains(['\n', '\r', '\t'])
        && relative.components().all(|c| match c {
            Component::Normal(part) => !part.eq_ignore_ascii_case(".git"),
            _ => false,
        });
    if ok {
        Ok(relative)
    } else {
        Err(GitError::Export(format!(
            "refusing tree path {text:?}: it would leave the release directory"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_tree_paths_are_refused() {
        for bad in [
            "a\nb",
            "../x",
            "a/../../x",
            "/etc/passwd",
            ".git/hooks/post-checkout",
            "a/.GIT/config",
            "",
        ] {
            assert!(safe_relative(bad.into()).is_err(), "{bad}");
        }
        for ok in ["a", "a/b.txt", ".env.example", "x/.gitignore"] {
            assert!(safe_relative(ok.into()).is_ok(), "{ok}");
        }
    }

    #[test]
    fn wanted_describes_itself() {
        assert_eq!(Wanted::Tag("v3".into()).describe(), "tag v3");
        assert_eq!(
            Wanted::Branch("main".into()).reference().as_deref(),
            Some("main")
        );
        assert_eq!(Wanted::Rev("abc".into()).reference(), None);
    }
}
