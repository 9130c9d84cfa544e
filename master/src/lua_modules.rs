//! The master's Lua modules: `<lua_modules_dir>/<name>.lua` files, read
//! when a job needs them (so an edit needs no restart), each handed out
//! with a manifest the master signs (name, SHA-256 of the source), which
//! minions check before they load a module and every time they load it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use halite_pki::KeyPair;
use halite_proto::config::ConfigError;
use halite_proto::message::{ModuleManifest, SignedModule};

/// Largest module file the master hands out.
const MAX_MODULE_BYTES: u64 = 1024 * 1024;

/// The Lua modules in one directory.
#[derive(Clone, Debug)]
pub struct LuaCatalog {
    dir: PathBuf,
}

impl LuaCatalog {
    /// The modules in `dir` (which need not exist: then there are none).
    pub fn new(dir: PathBuf) -> LuaCatalog {
        LuaCatalog { dir }
    }

    /// Every module, by name: its source. Err names the file.
    pub fn all(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ConfigError::file(&self.dir, format!("cannot list: {e}"))),
        };
        let mut modules = BTreeMap::new();
        for entry in entries {
            let path = entry
                .map_err(|e| ConfigError::file(&self.dir, format!("cannot list: {e}")))?
                .path();
            let Some(name) = halite_proto::ident::lua_module_file(&path) else {
                continue;
            };
            modules.insert(name.clone(), read_module(&path, &name)?);
        }
        Ok(modules)
    }

    /// One module's source, if the master has it.
    pub fn get(&self, name: &str) -> Result<Option<String>, ConfigError> {
        if halite_proto::ident::validate_lua_module(name).is_err() {
            return Ok(None);
        }
        let path = self.dir.join(format!("{name}.lua"));
        if !path.is_file() {
            return Ok(None);
        }
        read_module(&path, name).map(Some)
    }

    /// Checks every module file at start (names, size, UTF-8); the count.
    pub fn check(&self) -> Result<usize, ConfigError> {
        Ok(self.all()?.len())
    }
}

fn read_module(path: &Path, name: &str) -> Result<String, ConfigError> {
    halite_proto::ident::validate_lua_module(name)
        .map_err(|e| ConfigError::file(path, format!("the file name is the module name: {e}")))?;
    let size = std::fs::metadata(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read: {e}")))?
        .len();
    if size > MAX_MODULE_BYTES {
        return Err(ConfigError::file(
            path,
            format!("{size} bytes; a module may have at most {MAX_MODULE_BYTES}"),
        ));
    }
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(path, format!("cannot read as UTF-8 text: {e}")))
}

/// A module with its manifest signed by `key` as master `master`.
pub fn sign(
    key: &KeyPair,
    master: &str,
    name: &str,
    source: String,
) -> Result<SignedModule, halite_pki::PkiError> {
    let manifest = ModuleManifest {
        name: name.to_owned(),
        sha256: halite_pki::sha256_hex(source.as_bytes()),
        master: master.to_owned(),
    };
    Ok(SignedModule {
        name: name.to_owned(),
        source,
        manifest: key.sign_message(master, &manifest)?.to_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_by_file_name_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = LuaCatalog::new(dir.path().join("lua-modules"));
        assert!(catalog.all().unwrap().is_empty(), "a missing dir has none");
        std::fs::create_dir_all(dir.path().join("lua-modules")).unwrap();
        std::fs::write(dir.path().join("lua-modules/php_app.lua"), "return {}").unwrap();
        std::fs::write(dir.path().join("lua-modules/README.md"), "not a module").unwrap();
        assert_eq!(
            catalog.all().unwrap().keys().collect::<Vec<_>>(),
            ["php_app"]
        );
        assert_eq!(
            catalog.get("php_app").unwrap().as_deref(),
            Some("return {}")
        );
        assert_eq!(catalog.get("nope").unwrap(), None);
        assert_eq!(catalog.get("../etc").unwrap(), None);
        std::fs::write(dir.path().join("lua-modules/Bad-Name.lua"), "return {}").unwrap();
        let err = catalog.check().unwrap_err();
        assert!(err.to_string().contains("Bad-Name.lua"), "{err}");
    }

    #[test]
    fn manifests_are_signed_over_the_hash() {
        let key = KeyPair::generate().unwrap();
        let signed = sign(&key, "m1", "hello", "return {}".into()).unwrap();
        let envelope = halite_proto::Envelope::from_bytes(&signed.manifest).unwrap();
        halite_pki::verify_envelope(&envelope, &key.public()).unwrap();
        let manifest: ModuleManifest = envelope.open().unwrap();
        assert_eq!(manifest.sha256, halite_pki::sha256_hex(b"return {}"));
        assert_eq!(manifest.name, "hello");
    }
}
