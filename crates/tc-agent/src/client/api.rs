//! The controller's agent API (`/agent/v1`) as the agent calls it: one method a request, and the
//! decoding of answers and errors.

use std::time::Duration;

use reqwest::{StatusCode, Url, header};
use serde::de::DeserializeOwned;
use tc_proto::task::TaskReports;
use tc_proto::{
    DesiredResponse, EnrollRequest, EnrollResponse, ErrorStatus, HeartbeatRequest,
    HeartbeatResponse, SessionRequest, SessionResponse,
};

use crate::download::{answer_error_message, error_chain};

/// Timeout of enrolment and heartbeat requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An error from the controller API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request did not get an answer.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: Url,
        /// What happened.
        message: String,
    },
    /// The controller answered with an error.
    #[error("{url}: {status}: {message}")]
    Status {
        /// The URL.
        url: Url,
        /// The status.
        status: StatusCode,
        /// The controller's reason word (`SessionExpired`, `Denied`, ...), empty when it gave none.
        reason: String,
        /// The controller's message.
        message: String,
        /// How long the controller asked to wait (`Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The answer could not be decoded.
    #[error("{url}: unexpected answer: {message}")]
    Decode {
        /// The URL.
        url: Url,
        /// What is wrong with it.
        message: String,
    },
}

impl ApiError {
    /// True when the controller refused the token.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// The status of an error answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The reason word of an error answer, when the controller gave one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ApiError::Status { reason, .. } if !reason.is_empty() => Some(reason),
            _ => None,
        }
    }

    /// How long the controller asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The controller's agent API.
#[derive(Clone, Debug)]
pub struct ControllerClient {
    http: reqwest::Client,
    server: Url,
}

impl ControllerClient {
    /// A client for the controller at `server` (a URL ending with `/`).
    pub fn new(http: reqwest::Client, server: Url) -> Self {
        ControllerClient { http, server }
    }

    /// `POST /agent/v1/enroll`.
    pub async fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ApiError> {
        let url = self.url("agent/v1/enroll");
        let builder = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .json(request);
        send(builder, url).await
    }

    /// `POST /agent/v1/session`.
    pub async fn session(&self, request: &SessionRequest) -> Result<SessionResponse, ApiError> {
        let url = self.url("agent/v1/session");
        let builder = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .json(request);
        send(builder, url).await
    }

    /// An answer of `path` without the part the protocol promises.
    pub fn protocol_error(&self, path: &str, problem: &str) -> ApiError {
        ApiError::Decode {
            url: self.url(&format!("agent/v1/{path}")),
            message: problem.to_string(),
        }
    }

    /// `POST /agent/v1/heartbeat`.
    pub async fn heartbeat(
        &self,
        token: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ApiError> {
        let url = self.url("agent/v1/heartbeat");
        let builder = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token)
            .json(request);
        send(builder, url).await
    }

    /// `GET /agent/v1/desired?afterRevision=N`, waiting up to `timeout` for the answer.
    pub async fn desired(
        &self,
        token: &str,
        after_revision: u64,
        timeout: Duration,
    ) -> Result<DesiredResponse, ApiError> {
        let mut url = self.url("agent/v1/desired");
        url.set_query(Some(&format!("afterRevision={after_revision}")));
        let builder = self
            .http
            .get(url.clone())
            .timeout(timeout)
            .bearer_auth(token);
        send(builder, url).await
    }

    /// `POST /agent/v1/history`: the load history, which the controller asked for.
    pub async fn history(
        &self,
        token: &str,
        upload: &tc_proto::history::HistoryUpload,
    ) -> Result<(), ApiError> {
        let url = self.url("agent/v1/history");
        let builder = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token)
            .json(upload);
        send::<serde::de::IgnoredAny>(builder, url).await.map(drop)
    }

    /// `POST /agent/v1/tasks/report`: reports on the controller's task orders (at most
    /// [`tc_proto::task::MAX_TASK_REPORTS`]); `Ok` once the controller stored them.
    pub async fn report_tasks(&self, token: &str, reports: &TaskReports) -> Result<(), ApiError> {
        let url = self.url("agent/v1/tasks/report");
        let builder = self
            .http
            .post(url.clone())
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(token)
            .json(reports);
        match send::<serde::de::IgnoredAny>(builder, url).await {
            // A 2xx is the acknowledgement, whatever its body (none, or not JSON).
            Ok(_) | Err(ApiError::Decode { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn url(&self, path: &str) -> Url {
        self.server
            .join(path)
            .expect("a relative path joins onto an http(s) URL")
    }
}

async fn send<T: DeserializeOwned>(
    builder: reqwest::RequestBuilder,
    url: Url,
) -> Result<T, ApiError> {
    let response = builder
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| ApiError::Transport {
            url: url.clone(),
            message: error_chain(&error),
        })?;
    let status = response.status();
    if status.is_redirection() {
        return Err(redirect_error(url, status, response.headers()));
    }
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .bytes()
        .await
        .map_err(|error| ApiError::Transport {
            url: url.clone(),
            message: error_chain(&error),
        })?;
    decode_answer(url, status, &body).map_err(|error| match error {
        ApiError::Status {
            url,
            status,
            reason,
            message,
            ..
        } => ApiError::Status {
            url,
            status,
            reason,
            message,
            retry_after,
        },
        other => other,
    })
}

/// Decodes the controller's answer to a request to `url`: its JSON body when `status` is a
/// success, else the error it carries (the `ErrorStatus` message, or the start of the text).
// `ApiError` is large (a URL and two strings) and made once per failed request, next to a
// network round trip: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
pub fn decode_answer<T: DeserializeOwned>(
    url: Url,
    status: StatusCode,
    body: &[u8],
) -> Result<T, ApiError> {
    if !status.is_success() {
        let reason = serde_json::from_slice::<ErrorStatus>(body)
            .map(|error| error.reason)
            .unwrap_or_default();
        let message = answer_error_message(status, body);
        return Err(ApiError::Status {
            url,
            status,
            reason,
            message,
            retry_after: None,
        });
    }
    serde_json::from_slice(body).map_err(|error| ApiError::Decode {
        url,
        message: error.to_string(),
    })
}

/// The error for a redirect, which the agent never follows (see [`super::http_client`]).
fn redirect_error(url: Url, status: StatusCode, headers: &header::HeaderMap) -> ApiError {
    let location = headers
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .map_or_else(|| "nowhere".to_owned(), |to| to.chars().take(200).collect());
    ApiError::Status {
        url,
        status,
        reason: String::new(),
        message: format!(
            "the controller redirects to {location}; the agent follows no redirect (set its server \
             to the controller's own address)"
        ),
        retry_after: None,
    }
}
