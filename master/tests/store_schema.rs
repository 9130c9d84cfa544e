//! The store's schema version: a store written before it was kept is
//! migrated in place and reads back whole; a newer one is refused with a
//! message that says what to do.

use std::path::{Path, PathBuf};

use halite_master::store::{schema_of, EngineError, Store, StoreError, SCHEMA_VERSION};

/// Opens again, once sled has let go of the directory's lock: it does so
/// when the last background write of a handle dropped a moment ago ends,
/// not at the drop.
fn when_released<T, E>(mut open: impl FnMut() -> Result<T, E>, held: impl Fn(&E) -> bool) -> T
where
    E: std::fmt::Debug,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match open() {
            Err(e) if held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other.unwrap_or_else(|e| panic!("open: {e:?}")),
        }
    }
}

/// Whether sled failed as it does when another handle holds the lock
/// (sled reports that as an I/O error of kind `Other`, so any I/O error
/// is tried again until the deadline, then reported).
fn locked(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Other))
}

/// The raw sled database, once released.
fn raw(path: &Path) -> sled::Db {
    when_released(|| sled::open(path), locked)
}

/// The store, once released (its refusal, if it refuses).
fn store(path: &Path) -> Result<Store, StoreError> {
    when_released(
        || match Store::open(path) {
            Err(StoreError::Engine {
                source: EngineError::Sled(e),
                ..
            }) if locked(&e) => Err(e),
            other => Ok(other),
        },
        locked,
    )
}

/// A writable copy of a fixture store.
fn copy_fixture(name: &str) -> (tempfile::TempDir, PathBuf) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("store");
    std::fs::create_dir_all(&to).unwrap();
    for file in std::fs::read_dir(&from).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
    }
    (dir, to)
}

#[test]
fn a_store_from_before_schema_versions_is_migrated_and_reads_back_whole() {
    let (_dir, path) = copy_fixture("store-v0");
    {
        let db = raw(&path);
        assert_eq!(
            schema_of(&db).unwrap(),
            None,
            "the fixture predates versions"
        );
    }
    let store = store(&path).unwrap();
    let jobs = store.jobs(1000, None).unwrap();
    assert!(jobs.len() >= 6, "{} jobs", jobs.len());
    let mut returns = 0;
    for job in &jobs {
        assert!(
            !job.envelope.is_empty(),
            "job {} lost its envelope",
            job.record.jid
        );
        returns += store.returns(&job.record.jid).unwrap().len();
        store.events(&job.record.jid, None).unwrap();
    }
    assert!(returns >= 8, "{returns} returns");
    // Schema 2's function index is built from the jobs already stored.
    let deploys: Vec<_> = jobs
        .iter()
        .filter(|j| j.record.fun.starts_with("git_deploy"))
        .map(|j| j.record.jid.clone())
        .collect();
    assert!(!deploys.is_empty());
    let indexed: Vec<_> = store
        .scan_jobs_of(|fun| fun.starts_with("git_deploy"), None)
        .unwrap()
        .map(|item| item.unwrap().0.jid)
        .collect();
    assert_eq!(indexed, deploys);
    let deploys = store.deploys("shop", 100).unwrap();
    assert_eq!(deploys.len(), 3, "{deploys:?}");
    assert!(deploys.iter().any(|d| d.action == "rollback"));
    assert_eq!(store.minions().unwrap().len(), 3);
    assert!(store.stream_head().unwrap() > 0);
    assert!(!store.stream_after(0, None, 10_000).unwrap().is_empty());
    drop(store);
    let db = raw(&path);
    assert_eq!(schema_of(&db).unwrap(), Some(SCHEMA_VERSION));
}

#[test]
fn a_new_store_is_stamped_with_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    drop(store(&dir.path().join("store")).unwrap());
    let db = raw(&dir.path().join("store"));
    assert_eq!(schema_of(&db).unwrap(), Some(SCHEMA_VERSION));
}

#[test]
fn a_store_from_a_newer_halite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    {
        let db = raw(&path);
        let meta = db.open_tree("meta").unwrap();
        meta.insert(b"schema", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    match store(&path) {
        Err(StoreError::NewerSchema { found, known, .. }) => {
            assert_eq!(found, SCHEMA_VERSION + 1);
            assert_eq!(known, SCHEMA_VERSION);
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a newer store was opened"),
    }
    let db = raw(&path);
    assert_eq!(schema_of(&db).unwrap(), Some(SCHEMA_VERSION + 1));
}
