//! Arbitrary bytes as the controller's answers, through the agent's own code: the body decoding
//! of every agent request (`tc_agent::client::decode_answer`, for enrolment, heartbeat and
//! long-poll answers and for error answers), the check of an enrolment answer before its
//! credentials are stored (`tc_agent::client::check_enrollment`), the hand-over of a desired
//! state to the install engine (`tc_agent::client::deliver`) and the engine's check of every
//! desired package before it acts on it (`tc_agent::engine::validate`).
//!
//! Asserts:
//! * nothing panics;
//! * an error answer always gives a `Status` error with the answer's status and a clear,
//!   bounded message; an undecodable success gives a `Decode` error with a message;
//! * the session or client token of an accepted enrolment can be sent back as the agent sends
//!   it, and its client name in a session request;
//! * a desired state of revision 0 never reaches the engine; any other does, as sent (without
//!   packages when it says to decommission);
//! * a desired package the agent accepts is safe to act on, as the agent's own code uses it:
//!   its name and version are single, ordinary file names in the state directory's layout
//!   (never `current` or a hidden name), its sha256 is lowercase hex as the download check
//!   computes it, its URL resolves against the controller's URL to an http(s) URL the download
//!   can request, and each of its hooks names a program and arguments a process can be started
//!   with and a timeout it can run within.

#![no_main]

use std::ffi::OsStr;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use reqwest::{StatusCode, Url};
use tc_agent::client::{ApiError, check_enrollment, decode_answer, deliver};
use tc_agent::engine::validate;
use tc_agent::state::StateDir;
use tc_proto::{
    DesiredPackage, DesiredResponse, DesiredState, EnrollResponse, HeartbeatResponse, Hook,
};

/// How much of an error answer's text the agent keeps.
const MAX_ERROR_MESSAGE_CHARS: usize = 500;

fuzz_target!(|data: &[u8]| {
    let url = Url::parse("http://127.0.0.1:7130/agent/v1/heartbeat").expect("a URL");

    match decode_answer::<EnrollResponse>(url.clone(), StatusCode::OK, data) {
        Ok(answer) => match check_enrollment(&answer) {
            Ok(()) => check_accepted_enrollment(&answer),
            Err(reason) => assert!(!reason.trim().is_empty()),
        },
        Err(error) => check_decode_error(&error),
    }
    match decode_answer::<HeartbeatResponse>(url.clone(), StatusCode::OK, data) {
        Ok(answer) => check_desired(answer.desired),
        Err(error) => check_decode_error(&error),
    }
    match decode_answer::<DesiredResponse>(url.clone(), StatusCode::OK, data) {
        Ok(answer) => check_desired(answer.desired),
        Err(error) => check_decode_error(&error),
    }

    let statuses = [
        StatusCode::BAD_REQUEST,
        StatusCode::UNAUTHORIZED,
        StatusCode::NOT_FOUND,
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ];
    let status = statuses[data.len() % statuses.len()];
    match decode_answer::<HeartbeatResponse>(url, status, data) {
        Err(ApiError::Status {
            status: reported,
            message,
            ..
        }) => {
            assert_eq!(reported, status);
            assert!(!message.trim().is_empty(), "an empty error message");
            assert!(
                message.chars().count() <= MAX_ERROR_MESSAGE_CHARS,
                "an error message of {} characters",
                message.chars().count()
            );
        }
        other => panic!("an error answer decoded as {other:?}"),
    }
});

fn check_decode_error(error: &ApiError) {
    match error {
        ApiError::Decode { message, .. } => assert!(!message.is_empty()),
        other => panic!("a success answer gave {other:?}"),
    }
}

/// The tokens of an accepted enrolment can be sent as the agent sends them, and its client
/// name in a session request.
fn check_accepted_enrollment(answer: &EnrollResponse) {
    assert!(!answer.client_name.trim().is_empty(), "{answer:?}");
    assert!(
        !answer.client_name.chars().any(char::is_control),
        "{answer:?}"
    );
    let tokens = answer
        .session
        .iter()
        .map(|session| session.token.as_str())
        .chain(answer.client_token.as_deref());
    for token in tokens {
        assert!(!token.is_empty(), "an empty token: {answer:?}");
        assert!(
            reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_ok(),
            "a token that is not a header value: {answer:?}"
        );
    }
}

fn check_desired(desired: DesiredState) {
    let previous = DesiredState {
        revision: 7,
        packages: vec![],
        decommission: false,
        activation: Default::default(),
    };
    let (sender, _receiver) = tokio::sync::watch::channel(Some(previous.clone()));
    let mut known_revision = previous.revision;
    deliver(&sender, desired.clone(), &mut known_revision);
    assert_eq!(known_revision, desired.revision);
    if desired.revision == 0 {
        assert_eq!(
            *sender.borrow(),
            Some(previous),
            "revision 0 reached the engine"
        );
    } else if desired.decommission {
        // Decommissioning removes everything, whatever the answer lists.
        let delivered = sender.borrow().clone().expect("a desired state");
        assert_eq!(delivered.revision, desired.revision);
        assert!(delivered.decommission);
        assert!(delivered.packages.is_empty(), "packages kept when decommissioning");
    } else {
        assert_eq!(*sender.borrow(), Some(desired.clone()));
    }
    for package in &desired.packages {
        match validate(package) {
            Ok(()) => check_accepted(package),
            Err(reason) => assert!(!reason.trim().is_empty()),
        }
    }
}

/// A package the agent accepted is safe to act on.
fn check_accepted(package: &DesiredPackage) {
    let dir = StateDir::new("/var/lib/tc-agent");
    for (what, text) in [("name", &package.name), ("version", &package.version)] {
        let components: Vec<Component<'_>> = Path::new(text).components().collect();
        assert_eq!(
            components,
            [Component::Normal(OsStr::new(text))],
            "{what} `{text}` is not one file name"
        );
        assert!(
            text.len() <= 255 && !text.starts_with('.') && !text.contains('\0'),
            "{what} `{text}`"
        );
    }
    assert_ne!(package.version, "current", "{package:?}");
    let version_dir = dir.version(&package.name, &package.version);
    assert_eq!(
        version_dir.parent(),
        Some(dir.package(&package.name).as_path())
    );
    assert_eq!(
        dir.package(&package.name).parent(),
        Some(dir.packages().as_path())
    );
    assert_ne!(version_dir, dir.current(&package.name));
    assert_eq!(
        dir.staging_for(&package.name).parent(),
        Some(dir.staging().as_path())
    );

    assert!(
        package.sha256.len() == 64
            && package
                .sha256
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')),
        "sha256 `{}`",
        package.sha256
    );

    for base in [
        "http://127.0.0.1:7130/",
        "https://controller.example:8443/thinfleet/",
    ] {
        let base = Url::parse(base).expect("a URL");
        let resolved = base
            .join(&package.url)
            .unwrap_or_else(|error| panic!("URL `{}` does not resolve: {error}", package.url));
        assert!(
            matches!(resolved.scheme(), "http" | "https") && resolved.host().is_some(),
            "URL `{}` resolves to {resolved}",
            package.url
        );
    }

    let hooks = &package.hooks;
    for hook in [
        &hooks.pre_install,
        &hooks.post_install,
        &hooks.health_check,
        &hooks.pre_remove,
    ]
    .into_iter()
    .flatten()
    {
        check_hook(hook);
    }
}

fn check_hook(hook: &Hook) {
    let program = hook.command.first().map(String::as_str).unwrap_or_default();
    assert!(
        !program.trim().is_empty(),
        "hook without a program: {hook:?}"
    );
    assert!(
        hook.command.iter().all(|part| !part.contains('\0')),
        "hook with a NUL byte: {hook:?}"
    );
    assert!(hook.timeout_seconds >= 1, "hook that cannot run: {hook:?}");
}
