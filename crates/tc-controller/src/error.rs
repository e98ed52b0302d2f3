//! The one error type of the HTTP API. User mistakes become 4xx with a message a person can act on;
//! internal faults are logged and become a 500 that leaks no internals.

use axum::Json;
use axum::http::StatusCode;
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
            StoreError::Database(_) | StoreError::Corrupt { .. } => ApiError::internal(error),
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
