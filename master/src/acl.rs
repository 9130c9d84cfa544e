//! Who may run what where: per-user grants in Salt's eauth shape, from
//! the master config's `[acl]` table.
//!
//! ```toml
//! [acl]
//! deployer = [{ "web*" = ["git_deploy.*", "test.ping"] }]
//! ops = [".*", "@jobs", "@wheel"]
//! ```
//!
//! Each entry of a user's list is either a function pattern allowed on
//! every minion (`".*"`), a table of target → patterns (the target is a
//! compound expression, so a plain glob works), or a special grant:
//! `@wheel` (key management), `@jobs` / `@runner` (salt-api's runner
//! client). Function patterns are regular expressions matched against the
//! whole function name, as Salt does. A job is allowed only when *every*
//! minion its target expands to is covered by one grant for the function.
//! The local CLI token (`root`) may do everything.

use std::collections::BTreeMap;
use std::path::Path;

use halite_proto::config::ConfigError;
use halite_proto::{Target, TargetType};

/// Special grants (the `@name` entries Salt uses for non-minion clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// Key management (`/v1/keys` changes, salt-api's wheel client).
    Wheel,
    /// Job lookups through salt-api's runner client (`jobs.*`).
    Jobs,
    /// Every runner function (implies [`Special::Jobs`]).
    Runner,
    /// May deploy during a freeze window when asking to (audited).
    FreezeOverride,
}

impl Special {
    fn parse(name: &str) -> Option<Special> {
        match name {
            "@wheel" => Some(Special::Wheel),
            "@jobs" => Some(Special::Jobs),
            "@runner" => Some(Special::Runner),
            "@freeze_override" => Some(Special::FreezeOverride),
            _ => None,
        }
    }
}

/// One grant: functions allowed on the minions a target matches (`None`
/// target: every minion).
#[derive(Clone, Debug)]
struct Grant {
    target: Option<(String, Target)>,
    functions: Vec<regex::Regex>,
}

/// Grants of one user.
#[derive(Clone, Debug, Default)]
struct UserGrants {
    grants: Vec<Grant>,
    specials: Vec<Special>,
    /// The entries as written, for salt-api's login answer (`perms`).
    written: Vec<serde_json::Value>,
}

/// The parsed `[acl]` table.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    /// By user name, or by group as `name%` (Salt's shape).
    users: BTreeMap<String, UserGrants>,
    /// `[groups]`: members by group name.
    groups: BTreeMap<String, Vec<String>>,
}

/// Why a request is refused (a 403 for the API).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Denied(pub String);

impl Acl {
    /// Parses the `[acl]` and `[groups]` tables of `file`; errors name
    /// the key (`acl.deployer[0]`, `groups.leads`). An `[acl]` entry
    /// `leads%` grants every member of the group `leads`.
    pub fn parse(
        file: &Path,
        table: &toml::Table,
        groups_table: &toml::Table,
    ) -> Result<Acl, ConfigError> {
        let mut groups = BTreeMap::new();
        for (group, members) in groups_table {
            let key = format!("groups.{group}");
            halite_proto::ident::validate_id(group)
                .map_err(|e| ConfigError::key(file, &key, e.to_string()))?;
            let members = members
                .as_array()
                .and_then(|list| {
                    list.iter()
                        .map(|m| m.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ConfigError::key(file, &key, "must be a list of user names like [\"alice\"]")
                })?;
            groups.insert(group.clone(), members);
        }
        let mut users = BTreeMap::new();
        for (user, entries) in table {
            let key = format!("acl.{user}");
            if let Some(group) = user.strip_suffix('%') {
                if !groups.contains_key(group) {
                    return Err(ConfigError::key(
                        file,
                        &key,
                        format!("no group {group:?} in [groups]"),
                    ));
                }
            }
            let entries = entries.as_array().ok_or_else(|| {
                ConfigError::key(
                    file,
                    &key,
                    "must be a list like [{ \"web*\" = [\"test.ping\"] }]",
                )
            })?;
            let mut grants = UserGrants::default();
            for (index, entry) in entries.iter().enumerate() {
                let key = format!("{key}[{index}]");
                grants.written.push(toml_to_json(entry));
                match entry {
                    toml::Value::String(text) if text.starts_with('@') => {
                        let special = Special::parse(text).ok_or_else(|| {
                            ConfigError::key(
                                file,
                                &key,
                                format!("unknown grant {text:?}; use @wheel, @jobs, @runner or @freeze_override"),
                            )
                        })?;
                        grants.specials.push(special);
                    }
                    toml::Value::String(pattern) => grants.grants.push(Grant {
                        target: None,
                        functions: vec![function_pattern(file, &key, pattern)?],
                    }),
                    toml::Value::Table(by_target) => {
                        for (target, functions) in by_target {
                            let key = format!("{key}.{target}");
                            let parsed = Target::parse(TargetType::Compound, target)
                                .map_err(|e| ConfigError::key(file, &key, e.to_string()))?;
                            let patterns: Vec<&str> = match functions {
                                toml::Value::String(one) => vec![one.as_str()],
                                toml::Value::Array(many) => many
                                    .iter()
                                    .map(|v| {
                                        v.as_str().ok_or_else(|| {
                                            ConfigError::key(
                                                file,
                                                &key,
                                                "function patterns must be strings",
                                            )
                                        })
                                    })
                                    .collect::<Result<_, _>>()?,
                                _ => {
                                    return Err(ConfigError::key(
                                        file,
                                        &key,
                                        "must be a function pattern or a list of them",
                                    ))
                                }
                            };
                            let functions = patterns
                                .into_iter()
                                .map(|p| function_pattern(file, &key, p))
                                .collect::<Result<_, _>>()?;
                            grants.grants.push(Grant {
                                target: Some((target.clone(), parsed)),
                                functions,
                            });
                        }
                    }
                    _ => {
                        return Err(ConfigError::key(
                            file,
                            &key,
                            "must be a function pattern, @wheel/@jobs/@runner, or { target = [patterns] }",
                        ))
                    }
                }
            }
            users.insert(user.clone(), grants);
        }
        Ok(Acl { users, groups })
    }

    /// Is `user` named by `entry`: the user itself, or `group%` with the
    /// user a member (approver lists are read this way).
    pub fn names(&self, entry: &str, user: &str) -> bool {
        match entry.strip_suffix('%') {
            Some(group) => self
                .groups
                .get(group)
                .is_some_and(|members| members.iter().any(|m| m == user)),
            None => entry == user,
        }
    }

    /// The users an entry list names, groups expanded.
    pub fn expand(&self, entries: &[String]) -> Vec<String> {
        let mut users = Vec::new();
        for entry in entries {
            match entry.strip_suffix('%') {
                Some(group) => users.extend(self.groups.get(group).cloned().unwrap_or_default()),
                None => users.push(entry.clone()),
            }
        }
        users.sort();
        users.dedup();
        users
    }

    /// The grants that apply to `user`: its own and its groups'.
    fn grants_of<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a UserGrants> + 'a {
        self.users.get(user).into_iter().chain(
            self.groups
                .iter()
                .filter(move |(_, members)| members.iter().any(|m| m == user))
                .filter_map(|(group, _)| self.users.get(&format!("{group}%"))),
        )
    }

    /// May `user` run `fun` on every one of `minions`? `matching` gives
    /// the minions (of a list) a grant's target covers, so grain targets
    /// use the master's grain cache.
    pub fn check_job(
        &self,
        user: &str,
        fun: &str,
        minions: &[String],
        matching: impl Fn(&[String], &Target) -> Vec<String>,
    ) -> Result<(), Denied> {
        if user == halite_pki::users::ROOT {
            return Ok(());
        }
        let grants: Vec<&Grant> = self
            .grants_of(user)
            .flat_map(|u| &u.grants)
            .filter(|g| g.functions.iter().any(|f| f.is_match(fun)))
            .collect();
        if grants.is_empty() {
            return Err(Denied(format!(
                "user {user:?} may not run {fun} on any minion (no grant in the master's [acl])"
            )));
        }
        if grants.iter().any(|g| g.target.is_none()) {
            return Ok(());
        }
        let mut uncovered: Vec<String> = minions.to_vec();
        for grant in grants {
            if uncovered.is_empty() {
                break;
            }
            if let Some((_, target)) = &grant.target {
                let covered = matching(&uncovered, target);
                uncovered.retain(|m| !covered.contains(m));
            }
        }
        if uncovered.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = uncovered.iter().take(10).map(String::as_str).collect();
        let more = uncovered.len().saturating_sub(shown.len());
        Err(Denied(format!(
            "user {user:?} may not run {fun} on {}{}; nothing was published",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )))
    }

    /// Are all of `minions` within `user`'s grants (for any function)?
    /// What lets a user read jobs they did not run (issue 13): the jobs
    /// ran only where the user may act anyway.
    pub fn covers(
        &self,
        user: &str,
        minions: &[String],
        matching: impl Fn(&[String], &Target) -> Vec<String>,
    ) -> bool {
        if user == halite_pki::users::ROOT {
            return true;
        }
        let mut uncovered: Vec<String> = minions.to_vec();
        for grant in self.grants_of(user).flat_map(|u| &u.grants) {
            match &grant.target {
                None => return true,
                Some((_, target)) => {
                    let covered = matching(&uncovered, target);
                    uncovered.retain(|m| !covered.contains(m));
                }
            }
            if uncovered.is_empty() {
                return true;
            }
        }
        uncovered.is_empty()
    }

    /// Has `user` the special grant (or root)? `Runner` also satisfies `Jobs`.
    pub fn check_special(&self, user: &str, special: Special) -> Result<(), Denied> {
        if user == halite_pki::users::ROOT {
            return Ok(());
        }
        let has = self.grants_of(user).any(|u| {
            u.specials.contains(&special)
                || (special == Special::Jobs && u.specials.contains(&Special::Runner))
        });
        if has {
            Ok(())
        } else {
            let name = match special {
                Special::Wheel => "@wheel",
                Special::Jobs => "@jobs",
                Special::Runner => "@runner",
                Special::FreezeOverride => "@freeze_override",
            };
            Err(Denied(format!(
                "user {user:?} needs the {name} grant in the master's [acl] for this"
            )))
        }
    }

    /// A user's grants as written in the config (salt-api's `perms`).
    pub fn written(&self, user: &str) -> Vec<serde_json::Value> {
        if user == halite_pki::users::ROOT {
            return vec![
                serde_json::json!(".*"),
                serde_json::json!("@wheel"),
                serde_json::json!("@runner"),
            ];
        }
        self.grants_of(user)
            .flat_map(|u| u.written.iter().cloned())
            .collect()
    }
}

fn function_pattern(file: &Path, key: &str, pattern: &str) -> Result<regex::Regex, ConfigError> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        ConfigError::key(
            file,
            key,
            format!("{pattern:?} is not a valid function pattern: {e}"),
        )
    })
}

fn toml_to_json(value: &toml::Value) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Result<Acl, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let groups = match table.get("groups") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        };
        let mut acl = table.clone();
        acl.remove("groups");
        Acl::parse(Path::new("/etc/halite/master.toml"), &acl, &groups)
    }

    #[test]
    fn groups_grant_their_members_and_name_approvers() {
        let acl = acl(r#"
"leads%" = ["test.ping", "@freeze_override"]
[groups]
leads = ["alice", "bob"]
"#)
        .unwrap();
        let web = ids(&["web1"]);
        assert!(acl.check_job("alice", "test.ping", &web, by_glob).is_ok());
        assert!(acl.check_job("carol", "test.ping", &web, by_glob).is_err());
        assert!(acl.check_special("bob", Special::FreezeOverride).is_ok());
        assert!(acl.check_special("carol", Special::FreezeOverride).is_err());
        assert!(acl.names("leads%", "alice") && !acl.names("leads%", "carol"));
        assert_eq!(
            acl.expand(&["leads%".into(), "dave".into()]),
            ["alice", "bob", "dave"]
        );
        let unknown: toml::Table = toml::from_str("\"ops%\" = [\".*\"]").unwrap();
        let err = Acl::parse(Path::new("/m.toml"), &unknown, &toml::Table::new()).unwrap_err();
        assert_eq!(err.key.as_deref(), Some("acl.ops%"));
    }

    fn by_glob(ids: &[String], target: &Target) -> Vec<String> {
        ids.iter()
            .filter(|id| target.matches(id, &serde_json::Value::Null))
            .cloned()
            .collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_cover_every_targeted_minion() {
        let acl = acl(r#"
deployer = [{ "web*" = ["git_deploy.*", "test.ping"] }, { "db1" = "test.ping" }]
ops = [".*", "@wheel"]
"#)
        .unwrap();
        let web = ids(&["web1", "web2"]);
        assert!(acl
            .check_job("deployer", "git_deploy.deploy", &web, by_glob)
            .is_ok());
        assert!(acl
            .check_job("deployer", "test.ping", &ids(&["web1", "db1"]), by_glob)
            .is_ok());
        let err = acl
            .check_job(
                "deployer",
                "git_deploy.deploy",
                &ids(&["web1", "db1"]),
                by_glob,
            )
            .unwrap_err();
        assert!(err.0.contains("db1") && !err.0.contains("web1"), "{err}");
        let err = acl
            .check_job("deployer", "cmd.run", &web, by_glob)
            .unwrap_err();
        assert!(err.0.contains("no grant"), "{err}");
        // Patterns match the whole name: `test.ping` does not allow `test.pingall`.
        assert!(acl
            .check_job("deployer", "test.pingall", &web, by_glob)
            .is_err());
        assert!(acl
            .check_job("ops", "cmd.run", &ids(&["db1"]), by_glob)
            .is_ok());
        assert!(acl.check_job("nobody", "test.ping", &web, by_glob).is_err());
        assert!(acl.check_job("root", "cmd.run", &web, by_glob).is_ok());
    }

    #[test]
    fn specials() {
        let acl = acl(r#"
ops = ["@wheel", "@runner"]
viewer = ["@jobs"]
"#)
        .unwrap();
        assert!(acl.check_special("ops", Special::Wheel).is_ok());
        assert!(acl.check_special("ops", Special::Jobs).is_ok());
        assert!(acl.check_special("viewer", Special::Jobs).is_ok());
        assert!(acl.check_special("viewer", Special::Wheel).is_err());
        assert!(acl.check_special("viewer", Special::Runner).is_err());
        assert!(acl.check_special("root", Special::Wheel).is_ok());
    }

    #[test]
    fn malformed_entries_name_the_key() {
        for (text, key) in [
            ("a = \"x\"", "acl.a"),
            ("a = [1]", "acl.a[0]"),
            ("a = [\"@admin\"]", "acl.a[0]"),
            ("a = [\"(\"]", "acl.a[0]"),
            ("a = [{ \"web*\" = [1] }]", "acl.a[0].web*"),
            ("a = [{ \"G@os\" = \"test.ping\" }]", "acl.a[0].G@os"),
        ] {
            let err = acl(text).unwrap_err();
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
    }
}
