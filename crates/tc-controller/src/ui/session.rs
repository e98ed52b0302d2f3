//! Console sessions: sign-in with a credential's token, the session cookie, CSRF, sign-out and
//! the one-time sign-in codes of `--demo`.
//!
//! A session is a random 256-bit id in a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/ui`,
//! `Secure` under TLS); the controller keeps, under the SHA-256 of the id, the SHA-256 of the
//! credential's token it was opened with, its CSRF token and its expiry. Every request
//! authenticates that token hash again through [`crate::credentials::Credentials`]: a rotated
//! (new hash) or revoked (gone) credential ends its sessions at once, and the identity and role
//! are the credential's current ones. Sessions live in memory: a restart signs everyone out,
//! and sign-out removes the session for good (a copied cookie is worth nothing after it).

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tc_api::Timestamp;

use super::html::{esc, page};
use crate::credentials::Identity;
use crate::{Controller, tokens};

/// The session cookie's name.
pub const COOKIE: &str = "tc_session";

/// How long a one-time sign-in code (`--demo`) may be used.
pub const CODE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Most sessions kept at once; beyond, the one closest to its expiry is dropped.
const MAX_SESSIONS: usize = 10_000;

/// Most one-time codes kept at once.
const MAX_CODES: usize = 100;

#[derive(Debug)]
struct Stored {
    /// SHA-256 of the credential's token.
    credential_hash: String,
    csrf: String,
    expires: Timestamp,
}

/// The console's state: sessions and one-time codes.
#[derive(Debug, Default)]
pub struct Console {
    /// By the SHA-256 of the session id.
    sessions: Mutex<HashMap<String, Stored>>,
    /// SHA-256 of a code → its expiry.
    codes: Mutex<HashMap<String, Timestamp>>,
    /// The console's view of the fleet (see [`super::snapshot`]).
    pub snapshots: Arc<super::snapshot::Snapshots>,
}

/// A signed-in console session, as a request sees it.
#[derive(Clone, Debug)]
pub struct UiSession {
    /// Who (the credential's name and current role).
    pub identity: Identity,
    /// The token every form carries back.
    pub csrf: String,
    /// SHA-256 of the session id.
    id_hash: String,
}

impl Console {
    /// A one-time sign-in code for the break-glass identity, usable once within
    /// [`CODE_LIFETIME`].
    pub fn mint_code(&self, now: Timestamp) -> String {
        let code = tokens::generate();
        self.add_code(&code, now);
        code
    }

    /// Makes `code` a one-time sign-in code for the break-glass identity, usable once within
    /// [`CODE_LIFETIME`] from `now`.
    pub fn add_code(&self, code: &str, now: Timestamp) {
        let mut codes = self.codes.lock().expect("console lock");
        codes.retain(|_, expires| *expires > now);
        if codes.len() < MAX_CODES {
            codes.insert(tokens::hash(code), now.plus(CODE_LIFETIME));
        }
    }

    /// Uses a code: true once, while it has not expired.
    fn take_code(&self, code: &str, now: Timestamp) -> bool {
        let mut codes = self.codes.lock().expect("console lock");
        codes
            .remove(&tokens::hash(code))
            .is_some_and(|expires| expires > now)
    }

    /// Opens a session for the credential whose token hashes to `credential_hash`; returns the
    /// session id (the cookie's value).
    fn open(&self, credential_hash: &str, lifetime: Duration, now: Timestamp) -> String {
        let id = tokens::generate();
        let mut sessions = self.sessions.lock().expect("console lock");
        sessions.retain(|_, stored| stored.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, stored)| stored.expires)
                .map(|(key, _)| key.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            tokens::hash(&id),
            Stored {
                credential_hash: credential_hash.to_string(),
                csrf: tokens::generate(),
                expires: now.plus(lifetime),
            },
        );
        id
    }

    fn close(&self, id_hash: &str) {
        self.sessions.lock().expect("console lock").remove(id_hash);
    }

    /// How many sessions are open (expired ones included until the next sign-in).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("console lock").len()
    }
}

/// The session id of the request's cookie.
fn cookie_value(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl Controller {
    /// The console session of a request: `None` without a cookie, for an unknown, expired or
    /// signed-out session, and when its credential was revoked, rotated or has expired.
    pub fn ui_session(&self, headers: &HeaderMap) -> Option<UiSession> {
        let id = cookie_value(headers)?;
        let id_hash = tokens::hash(id);
        let now = Timestamp::now();
        let (credential_hash, csrf) = {
            let mut sessions = self.console.sessions.lock().expect("console lock");
            let stored = sessions.get(&id_hash)?;
            if stored.expires <= now {
                sessions.remove(&id_hash);
                return None;
            }
            (stored.credential_hash.clone(), stored.csrf.clone())
        };
        match self.credentials.authenticate_hash(&credential_hash, now) {
            Ok(Some(identity)) => Some(UiSession {
                identity,
                csrf,
                id_hash,
            }),
            _ => {
                self.console.close(&id_hash);
                None
            }
        }
    }

    /// The `Set-Cookie` value of a session id (`Max-Age` 0 clears it).
    fn session_cookie(&self, id: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.tls.is_some() { "; Secure" } else { "" };
        let value = format!(
            "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            max_age.as_secs()
        );
        HeaderValue::from_str(&value).expect("a cookie of hex digits is a header value")
    }
}

/// The answer to a request without a valid session: to the sign-in page (for htmx, an
/// `HX-Redirect` it follows with a full page load).
pub fn to_signin(headers: &HeaderMap) -> Response {
    if headers.contains_key("hx-request") {
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert("hx-redirect", HeaderValue::from_static("/ui/signin"));
        return response;
    }
    redirect("/ui/signin")
}

/// A 303 to `location` (a path of the console).
pub fn redirect(location: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, HeaderValue::from_static(location))],
    )
        .into_response()
}

/// Refuses a cross-site POST: an `Origin` (or, without one, a `Referer`) whose host is not the
/// host the request was sent to. Requests with neither (not from a browser) rely on the CSRF
/// token. The scheme is not compared: behind a TLS-terminating proxy the browser's origin is
/// `https` while the controller serves plain HTTP.
pub fn same_origin(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let origin_host = |url: &str| {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))?;
        Some(
            rest.split(['/', '?', '#'])
                .next()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let claimed = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => Some(origin),
        (None, Some(referer)) => Some(referer),
        (None, None) => None,
    };
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let from = claimed.to_str().ok().and_then(origin_host);
    if !host.is_empty() && from.as_deref() == Some(host) {
        return Ok(());
    }
    tracing::warn!(host, from = ?claimed, "console POST from another origin refused");
    Err(Box::new(error_page(
        StatusCode::FORBIDDEN,
        "This form was sent from another site: refused.",
    )))
}

/// Checks a POST of a signed-in page: same origin and the session's CSRF token.
pub fn check_post(
    headers: &HeaderMap,
    session: &UiSession,
    csrf: Option<&str>,
) -> Result<(), Box<Response>> {
    same_origin(headers)?;
    let given = csrf.unwrap_or_default().as_bytes();
    let expected = session.csrf.as_bytes();
    let equal = given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !equal {
        tracing::warn!(user = %session.identity.name, "console POST without a valid CSRF token refused");
        return Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "This form's security token is missing or out of date: reload the page and try again.",
        )));
    }
    Ok(())
}

/// A small HTML error page (no navigation: it may be shown to someone not signed in).
pub fn error_page(code: StatusCode, message: &str) -> Response {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/ui\">Back to the console</a></p>",
        code.as_u16(),
        esc(message)
    );
    html(code, page("Error", "", None, &body))
}

/// An HTML answer.
pub fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn signin_page(message: Option<&str>) -> String {
    let mut body = String::from("<h1>Sign in</h1>");
    if let Some(message) = message {
        let _ = write!(body, "<p class=\"bad\">{}</p>", esc(message));
    }
    body.push_str(
        "<form method=\"post\" action=\"/ui/signin\" class=\"signin\">\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required autofocus></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"muted\">Use a credential's token (<code>tcadm credential create NAME --role viewer</code>) \
         or the break-glass token in <code>data/admin.token</code>. The token is sent once and \
         exchanged for a session cookie.</p>",
    );
    page("Sign in", "", None, &body)
}

/// `GET /ui/signin`.
pub async fn signin_form(
    State(controller): State<Arc<Controller>>,
    headers: HeaderMap,
) -> Response {
    if controller.ui_session(&headers).is_some() {
        return redirect("/ui");
    }
    html(StatusCode::OK, signin_page(None))
}

/// The sign-in form.
#[derive(Deserialize)]
pub struct SigninForm {
    token: String,
}

/// `POST /ui/signin`: a credential's token for a session cookie.
pub async fn signin(
    State(controller): State<Arc<Controller>>,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Response {
    if let Err(response) = same_origin(&headers) {
        return *response;
    }
    let now = Timestamp::now();
    let token = form.token.trim();
    let refused = |message: &str| html(StatusCode::UNAUTHORIZED, signin_page(Some(message)));
    match controller.credentials.authenticate(token, now) {
        Ok(Some(identity)) => {
            tracing::info!(user = %identity.name, role = %identity.role, "console sign-in");
            start_session(&controller, &tokens::hash(token), redirect("/ui"))
        }
        Ok(None) => refused("No credential has this token (revoked, rotated or never issued)."),
        Err(error) => refused(&error.message),
    }
}

fn start_session(
    controller: &Controller,
    credential_hash: &str,
    mut response: Response,
) -> Response {
    let lifetime = controller.config.console_session_lifetime;
    let id = controller
        .console
        .open(credential_hash, lifetime, Timestamp::now());
    response
        .headers_mut()
        .append(header::SET_COOKIE, controller.session_cookie(&id, lifetime));
    response
}

/// The query of a one-time sign-in link.
#[derive(Deserialize)]
pub struct CodeQuery {
    code: Option<String>,
}

/// `GET /ui/signin/code?code=...`: the one-time link `--demo` prints. A code works once, within
/// [`CODE_LIFETIME`]. The answer moves on to `/ui` from the console's own page (a same-site
/// navigation, so the `SameSite=Strict` cookie just set goes with it) and drops the code from
/// the address bar.
pub async fn signin_code(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<CodeQuery>,
) -> Response {
    let code = query.code.unwrap_or_default();
    if code.is_empty() || !controller.console.take_code(&code, Timestamp::now()) {
        return html(
            StatusCode::UNAUTHORIZED,
            signin_page(Some(
                "This sign-in link was already used or has expired: sign in with a token.",
            )),
        );
    }
    tracing::info!("console sign-in with a one-time code");
    let body = page(
        "Signed in",
        "",
        None,
        "<meta http-equiv=\"refresh\" content=\"0;url=/ui\"><p>Signed in. \
         <a href=\"/ui\">Open the console</a>.</p>",
    );
    let hash = controller.credentials.break_glass_hash().to_string();
    start_session(&controller, &hash, html(StatusCode::OK, body))
}

/// A form carrying only the CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    pub csrf: Option<String>,
}

/// `POST /ui/signout`.
pub async fn signout(
    State(controller): State<Arc<Controller>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let Some(session) = controller.ui_session(&headers) else {
        return to_signin(&headers);
    };
    if let Err(response) = check_post(&headers, &session, form.csrf.as_deref()) {
        return *response;
    }
    controller.console.close(&session.id_hash);
    tracing::info!(user = %session.identity.name, "console sign-out");
    let mut response = redirect("/ui/signin");
    response.headers_mut().append(
        header::SET_COOKIE,
        controller.session_cookie("", Duration::ZERO),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once_and_expires() {
        let console = Console::default();
        let now = Timestamp::from_unix_millis(1_000_000);
        let code = console.mint_code(now);
        assert!(!console.take_code("wrong", now));
        assert!(console.take_code(&code, now));
        assert!(!console.take_code(&code, now));
        let late = console.mint_code(now);
        assert!(!console.take_code(&late, now.plus(CODE_LIFETIME)));
    }

    #[test]
    fn a_post_must_come_from_the_host_it_was_sent_to() {
        let headers = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), HeaderValue::from_static(value));
            }
            map
        };
        let host = (header::HOST, "tc.example:7130");
        for (ok, extra) in [
            (true, vec![(header::ORIGIN, "https://tc.example:7130")]),
            (true, vec![(header::ORIGIN, "http://tc.example:7130")]),
            (
                true,
                vec![(header::REFERER, "https://tc.example:7130/ui/groups/a")],
            ),
            (true, vec![]),
            (false, vec![(header::ORIGIN, "https://evil.example")]),
            (
                false,
                vec![(header::ORIGIN, "https://tc.example:7130.evil.example")],
            ),
            (false, vec![(header::ORIGIN, "null")]),
            (
                false,
                vec![(header::REFERER, "https://evil.example/tc.example:7130")],
            ),
        ] {
            let mut pairs = vec![host.clone()];
            pairs.extend(extra.clone());
            assert_eq!(same_origin(&headers(&pairs)).is_ok(), ok, "{extra:?}");
        }
        let no_host = headers(&[(header::ORIGIN, "https://tc.example:7130")]);
        assert!(same_origin(&no_host).is_err());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; tc_session=abc; c=d"),
        );
        assert_eq!(cookie_value(&headers), Some("abc"));
    }
}
