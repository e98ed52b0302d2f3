//! The controller's HTTP API (see `docs/api.md`), spoken with a blocking HTTP client.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use reqwest::blocking::{Client as HttpClient, RequestBuilder, Response};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tc_api::{
    BlockedMachine, BootstrapToken, BootstrapTokenCreated, BootstrapTokenRequest, Cause, Client,
    Credential, CredentialCreated, CredentialRequest, Event, Kind,
};

/// Path prefix of the resource API.
pub const API_PREFIX: &str = "/apis/thinfleet.io/v1";

/// Where the controller listens when nothing else is configured.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7130";

/// The CA certificate the controller makes in its data directory, trusted relative to the
/// current directory when no CA is given and the controller is local (the local quickstart).
pub const DEFAULT_CA_FILE: &str = "data/pki/ca.crt";

/// The admin token file the controller writes in its data directory, read relative to the current
/// directory when no server and no token are given (the local quickstart).
pub const DEFAULT_TOKEN_FILE: &str = "data/admin.token";

/// How long to wait for a connection before calling the controller unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where the token came from, so that a refused token can be explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `TCADM_TOKEN`.
    Given,
    /// Read from this file.
    File(PathBuf),
    /// None given, and this default file could not be read.
    Missing(PathBuf),
    /// None given and none looked for (a server was named without a token).
    None,
}

/// How an `https://` controller is trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `--certificate-authority FILE` (`TCADM_CA_FILE`): the CA certificates of a PEM file.
    File(PathBuf),
    /// `--ca-cert-hash sha256:...` (`TCADM_CA_CERT_HASH`): the CA with this fingerprint.
    Hash(tc_trust::CaCertHash),
    /// Neither given, and a local controller: `./data/pki/ca.crt`.
    LocalFile(PathBuf),
    /// Nothing to verify an https server with.
    None,
}

/// The server to talk to and the token to talk with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Base URL, without a trailing slash.
    pub server: String,
    /// Bearer token for admin routes.
    pub token: Option<String>,
    /// Where `token` came from.
    pub token_source: TokenSource,
    /// How the server's certificate is verified.
    pub ca: CaSource,
}

impl Connection {
    /// Resolves the connection from `--server`/`TCADM_SERVER` and `--token`/`TCADM_TOKEN`. With no
    /// server, the default local controller is used with the token from
    /// `<current dir>/data/admin.token`; the local token is never sent to a server named
    /// explicitly.
    pub fn resolve(server: Option<&str>, token: Option<&str>, current_dir: &Path) -> Self {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        let server = server.map(str::trim).filter(|s| !s.is_empty());
        let (token, token_source) = match (token, server) {
            (Some(token), _) => (Some(token.to_string()), TokenSource::Given),
            (None, Some(_)) => (None, TokenSource::None),
            (None, None) => {
                let path = current_dir.join(DEFAULT_TOKEN_FILE);
                match std::fs::read_to_string(&path) {
                    Ok(text) if !text.trim().is_empty() => {
                        (Some(text.trim().to_string()), TokenSource::File(path))
                    }
                    _ => (None, TokenSource::Missing(path)),
                }
            }
        };
        let server = normalize_server(server.unwrap_or(DEFAULT_SERVER));
        let local_ca = current_dir.join(DEFAULT_CA_FILE);
        let ca = if is_local(&server) && local_ca.is_file() {
            CaSource::LocalFile(local_ca)
        } else {
            CaSource::None
        };
        Connection {
            server,
            token,
            token_source,
            ca,
        }
    }

    /// Trusts the CA given on the command line (`--certificate-authority` or `--ca-cert-hash`)
    /// instead of the local one.
    pub fn with_ca(mut self, file: Option<&Path>, hash: Option<tc_trust::CaCertHash>) -> Self {
        if let Some(file) = file {
            self.ca = CaSource::File(file.to_owned());
        } else if let Some(hash) = hash {
            self.ca = CaSource::Hash(hash);
        }
        self
    }
}

/// True for a controller on this machine: `localhost` or a loopback address.
fn is_local(server: &str) -> bool {
    let Ok(url) = Url::parse(server) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// Adds `https://` to a bare `host:port` and drops trailing slashes.
pub fn normalize_server(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") {
        server.to_string()
    } else {
        format!("https://{server}")
    }
}

/// The `Status` body of an error answer.
#[derive(Clone, Debug, Default, Deserialize)]
struct StatusBody {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Option<StatusDetails>,
}

#[derive(Clone, Debug, Default, Deserialize)]
struct StatusDetails {
    #[serde(default)]
    causes: Vec<Cause>,
}

/// A failed call to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No HTTP answer at all: connection refused, DNS, TLS, timeout.
    #[error("cannot reach the controller at {server}: {cause}")]
    Unreachable {
        /// The base URL.
        server: String,
        /// The innermost cause, for people.
        cause: String,
    },
    /// `401`: no token or an unknown one.
    #[error("the controller at {server} refused the token ({message}); {hint}")]
    Unauthorized {
        /// The base URL.
        server: String,
        /// The server's message.
        message: String,
        /// How to give a valid token.
        hint: String,
    },
    /// Any other error answer, with the server's `Status`.
    #[error("{}", status_line(message, causes))]
    Status {
        /// HTTP status code.
        code: u16,
        /// The `reason` word (`NotFound`, `Conflict`, ...).
        reason: String,
        /// The server's message.
        message: String,
        /// Per-field causes, with manifest positions.
        causes: Vec<Cause>,
    },
    /// An answer that does not have the documented shape.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL called.
        url: String,
        /// What was wrong with the answer.
        message: String,
    },
    /// A local file to upload could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ApiError {
    /// The HTTP status of an error answer, if there was an answer.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            ApiError::Unauthorized { .. } => Some(401),
            _ => None,
        }
    }

    /// True for `404 Not Found`.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
}

/// The one-line text of a `Status`: its first cause with position when there is one, else its
/// message.
fn status_line(message: &str, causes: &[Cause]) -> String {
    let Some(first) = causes.first() else {
        return message.to_string();
    };
    let mut line = first.to_string();
    if first.file.is_none() && !message.is_empty() {
        line = message.to_string();
    }
    match causes.len() {
        1 => {}
        2 => line.push_str(" (and 1 more error)"),
        more => line.push_str(&format!(" (and {} more errors)", more - 1)),
    }
    line
}

/// What `PUT /blobs` answers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BlobInfo {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Options of an apply call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Validate and report only.
    pub dry_run: bool,
    /// Take over objects of another manager.
    pub force: bool,
    /// Delete objects of this manager absent from the request.
    pub prune: bool,
    /// The manager name; when empty none is sent, and the controller records the credential
    /// (`credential:<name>`, or `admin` for the break-glass token).
    pub field_manager: String,
}

/// A manifest file sent to the apply call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileBody {
    /// Its name, used by the server in errors.
    pub name: String,
    /// Its text.
    pub content: String,
}

/// The answer of the apply call.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyResult {
    /// Whether nothing was written.
    #[serde(default)]
    pub dry_run: bool,
    /// One item per object, in request order, then pruned objects.
    #[serde(default)]
    pub items: Vec<ApplyItem>,
    /// Prunes the controller postponed because clients still run the release.
    #[serde(default)]
    pub deferred: Vec<String>,
    /// The same prunes, with the releases (for `diff --prune`).
    #[serde(default)]
    pub pending_prunes: Vec<PendingPrune>,
    /// What the controller wants the user to know (an object the watched directory takes back,
    /// an artifact a dry run found not uploaded yet).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A prune that waits until no client is assigned the release.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingPrune {
    /// Always `PackageRelease`.
    pub kind: String,
    /// The release's name.
    pub name: String,
    /// Clients assigned it now.
    #[serde(default)]
    pub clients: u64,
    /// The release as stored.
    #[serde(default)]
    pub object: Option<Value>,
}

impl PendingPrune {
    /// `kind/name` with the kind in lower case.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

/// What apply did (or would do) to one object.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyItem {
    /// `ClientGroup` or `PackageRelease`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// `created`, `configured`, `unchanged` or `pruned`.
    pub action: String,
    /// The object as stored (or as it would be stored).
    #[serde(default)]
    pub object: Option<Value>,
    /// The object before, absent when created.
    #[serde(default)]
    pub existing: Option<Value>,
}

impl ApplyItem {
    /// `kind/name` with the kind in lower case, as kubectl prints it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.kind.to_ascii_lowercase(), self.name)
    }
}

/// Installs the ring crypto provider for rustls, once per process.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client of one controller.
#[derive(Clone, Debug)]
pub struct ApiClient {
    connection: Connection,
    http: HttpClient,
}

impl ApiClient {
    /// A client for `connection`.
    pub fn new(connection: Connection) -> Result<Self, ApiError> {
        install_crypto_provider();
        let unreachable = |cause: String| ApiError::Unreachable {
            server: connection.server.clone(),
            cause,
        };
        let mut builder = HttpClient::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("tcadm/", env!("CARGO_PKG_VERSION")));
        if connection.server.starts_with("https://") {
            let trust = match &connection.ca {
                CaSource::File(path) | CaSource::LocalFile(path) => {
                    tc_trust::Trust::from_pem_file(path).map_err(|e| unreachable(e.to_string()))?
                }
                CaSource::Hash(hash) => tc_trust::Trust::Pinned(vec![*hash]),
                CaSource::None => {
                    return Err(unreachable(format!(
                        "no CA to verify it with: pass --certificate-authority FILE (TCADM_CA_FILE; the controller's data/pki/ca.crt) or --ca-cert-hash sha256:<hex> (TCADM_CA_CERT_HASH; the controller prints it at start){}",
                        if is_local(&connection.server) {
                            format!(", or run tcadm where {DEFAULT_CA_FILE} is")
                        } else {
                            String::new()
                        }
                    )));
                }
            };
            let config = tc_trust::client_config(&trust, &[tc_trust::ALPN_HTTP1], None)
                .map_err(|e| unreachable(e.to_string()))?;
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder
            .build()
            .map_err(|error| unreachable(root_cause(&error)))?;
        Ok(ApiClient { connection, http })
    }

    /// The base URL.
    pub fn server(&self) -> &str {
        &self.connection.server
    }

    /// The URL of `path` with `query` pairs (empty values are left out).
    pub(crate) fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, ApiError> {
        let text = format!("{}{path}", self.connection.server);
        let mut url = Url::parse(&text).map_err(|error| ApiError::Unreachable {
            server: self.connection.server.clone(),
            cause: format!("`{text}` is not a valid URL: {error}"),
        })?;
        let pairs: Vec<_> = query
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        if !pairs.is_empty() {
            let mut serializer = url.query_pairs_mut();
            for (key, value) in pairs {
                serializer.append_pair(key, value);
            }
        }
        Ok(url)
    }

    pub(crate) fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.connection.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Sends a request; any answer but 2xx becomes an error.
    pub(crate) fn execute(&self, builder: RequestBuilder) -> Result<Response, ApiError> {
        let response = builder.send().map_err(|error| ApiError::Unreachable {
            server: self.connection.server.clone(),
            cause: root_cause(&error),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(self.error_from(response))
    }

    fn error_from(&self, response: Response) -> ApiError {
        let status = response.status();
        let url = response.url().to_string();
        let text = response.text().unwrap_or_default();
        let body: StatusBody = serde_json::from_str(&text).unwrap_or_default();
        let message = if body.kind == "Status" || !body.message.is_empty() {
            body.message
        } else {
            let first_line = text.lines().next().unwrap_or("").trim();
            if first_line.is_empty() {
                format!("{status} from {url}")
            } else {
                format!("{status} from {url}: {first_line}")
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            return ApiError::Unauthorized {
                server: self.connection.server.clone(),
                message: if message.is_empty() {
                    "401 Unauthorized".into()
                } else {
                    message
                },
                hint: self.token_hint(),
            };
        }
        let reason = if body.reason.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("Error")
                .replace(' ', "")
        } else {
            body.reason
        };
        ApiError::Status {
            code: status.as_u16(),
            reason,
            message,
            causes: body.details.map(|d| d.causes).unwrap_or_default(),
        }
    }

    fn token_hint(&self) -> String {
        match &self.connection.token_source {
            TokenSource::Given => "check --token or TCADM_TOKEN".into(),
            TokenSource::File(path) => format!(
                "the token came from {}; pass --token or set TCADM_TOKEN",
                path.display()
            ),
            TokenSource::Missing(path) => format!(
                "no token given and {} is not readable; pass --token or set TCADM_TOKEN",
                path.display()
            ),
            TokenSource::None => "no token given; pass --token or set TCADM_TOKEN".into(),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ApiError> {
        let url = response.url().to_string();
        let bytes = response.bytes().map_err(|error| ApiError::Protocol {
            url: url.clone(),
            message: root_cause(&error),
        })?;
        serde_json::from_slice(&bytes).map_err(|error| ApiError::Protocol {
            url,
            message: error.to_string(),
        })
    }

    pub(crate) fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ApiError> {
        let url = self.url(path, query)?;
        Self::decode(self.execute(self.request(Method::GET, url))?)
    }

    /// `GET /apis/thinfleet.io/v1/KIND?labelSelector=` as the raw list.
    pub fn list(&self, kind: Kind, selector: Option<&str>) -> Result<Value, ApiError> {
        let path = format!("{API_PREFIX}/{}", kind.plural());
        self.get_json(&path, &[("labelSelector", selector.unwrap_or(""))])
    }

    /// `GET /apis/thinfleet.io/v1/KIND/NAME` as the raw object.
    pub fn get(&self, kind: Kind, name: &str) -> Result<Value, ApiError> {
        let path = format!("{API_PREFIX}/{}/{}", kind.plural(), name);
        self.get_json(&path, &[])
    }

    /// `GET /apis/thinfleet.io/v1/KIND/NAME` as a typed object.
    pub fn get_typed<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<T, ApiError> {
        let url = format!("{API_PREFIX}/{}/{}", kind.plural(), name);
        let value = self.get(kind, name)?;
        serde_json::from_value(value).map_err(|error| ApiError::Protocol {
            url,
            message: error.to_string(),
        })
    }

    /// The items of a list, typed.
    pub fn list_typed<T: DeserializeOwned>(
        &self,
        kind: Kind,
        selector: Option<&str>,
    ) -> Result<Vec<T>, ApiError> {
        let list = self.list(kind, selector)?;
        typed_items(&list, kind.plural())
    }

    /// `DELETE /apis/thinfleet.io/v1/KIND/NAME`; answers the deleted object. The request carries
    /// no precondition, so a `409` caused by a concurrent status write is retried a few times.
    pub fn delete(&self, kind: Kind, name: &str) -> Result<Value, ApiError> {
        Ok(self.delete_with_warnings(kind, name)?.0)
    }

    /// [`ApiClient::delete`], with the texts of the answer's `Warning` headers (the watched
    /// directory restored the object, for example).
    pub fn delete_with_warnings(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<(Value, Vec<String>), ApiError> {
        const ATTEMPTS: usize = 3;
        let url = self.url(&format!("{API_PREFIX}/{}/{}", kind.plural(), name), &[])?;
        let mut attempt = 1;
        loop {
            match self.execute(self.request(Method::DELETE, url.clone())) {
                Ok(response) => {
                    let warnings = warning_texts(response.headers());
                    return Ok((Self::decode(response)?, warnings));
                }
                Err(error) if error.code() == Some(409) && attempt < ATTEMPTS => attempt += 1,
                Err(error) => return Err(error),
            }
        }
    }

    /// `GET /apis/thinfleet.io/v1/sources`: the watched directories' status.
    pub fn sources(&self) -> Result<Vec<Value>, ApiError> {
        let list: Value = self.get_json(&format!("{API_PREFIX}/sources"), &[])?;
        Ok(list
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `GET /apis/thinfleet.io/v1/sources/NAME`.
    pub fn source(&self, name: &str) -> Result<Value, ApiError> {
        self.get_json(&format!("{API_PREFIX}/sources/{name}"), &[])
    }

    /// `PATCH /apis/thinfleet.io/v1/clients/NAME` with a JSON merge patch.
    pub fn patch_client(&self, name: &str, patch: &Value) -> Result<Value, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/clients/{name}"), &[])?;
        let builder = self
            .request(Method::PATCH, url)
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string());
        Self::decode(self.execute(builder)?)
    }

    /// `POST /apis/thinfleet.io/v1/apply` with named files.
    pub fn apply(
        &self,
        files: &[FileBody],
        options: &ApplyOptions,
    ) -> Result<ApplyResult, ApiError> {
        let flag = |on: bool| if on { "true" } else { "" };
        let url = self.url(
            &format!("{API_PREFIX}/apply"),
            &[
                ("dryRun", flag(options.dry_run)),
                ("force", flag(options.force)),
                ("prune", flag(options.prune)),
                ("fieldManager", options.field_manager.as_str()),
            ],
        )?;
        let body = json!({ "files": files });
        let builder = self
            .request(Method::POST, url)
            .header("content-type", "application/json")
            .body(body.to_string());
        Self::decode(self.execute(builder)?)
    }

    /// `GET /apis/thinfleet.io/v1/events`, oldest first; with `limit`, the newest that many.
    pub fn events(
        &self,
        object_kind: Option<Kind>,
        name: Option<&str>,
        after_seq: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<Event>, ApiError> {
        self.events_of(object_kind.map(Kind::as_str), name, after_seq, limit)
    }

    /// [`ApiClient::events`] of any subject kind, as events name it (`ClientGroup`,
    /// `ManifestSource`, ...).
    pub fn events_of(
        &self,
        object_kind: Option<&str>,
        name: Option<&str>,
        after_seq: Option<u64>,
        limit: Option<usize>,
    ) -> Result<Vec<Event>, ApiError> {
        let path = format!("{API_PREFIX}/events");
        let after = after_seq.map(|seq| seq.to_string()).unwrap_or_default();
        let limit = limit.map(|limit| limit.to_string()).unwrap_or_default();
        let list: Value = self.get_json(
            &path,
            &[
                ("kind", object_kind.unwrap_or("")),
                ("name", name.unwrap_or("")),
                ("afterSeq", &after),
                ("limit", &limit),
            ],
        )?;
        typed_items(&list, "events")
    }

    /// `GET /apis/thinfleet.io/v1/audit` as the raw list (`by`, `kind`, `name`, `action`,
    /// `limit`; empty values are left out).
    pub fn audit(&self, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        self.get_json(&format!("{API_PREFIX}/audit"), query)
    }

    /// `GET /apis/thinfleet.io/v1/audit?format=jsonl`: the URL and the answer, to be read as it
    /// streams in.
    pub fn audit_export(&self, query: &[(&str, &str)]) -> Result<(String, Response), ApiError> {
        let url = self.url(&format!("{API_PREFIX}/audit"), query)?;
        let shown = url.to_string();
        Ok((shown, self.execute(self.request(Method::GET, url))?))
    }

    /// `GET /apis/thinfleet.io/v1/events` as the raw list.
    pub fn events_raw(
        &self,
        object_kind: Option<Kind>,
        name: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.events_raw_of(object_kind.map(Kind::as_str), name)
    }

    /// [`ApiClient::events_raw`] of any subject kind.
    pub fn events_raw_of(
        &self,
        object_kind: Option<&str>,
        name: Option<&str>,
    ) -> Result<Value, ApiError> {
        self.get_json(
            &format!("{API_PREFIX}/events"),
            &[
                ("kind", object_kind.unwrap_or("")),
                ("name", name.unwrap_or("")),
            ],
        )
    }

    /// `POST /apis/thinfleet.io/v1/clientgroups/NAME/retry`: retries the releases that failed on
    /// the group's members; answers what was retried.
    pub fn retry_group(&self, name: &str) -> Result<Value, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/clientgroups/{name}/retry"), &[])?;
        Self::decode(self.execute(self.request(Method::POST, url))?)
    }

    /// `POST /apis/thinfleet.io/v1/clientgroups/NAME/pause` or `.../resume` (`verb`).
    pub fn steer_group(&self, name: &str, verb: &str) -> Result<Value, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/clientgroups/{name}/{verb}"), &[])?;
        Self::decode(self.execute(self.request(Method::POST, url))?)
    }

    /// `POST /apis/thinfleet.io/v1/bootstraptokens`: a new bootstrap token, with its secret.
    pub fn create_bootstrap_token(
        &self,
        request: &BootstrapTokenRequest,
    ) -> Result<BootstrapTokenCreated, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/bootstraptokens"), &[])?;
        let builder = self
            .request(Method::POST, url)
            .header("content-type", "application/json")
            .body(serde_json::to_string(request).expect("token requests serialize"));
        Self::decode(self.execute(builder)?)
    }

    /// `GET /apis/thinfleet.io/v1/bootstraptokens`.
    pub fn bootstrap_tokens(&self) -> Result<Vec<BootstrapToken>, ApiError> {
        let list: Value = self.get_json(&format!("{API_PREFIX}/bootstraptokens"), &[])?;
        typed_items(&list, "bootstrap tokens")
    }

    /// `DELETE /apis/thinfleet.io/v1/bootstraptokens/NAME`.
    pub fn revoke_bootstrap_token(&self, name: &str) -> Result<BootstrapToken, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/bootstraptokens/{name}"), &[])?;
        Self::decode(self.execute(self.request(Method::DELETE, url))?)
    }

    /// `POST /apis/thinfleet.io/v1/credentials`.
    pub fn create_credential(
        &self,
        request: &CredentialRequest,
    ) -> Result<CredentialCreated, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/credentials"), &[])?;
        let builder = self
            .request(Method::POST, url)
            .header("content-type", "application/json")
            .body(serde_json::to_string(request).expect("credential requests serialize"));
        Self::decode(self.execute(builder)?)
    }

    /// `GET /apis/thinfleet.io/v1/credentials`.
    pub fn credentials(&self) -> Result<Vec<Credential>, ApiError> {
        let list: Value = self.get_json(&format!("{API_PREFIX}/credentials"), &[])?;
        typed_items(&list, "credentials")
    }

    /// `DELETE /apis/thinfleet.io/v1/credentials/NAME`.
    pub fn revoke_credential(&self, name: &str) -> Result<Credential, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/credentials/{name}"), &[])?;
        Self::decode(self.execute(self.request(Method::DELETE, url))?)
    }

    /// `POST /apis/thinfleet.io/v1/credentials/NAME/rotate`.
    pub fn rotate_credential(&self, name: &str) -> Result<CredentialCreated, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/credentials/{name}/rotate"), &[])?;
        Self::decode(self.execute(self.request(Method::POST, url))?)
    }

    /// `POST /apis/thinfleet.io/v1/clients/NAME/ACTION` (`approve`, `deny`, `decommission`)
    /// with an optional JSON body; answers the client.
    pub fn client_action(
        &self,
        name: &str,
        action: &str,
        body: Option<Value>,
    ) -> Result<Client, ApiError> {
        let url = self.url(&format!("{API_PREFIX}/clients/{name}/{action}"), &[])?;
        let mut builder = self.request(Method::POST, url);
        if let Some(body) = body {
            builder = builder
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        Self::decode(self.execute(builder)?)
    }

    /// `DELETE /apis/thinfleet.io/v1/blockedmachines/ID`: the blocks removed.
    pub fn allow_machine(&self, machine_id: &str) -> Result<Vec<BlockedMachine>, ApiError> {
        let mut url = self.url(&format!("{API_PREFIX}/blockedmachines"), &[])?;
        url.path_segments_mut()
            .map_err(|()| ApiError::Unreachable {
                server: self.connection.server.clone(),
                cause: "the server URL cannot take a path".into(),
            })?
            .push(machine_id);
        let list: Value = Self::decode(self.execute(self.request(Method::DELETE, url))?)?;
        typed_items(&list, "blocked machines")
    }

    /// `HEAD /blobs/sha256/HEX`: whether the controller has the blob.
    pub fn blob_exists(&self, sha256: &str) -> Result<bool, ApiError> {
        let url = self.url(&format!("/blobs/sha256/{sha256}"), &[])?;
        match self.execute(self.request(Method::HEAD, url)) {
            Ok(_) => Ok(true),
            Err(error) if error.is_not_found() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// `PUT /blobs?sha256=HEX`: streams a file into the blob store.
    pub fn upload_blob(&self, path: &Path, sha256: &str) -> Result<BlobInfo, ApiError> {
        let file = File::open(path).map_err(|source| ApiError::File {
            path: path.to_path_buf(),
            source,
        })?;
        self.upload_body(file.into(), sha256)
    }

    /// `PUT /blobs?sha256=...` of bytes held in memory (a zip packed from a directory).
    pub fn upload_blob_bytes(&self, bytes: Vec<u8>, sha256: &str) -> Result<BlobInfo, ApiError> {
        self.upload_body(bytes.into(), sha256)
    }

    fn upload_body(
        &self,
        body: reqwest::blocking::Body,
        sha256: &str,
    ) -> Result<BlobInfo, ApiError> {
        let url = self.url("/blobs", &[("sha256", sha256)])?;
        let builder = self
            .request(Method::PUT, url)
            .header("content-type", "application/zip")
            .timeout(UPLOAD_TIMEOUT)
            .body(body);
        Self::decode(self.execute(builder)?)
    }

    /// `GET /version`: the controller's version.
    pub fn server_version(&self) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        struct VersionBody {
            version: String,
        }
        let body: VersionBody = self.get_json("/version", &[])?;
        Ok(body.version)
    }
}

/// The texts of `Warning: 299 - "text"` headers.
pub fn warning_texts(headers: &reqwest::header::HeaderMap) -> Vec<String> {
    headers
        .get_all(reqwest::header::WARNING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| {
            let text = value.splitn(3, ' ').nth(2).unwrap_or(value).trim();
            let text = text
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(text);
            text.replace("\\\"", "\"").replace("\\\\", "\\")
        })
        .collect()
}

/// The `items` of a list answer, typed.
pub fn typed_items<T: DeserializeOwned>(list: &Value, what: &str) -> Result<Vec<T>, ApiError> {
    let items = list.get("items").cloned().unwrap_or(Value::Array(vec![]));
    serde_json::from_value(items).map_err(|error| ApiError::Protocol {
        url: what.to_string(),
        message: error.to_string(),
    })
}

/// The innermost cause of an error, which is the part that tells a person what happened
/// (`Connection refused (os error 111)`).
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_get_a_scheme_and_lose_trailing_slashes() {
        assert_eq!(normalize_server("127.0.0.1:7130"), "https://127.0.0.1:7130");
        assert_eq!(
            normalize_server("http://127.0.0.1:7130/"),
            "http://127.0.0.1:7130"
        );
        assert_eq!(
            normalize_server("https://fleet.example/"),
            "https://fleet.example"
        );
    }

    #[test]
    fn the_local_token_file_is_used_only_for_the_default_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/admin.token"), "secret\n").unwrap();

        let local = Connection::resolve(None, None, dir.path());
        assert_eq!(local.server, DEFAULT_SERVER);
        assert_eq!(local.token.as_deref(), Some("secret"));
        assert!(matches!(local.token_source, TokenSource::File(_)));

        let remote = Connection::resolve(Some("https://fleet.example"), None, dir.path());
        assert_eq!(remote.token, None);
        assert_eq!(remote.token_source, TokenSource::None);

        let given = Connection::resolve(Some("fleet:7130"), Some(" t0k "), dir.path());
        assert_eq!(given.server, "https://fleet:7130");
        assert_eq!(given.token.as_deref(), Some("t0k"));

        let empty = tempfile::tempdir().unwrap();
        let missing = Connection::resolve(None, None, empty.path());
        assert_eq!(missing.token, None);
        assert!(matches!(missing.token_source, TokenSource::Missing(_)));
    }

    #[test]
    fn the_local_ca_file_is_trusted_only_for_a_local_controller() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data/pki")).unwrap();
        let ca = dir.path().join(DEFAULT_CA_FILE);
        std::fs::write(&ca, "pem").unwrap();
        for server in [None, Some("https://localhost:7130"), Some("[::1]:7130")] {
            let local = Connection::resolve(server, None, dir.path());
            assert_eq!(local.ca, CaSource::LocalFile(ca.clone()), "{server:?}");
        }
        let remote = Connection::resolve(Some("https://fleet.example"), None, dir.path());
        assert_eq!(remote.ca, CaSource::None);
        let given = remote.with_ca(Some(Path::new("/etc/fleet-ca.pem")), None);
        assert_eq!(given.ca, CaSource::File("/etc/fleet-ca.pem".into()));
        let hash: tc_trust::CaCertHash = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let pinned = Connection::resolve(None, None, dir.path()).with_ca(None, Some(hash));
        assert_eq!(pinned.ca, CaSource::Hash(hash));
        let error = ApiClient::new(Connection::resolve(
            Some("https://fleet.example"),
            None,
            dir.path(),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("--certificate-authority") && error.contains("--ca-cert-hash"),
            "{error}"
        );
    }

    #[test]
    fn a_status_line_prefers_the_first_positioned_cause() {
        let cause = Cause {
            file: Some("fleet.yaml".into()),
            line: Some(12),
            column: Some(3),
            field: Some("spec.colour".into()),
            message: "unknown field `colour`".into(),
        };
        assert_eq!(
            status_line("invalid manifests", std::slice::from_ref(&cause)),
            "fleet.yaml:12:3: spec.colour: unknown field `colour`"
        );
        assert_eq!(
            status_line("invalid manifests", &[cause.clone(), cause.clone()]),
            "fleet.yaml:12:3: spec.colour: unknown field `colour` (and 1 more error)"
        );
        assert_eq!(status_line("plain message", &[]), "plain message");
        let unpositioned = Cause {
            message: "x".into(),
            ..Default::default()
        };
        assert_eq!(status_line("the message", &[unpositioned]), "the message");
    }
}
