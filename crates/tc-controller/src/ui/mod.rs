//! The web console, served at `/ui` by the controller itself.
//!
//! Server-rendered HTML from plain functions ([`html`] holds the one escaping helper), readable
//! without JavaScript; with it, a vendored htmx reloads the live regions of a page every few
//! seconds (a region's URL is the page's own: an `HX-Request` gets the region alone). Nothing
//! runs while no console is open. Every asset is embedded in the binary and served with an
//! immutable cache header under a name that changes with its content; every answer carries a
//! strict Content-Security-Policy (no inline script or style).
//!
//! Pages read through the same functions as the JSON API (`Controller::explained`, the stored
//! objects and their status, the events); actions go through the admin API's handlers, checked
//! against [`crate::credentials::ROUTE_ROLES`] and recorded by [`crate::audit`] with the
//! session's identity. Sign-in, sessions and CSRF are in [`session`].

pub mod actions;
pub mod chart;
pub mod clients;
pub mod html;
pub mod pages;
pub mod query;
pub mod session;
pub mod snapshot;
pub mod tasks;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use session::{CODE_LIFETIME, Console, UiSession};

use crate::Controller;

/// The Content-Security-Policy of every console answer: scripts and styles from the console's
/// own files only, no framing, forms to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The console's routes (state: the controller).
pub fn router() -> Router<Arc<Controller>> {
    Router::new()
        .route("/", get(|| async { session::redirect("/ui") }))
        .route("/ui", get(pages::overview))
        .route("/ui/", get(|| async { session::redirect("/ui") }))
        .route(
            "/ui/signin",
            get(session::signin_form).post(session::signin),
        )
        .route("/ui/signin/code", get(session::signin_code))
        .route("/ui/signout", post(session::signout))
        .route("/ui/clients", get(clients::list))
        .route("/ui/clients/{name}", get(clients::show))
        .route("/ui/groups", get(pages::groups))
        .route("/ui/groups/{name}", get(pages::group))
        .route("/ui/groups/{name}/retry", post(actions::retry))
        .route("/ui/groups/{name}/pause", post(actions::pause))
        .route("/ui/groups/{name}/resume", post(actions::resume))
        .route("/ui/packages", get(pages::packages))
        .route("/ui/events", get(pages::events))
        .route("/ui/tasks", get(tasks::list))
        .route("/ui/tasks/{name}", get(tasks::show))
        .route(
            "/ui/clients/{name}/tasks/{action}",
            post(tasks::run_on_client),
        )
        .route("/ui/blobs/{sha256}", get(actions::download))
        .route("/ui/assets/{file}", get(asset))
        .route(
            "/ui/{*rest}",
            get(|| async { session::error_page(StatusCode::NOT_FOUND, "No such page.") }),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// Headers of every console answer: the CSP, no sniffing, no framing, no referrer to other
/// sites, and no caching of pages (assets say otherwise themselves).
async fn security_headers(mut request: Request, next: Next) -> Response {
    ensure_host(&mut request);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Gives an HTTP/2 request (which names its host in `:authority`, not in `Host`) a `Host`
/// header, so that the origin check of a POST compares against the host the browser used.
fn ensure_host(request: &mut Request) {
    if request.headers().contains_key(header::HOST) {
        return;
    }
    let host = request
        .uri()
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    if let Some(host) = host {
        request.headers_mut().insert(header::HOST, host);
    }
}

/// The embedded files.
pub mod assets {
    use std::sync::LazyLock;

    /// An embedded file.
    pub struct Asset {
        /// Its name with its version or content hash (`console.1a2b3c4d5e6f.css`).
        pub name: LazyLock<String>,
        /// Its bytes.
        pub bytes: &'static [u8],
        /// Its media type.
        pub content_type: &'static str,
    }

    impl Asset {
        /// Its URL path.
        pub fn path(&self) -> String {
            format!("/ui/assets/{}", *self.name)
        }
    }

    /// htmx (BSD Zero Clause, from the npm registry: `htmx.org@2.0.11`, `dist/htmx.min.js`).
    pub static HTMX: Asset = Asset {
        name: LazyLock::new(|| "htmx-2.0.11.min.js".to_string()),
        bytes: include_bytes!("assets/htmx-2.0.11.min.js"),
        content_type: "text/javascript; charset=utf-8",
    };

    /// The console's stylesheet, named by its content's hash.
    pub static CSS: Asset = Asset {
        name: LazyLock::new(|| {
            let hash = crate::tokens::hash(include_str!("assets/console.css"));
            format!("console.{}.css", &hash[..12])
        }),
        bytes: include_bytes!("assets/console.css"),
        content_type: "text/css; charset=utf-8",
    };

    /// Every asset.
    pub fn all() -> [&'static Asset; 2] {
        [&HTMX, &CSS]
    }
}

/// `GET /ui/assets/{file}`: an embedded file, cached for a year (its name changes with it).
async fn asset(Path(file): Path<String>) -> Response {
    let Some(asset) = assets::all().into_iter().find(|a| *a.name == file) else {
        return session::error_page(StatusCode::NOT_FOUND, "No such file.");
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        asset.bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_request_gets_the_host_of_its_authority() {
        let mut request = Request::builder()
            .uri("https://controller.example:7130/ui/signout")
            .body(axum::body::Body::empty())
            .unwrap();
        ensure_host(&mut request);
        assert_eq!(request.headers()[header::HOST], "controller.example:7130");
        let mut request = Request::builder()
            .uri("/ui")
            .header(header::HOST, "a:1")
            .body(axum::body::Body::empty())
            .unwrap();
        ensure_host(&mut request);
        assert_eq!(request.headers()[header::HOST], "a:1");
    }
}
