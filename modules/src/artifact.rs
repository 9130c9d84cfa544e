//! Release artifacts (a WAR, a zipped site) fetched by URL with a
//! required SHA-256: downloaded once into a cache (hashed while it is
//! written), then checked against the job's hash in the prepare stage (a
//! mismatch leaves nothing behind and changes nothing), named by its hash,
//! and kept for the last `keep` versions so a rollback needs no download.
//!
//! The cache is `<dir>/<sha256>` files plus `<dir>/index.json`, the
//! versions newest first (version, hash, URL, file name).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// What an artifact deploy job asks for: `url`, `sha256`, `version`,
/// each checked (Err is the message for a bad-arguments failure).
#[derive(Clone, Debug)]
pub(crate) struct Wanted {
    pub(crate) url: String,
    pub(crate) sha256: String,
    pub(crate) version: String,
}

impl Wanted {
    pub(crate) fn from_args(
        args: &crate::args::Args<'_>,
        fun: &str,
    ) -> Result<Wanted, crate::Outcome> {
        let mut given = Vec::new();
        for key in ["url", "sha256", "version"] {
            given.push(
                args.string(key)
                    .map_err(crate::Outcome::from)?
                    .ok_or_else(|| crate::Outcome::from(args.missing(key)))?,
            );
        }
        let (url, sha256, version) = (given.remove(0), given.remove(0), given.remove(0));
        let problem = [
            validate_version(&version).err(),
            parse_sha256(&sha256).err(),
            (!(url.starts_with("http://") || url.starts_with("https://")))
                .then(|| format!("url {url:?} must be http:// or https://")),
        ]
        .into_iter()
        .flatten()
        .next();
        match problem {
            Some(problem) => Err(crate::Outcome::failed(
                crate::RETCODE_BAD_ARGS,
                format!("{fun}: {problem}"),
            )),
            None => Ok(Wanted {
                sha256: sha256.to_ascii_lowercase(),
                url,
                version,
            }),
        }
    }

    /// The fetch stage of an app's deploy: the file from the app's cache
    /// (`<path>/artifacts`), downloaded if needed but not yet checked,
    /// and the stage's message.
    pub(crate) async fn fetch_for(
        &self,
        app: &halite_proto::app::AppSpec,
    ) -> Result<(Fetched, String), String> {
        let roots = crate::http::extra_roots(app.ca_file.as_deref())?;
        let client = crate::http::client(roots, std::time::Duration::from_secs(app.timeout))?;
        let fetched = cache_of(app)
            .fetch(&client, &self.url, &self.sha256, &self.version)
            .await?;
        let message = if fetched.downloaded() {
            format!("downloaded {}", self.url)
        } else {
            "in the cache".to_owned()
        };
        Ok((fetched, message))
    }

    /// The first step of the prepare stage: the fetched file checked
    /// against the job's hash and kept in the app's cache.
    pub(crate) fn check_for(
        &self,
        app: &halite_proto::app::AppSpec,
        fetched: Fetched,
    ) -> Result<PathBuf, String> {
        cache_of(app).keep(fetched, app.keep_releases)
    }
}

/// An app's artifact cache.
fn cache_of(app: &halite_proto::app::AppSpec) -> ArtifactCache {
    ArtifactCache::new(app.path.join("artifacts"))
}

/// A file fetched for a version and hashed, not yet accepted: see
/// [`ArtifactCache::keep`].
#[derive(Debug)]
pub struct Fetched {
    url: String,
    expected: String,
    actual: String,
    version: String,
    /// The download, beside the cache, when it was not cached already.
    partial: Option<PathBuf>,
}

impl Fetched {
    /// Was it downloaded (rather than found in the cache)?
    pub fn downloaded(&self) -> bool {
        self.partial.is_some()
    }
}

/// One cached version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cached {
    /// The version the job gave (`v3`, `1.4.2`).
    pub version: String,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Where it was fetched from.
    pub url: String,
    /// The file's name in the URL (`shop.war`), for modules that need an extension.
    pub file_name: String,
}

/// An artifact cache directory.
#[derive(Clone, Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
}

/// A hash as the job gives it: 64 hex digits (case ignored).
pub fn parse_sha256(value: &str) -> Result<String, String> {
    let lower = value.trim().to_ascii_lowercase();
    if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(lower)
    } else {
        Err(format!("sha256 {value:?} is not 64 hex digits"))
    }
}

/// A version as a job gives it: used in file and context names, so
/// letters, digits and `.-_` only.
pub fn validate_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !version.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "version {version:?}: use letters, digits and . - _ (at most 64)"
        ))
    }
}

impl ArtifactCache {
    /// The cache in `dir` (created on first fetch).
    pub fn new(dir: PathBuf) -> ArtifactCache {
        ArtifactCache { dir }
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// Cached versions, newest first.
    pub fn index(&self) -> Result<Vec<Cached>, String> {
        match std::fs::read(self.index_path()) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", self.index_path().display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{}: {e}", self.index_path().display())),
        }
    }

    fn write_index(&self, index: &[Cached]) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(index).map_err(|e| e.to_string())?;
        halite_pki::write_atomic(&self.index_path(), &bytes, false)
            .map_err(|e| format!("cannot write the artifact index: {e}"))
    }

    /// The file of a cached version, if it is still there and intact.
    pub fn lookup(&self, version: &str) -> Result<Option<(Cached, PathBuf)>, String> {
        let Some(entry) = self.index()?.into_iter().find(|c| c.version == version) else {
            return Ok(None);
        };
        let path = self.dir.join(&entry.sha256);
        Ok(verify_file(&path, &entry.sha256).then_some((entry, path)))
    }

    /// Step one: the file for `version` from the cache when this hash is
    /// there, else downloaded from `url` with `client` and hashed on the
    /// way. Nothing in the cache changes yet.
    pub async fn fetch(
        &self,
        client: &reqwest::Client,
        url: &str,
        sha256: &str,
        version: &str,
    ) -> Result<Fetched, String> {
        let expected = parse_sha256(sha256)?;
        validate_version(version)?;
        let (actual, partial) = if verify_file(&self.dir.join(&expected), &expected) {
            (expected.clone(), None)
        } else {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
            let partial = self.dir.join(format!("{expected}.partial"));
            let actual = download(client, url, &partial).await.inspect_err(|_| {
                let _ = std::fs::remove_file(&partial);
            })?;
            (actual, Some(partial))
        };
        Ok(Fetched {
            url: url.to_owned(),
            expected,
            actual,
            version: version.to_owned(),
            partial,
        })
    }

    /// Step two: a fetched file whose hash is the one the job expects goes
    /// into the cache as the newest version (the newest `keep` are kept);
    /// any other is deleted, and Err names both hashes.
    pub fn keep(&self, fetched: Fetched, keep: usize) -> Result<PathBuf, String> {
        let path = self.dir.join(&fetched.expected);
        if fetched.actual != fetched.expected {
            if let Some(partial) = &fetched.partial {
                let _ = std::fs::remove_file(partial);
            }
            return Err(format!(
                "{}: SHA-256 is {}, the job expects {}; nothing was changed",
                fetched.url, fetched.actual, fetched.expected
            ));
        }
        if let Some(partial) = &fetched.partial {
            std::fs::rename(partial, &path)
                .map_err(|e| format!("cannot store {}: {e}", path.display()))?;
        }
        let file_name = fetched
            .url
            .rsplit('/')
            .next()
            .and_then(|n| n.split(['?', '#']).next())
            .filter(|n| !n.is_empty())
            .unwrap_or("artifact")
            .to_owned();
        let mut index = self.index()?;
        index.retain(|c| c.version != fetched.version);
        index.insert(
            0,
            Cached {
                version: fetched.version,
                sha256: fetched.expected,
                url: fetched.url,
                file_name,
            },
        );
        let dropped: Vec<Cached> = index.split_off(keep.max(1).min(index.len()));
        self.write_index(&index)?;
        for old in dropped {
            if !index.iter().any(|c| c.sha256 == old.sha256) {
                let _ = std::fs::remove_file(self.dir.join(&old.sha256));
            }
        }
        Ok(path)
    }
}

/// Streams `url` into `file` (synced); the SHA-256 of what was written.
async fn download(client: &reqwest::Client, url: &str, file: &Path) -> Result<String, String> {
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot fetch {url}: {}", crate::http::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("cannot fetch {url}: HTTP {}", response.status()));
    }
    let cannot_write = |e: std::io::Error| format!("cannot write {}: {e}", file.display());
    let mut out = tokio::fs::File::create(file).await.map_err(cannot_write)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {}", crate::http::error_chain(&e)))?;
        digest.update(&chunk);
        out.write_all(&chunk).await.map_err(cannot_write)?;
    }
    out.sync_all().await.map_err(cannot_write)?;
    Ok(hex(digest.finish().as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Does the file at `path` exist with this SHA-256?
fn verify_file(path: &Path, sha256: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| halite_pki::sha256_hex(&bytes) == sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `body` once per connection on loopback; counts requests.
    async fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 2048];
                let _ = socket.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            }
        });
        (format!("http://{addr}/shop.war"), hits)
    }

    #[tokio::test]
    async fn fetched_once_verified_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(dir.path().join("cache"));
        let client = crate::http::client(Vec::new(), std::time::Duration::from_secs(5)).unwrap();
        let (url, hits) = serve(b"war one".to_vec()).await;
        let sum = halite_pki::sha256_hex(b"war one");
        let fetch_and_keep = |url: String, sum: String, version: &'static str| {
            let (cache, client) = (cache.clone(), client.clone());
            async move {
                let fetched = cache.fetch(&client, &url, &sum, version).await?;
                let downloaded = fetched.downloaded();
                cache.keep(fetched, 2).map(|path| (path, downloaded))
            }
        };
        let (path, downloaded) = fetch_and_keep(url.clone(), sum.clone(), "v1")
            .await
            .unwrap();
        assert!(downloaded);
        assert_eq!(std::fs::read(&path).unwrap(), b"war one");
        let (_, downloaded) = fetch_and_keep(url.clone(), sum.to_uppercase(), "v1")
            .await
            .unwrap();
        assert!(!downloaded, "cached by hash");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(cache.lookup("v1").unwrap().unwrap().0.file_name, "shop.war");

        // A wrong hash: fetched fine, refused when kept, with an error
        // naming both; nothing cached, no partial file left.
        let fetched = cache
            .fetch(&client, &url, &"0".repeat(64), "v2")
            .await
            .unwrap();
        let err = cache.keep(fetched, 2).unwrap_err();
        assert!(
            err.contains(&sum) && err.contains("nothing was changed"),
            "{err}"
        );
        assert!(cache.lookup("v2").unwrap().is_none());
        assert_eq!(cache.index().unwrap().len(), 1);
        let files = std::fs::read_dir(dir.path().join("cache")).unwrap().count();
        assert_eq!(files, 2, "the v1 file and the index only");

        for (n, version) in ["v2", "v3"].into_iter().enumerate() {
            let body = format!("war {n}");
            let (url, _) = serve(body.clone().into_bytes()).await;
            fetch_and_keep(url, halite_pki::sha256_hex(body.as_bytes()), version)
                .await
                .unwrap();
        }
        let versions: Vec<String> = cache
            .index()
            .unwrap()
            .into_iter()
            .map(|c| c.version)
            .collect();
        assert_eq!(versions, ["v3", "v2"]);
        assert!(!path.exists(), "v1 pruned");
        assert!(cache.lookup("v1").unwrap().is_none());
    }

    #[test]
    fn bad_hashes_and_versions_are_named() {
        assert!(parse_sha256("abc").unwrap_err().contains("64 hex"));
        assert!(validate_version("../x").is_err());
        assert!(validate_version("v1##2").is_err());
        assert!(validate_version("1.4.2-rc_1").is_ok());
    }
}
