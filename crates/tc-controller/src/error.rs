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
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            causes: vec![],
            message: message.into(),
        }
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
    serde_json::to_value(StatusBody {
        kind: "Status",
        api_version: "v1",
        status: "Failure",
        code: code.as_u16(),
        reason: reason(code),
        message,
        details: (!causes.is_empty()).then_some(Details { causes }),
    })
    .expect("status bodies serialize")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(status_body(self.code, &self.message, &self.causes)),
        )
            .into_response()
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
