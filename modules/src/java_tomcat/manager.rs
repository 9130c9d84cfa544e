//! Tomcat's manager text API (`/manager/text/*`, role `manager-script`):
//! deploy a WAR as `context##version` (parallel deployment), undeploy,
//! start, stop, reload and list, with answers parsed from its
//! `OK - ...` / `FAIL - ...` first line.

use std::path::Path;
use std::time::Duration;

/// One deployed context version, a line of `/list`
/// (`/shop:running:0:shop##v1`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Deployed {
    /// Context path (`/shop`, `/` for ROOT).
    pub(crate) path: String,
    /// `running` or `stopped`.
    pub(crate) state: String,
    /// Active sessions.
    pub(crate) sessions: u64,
    /// The version after `##` in the docBase, if any.
    pub(crate) version: Option<String>,
    /// The docBase as Tomcat reports it.
    pub(crate) doc_base: String,
}

/// Parses `/list`'s answer (after its `OK` line).
pub(crate) fn parse_list(text: &str) -> Result<Vec<Deployed>, String> {
    let body = ok_body(text)?;
    Ok(body
        .lines()
        .filter(|line| line.starts_with('/'))
        .filter_map(|line| {
            // The docBase may contain ':' (a Windows path): split from the left 3 times.
            let mut parts = line.splitn(4, ':');
            let path = parts.next()?.to_owned();
            let state = parts.next()?.to_owned();
            let sessions = parts.next()?.parse().ok()?;
            let doc_base = parts.next().unwrap_or_default().to_owned();
            let version = doc_base
                .rsplit(['/', '\\'])
                .next()
                .and_then(|name| name.split_once("##"))
                .map(|(_, v)| v.trim_end_matches(".war").to_owned());
            Some(Deployed {
                path,
                state,
                sessions,
                version,
                doc_base,
            })
        })
        .collect())
}

/// The text after an `OK - ...` first line, or the `FAIL` line as the error.
pub(crate) fn ok_body(text: &str) -> Result<&str, String> {
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let first = first.trim_end();
    if first.starts_with("OK") {
        Ok(rest)
    } else if let Some(reason) = first.strip_prefix("FAIL - ") {
        Err(unescape(reason))
    } else {
        Err(format!("unexpected answer from the manager: {first:?}"))
    }
}

/// The manager escapes `/` in messages as `&#47;`.
fn unescape(text: &str) -> String {
    text.replace("&#47;", "/").replace("&amp;", "&")
}

/// A client of one manager, with `manager-script` credentials.
pub(crate) struct Manager {
    base: String,
    user: String,
    password: String,
    client: reqwest::Client,
}

impl Manager {
    pub(crate) fn new(
        base: &str,
        user: String,
        password: String,
        ca_file: Option<&Path>,
    ) -> Result<Manager, String> {
        let roots = crate::http::extra_roots(ca_file)?;
        Ok(Manager {
            base: base.trim_end_matches('/').to_owned(),
            user,
            password,
            // A WAR upload can take a while on a slow link.
            client: crate::http::client(roots, Duration::from_secs(300))?,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<String, String> {
        let response = request
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "Tomcat manager at {} unreachable: {}",
                    self.base,
                    crate::http::error_chain(&e)
                )
            })?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(format!(
                "Tomcat manager at {} refused the credentials (HTTP {}): the user needs the manager-script role",
                self.base,
                status.as_u16()
            ));
        }
        let text = response
            .text()
            .await
            .map_err(|e| format!("reading the manager's answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("Tomcat manager {what}: HTTP {}", status.as_u16()));
        }
        ok_body(&text)
            .map(|_| text.clone())
            .map_err(|e| format!("Tomcat manager {what}: {e}"))
    }

    fn url(&self, command: &str) -> String {
        format!("{}/{command}", self.base)
    }

    fn query(path: &str, version: Option<&str>) -> Vec<(&'static str, String)> {
        let mut query = vec![("path", path.to_owned())];
        if let Some(version) = version {
            query.push(("version", version.to_owned()));
        }
        query
    }

    /// Every deployed context version.
    pub(crate) async fn list(&self) -> Result<Vec<Deployed>, String> {
        let text = self.send(self.client.get(self.url("list")), "list").await?;
        parse_list(&text)
    }

    /// Uploads `war` as `path##version` (started at once).
    pub(crate) async fn deploy(&self, path: &str, version: &str, war: &Path) -> Result<(), String> {
        let body = tokio::fs::read(war)
            .await
            .map_err(|e| format!("cannot read {}: {e}", war.display()))?;
        let request = self
            .client
            .put(self.url("deploy"))
            .query(&Self::query(path, Some(version)))
            .body(body);
        self.send(request, "deploy").await.map(|_| ())
    }

    /// `undeploy`, `start`, `stop`, `reload` of one version (or the
    /// unversioned context).
    pub(crate) async fn command(
        &self,
        command: &str,
        path: &str,
        version: Option<&str>,
    ) -> Result<String, String> {
        let request = self
            .client
            .get(self.url(command))
            .query(&Self::query(path, version));
        let text = self.send(request, command).await?;
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_with_versions() {
        let text = "OK - Listed applications for virtual host [localhost]\n/shop:running:0:shop##v1\n/shop:stopped:3:shop##v2\n/:running:1:ROOT\n/manager:running:0:/usr/share/tomcat10-admin/manager\n/win:running:0:C:\\apps\\win##2.1\n";
        let list = parse_list(text).unwrap();
        assert_eq!(list.len(), 5);
        assert_eq!(list[0].version.as_deref(), Some("v1"));
        assert_eq!((list[1].state.as_str(), list[1].sessions), ("stopped", 3));
        assert_eq!(list[2].version, None);
        assert_eq!(list[4].version.as_deref(), Some("2.1"));
    }

    #[test]
    fn fail_lines_are_errors() {
        assert_eq!(
            ok_body("FAIL - No context exists named [&#47;shop##v9]\n").unwrap_err(),
            "No context exists named [/shop##v9]"
        );
        assert!(ok_body("<html>").unwrap_err().contains("unexpected"));
        assert_eq!(ok_body("OK - Deployed\n").unwrap(), "");
    }
}
