//! Downloading package zips: resumable with HTTP Range, retried with backoff, and verified (size
//! and sha256) before the file gets the name the extractor uses.
//!
//! `downloads/<sha256>.part` grows across attempts and across agent restarts; once it has the
//! expected size and digest it is fsynced and renamed to `downloads/<sha256>.zip`. A `.zip` that
//! is found again later is verified again before it is reused.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use tc_proto::{DesiredPackage, ErrorStatus, ReleaseInfo};
use tokio::io::AsyncWriteExt;

use crate::backoff::{Backoff, Retry};
use crate::state::{NOFOLLOW, sync_dir};

/// Opens a file for reading without following a symbolic link (a link planted in `downloads/`
/// is refused, not read).
fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
}

/// How downloads are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadOptions {
    /// Attempts per download before it is given up (the engine retries later with its own
    /// backoff).
    pub attempts: u32,
    /// Delay between attempts.
    pub backoff: Backoff,
    /// An attempt is abandoned when no byte arrives for this long.
    pub idle_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            attempts: 5,
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(30)),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The package URL cannot be combined with the controller URL.
    #[error("invalid download URL `{url}`: {message}")]
    InvalidUrl {
        /// The URL from the desired state.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The server answered with an error status.
    #[error("GET {url}: {status}: {message}")]
    Status {
        /// The URL.
        url: Url,
        /// The status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The transfer failed on every attempt.
    #[error("GET {url}: gave up after {attempts} attempts: {message}")]
    GaveUp {
        /// The URL.
        url: Url,
        /// Attempts made.
        attempts: u32,
        /// The last problem.
        message: String,
    },
    /// The server has a different number of bytes than the desired state says.
    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The size from the desired state.
        expected: u64,
        /// The size the server announced or sent.
        actual: u64,
    },
    /// The content does not have the expected sha256.
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The digest from the desired state.
        expected: String,
        /// The digest of what was downloaded.
        actual: String,
    },
    /// The download could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The outcome of one attempt that did not complete.
enum AttemptError {
    /// Worth another attempt (resuming where it stopped).
    Retry(String),
    /// Another attempt would not help.
    Fatal(DownloadError),
}

/// Downloads blobs from the controller (or wherever their URLs point). Clones share the client
/// token, which is sent to the controller's own origin only, never to another host.
#[derive(Clone, Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    base: Url,
    options: DownloadOptions,
    token: Arc<RwLock<Option<String>>>,
}

impl Fetcher {
    /// A fetcher resolving package URLs against `base` (the controller URL).
    pub fn new(client: reqwest::Client, base: Url, options: DownloadOptions) -> Self {
        Fetcher {
            client,
            base,
            options,
            token: Arc::default(),
        }
    }

    /// Sets the client token sent with blob requests to the controller.
    pub fn set_token(&self, token: Option<String>) {
        *self
            .token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = token;
    }

    /// The current session token (the remote operations' reports go with it too).
    pub fn token(&self) -> Option<String> {
        self.token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The token to send to `url`: only to the controller's own scheme, host and port.
    fn token_for(&self, url: &Url) -> Option<String> {
        if url.origin() != self.base.origin() {
            return None;
        }
        self.token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Asks the controller for the release of `name` at `version` (its digest and hooks):
    /// `Ok(None)` when the controller has none (or predates the question).
    pub async fn release(&self, name: &str, version: &str) -> Result<Option<ReleaseInfo>, String> {
        let url = self
            .base
            .join(&format!("agent/v1/releases/{name}/{version}"))
            .map_err(|error| error.to_string())?;
        let mut request = self
            .client
            .get(url.clone())
            .header(header::ACCEPT, "application/json")
            .timeout(self.options.idle_timeout);
        if let Some(token) = self.token_for(&url) {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|error| format!("GET {url}: {}", error_chain(&error)))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status}: {}",
                error_message(response).await
            ));
        }
        response
            .json()
            .await
            .map(Some)
            .map_err(|error| format!("GET {url}: {}", error_chain(&error)))
    }

    /// Downloads and verifies `package` into `downloads`; returns the path of the verified zip.
    pub async fn fetch(
        &self,
        package: &DesiredPackage,
        downloads: &Path,
    ) -> Result<PathBuf, DownloadError> {
        let complete = downloads.join(format!("{}.zip", package.sha256));
        if complete.exists() {
            match verify(&complete, package.size, &package.sha256).await {
                Ok(()) => return Ok(complete),
                Err(error) => {
                    tracing::warn!(path = %complete.display(), %error, "cached download is damaged; downloading again");
                    remove_file(&complete)?;
                }
            }
        }
        let url = self
            .base
            .join(&package.url)
            .map_err(|error| DownloadError::InvalidUrl {
                url: package.url.clone(),
                message: error.to_string(),
            })?;
        let part = downloads.join(format!("{}.part", package.sha256));
        let mut retry = Retry::new(self.options.backoff);
        loop {
            match self.attempt(&url, &part, package.size).await {
                Ok(()) => break,
                Err(AttemptError::Fatal(error)) => return Err(error),
                Err(AttemptError::Retry(message)) => {
                    let delay = retry.next_delay();
                    if retry.failures() >= self.options.attempts {
                        return Err(DownloadError::GaveUp {
                            url,
                            attempts: retry.failures(),
                            message,
                        });
                    }
                    tracing::info!(%url, %message, retry_in = ?delay, "download interrupted; will resume");
                    tokio::time::sleep(delay).await;
                }
            }
        }
        if let Err(error) = verify(&part, package.size, &package.sha256).await {
            remove_file(&part)?;
            return Err(error);
        }
        open_nofollow(&part)
            .and_then(|file| file.sync_all())
            .map_err(|source| DownloadError::Io {
                path: part.clone(),
                source,
            })?;
        fs::rename(&part, &complete).map_err(|source| DownloadError::Io {
            path: complete.clone(),
            source,
        })?;
        sync_dir(downloads).map_err(|source| DownloadError::Io {
            path: downloads.to_owned(),
            source,
        })?;
        tracing::info!(package = %package.name, version = %package.version, bytes = package.size, "download verified");
        Ok(complete)
    }

    /// One GET, resuming from what `part` already holds.
    async fn attempt(&self, url: &Url, part: &Path, size: u64) -> Result<(), AttemptError> {
        let io_fatal = |source| {
            AttemptError::Fatal(DownloadError::Io {
                path: part.to_owned(),
                source,
            })
        };
        let mut offset = match fs::symlink_metadata(part) {
            Ok(metadata) => metadata.len(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(io_fatal(error)),
        };
        if offset > size {
            offset = 0;
        }
        if offset == size && size > 0 {
            return Ok(());
        }
        let mut request = self.client.get(url.clone());
        if let Some(token) = self.token_for(url) {
            request = request.bearer_auth(token);
        }
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| AttemptError::Retry(error_chain(&error)))?;
        let status = response.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = content_range(response.headers()).ok_or_else(|| {
                    AttemptError::Retry("206 without a usable Content-Range".to_owned())
                })?;
                if let Some(total) = total
                    && total != size
                {
                    return Err(AttemptError::Fatal(DownloadError::SizeMismatch {
                        expected: size,
                        actual: total,
                    }));
                }
                if start != offset {
                    truncate(part).map_err(io_fatal)?;
                    return Err(AttemptError::Retry(format!(
                        "asked for bytes from {offset}, got them from {start}"
                    )));
                }
            }
            StatusCode::OK => {
                if let Some(length) = response.content_length()
                    && length != size
                {
                    return Err(AttemptError::Fatal(DownloadError::SizeMismatch {
                        expected: size,
                        actual: length,
                    }));
                }
                offset = 0;
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                truncate(part).map_err(io_fatal)?;
                return Err(AttemptError::Retry(
                    "range not satisfiable; starting over".to_owned(),
                ));
            }
            status
                if status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT =>
            {
                return Err(AttemptError::Retry(format!("{status}")));
            }
            status => {
                let message = error_message(response).await;
                return Err(AttemptError::Fatal(DownloadError::Status {
                    url: url.clone(),
                    status,
                    message,
                }));
            }
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .custom_flags(NOFOLLOW)
            .open(part)
            .await
            .map_err(io_fatal)?;
        let mut received = offset;
        loop {
            let chunk = tokio::time::timeout(self.options.idle_timeout, response.chunk()).await;
            let chunk = match chunk {
                Err(_) => {
                    file.flush().await.map_err(io_fatal)?;
                    return Err(AttemptError::Retry(format!(
                        "no data for {:?}",
                        self.options.idle_timeout
                    )));
                }
                Ok(Err(error)) => {
                    file.flush().await.map_err(io_fatal)?;
                    return Err(AttemptError::Retry(format!(
                        "connection lost after {received} of {size} bytes: {}",
                        error_chain(&error)
                    )));
                }
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            received += chunk.len() as u64;
            if received > size {
                drop(file);
                let _ = fs::remove_file(part);
                return Err(AttemptError::Fatal(DownloadError::SizeMismatch {
                    expected: size,
                    actual: received,
                }));
            }
            file.write_all(&chunk).await.map_err(io_fatal)?;
        }
        file.flush().await.map_err(io_fatal)?;
        if received < size {
            return Err(AttemptError::Retry(format!(
                "connection closed after {received} of {size} bytes"
            )));
        }
        Ok(())
    }
}

/// Checks the size and sha256 of a file.
pub async fn verify(path: &Path, size: u64, sha256: &str) -> Result<(), DownloadError> {
    let owned = path.to_owned();
    let digest = tokio::task::spawn_blocking(move || sha256_file(&owned))
        .await
        .map_err(|error| DownloadError::Io {
            path: path.to_owned(),
            source: io::Error::other(error),
        })?
        .map_err(|source| DownloadError::Io {
            path: path.to_owned(),
            source,
        })?;
    let (actual_size, actual) = digest;
    if actual_size != size {
        return Err(DownloadError::SizeMismatch {
            expected: size,
            actual: actual_size,
        });
    }
    if actual != sha256 {
        return Err(DownloadError::Checksum {
            expected: sha256.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// The size and lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = open_nofollow(path)?;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        size += read as u64;
        context.update(&buffer[..read]);
    }
    Ok((size, hex(context.finish().as_ref())))
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// True for a lowercase hex sha256 (it is used as a file name).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Parses `Content-Range: bytes <start>-<end>/<total>`; the total is `None` for `*`.
fn content_range(headers: &header::HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (start, _end) = span.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((start.parse().ok()?, total))
}

/// The most of an error answer's message that is kept (it is logged and recorded).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 500;

/// The message of an error response: `ErrorStatus.message` when the body is one, else the text.
pub async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    answer_error_message(status, &body)
}

/// The message of an error answer with `status` and `body`: its `ErrorStatus.message`, or else
/// its text, trimmed and cut to [`MAX_ERROR_MESSAGE_CHARS`]; the status' reason when that leaves
/// nothing.
pub fn answer_error_message(status: StatusCode, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<ErrorStatus>(body) {
        Ok(error) => error.message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text.chars().take(MAX_ERROR_MESSAGE_CHARS).collect()
    }
}

pub use tc_proto::error_chain;

fn truncate(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn remove_file(path: &Path) -> Result<(), DownloadError> {
    truncate(path).map_err(|source| DownloadError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_parsed() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::CONTENT_RANGE, "bytes 100-199/200".parse().unwrap());
        assert_eq!(content_range(&headers), Some((100, Some(200))));
        headers.insert(header::CONTENT_RANGE, "bytes 5-9/*".parse().unwrap());
        assert_eq!(content_range(&headers), Some((5, None)));
        headers.insert(header::CONTENT_RANGE, "items 1-2/3".parse().unwrap());
        assert_eq!(content_range(&headers), None);
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        assert!(is_sha256_hex(&sha256_hex(b"test")));
        assert!(!is_sha256_hex("../../etc/passwd"));
        assert!(!is_sha256_hex(&sha256_hex(b"test").to_uppercase()));
    }

    #[test]
    fn file_digest_matches_memory_digest() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("blob");
        let data = vec![7u8; 200_000];
        fs::write(&path, &data).unwrap();
        assert_eq!(sha256_file(&path).unwrap(), (200_000, sha256_hex(&data)));
    }
}
