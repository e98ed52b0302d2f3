//! Decoding of the controller's answers as the agent does it (`client::decode_answer`).

use reqwest::{StatusCode, Url};
use tc_agent::client::{ApiError, decode_answer};
use tc_agent::download::MAX_ERROR_MESSAGE_CHARS;
use tc_proto::{ErrorStatus, HeartbeatResponse};

fn url() -> Url {
    Url::parse("http://127.0.0.1:7130/agent/v1/heartbeat").unwrap()
}

fn status_message(status: StatusCode, body: &[u8]) -> String {
    match decode_answer::<HeartbeatResponse>(url(), status, body) {
        Err(ApiError::Status {
            status: reported,
            message,
            ..
        }) => {
            assert_eq!(reported, status);
            message
        }
        other => panic!("{other:?}"),
    }
}

/// Found by fuzzing the controller's answers: an error answer whose `ErrorStatus` message was
/// blank (here written as a JSON array, which serde also takes for the struct) gave an error with
/// an empty message, and a huge one was kept whole (it is logged and written to
/// `connection.json`), while a plain-text answer was cut to 500 characters.
#[test]
fn error_answer_with_a_blank_or_huge_message_gives_a_clear_bounded_error() {
    let blank = status_message(
        StatusCode::INTERNAL_SERVER_ERROR,
        b"[5,\n\"4.2\",\n    \"\\n\" ]",
    );
    assert_eq!(blank, "Internal Server Error");

    let huge = serde_json::to_vec(&ErrorStatus {
        code: 503,
        reason: "ServiceUnavailable".into(),
        message: format!("  {}  ", "x".repeat(100_000)),
    })
    .unwrap();
    let message = status_message(StatusCode::SERVICE_UNAVAILABLE, &huge);
    assert_eq!(message, "x".repeat(MAX_ERROR_MESSAGE_CHARS));

    let text = status_message(StatusCode::BAD_GATEWAY, "é".repeat(1000).as_bytes());
    assert_eq!(text.chars().count(), MAX_ERROR_MESSAGE_CHARS);
    assert_eq!(status_message(StatusCode::NOT_FOUND, b" \n "), "Not Found");
    let usual = serde_json::to_vec(&ErrorStatus {
        code: 401,
        reason: "Unauthorized".into(),
        message: "unknown client token".into(),
    })
    .unwrap();
    assert_eq!(
        status_message(StatusCode::UNAUTHORIZED, &usual),
        "unknown client token"
    );
}

#[test]
fn success_answer_that_does_not_decode_is_a_decode_error() {
    match decode_answer::<HeartbeatResponse>(url(), StatusCode::OK, b"{\"desired\":3}") {
        Err(ApiError::Decode { message, .. }) => {
            assert!(
                message.contains("expected struct DesiredState"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}
