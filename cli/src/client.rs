//! Finds the master's API and token from its config, and speaks JSON.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use halite_proto::config::MasterLocation;

/// An authenticated client of one master's `/v1` API.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// Reads `config_file`, the token in the master's `data_dir`, and
    /// (when the config binds port 0) the address the master wrote.
    pub fn from_config(config_file: &Path) -> anyhow::Result<Client> {
        let config = location(config_file)?;
        let token_file = config.token_file();
        let token = std::fs::read_to_string(&token_file)
            .with_context(|| {
                format!(
                    "cannot read the CLI token {} (run master-cli as the master's user, after the master has started; or as an API user with --user)",
                    token_file.display()
                )
            })?
            .trim()
            .to_owned();
        Client::with_token(&config, token)
    }

    /// Logs in to the master `config_file` names as an API user (`POST
    /// /v1/login`): what that user's grants allow, and requests made and
    /// approved in their name. Needs no access to the root token.
    pub async fn login(config_file: &Path, user: &str, password: &str) -> anyhow::Result<Client> {
        let config = location(config_file)?;
        let mut client = Client::with_token(&config, String::new())?;
        let answer: serde_json::Value = client
            .post(
                "/v1/login",
                &serde_json::json!({ "username": user, "password": password }),
            )
            .await?;
        client.token = answer["token"]
            .as_str()
            .context("the master's login answer has no token")?
            .to_owned();
        Ok(client)
    }

    /// A client of the API `config` locates, presenting `token`.
    fn with_token(config: &MasterLocation, token: String) -> anyhow::Result<Client> {
        let mut addr = config.api_bind;
        if addr.port() == 0 {
            addr = bound_api(config)?;
        }
        if addr.ip().is_unspecified() {
            addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port());
        }
        // reqwest needs rustls' provider even for plain http (see halite-pki).
        halite_pki::install_tls_provider();
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        let scheme = match &config.api_tls {
            Some((cert, _)) => {
                // The API's own chain is trusted on top of the system's, so a
                // certificate from an in-house CA works without more setup.
                let pem = std::fs::read(cert)
                    .with_context(|| format!("cannot read api_tls_cert {}", cert.display()))?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem)
                    .with_context(|| format!("api_tls_cert {} is not PEM", cert.display()))?;
                builder = builder.tls_certs_merge(roots);
                "https"
            }
            // Plain http: no trust roots at all, so a host without CA
            // certificates (a minimal container) runs master-cli too.
            None => {
                builder = builder.tls_certs_only(Vec::new());
                "http"
            }
        };
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Client {
            base: format!("{scheme}://{addr}"),
            token,
            http,
        })
    }

    /// GET a JSON document.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(self.url(path))).await
    }

    /// Opens an event stream (Server-Sent Events), resuming after `last`.
    /// The stream may stay open as long as a job may run; the master
    /// sends a keep-alive comment every 15 s.
    pub async fn stream(&self, path: &str, last: Option<u64>) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .get(self.url(path))
            .header("Accept", "text/event-stream")
            .header("X-Auth-Token", &self.token)
            .timeout(STREAM_TIMEOUT);
        if let Some(last) = last {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the master API at {} (is halite-master running?)",
                self.base
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            anyhow::bail!("the master refused ({status}): {}", error_message(&body));
        }
        Ok(response)
    }

    /// POST a JSON body, read a JSON document.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    /// DELETE, read a JSON document.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(self.url(path))).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = request
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the master API at {} (is halite-master running?)",
                    self.base
                )
            })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .context("reading the master's answer")?;
        if !status.is_success() {
            anyhow::bail!("the master refused ({status}): {}", error_message(&body));
        }
        serde_json::from_slice(&body).context("the master's answer is not the expected JSON")
    }
}

/// How long an event stream may stay open: longer than any job (a week).
const STREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8 * 86_400);

/// The text of an error answer (`{"error": "..."}`), or the body as it is.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

/// The API's error body: `{"error": "..."}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

/// Where the master of `config_file` is: its location keys, read with the
/// master's own rules and defaults.
pub fn location(config_file: &Path) -> anyhow::Result<MasterLocation> {
    let text = std::fs::read_to_string(config_file).with_context(|| {
        format!(
            "cannot read the master's config {} (name it with --config FILE or HALITE_CONFIG=FILE)",
            config_file.display()
        )
    })?;
    Ok(MasterLocation::from_toml(config_file, &text)?)
}

fn bound_api(config: &MasterLocation) -> anyhow::Result<SocketAddr> {
    let path = config.ports_file();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "api_bind uses port 0; cannot read {} written by the master",
            path.display()
        )
    })?;
    let ports: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    ports["api"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("{} has no `api` address", path.display()))
}
