//! The one error type of the HTTP API. User mistakes become 4xx with a message a person can act on;
//! internal faults are logged and become a 500 that leaks no internals.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tc_api::Cause;
use tc_store::StoreError;

/// An API error: status code, reason and message, with optional causes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// Details pointing into manifests.
    pub causes: Vec<Cause>,
    /// What went wrong, for a person.
    pub message: String,
    /// A reason word more precise than the status code's (`SessionExpired`, `Denied`, ...).
    pub reason: Option<&'static str>,
    /// Seconds to wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            causes: vec![],
            message: message.into(),
            reason: None,
            retry_after: None,
        }
    }

    /// Sets a reason word more precise than the status code's.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Asks the client to wait before trying again (a `Retry-After` header).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
        self
    }

    /// 429, with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, wait: std::time::Duration) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message).with_retry_after(wait)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 500; the detail is logged, not sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; see the controller log",
        )
    }

    /// Adds causes.
    pub fn with_causes(mut self, causes: Vec<Cause>) -> Self {
        self.causes = causes;
        self
    }
}

/// Largest body of a non-JSON error response read to become the message of a JSON one (axum's
/// rejection messages are a line or two).
const MAX_PLAIN_ERROR_BYTES: usize = 16 * 1024;

/// Middleware that makes every error a JSON `Status`: the errors the handlers return already are
/// ([`ApiError`]); this turns the others into one, keeping their status and headers (`Allow`,
/// `Content-Range`) — the rejections of axum's extractors (JSON syntax or data, missing or wrong
/// content type, path and query parameters, a body over the size limit, all `text/plain`), a
/// method a route does not have (405, empty), an unsatisfiable range (416, empty). Their text
/// becomes the message.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let code = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    // The console's pages (`crate::ui`) answer their errors as HTML pages of their own.
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/html"));
    if !(code.is_client_error() || code.is_server_error()) || is_json || is_html {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else if code == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = parts
            .headers
            .get(header::ALLOW)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("none");
        format!("{method} is not allowed on {path} (allowed: {allowed})")
    } else {
        format!(
            "{} {}",
            code.as_u16(),
            code.canonical_reason().unwrap_or("error")
        )
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    (parts, Json(status_body(code, &message, &[]))).into_response()
}

/// The Kubernetes-style reason word of a status code.
pub fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        416 => "RequestedRangeNotSatisfiable",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        _ if code.is_server_error() => "InternalError",
        _ => "Unknown",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody<'a> {
    kind: &'static str,
    api_version: &'static str,
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
}

#[derive(Serialize)]
struct Details<'a> {
    causes: &'a [Cause],
}

/// The JSON body of an error.
pub fn status_body(code: StatusCode, message: &str, causes: &[Cause]) -> serde_json::Value {
    status_body_with_reason(code, reason(code), message, causes)
}

fn status_body_with_reason(
    code: StatusCode,
    reason: &'static str,
    message: &str,
    causes: &[Cause],
) -> serde_json::Value {
    serde_json::to_value(StatusBody {
        kind: "Status",
        api_version: "v1",
        status: "Failure",
        code: code.as_u16(),
        reason,
        message,
        details: (!causes.is_empty()).then_some(Details { causes }),
    })
    .expect("status bodies serialize")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let reason = self.reason.unwrap_or_else(|| reason(self.code));
        let mut response = (
            self.code,
            Json(status_body_with_reason(
                self.code,
                reason,
                &self.message,
                &self.causes,
            )),
        )
            .into_response();
        response
            .extensions_mut()
            .insert(crate::audit::ErrorMessage(self.message.clone()));
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::NotFound { .. } => ApiError::not_found(error.to_string()),
            StoreError::Conflict { .. } | StoreError::AlreadyExists { .. } => {
                ApiError::conflict(error.to_string())
            }
            StoreError::Database(_)
            | StoreError::Corrupt { .. }
            | StoreError::TargetNotEmpty { .. } => ApiError::internal(error),
            // Nothing was written: the same request may succeed once the database is back, or
            // on the replica that leads now.
            StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
                    .with_reason("StoreUnavailable")
                    .with_retry_after(std::time::Duration::from_secs(5))
            }
            StoreError::NotLeader(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
                    .with_reason("NotLeader")
                    .with_retry_after(std::time::Duration::from_secs(5))
            }
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(error: tokio::task::JoinError) -> Self {
        ApiError::internal(error)
    }
}

impl From<tc_proto::limits::LimitError> for ApiError {
    /// A field an agent sent beyond a limit: 413 when too long or too many, 400 when malformed;
    /// the field is named in the message and in the cause.
    fn from(error: tc_proto::limits::LimitError) -> Self {
        let code = if error.too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(code, error.to_string()).with_causes(vec![Cause {
            file: None,
            line: None,
            column: None,
            field: Some(error.field),
            message: error.message,
        }])
    }
}
