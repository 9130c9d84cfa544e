//! The Lua modules this minion has: installed only when signed by a
//! master it trusts (a pinned key under `pki_dir/masters/`) and matching
//! the signed SHA-256, kept under `data_dir/lua_modules/` beside their
//! signed manifests, and checked again every time they are loaded (at
//! start), so a module edited or dropped on the server is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use halite_modules::lua::{LuaConfig, LuaModule};
use halite_modules::{Outcome, Registry, RETCODE_ERROR};
use halite_pki::PublicKey;
use halite_proto::message::{ModuleManifest, SignedModule};
use halite_proto::Envelope;
use serde_json::{json, Map, Value};

/// What is known of one module.
#[derive(Clone, Debug)]
enum State {
    /// Loaded and registered.
    Loaded {
        sha256: String,
        functions: Vec<String>,
    },
    /// On disk but refused (the reason).
    Refused(String),
}

/// What an install did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// New here.
    Installed,
    /// Another version was replaced.
    Updated,
    /// This version was already loaded.
    Unchanged,
}

/// The minion's Lua modules.
pub struct LuaStore {
    dir: PathBuf,
    masters_dir: PathBuf,
    config: Arc<LuaConfig>,
    registry: Arc<Registry>,
    modules: Mutex<BTreeMap<String, State>>,
}

impl LuaStore {
    /// Loads every stored module that still checks out and registers it.
    pub fn open(
        dir: PathBuf,
        masters_dir: PathBuf,
        config: LuaConfig,
        registry: Arc<Registry>,
    ) -> LuaStore {
        let store = LuaStore {
            dir,
            masters_dir,
            config: Arc::new(config),
            registry,
            modules: Mutex::new(BTreeMap::new()),
        };
        store.load_all();
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, State>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = halite_proto::ident::lua_module_file(&path) else {
                continue;
            };
            let loaded = self.load_from_disk(&name);
            let state = match loaded {
                Ok(module) => {
                    tracing::info!(module = %name, sha256 = %module.sha256(), "Lua module loaded");
                    self.register(module)
                }
                Err(reason) => {
                    tracing::warn!(module = %name, %reason, "refused a Lua module on disk");
                    State::Refused(reason)
                }
            };
            self.lock().insert(name, state);
        }
    }

    fn paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.lua")),
            self.dir.join(format!("{name}.manifest")),
        )
    }

    fn load_from_disk(&self, name: &str) -> Result<LuaModule, String> {
        halite_proto::ident::validate_lua_module(name).map_err(|e| e.to_string())?;
        let (source_path, manifest_path) = self.paths(name);
        let source = std::fs::read_to_string(&source_path)
            .map_err(|e| format!("cannot read {}: {e}", source_path.display()))?;
        let manifest = std::fs::read(&manifest_path).map_err(|_| {
            format!(
                "no signed manifest ({}): not installed by a master",
                manifest_path.display()
            )
        })?;
        self.verify(name, &source, &manifest)?;
        self.build(name, &source)
    }

    fn build(&self, name: &str, source: &str) -> Result<LuaModule, String> {
        LuaModule::new(
            name,
            source,
            self.config.clone(),
            Arc::downgrade(&self.registry),
        )
    }

    fn register(&self, module: LuaModule) -> State {
        let state = State::Loaded {
            sha256: module.sha256().to_owned(),
            functions: halite_modules::Module::functions(&module)
                .iter()
                .map(|f| (*f).to_owned())
                .collect(),
        };
        self.registry.register(Arc::new(module));
        state
    }

    /// Checks that `manifest` is signed by a pinned master key and names
    /// this module and the SHA-256 of `source`.
    fn verify(&self, name: &str, source: &str, manifest: &[u8]) -> Result<(), String> {
        let envelope = Envelope::from_bytes(manifest).map_err(|e| format!("manifest: {e}"))?;
        let keys = pinned_keys(&self.masters_dir);
        if keys.is_empty() {
            return Err("no pinned master key to check the signature with".into());
        }
        if !keys
            .iter()
            .any(|key| halite_pki::verify_envelope(&envelope, key).is_ok())
        {
            return Err("manifest not signed by this minion's master".into());
        }
        let manifest: ModuleManifest = envelope.open().map_err(|e| format!("manifest: {e}"))?;
        if manifest.name != name {
            return Err(format!("the manifest is for module {:?}", manifest.name));
        }
        let actual = halite_pki::sha256_hex(source.as_bytes());
        if actual != manifest.sha256 {
            return Err(format!(
                "SHA-256 {actual} does not match the signed {}",
                manifest.sha256
            ));
        }
        Ok(())
    }

    /// Installs a signed module unless this version is already loaded.
    pub fn install(&self, module: &SignedModule) -> Result<Change, String> {
        let name = module.name.as_str();
        halite_proto::ident::validate_lua_module(name).map_err(|e| e.to_string())?;
        let sha256 = halite_pki::sha256_hex(module.source.as_bytes());
        let previous = self.lock().get(name).cloned();
        if let Some(State::Loaded { sha256: loaded, .. }) = &previous {
            if *loaded == sha256 {
                return Ok(Change::Unchanged);
            }
        }
        self.verify(name, &module.source, &module.manifest)
            .map_err(|reason| format!("module {name} refused: {reason}"))?;
        let built = self
            .build(name, &module.source)
            .map_err(|reason| format!("module {name} does not load: {reason}"))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let (source_path, manifest_path) = self.paths(name);
        halite_pki::write_atomic(&manifest_path, &module.manifest, false)
            .and_then(|()| halite_pki::write_atomic(&source_path, module.source.as_bytes(), false))
            .map_err(|e| format!("cannot store module {name}: {e}"))?;
        let state = self.register(built);
        self.lock().insert(name.to_owned(), state);
        let change = match previous {
            Some(State::Loaded { .. }) => Change::Updated,
            _ => Change::Installed,
        };
        tracing::info!(module = name, sha256 = %sha256, ?change, "Lua module installed");
        Ok(change)
    }

    /// `saltutil.sync_modules`: installs every module the master sent and
    /// removes the ones it no longer has.
    pub fn sync(&self, modules: &[SignedModule]) -> Outcome {
        let mut report: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for module in modules {
            match self.install(module) {
                Ok(Change::Installed) => report
                    .entry("installed")
                    .or_default()
                    .push(json!(module.name)),
                Ok(Change::Updated) => report
                    .entry("updated")
                    .or_default()
                    .push(json!(module.name)),
                Ok(Change::Unchanged) => report
                    .entry("unchanged")
                    .or_default()
                    .push(json!(module.name)),
                Err(reason) => report
                    .entry("failed")
                    .or_default()
                    .push(json!({ "module": module.name, "error": reason })),
            }
        }
        let keep: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        let stale: Vec<String> = self
            .lock()
            .keys()
            .filter(|name| !keep.contains(&name.as_str()))
            .cloned()
            .collect();
        for name in stale {
            let (source_path, manifest_path) = self.paths(&name);
            let _ = std::fs::remove_file(source_path);
            let _ = std::fs::remove_file(manifest_path);
            self.registry.unregister(&name);
            self.lock().remove(&name);
            tracing::info!(module = %name, "Lua module removed (the master no longer has it)");
            report.entry("removed").or_default().push(json!(name));
        }
        let failed = report.contains_key("failed");
        let data = json!(report);
        if failed {
            Outcome {
                success: false,
                retcode: RETCODE_ERROR,
                data,
            }
        } else {
            Outcome::ok(data)
        }
    }

    /// `saltutil.list_modules`: each module's version, and against the
    /// master's versions (`master`: name → SHA-256) whether it is current.
    pub fn list(&self, master: Option<&Map<String, Value>>) -> Outcome {
        let mut out = Map::new();
        for (name, state) in self.lock().iter() {
            let entry = match state {
                State::Loaded { sha256, functions } => {
                    let status = match master.and_then(|m| m.get(name)).and_then(|v| v.as_str()) {
                        Some(theirs) if theirs == sha256 => "current",
                        Some(_) => "outdated",
                        None if master.is_some() => "not on the master",
                        None => "loaded",
                    };
                    json!({ "sha256": sha256, "functions": functions, "status": status })
                }
                State::Refused(reason) => json!({ "status": "refused", "error": reason }),
            };
            out.insert(name.clone(), entry);
        }
        if let Some(master) = master {
            for name in master.keys() {
                if !out.contains_key(name) {
                    out.insert(name.clone(), json!({ "status": "missing" }));
                }
            }
        }
        Outcome::ok(Value::Object(out))
    }
}

/// Every master key this minion has pinned.
fn pinned_keys(dir: &Path) -> Vec<PublicKey> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("pub"))
        .filter_map(|p| PublicKey::read_file(&p).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "local M = {}\nfunction M.hi() return 'hi' end\nreturn M\n";

    fn signed(key: &halite_pki::KeyPair, name: &str, source: &str) -> SignedModule {
        let manifest = ModuleManifest {
            name: name.into(),
            sha256: halite_pki::sha256_hex(source.as_bytes()),
            master: "m".into(),
        };
        SignedModule {
            name: name.into(),
            source: source.into(),
            manifest: key.sign_message("m", &manifest).unwrap().to_bytes(),
        }
    }

    fn store(dir: &Path, master: &halite_pki::KeyPair) -> (Arc<Registry>, LuaStore) {
        let masters = dir.join("pki/masters");
        std::fs::create_dir_all(&masters).unwrap();
        master
            .public()
            .write_file(&masters.join("m_4506.pub"))
            .unwrap();
        let registry = Arc::new(Registry::new());
        let store = LuaStore::open(
            dir.join("lua"),
            masters,
            LuaConfig::default(),
            registry.clone(),
        );
        (registry, store)
    }

    #[test]
    fn signed_modules_install_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let master = halite_pki::KeyPair::generate().unwrap();
        let (registry, store) = store(dir.path(), &master);
        assert_eq!(
            store.install(&signed(&master, "hello", SOURCE)).unwrap(),
            Change::Installed
        );
        assert_eq!(
            store.install(&signed(&master, "hello", SOURCE)).unwrap(),
            Change::Unchanged
        );
        assert!(registry.resolve("hello.hi").is_ok());
        let newer = SOURCE.replace("'hi'", "'hey'");
        assert_eq!(
            store.install(&signed(&master, "hello", &newer)).unwrap(),
            Change::Updated
        );
        drop(store);
        let (registry, store) = self::store(dir.path(), &master);
        assert!(
            registry.resolve("hello.hi").is_ok(),
            "loaded again at start"
        );
        assert_eq!(store.list(None).data["hello"]["status"], "loaded");
    }

    #[test]
    fn forged_tampered_and_unsigned_modules_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let master = halite_pki::KeyPair::generate().unwrap();
        let (registry, store) = store(dir.path(), &master);
        let impostor = halite_pki::KeyPair::generate().unwrap();
        let err = store
            .install(&signed(&impostor, "evil", SOURCE))
            .unwrap_err();
        assert!(err.contains("not signed by this minion's master"), "{err}");
        let mut swapped = signed(&master, "hello", SOURCE);
        swapped.source = SOURCE.replace("'hi'", "os.execute('id')");
        let err = store.install(&swapped).unwrap_err();
        assert!(err.contains("does not match the signed"), "{err}");
        let err = store
            .install(&signed(&master, "other", SOURCE).clone_as("hello"))
            .unwrap_err();
        assert!(err.contains("manifest is for module \"other\""), "{err}");
        assert!(registry.resolve("evil.hi").is_err());

        // Tampered on disk, and dropped in without a manifest: refused at load.
        store.install(&signed(&master, "hello", SOURCE)).unwrap();
        std::fs::write(
            dir.path().join("lua/hello.lua"),
            SOURCE.replace("'hi'", "'owned'"),
        )
        .unwrap();
        std::fs::write(dir.path().join("lua/dropped.lua"), SOURCE).unwrap();
        drop(store);
        let (registry, store) = self::store(dir.path(), &master);
        assert!(registry.resolve("hello.hi").is_err());
        assert!(registry.resolve("dropped.hi").is_err());
        let listed = store.list(None).data;
        assert_eq!(listed["hello"]["status"], "refused");
        assert!(
            listed["hello"]["error"]
                .as_str()
                .unwrap()
                .contains("does not match"),
            "{listed}"
        );
        assert!(
            listed["dropped"]["error"]
                .as_str()
                .unwrap()
                .contains("no signed manifest"),
            "{listed}"
        );
        // A signed copy from the master heals it.
        assert_eq!(
            store.install(&signed(&master, "hello", SOURCE)).unwrap(),
            Change::Installed
        );
        assert!(registry.resolve("hello.hi").is_ok());
    }

    #[test]
    fn sync_installs_and_removes_and_list_compares() {
        let dir = tempfile::tempdir().unwrap();
        let master = halite_pki::KeyPair::generate().unwrap();
        let (registry, store) = store(dir.path(), &master);
        store.install(&signed(&master, "old", SOURCE)).unwrap();
        let out = store.sync(&[
            signed(&master, "hello", SOURCE),
            signed(&master, "broken", "return 1"),
        ]);
        assert!(!out.success);
        assert_eq!(out.data["installed"], json!(["hello"]));
        assert_eq!(out.data["removed"], json!(["old"]));
        assert!(out.data["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("must return a table"));
        assert!(registry.resolve("old.hi").is_err());
        let versions: Map<String, Value> = [
            (
                "hello".to_owned(),
                json!(halite_pki::sha256_hex(SOURCE.as_bytes())),
            ),
            ("php_app".to_owned(), json!("abc")),
        ]
        .into_iter()
        .collect();
        let listed = store.list(Some(&versions)).data;
        assert_eq!(listed["hello"]["status"], "current");
        assert_eq!(listed["php_app"]["status"], "missing");
    }

    trait CloneAs {
        fn clone_as(&self, name: &str) -> SignedModule;
    }
    impl CloneAs for SignedModule {
        fn clone_as(&self, name: &str) -> SignedModule {
            SignedModule {
                name: name.into(),
                ..self.clone()
            }
        }
    }
}
