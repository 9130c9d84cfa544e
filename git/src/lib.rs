//! halite's side of git, without system `git` or `ssh` (HTTP(S),
//! `git://`, `file://` and local paths through gix): a bare cache per
//! repository, fetched, and the commit a tag, branch or revision names
//! resolved in it. Minions deploy from their cache (`halite-modules`'
//! `git_deploy` exports a commit's tree); the master fetches the same way
//! to bind a release request to the commit it names.
//!
//! Everything here blocks; callers run it on the blocking pool. A fetch
//! stops when `interrupt` is set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use gix::bstr::ByteSlice;
use gix::remote::Direction;

/// A cached repository (what [`open_cache`] gives).
pub use gix::Repository;

/// An error and its causes on one line (`a: b: c`), each cause once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What a deploy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// `tag=v3`.
    Tag(String),
    /// `branch=main`.
    Branch(String),
    /// `rev=<commit id or unique prefix>`.
    Rev(String),
}

impl Wanted {
    /// `tag v3`, `branch main`, `rev 1a2b3c` — for messages.
    pub fn describe(&self) -> String {
        match self {
            Wanted::Tag(t) => format!("tag {t}"),
            Wanted::Branch(b) => format!("branch {b}"),
            Wanted::Rev(r) => format!("rev {r}"),
        }
    }

    /// What the history records as the reference (`v3`, `main`), if any.
    pub fn reference(&self) -> Option<String> {
        match self {
            Wanted::Tag(name) | Wanted::Branch(name) => Some(name.clone()),
            Wanted::Rev(_) => None,
        }
    }
}

/// Where and how to fetch.
pub struct Source<'a> {
    /// The repository URL or local path.
    pub url: &'a str,
    /// HTTPS user and password/token, from the job's sealed arguments.
    pub credentials: Option<(String, String)>,
    /// Extra trusted CA certificates (already read).
    pub roots: Vec<reqwest::Certificate>,
}

/// Why git work failed, worded for the operator reading the return.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The cache could not be created or opened.
    #[error("cannot open the repository cache {}: {message}", path.display())]
    Cache {
        /// The cache directory.
        path: PathBuf,
        /// gix's message.
        message: String,
    },
    /// Talking to the remote failed (unreachable, refused, bad credentials).
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The remote (never with credentials: they are not in URLs).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The fetch was interrupted by cancellation.
    #[error("fetch of {0} was cancelled")]
    Cancelled(String),
    /// The tag, branch or revision does not exist in the repository.
    #[error("{what} not found in {url}{hint}")]
    NotFound {
        /// `tag v9`.
        what: String,
        /// The repository.
        url: String,
        /// `; tags: v1, v2` — what there is.
        hint: String,
    },
    /// Reading objects or writing the release failed.
    #[error("{0}")]
    Export(String),
}

/// Opens the bare cache at `path`, creating it on first use. Git
/// configuration of the machine and user is ignored (isolated), so a
/// deploy does the same on every server.
pub fn open_cache(path: &Path) -> Result<gix::Repository, GitError> {
    let cache_err = |message: String| GitError::Cache {
        path: path.to_path_buf(),
        message,
    };
    let repo = if path.join("HEAD").is_file() {
        gix::open_opts(path, gix::open::Options::isolated())
            .map_err(|e| cache_err(e.to_string()))?
    } else {
        if path.exists() {
            // A half-created cache from an interrupted first fetch.
            std::fs::remove_dir_all(path).map_err(|e| cache_err(e.to_string()))?;
        }
        gix::ThreadSafeRepository::init_opts(
            path,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            gix::open::Options::isolated(),
        )
        .map_err(|e| cache_err(e.to_string()))?
        .to_thread_local()
    };
    let mut repo = repo;
    repo.object_cache_size_if_unset(16 * 1024 * 1024);
    Ok(repo)
}

/// A fetch's summary, for the progress log.
#[derive(Debug)]
pub struct Fetched {
    /// Did new objects arrive?
    pub changed: bool,
    /// Bytes of pack data received.
    pub bytes: u64,
}

/// Fetches every branch and tag of `source` into the cache: branches as
/// `refs/remotes/origin/*`, tags as `refs/tags/*` (moved tags follow).
pub fn fetch(
    repo: &gix::Repository,
    source: &Source<'_>,
    interrupt: &AtomicBool,
) -> Result<Fetched, GitError> {
    let url = source.url.to_owned();
    let fetch_err = |message: String| GitError::Fetch {
        url: url.clone(),
        message,
    };
    let remote = repo
        .remote_at(source.url)
        .map_err(|e| fetch_err(e.to_string()))?
        .with_refspecs(
            [
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            Direction::Fetch,
        )
        .map_err(|e| fetch_err(e.to_string()))?
        .with_fetch_tags(gix::remote::fetch::Tags::None);
    let mut connection = remote
        .connect(Direction::Fetch)
        .map_err(|e| fetch_err(error_chain(&e)))?;
    let credentials = source.credentials.clone();
    connection.set_credentials(move |action| match (action, &credentials) {
        (gix::credentials::helper::Action::Get(context), Some((user, password))) => {
            Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: user.clone(),
                    password: password.clone(),
                    oauth_refresh_token: None,
                },
                next: context.into(),
            }))
        }
        // No credentials configured, or the server's verdict on them
        // (store/erase): nothing to remember, nothing to prompt for.
        _ => Ok(None),
    });
    if source.url.starts_with("https://") || source.url.starts_with("http://") {
        let roots = source.roots.clone();
        let backend = gix::protocol::transport::client::blocking_io::http::reqwest::Options {
            configure_client: Some(Box::new(move |builder| {
                halite_pki::install_tls_provider();
                Ok(builder.tls_certs_merge(roots.clone()))
            })),
            configure_request: None,
        };
        let options = gix::protocol::transport::client::blocking_io::http::Options {
            connect_timeout: Some(Duration::from_secs(30)),
            // A stalled server (under 1 KiB/s for a minute) ends the fetch.
            low_speed_limit_bytes_per_second: 1024,
            low_speed_time_seconds: 60,
            user_agent: Some(concat!("halite/", env!("CARGO_PKG_VERSION")).to_owned()),
            backend: Some(std::sync::Arc::new(std::sync::Mutex::new(backend))),
            ..Default::default()
        };
        connection.set_transport_options(Box::new(options));
    }
    let prepared = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fetch_err(error_chain(&e)))?;
    let outcome = prepared
        .receive(gix::progress::Discard, interrupt)
        .map_err(|e| {
            if interrupt.load(Ordering::Relaxed) {
                GitError::Cancelled(url.clone())
            } else {
                fetch_err(error_chain(&e))
            }
        })?;
    Ok(match outcome.status {
        gix::remote::fetch::Status::Change {
            write_pack_bundle, ..
        } => Fetched {
            changed: true,
            bytes: write_pack_bundle
                .data_path
                .as_ref()
                .and_then(|p| p.metadata().ok())
                .map_or(0, |m| m.len()),
        },
        _ => Fetched {
            changed: false,
            bytes: 0,
        },
    })
}

/// The commit `wanted` names in the cache (tags peeled; a branch is the
/// fetched remote branch).
pub fn resolve(
    repo: &gix::Repository,
    wanted: &Wanted,
    url: &str,
) -> Result<gix::ObjectId, GitError> {
    let not_found = |hint: String| GitError::NotFound {
        what: wanted.describe(),
        url: url.to_owned(),
        hint,
    };
    let reference = match wanted {
        Wanted::Tag(tag) => format!("refs/tags/{tag}"),
        Wanted::Branch(branch) => format!("refs/remotes/origin/{branch}"),
        Wanted::Rev(rev) => {
            let id = repo
                .rev_parse_single(rev.as_str())
                .map_err(|e| not_found(format!(" ({e})")))?;
            return peel_to_commit(repo, id.detach()).map_err(|_| not_found(String::new()));
        }
    };
    match repo.try_find_reference(reference.as_str()) {
        Ok(Some(mut r)) => {
            let id = r
                .peel_to_id()
                .map_err(|e| GitError::Export(format!("cannot peel {reference}: {e}")))?;
            peel_to_commit(repo, id.detach())
                .map_err(|e| GitError::Export(format!("{reference} does not name a commit: {e}")))
        }
        Ok(None) => Err(not_found(available(repo, wanted))),
        Err(e) => Err(GitError::Export(format!("cannot read {reference}: {e}"))),
    }
}

fn peel_to_commit(repo: &gix::Repository, id: gix::ObjectId) -> Result<gix::ObjectId, String> {
    let object = repo.find_object(id).map_err(|e| e.to_string())?;
    let commit = object.peel_to_commit().map_err(|e| e.to_string())?;
    Ok(commit.id)
}

/// `; tags: v1, v2, v3` — the newest names of the same kind, to show what
/// could have been meant.
fn available(repo: &gix::Repository, wanted: &Wanted) -> String {
    let (prefix, label) = match wanted {
        Wanted::Tag(_) => ("refs/tags/", "tags"),
        Wanted::Branch(_) => ("refs/remotes/origin/", "branches"),
        Wanted::Rev(_) => return String::new(),
    };
    let Ok(platform) = repo.references() else {
        return String::new();
    };
    let Ok(iter) = platform.prefixed(prefix) else {
        return String::new();
    };
    let mut names: Vec<String> = iter
        .filter_map(Result::ok)
        .map(|r| {
            r.name()
                .as_bstr()
                .to_str_lossy()
                .trim_start_matches(prefix)
                .to_owned()
        })
        .collect();
    if names.is_empty() {
        return format!("; the repository has no {label}");
    }
    names.sort();
    let shown: Vec<String> = names.iter().rev().take(10).rev().cloned().collect();
    format!("; {label}: {}", shown.join(", "))
}

/// A tag or branch of the cached repository and the commit it names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Version {
    /// `v3`, `main`.
    pub name: String,
    /// `tag` or `branch`.
    pub kind: &'static str,
    /// The commit id.
    pub commit: String,
    /// The commit's time (Unix seconds).
    pub time: i64,
    /// The commit's subject line.
    pub subject: String,
}

/// What a repository offers to release: tags newest first (by their
/// commit's time, then name), then branches by name.
pub fn versions(repo: &gix::Repository) -> Result<Vec<Version>, GitError> {
    let mut out = Vec::new();
    for (prefix, kind) in [("refs/tags/", "tag"), ("refs/remotes/origin/", "branch")] {
        let platform = repo
            .references()
            .map_err(|e| GitError::Export(format!("cannot list references: {e}")))?;
        let refs = platform
            .prefixed(prefix)
            .map_err(|e| GitError::Export(format!("cannot list {prefix}: {e}")))?;
        let mut found = Vec::new();
        for reference in refs.filter_map(Result::ok) {
            let mut reference = reference;
            let name = reference
                .name()
                .as_bstr()
                .to_str_lossy()
                .trim_start_matches(prefix)
                .to_owned();
            if name == "HEAD" {
                continue;
            }
            let Ok(id) = reference.peel_to_id() else {
                continue;
            };
            let Ok(commit) = peel_to_commit(repo, id.detach()) else {
                continue; // a tag of a tree or blob: nothing to release
            };
            let info = commit_info(repo, commit)?;
            found.push(Version {
                name,
                kind,
                commit: info.id,
                time: info.time,
                subject: info.subject,
            });
        }
        if kind == "tag" {
            found.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.name.cmp(&a.name)));
        } else {
            found.sort_by(|a, b| a.name.cmp(&b.name));
        }
        out.extend(found);
    }
    Ok(out)
}

/// One commit, for a change list.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CommitInfo {
    /// Commit id.
    pub id: String,
    /// First line of the message.
    pub subject: String,
    /// `Name <email>`.
    pub author: String,
    /// Author time (Unix seconds).
    pub time: i64,
}

/// One changed file and its line counts (none for binary files).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileChange {
    /// Path in the repository.
    pub path: String,
    /// `added`, `deleted` or `modified`.
    pub change: &'static str,
    /// Lines added (None when binary).
    pub added: Option<u32>,
    /// Lines removed (None when binary).
    pub removed: Option<u32>,
}

/// What going from one commit to another changes: the commits reachable
/// from `to` but not from `from` (newest first, at most `limit`), and the
/// files whose content differs between the two trees.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChangeSet {
    /// The commit live now, if any.
    pub from: Option<String>,
    /// The commit asked for.
    pub to: String,
    /// The commits in between, newest first.
    pub commits: Vec<CommitInfo>,
    /// More commits than `limit` were in between.
    pub truncated: bool,
    /// The files changed, by path.
    pub files: Vec<FileChange>,
    /// A `to` older than `from` (the change goes backwards: a rollback).
    pub backwards: bool,
}

fn parse_id(id: &str) -> Result<gix::ObjectId, GitError> {
    gix::ObjectId::from_hex(id.as_bytes())
        .map_err(|e| GitError::Export(format!("{id:?} is not a commit id: {e}")))
}

fn commit_info(repo: &gix::Repository, id: gix::ObjectId) -> Result<CommitInfo, GitError> {
    let read =
        |e: &dyn std::fmt::Display| GitError::Export(format!("cannot read commit {id}: {e}"));
    let commit = repo
        .find_object(id)
        .map_err(|e| read(&e))?
        .try_into_commit()
        .map_err(|e| read(&e))?;
    let message = commit.message().map_err(|e| read(&e))?;
    let author = commit.author().map_err(|e| read(&e))?;
    Ok(CommitInfo {
        id: id.to_string(),
        subject: message.summary().to_str_lossy().into_owned(),
        author: format!(
            "{} <{}>",
            author.name.to_str_lossy().trim(),
            author.email.to_str_lossy().trim()
        ),
        time: author.seconds(),
    })
}

/// The change set from `from` (the live commit, if any) to `to`.
pub fn changes(
    repo: &gix::Repository,
    from: Option<&str>,
    to: &str,
    limit: usize,
) -> Result<ChangeSet, GitError> {
    let to_id = parse_id(to)?;
    let from_id = from.map(parse_id).transpose()?;
    let walk_err =
        |e: &dyn std::fmt::Display| GitError::Export(format!("cannot walk history: {e}"));
    let mut commits = Vec::new();
    let mut truncated = false;
    let walk = repo
        .rev_walk([to_id])
        .with_hidden(from_id)
        .all()
        .map_err(|e| walk_err(&e))?;
    for info in walk {
        let info = info.map_err(|e| walk_err(&e))?;
        if commits.len() >= limit {
            truncated = true;
            break;
        }
        commits.push(commit_info(repo, info.id)?);
    }
    let backwards = from_id.is_some_and(|from_id| commits.is_empty() && from_id != to_id);
    let tree_of = |id: gix::ObjectId| -> Result<gix::Tree<'_>, GitError> {
        repo.find_object(id)
            .map_err(|e| GitError::Export(format!("cannot read {id}: {e}")))?
            .peel_to_tree()
            .map_err(|e| GitError::Export(format!("cannot read the tree of {id}: {e}")))
    };
    let new_tree = tree_of(to_id)?;
    let old_tree = match from_id {
        Some(id) => tree_of(id)?,
        None => repo.empty_tree(),
    };
    let diff_err =
        |e: &dyn std::fmt::Display| GitError::Export(format!("cannot compare trees: {e}"));
    let mut cache = repo
        .diff_resource_cache_for_tree_diff()
        .map_err(|e| diff_err(&e))?;
    let mut files = Vec::new();
    let mut platform = old_tree.changes().map_err(|e| diff_err(&e))?;
    platform.options(|o| {
        o.track_path().track_rewrites(None);
    });
    platform
        .for_each_to_obtain_tree(&new_tree, |change| {
            use gix::object::tree::diff::Change;
            let kind = match &change {
                Change::Addition { entry_mode, .. } if !entry_mode.is_tree() => "added",
                Change::Deletion { entry_mode, .. } if !entry_mode.is_tree() => "deleted",
                Change::Modification { entry_mode, .. } if !entry_mode.is_tree() => "modified",
                _ => return Ok(std::ops::ControlFlow::Continue(())),
            };
            let counts = change
                .diff(&mut cache)
                .ok()
                .and_then(|mut p| p.line_counts().ok())
                .flatten();
            files.push(FileChange {
                path: change.location().to_str_lossy().into_owned(),
                change: kind,
                added: counts.map(|c| c.insertions),
                removed: counts.map(|c| c.removals),
            });
            cache.clear_resource_cache_keep_allocation();
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .map_err(|e| diff_err(&e))?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(ChangeSet {
        from: from_id.map(|id| id.to_string()),
        to: to_id.to_string(),
        commits,
        truncated,
        files,
        backwards,
    })
}
