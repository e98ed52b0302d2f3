//! A headless Chromium driven over the W3C WebDriver protocol, for the console's browser tests.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (package `chromium-driver`, which `.ci/run`
//! installs) on a free loopback port and opens one session of headless Chromium with a
//! throwaway profile. It fails loudly when the driver is missing: a browser test is never
//! skipped. Waits poll for a condition up to a deadline; nothing sleeps for a fixed time. The
//! session and the driver end when the `Browser` is dropped, also after a panic.
//!
//! The client is the few WebDriver commands the tests use, over `reqwest`: no other crate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The WebDriver key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait lasts before it fails the test.
pub const WAIT: Duration = Duration::from_secs(15);

/// What went wrong talking to the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// The driver could not be started.
    #[error("cannot start chromedriver: {0} (install Debian's chromium and chromium-driver)")]
    Start(String),
    /// A WebDriver command failed.
    #[error("WebDriver {command}: {message}")]
    Command {
        /// The command.
        command: String,
        /// The driver's error.
        message: String,
    },
    /// A wait ran out.
    #[error("waited {0:?} for {1}")]
    Timeout(Duration, String),
}

/// One element of the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element(String);

/// A headless Chromium session.
pub struct Browser {
    driver: Child,
    address: SocketAddr,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

fn free_port() -> Result<u16, BrowserError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|error| BrowserError::Start(error.to_string()))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| BrowserError::Start(error.to_string()))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session (window 1280×900, certificates of the
    /// test controller's own CA accepted).
    pub async fn start() -> Result<Browser, BrowserError> {
        let port = free_port()?;
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| BrowserError::Start(format!("chromedriver: {error}")))?;
        let profile =
            tempfile::tempdir().map_err(|error| BrowserError::Start(error.to_string()))?;
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|error| BrowserError::Start(error.to_string()))?;
        let mut browser = Browser {
            driver,
            address,
            session: String::new(),
            http,
            _profile: profile,
        };
        browser.wait_for_driver().await?;
        // Debian's /usr/bin/chromium is a wrapper script; the binary is beside its libraries.
        let binary = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .ok_or_else(|| BrowserError::Start("chromium is not installed".into()))?;
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            },
        } } });
        let answer = browser.command("POST", "session", capabilities).await?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Start(format!("no session in {answer}")))?
            .to_string();
        Ok(browser)
    }

    async fn wait_for_driver(&mut self) -> Result<(), BrowserError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                return Err(BrowserError::Start(format!(
                    "chromedriver exited: {status}"
                )));
            }
            let ready = self
                .http
                .get(format!("http://{}/status", self.address))
                .send()
                .await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Start(
                    "chromedriver never became ready".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends one WebDriver command (`path` below the session for a non-empty session); returns
    /// its `value`.
    async fn command(&self, method: &str, path: &str, body: Value) -> Result<Value, BrowserError> {
        let url = if self.session.is_empty() {
            format!("http://{}/{path}", self.address)
        } else {
            format!("http://{}/session/{}/{path}", self.address, self.session)
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let what = format!("{method} {path}");
        let response = request
            .send()
            .await
            .map_err(|error| BrowserError::Command {
                command: what.clone(),
                message: error.to_string(),
            })?;
        let status = response.status();
        let answer: Value = response
            .json()
            .await
            .map_err(|error| BrowserError::Command {
                command: what.clone(),
                message: error.to_string(),
            })?;
        if !status.is_success() {
            return Err(BrowserError::Command {
                command: what,
                message: format!(
                    "{}: {}",
                    answer["value"]["error"], answer["value"]["message"]
                ),
            });
        }
        Ok(answer["value"].clone())
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<(), BrowserError> {
        self.command("POST", "url", json!({ "url": url })).await?;
        Ok(())
    }

    /// The URL shown.
    pub async fn url(&self) -> Result<String, BrowserError> {
        let value = self.command("GET", "url", Value::Null).await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// The elements matching a CSS selector now (none is not an error).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, BrowserError> {
        let value = self
            .command(
                "POST",
                "elements",
                json!({ "using": "css selector", "value": css }),
            )
            .await?;
        Ok(value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|element| element[ELEMENT_KEY].as_str())
            .map(|id| Element(id.to_string()))
            .collect())
    }

    /// Waits until an element matches `css`; returns the first.
    pub async fn wait_for(&self, css: &str) -> Result<Element, BrowserError> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(element) = self.find_all(css).await?.into_iter().next() {
                return Ok(element);
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Timeout(WAIT, format!("an element `{css}`")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until an element matching `css` has a text containing `needle`; returns that text.
    pub async fn wait_for_text(&self, css: &str, needle: &str) -> Result<String, BrowserError> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            for element in self.find_all(css).await? {
                // The page may replace the element between the find and the read.
                if let Ok(text) = self.text(&element).await {
                    if text.contains(needle) {
                        return Ok(text);
                    }
                    last = text;
                }
            }
            if Instant::now() > deadline {
                return Err(BrowserError::Timeout(
                    WAIT,
                    format!("`{css}` to contain {needle:?} (last text: {last:?})"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rendered text of an element.
    pub async fn text(&self, element: &Element) -> Result<String, BrowserError> {
        let value = self
            .command("GET", &format!("element/{}/text", element.0), Value::Null)
            .await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// An attribute or property of an element (`None` when it has none).
    pub async fn attribute(
        &self,
        element: &Element,
        name: &str,
    ) -> Result<Option<String>, BrowserError> {
        let value = self
            .command(
                "GET",
                &format!("element/{}/attribute/{name}", element.0),
                Value::Null,
            )
            .await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// Clicks an element.
    pub async fn click(&self, element: &Element) -> Result<(), BrowserError> {
        self.command("POST", &format!("element/{}/click", element.0), json!({}))
            .await?;
        Ok(())
    }

    /// Types `text` into an element.
    pub async fn type_text(&self, element: &Element, text: &str) -> Result<(), BrowserError> {
        self.command(
            "POST",
            &format!("element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await?;
        Ok(())
    }

    /// The page's source as the browser holds it now.
    pub async fn source(&self) -> Result<String, BrowserError> {
        let value = self.command("GET", "source", Value::Null).await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// Runs a script in the page and returns its result.
    pub async fn execute(&self, script: &str) -> Result<Value, BrowserError> {
        self.command(
            "POST",
            "execute/sync",
            json!({ "script": script, "args": [] }),
        )
        .await
    }

    /// Saves a PNG screenshot of the window.
    pub async fn screenshot(&self, path: &Path) -> Result<(), BrowserError> {
        let value = self.command("GET", "screenshot", Value::Null).await?;
        let bytes = base64_decode(value.as_str().unwrap_or_default()).ok_or_else(|| {
            BrowserError::Command {
                command: "GET screenshot".into(),
                message: "not base64".into(),
            }
        })?;
        std::fs::write(path, bytes).map_err(|error| BrowserError::Command {
            command: "GET screenshot".into(),
            message: format!("{}: {error}", path.display()),
        })
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let padding = chunk.iter().rev().take_while(|b| **b == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = if i >= 4 - padding { 0 } else { value(c)? };
            n = (n << 6) | v;
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - padding.min(2)]);
    }
    Some(out)
}

impl Drop for Browser {
    /// Ends the session (so Chromium exits) and the driver, also when a test panicked.
    fn drop(&mut self) {
        if !self.session.is_empty()
            && let Ok(mut stream) =
                TcpStream::connect_timeout(&self.address, Duration::from_secs(2))
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session, self.address
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let mut answer = Vec::new();
                let _ = stream.read_to_end(&mut answer);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screenshots_decode_from_base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert!(base64_decode("abc").is_none());
        assert!(base64_decode("a*==").is_none());
    }
}
