//! Strict patterns for every name that reaches a path, a log line or a query.
//!
//! Half of Salt's CVEs were path traversal through minion ids and jids; here
//! a name is checked once, where it enters, and rejected with the rule it
//! broke.

use crate::ProtoError;

const MAX_ID: usize = 128;

fn shown(value: &str) -> String {
    value.chars().take(64).collect()
}

/// Checks a minion or master id: 1–128 of `A-Z a-z 0-9 . _ -`, starting
/// with a letter or digit (so never `.`/`..` and never a hidden file).
pub fn validate_id(value: &str) -> Result<(), ProtoError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_ID
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProtoError::Invalid {
            what: "id",
            value: shown(value),
            rule: "1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit",
        })
    }
}

/// Checks the name a release is recorded under: an app's id, or a
/// scheduled task's path (`\Folder\Name`: `\` first, at most 300
/// characters, no control characters).
pub fn validate_release_name(value: &str) -> Result<(), ProtoError> {
    if validate_id(value).is_ok() {
        return Ok(());
    }
    let task = value.starts_with('\\')
        && value.chars().count() <= 300
        && !value.chars().any(char::is_control);
    if task {
        Ok(())
    } else {
        Err(ProtoError::Invalid {
            what: "release name",
            value: shown(value),
            rule: "an app id, or a task path starting with \\",
        })
    }
}

/// One part of a function name: lower-case `[a-z_][a-z0-9_]*`.
fn name_part(p: &str) -> bool {
    let mut bytes = p.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
}

/// Checks a Lua module name (its file name without `.lua`): what the
/// first part of a function name may be, at most 64 characters.
pub fn validate_lua_module(value: &str) -> Result<(), ProtoError> {
    if value.len() <= 64 && name_part(value) {
        Ok(())
    } else {
        Err(ProtoError::Invalid {
            what: "Lua module name",
            value: shown(value),
            rule: "lower-case letters, digits and _, starting with a letter or _",
        })
    }
}

/// The module a file in a Lua modules directory would be (its stem, for
/// a `.lua` file; the name is not checked here). Master and minion list
/// their directories the same way through this.
pub fn lua_module_file(path: &std::path::Path) -> Option<String> {
    if path.extension().and_then(|e| e.to_str()) != Some("lua") {
        return None;
    }
    Some(path.file_stem()?.to_string_lossy().into_owned())
}

/// Checks a function name: `module` or `module.function`, each part
/// lower-case `[a-z_][a-z0-9_]*`, at most 128 characters.
pub fn validate_function(value: &str) -> Result<(), ProtoError> {
    let part = name_part;
    let mut parts = value.split('.');
    let ok = value.len() <= MAX_ID
        && parts.next().is_some_and(part)
        && parts.next().is_none_or(part)
        && parts.next().is_none();
    if ok {
        Ok(())
    } else {
        Err(ProtoError::Invalid {
            what: "function name",
            value: shown(value),
            rule: "`module` or `module.function`, lower-case letters, digits and _",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_are_app_ids_or_task_paths() {
        assert!(validate_release_name("shop").is_ok());
        assert!(validate_release_name("\\Halite\\Rotate logs").is_ok());
        assert!(validate_release_name("../shop").is_err());
        assert!(validate_release_name("\\bad\nline").is_err());
        assert!(validate_release_name("").is_err());
    }

    #[test]
    fn lua_module_files_are_named_by_their_stem() {
        use std::path::Path;
        let name = |p: &str| lua_module_file(Path::new(p));
        assert_eq!(
            name("/srv/lua-modules/php_app.lua").as_deref(),
            Some("php_app")
        );
        assert_eq!(name("Deploy-App.lua").as_deref(), Some("Deploy-App"));
        assert_eq!(name("notes.txt"), None);
        assert_eq!(name("lua"), None);
    }

    #[test]
    fn ids_accept_host_names() {
        for ok in ["web01", "web-01.example.com", "A_b", "1"] {
            validate_id(ok).unwrap();
        }
    }

    #[test]
    fn ids_refuse_traversal_and_separators() {
        for bad in [
            "", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "a b", "a\0", "é",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_id(&"a".repeat(129)).is_err());
    }

    #[test]
    fn functions_are_module_dot_function() {
        for ok in ["test.ping", "git_deploy", "cmd.run_all", "_x.y2"] {
            validate_function(ok).unwrap();
        }
        for bad in ["", "Test.ping", "a.b.c", "a.", ".a", "a-b", "a/b", "1a"] {
            assert!(validate_function(bad).is_err(), "{bad:?} accepted");
        }
    }
}
