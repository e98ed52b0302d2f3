//! What the console does besides reading: the actions of operators, carried out by the admin
//! API's own handlers, allowed by the same route table and recorded in the same audit trail;
//! and package downloads.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::html::{self, esc, url};
use super::pages::{RETRY_ROUTE, signed};
use super::session::{self, CsrfForm, UiSession, check_post};
use crate::Controller;
use crate::audit::Call;
use crate::credentials::required_role;
use crate::error::ApiError;

/// Carries out an admin route for a console session: refused (403) below the route's role in
/// [`crate::credentials::ROUTE_ROLES`], else answered by `handler`; either way recorded in the
/// audit trail with the session's identity, as the API records its own requests.
pub(super) async fn act<F>(
    controller: &Arc<Controller>,
    session: &UiSession,
    source: Option<SocketAddr>,
    (pattern, path, request_line): (&str, String, String),
    handler: F,
) -> Response
where
    F: Future<Output = Response>,
{
    let needed = required_role(&Method::POST, pattern);
    let mut response = match needed {
        Some(needed) if session.identity.role >= needed => handler.await,
        _ => ApiError::forbidden(format!(
            "{} (role {}) may not do this: needs role {}",
            session.identity.name,
            session.identity.role,
            needed.map_or_else(|| "none".to_string(), |r| r.to_string())
        ))
        .into_response(),
    };
    response.extensions_mut().insert(session.identity.clone());
    let call = Call {
        method: Method::POST,
        pattern: pattern.to_string(),
        path,
        request_line,
        source: source.map_or_else(|| "unknown".to_string(), |s| s.to_string()),
    };
    controller.audit_answer(call, response).await
}

/// The session of a console POST: signed in, with the session's CSRF token and from the
/// console's origin; else the answer that refuses it.
pub(super) fn signed_post(
    controller: &Arc<Controller>,
    headers: &HeaderMap,
    form: &CsrfForm,
) -> Result<UiSession, Box<Response>> {
    let session = signed(controller, headers)?;
    check_post(headers, &session, form.csrf.as_deref())?;
    Ok(session)
}

/// The status of an API handler's answer and its message (the `Status` body's, else the code's).
pub(super) async fn answer_message(answer: Response) -> (StatusCode, String) {
    let code = answer.status();
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| code.to_string());
    (code, message)
}

/// The page of an action's outcome.
fn outcome(
    session: &UiSession,
    title: &str,
    code: StatusCode,
    message: &str,
    back: &str,
) -> Response {
    let mut body = format!("<h1>{}</h1>", esc(title));
    let class = if code.is_success() { "good" } else { "bad" };
    let _ = write!(
        body,
        "<p class=\"{class}\">{}</p><p><a href=\"{}\">Back</a></p>",
        esc(message),
        esc(back)
    );
    session::html(code, html::page(title, "/ui/groups", Some(session), &body))
}

/// What a group's buttons do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupAction {
    /// Retry failed releases.
    Retry,
    /// Pause the rollout.
    Pause,
    /// Resume it.
    Resume,
}

impl GroupAction {
    /// The last segment of its console and API paths.
    pub fn verb(self) -> &'static str {
        match self {
            GroupAction::Retry => "retry",
            GroupAction::Pause => "pause",
            GroupAction::Resume => "resume",
        }
    }

    /// The admin API route that carries it out.
    pub fn route(self) -> &'static str {
        match self {
            GroupAction::Retry => RETRY_ROUTE,
            GroupAction::Pause => "/apis/thinfleet.io/v1/clientgroups/{name}/pause",
            GroupAction::Resume => "/apis/thinfleet.io/v1/clientgroups/{name}/resume",
        }
    }

    fn title(self) -> &'static str {
        match self {
            GroupAction::Retry => "Retry",
            GroupAction::Pause => "Pause",
            GroupAction::Resume => "Resume",
        }
    }
}

/// `POST /ui/groups/{name}/retry`: the group's Retry button, carried out by
/// `POST /apis/thinfleet.io/v1/clientgroups/{name}/retry`'s handler.
pub async fn retry(
    state: State<Arc<Controller>>,
    name: Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    form: Form<CsrfForm>,
) -> Response {
    group_action(GroupAction::Retry, state, name, extensions, headers, form).await
}

/// `POST /ui/groups/{name}/pause`: the Pause button (`.../clientgroups/{name}/pause`).
pub async fn pause(
    state: State<Arc<Controller>>,
    name: Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    form: Form<CsrfForm>,
) -> Response {
    group_action(GroupAction::Pause, state, name, extensions, headers, form).await
}

/// `POST /ui/groups/{name}/resume`: the Resume button (`.../clientgroups/{name}/resume`).
pub async fn resume(
    state: State<Arc<Controller>>,
    name: Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    form: Form<CsrfForm>,
) -> Response {
    group_action(GroupAction::Resume, state, name, extensions, headers, form).await
}

/// Carries out one of a group's buttons through its API handler, for the session's identity.
async fn group_action(
    action: GroupAction,
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match signed_post(&controller, &headers, &form) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let verb = action.verb();
    let path = format!("/apis/thinfleet.io/v1/clientgroups/{}/{verb}", url(&name));
    let request_line = format!("POST /ui/groups/{}/{verb}", url(&name));
    let worker = controller.clone();
    let target = name.clone();
    let identity = session.identity.clone();
    let answer = act(
        &controller,
        &session,
        extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        (action.route(), path, request_line),
        async move {
            match action {
                GroupAction::Retry => crate::rollout::retry(State(worker), Path(target))
                    .await
                    .into_response(),
                GroupAction::Pause | GroupAction::Resume => {
                    let pause = action == GroupAction::Pause;
                    crate::rollout::steer(&worker, &identity, &target, pause)
                        .await
                        .into_response()
                }
            }
        },
    )
    .await;
    let (code, message) = answer_message(answer).await;
    outcome(
        &session,
        &format!("{} of group {name}", action.title()),
        code,
        &message,
        &format!("/ui/groups/{}", url(&name)),
    )
}

/// `GET /ui/blobs/{sha256}`: a package's zip for a signed-in session (blobs need a credential,
/// and the session cookie only goes to `/ui`).
pub async fn download(
    State(controller): State<Arc<Controller>>,
    Path(sha256): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = signed(&controller, &headers) {
        return *response;
    }
    if !tc_api::resources::is_sha256_hex(&sha256) {
        return session::error_page(
            StatusCode::BAD_REQUEST,
            &format!("`{sha256}` is not 64 lowercase hex digits"),
        );
    }
    match crate::api::serve_blob(&controller, &sha256, &method, &headers).await {
        Ok(mut response) => {
            if let Ok(value) =
                axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{sha256}.zip\""))
            {
                response
                    .headers_mut()
                    .insert(axum::http::header::CONTENT_DISPOSITION, value);
            }
            response
        }
        Err(error) => session::error_page(error.code, &error.message),
    }
}
