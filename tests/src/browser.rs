//! A real browser for the portal tests: Debian's `chromedriver` started
//! on a free loopback port, driving headless Chromium through WebDriver
//! (fantoccini). Both stop when the [`Browser`] is dropped: the session
//! is ended (chromedriver then quits Chromium and its helpers) and
//! chromedriver's process group is killed, so no browser outlives its
//! test, a panicking one included.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver and a WebDriver session.
pub struct Browser {
    /// The session.
    pub client: Client,
    driver: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // `DELETE /session/ID`: chromedriver quits the browser it started.
        // Plain HTTP on a socket: Drop cannot await the client.
        if let Some(session) = &self.session {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let request = format!(
                    "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    self.port
                );
                if stream.write_all(request.as_bytes()).is_ok() {
                    let _ = stream.read_to_end(&mut Vec::new());
                }
            }
        }
        // Whatever is left of the group (chromedriver, a browser that did
        // not quit) goes too.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Is a browser installed (`chromium` and `chromedriver`)?
pub fn installed() -> bool {
    ["/usr/bin/chromium", "/usr/bin/chromedriver"]
        .iter()
        .all(|p| Path::new(p).exists())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×800 whose
    /// profile lives under `dir`.
    pub async fn start(dir: &Path) -> Browser {
        assert!(
            installed(),
            "the portal tests need Debian's chromium and chromium-driver (bash scripts/test.sh installs them)"
        );
        let port = crate::free_port();
        let mut driver = Command::new("/usr/bin/chromedriver")
            // Its own process group: the browser it starts joins it, and
            // Drop ends them together.
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        // chromedriver says when it listens; nothing else to wait for.
        let out = driver.stdout.take().expect("chromedriver stdout");
        let ready = std::io::BufRead::lines(std::io::BufReader::new(out))
            .map_while(Result::ok)
            .any(|line| line.contains("started successfully"));
        assert!(ready, "chromedriver exited before it listened");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        capabilities.insert(
            "goog:loggingPrefs".into(),
            serde_json::json!({ "browser": "ALL" }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("cannot start a WebDriver session: {e}"));
        let session = client
            .session_id()
            .await
            .ok()
            .flatten()
            .map(|s| s.to_string());
        Browser {
            client,
            driver,
            port,
            session,
        }
    }

    /// Opens a page.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    }

    /// Fails the test if the browser console logged an error since the
    /// last look.
    pub async fn assert_no_console_errors(&self) {
        let errors = self.console_errors().await;
        assert!(
            errors.is_empty(),
            "errors in the browser console: {errors:?}"
        );
    }

    /// Waits (up to 90 s) for an element: the way every test waits on a
    /// page, state included (`#state.state-approved`).
    pub async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(90))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let page = self.client.source().await.unwrap_or_default();
                let tail: String = page.chars().take(3000).collect();
                panic!("no {css} on {url}: {e}\n{tail}")
            }
        }
    }

    /// The text of an element.
    pub async fn text(&self, css: &str) -> String {
        self.wait_for(css).await.text().await.expect("text")
    }

    /// Types into a field (cleared first).
    pub async fn fill(&self, css: &str, value: &str) {
        let field = self.wait_for(css).await;
        field.clear().await.expect("clear");
        field.send_keys(value).await.expect("type");
    }

    /// Clicks an element.
    pub async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.expect("click");
    }

    /// Chooses the option with `value` in a select.
    pub async fn select(&self, css: &str, value: &str) {
        self.wait_for(css)
            .await
            .select_by_value(value)
            .await
            .unwrap_or_else(|e| panic!("cannot choose {value} in {css}: {e}"));
    }

    /// Presses and releases a key where the focus is, as a keyboard does
    /// (WebDriver actions: `:focus-visible` applies, forms submit on
    /// Enter, links follow).
    pub async fn press(&self, key: fantoccini::key::Key) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let value = char::from(key);
        let keys = KeyActions::new("keyboard".into())
            .then(KeyAction::Down { value })
            .then(KeyAction::Up { value });
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot press {key:?}: {e}"));
    }

    /// Types text where the focus is.
    pub async fn type_text(&self, text: &str) {
        use fantoccini::actions::{InputSource, KeyAction, KeyActions};
        let mut keys = KeyActions::new("keyboard".into());
        for value in text.chars() {
            keys = keys
                .then(KeyAction::Down { value })
                .then(KeyAction::Up { value });
        }
        self.client
            .perform_actions(keys)
            .await
            .unwrap_or_else(|e| panic!("cannot type {text:?}: {e}"));
    }

    /// The focused element: its `id`, or its tag and text when it has
    /// none (`a:Jobs`).
    pub async fn focused(&self) -> String {
        let found = self
            .client
            .execute(
                "const e = document.activeElement; \
                 return e.id || (e.tagName.toLowerCase() + ':' + e.textContent.trim());",
                vec![],
            )
            .await
            .expect("the focused element");
        found.as_str().unwrap_or_default().to_owned()
    }

    /// Does the focused element draw a visible focus ring?
    pub async fn focus_is_visible(&self) -> bool {
        let style = self
            .client
            .execute(
                "const s = getComputedStyle(document.activeElement); \
                 const r = document.activeElement.getBoundingClientRect(); \
                 return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0 \
                   && r.right > 0 && r.bottom > 0;",
                vec![],
            )
            .await
            .expect("the focused element's style");
        style == serde_json::Value::Bool(true)
    }

    /// Saves a PNG of the page.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write screenshot");
    }

    /// The browser console's messages of level SEVERE since the last call
    /// (chromedriver's log endpoint).
    pub async fn console_errors(&self) -> Vec<String> {
        let logs = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .unwrap_or(serde_json::Value::Null);
        logs.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e["level"] == "SEVERE")
                    .map(|e| e["message"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// chromedriver's `POST /session/{id}/se/log {"type": "browser"}`.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}
