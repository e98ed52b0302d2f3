//! Named admin credentials with roles, and the one table that says which role each admin route
//! needs.
//!
//! A credential is a bearer token with a name (a DNS label), a [`Role`], a creation time and an
//! optional expiry. Only the SHA-256 of its token is stored (settings `credential/{name}`); they
//! are few, so they are held in memory. Revoking one deletes it. The token of
//! `data/admin.token` is the break-glass credential `admin` with the role `admin`; it is not
//! stored as a setting and cannot be revoked through the API.
//!
//! [`authorize`] is the middleware of every admin route: it authenticates the bearer token,
//! looks the route up in [`ROUTE_ROLES`] by axum's [`MatchedPath`] and the method, and refuses
//! a credential whose role is below the route's. A route missing from the table is refused to
//! everyone, so a new route cannot be open by omission. The [`Identity`] is handed to handlers
//! as a request extension.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tc_api::{
    API_VERSION, Credential, CredentialCreated, CredentialRequest, Event, EventType, ObjectRef,
    Role, Timestamp,
};
use tc_store::Store;

use crate::audit::Note;
use crate::error::ApiError;
use crate::{Controller, tokens};

/// Settings key prefix of stored credentials.
pub const CREDENTIAL_SETTING: &str = "credential/";

/// The name of the break-glass credential (`data/admin.token`).
pub const BREAK_GLASS: &str = "admin";

/// Every admin route (method, axum path pattern) and the least role that may call it. `GET`
/// routes also answer `HEAD`, with the same role. The blob downloads are listed for
/// completeness: any credential and any agent session may read blobs.
pub const ROUTE_ROLES: &[(&str, &str, Role)] = &[
    ("GET", "/apis/thinfleet.io/v1/{plural}", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/{plural}/{name}", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/clients/{name}", Role::Viewer),
    (
        "GET",
        "/apis/thinfleet.io/v1/clients/{name}/history",
        Role::Viewer,
    ),
    ("GET", "/apis/thinfleet.io/v1/events", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/sources", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/sources/{name}", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/bootstraptokens", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/blockedmachines", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/credentials", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/audit", Role::Viewer),
    ("GET", "/blobs/sha256/{hex}", Role::Viewer),
    (
        "PATCH",
        "/apis/thinfleet.io/v1/clients/{name}",
        Role::Operator,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/retry",
        Role::Operator,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/pause",
        Role::Operator,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/resume",
        Role::Operator,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/undo",
        Role::Operator,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/activate-now",
        Role::Operator,
    ),
    (
        "GET",
        "/apis/thinfleet.io/v1/clientgroups/{name}/rollouts",
        Role::Viewer,
    ),
    ("GET", "/apis/thinfleet.io/v1/tasks", Role::Viewer),
    ("GET", "/apis/thinfleet.io/v1/tasks/{name}", Role::Viewer),
    (
        "GET",
        "/apis/thinfleet.io/v1/tasks/{name}/results",
        Role::Viewer,
    ),
    (
        "GET",
        "/apis/thinfleet.io/v1/clients/{name}/tasks",
        Role::Viewer,
    ),
    // Logs can hold what a viewer should not read (paths, addresses, errors).
    (
        "GET",
        "/apis/thinfleet.io/v1/tasks/{name}/results/{client}/logs",
        Role::Operator,
    ),
    ("POST", "/apis/thinfleet.io/v1/tasks", Role::Operator),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/tasks/{name}",
        Role::Operator,
    ),
    ("POST", "/apis/thinfleet.io/v1/apply", Role::Admin),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/{plural}/{name}",
        Role::Admin,
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/clients/{name}",
        Role::Admin,
    ),
    ("POST", "/apis/thinfleet.io/v1/bootstraptokens", Role::Admin),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/bootstraptokens/{name}",
        Role::Admin,
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/blockedmachines/{machine_id}",
        Role::Admin,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/approve",
        Role::Admin,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/deny",
        Role::Admin,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/decommission",
        Role::Admin,
    ),
    ("POST", "/apis/thinfleet.io/v1/credentials", Role::Admin),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/credentials/{name}",
        Role::Admin,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/credentials/{name}/rotate",
        Role::Admin,
    ),
    ("PUT", "/blobs", Role::Admin),
];

/// The least role that may call `method` on the route `pattern`; `None` for a route not in
/// [`ROUTE_ROLES`].
pub fn required_role(method: &Method, pattern: &str) -> Option<Role> {
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    ROUTE_ROLES
        .iter()
        .find(|(m, p, _)| *m == method && *p == pattern)
        .map(|(_, _, role)| *role)
}

/// The least role for `method` on a path as the OpenAPI document writes it (parameters in
/// braces, named as there): the table's route that matches it, the one with the most literal
/// segments when several do (as the router picks them). `None` when no route matches.
pub fn documented_role(method: &str, path: &str) -> Option<Role> {
    let method = method.to_ascii_uppercase();
    let method = if method == "HEAD" {
        "GET".to_string()
    } else {
        method
    };
    let is_param = |segment: &str| segment.starts_with('{');
    let segments: Vec<&str> = path.split('/').collect();
    ROUTE_ROLES
        .iter()
        .filter(|(m, pattern, _)| {
            let parts: Vec<&str> = pattern.split('/').collect();
            *m == method
                && parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(part, segment)| is_param(part) || part == segment)
        })
        .max_by_key(|(_, pattern, _)| pattern.split('/').filter(|part| !is_param(part)).count())
        .map(|(_, _, role)| *role)
}

/// The methods the table lists for the route `pattern` (`HEAD` with `GET`), as for `Allow`.
fn allowed_methods(pattern: &str) -> Vec<&'static str> {
    let mut methods = vec![];
    for (method, _, _) in ROUTE_ROLES.iter().filter(|(_, p, _)| *p == pattern) {
        methods.push(*method);
        if *method == "GET" {
            methods.push("HEAD");
        }
    }
    methods
}

/// Who a request of the admin API authenticated as; a request extension of every admin route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The credential's name (`admin` for the break-glass token).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The token of `data/admin.token`.
    pub break_glass: bool,
}

impl Identity {
    /// The field manager of its applies when the request names none: `credential:<name>`, or
    /// `admin` for the break-glass token.
    pub fn field_manager(&self) -> String {
        if self.break_glass {
            BREAK_GLASS.to_string()
        } else {
            format!("credential:{}", self.name)
        }
    }

    /// `credential "helpdesk" (role viewer)`, for messages.
    fn describe(&self) -> String {
        if self.break_glass {
            format!("the break-glass token `{BREAK_GLASS}` (role {})", self.role)
        } else {
            format!("credential \"{}\" (role {})", self.name, self.role)
        }
    }
}

/// A credential as stored: what is listed, its lifetime, and the hash of its token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCredential {
    #[serde(flatten)]
    credential: Credential,
    /// Lifetime given at creation, applied again at each rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_seconds: Option<u64>,
    /// Lowercase hex SHA-256 of the token.
    sha256: String,
}

fn setting_key(name: &str) -> String {
    format!("{CREDENTIAL_SETTING}{name}")
}

fn put(store: &dyn Store, stored: &StoredCredential) -> tc_store::Result<()> {
    let value = serde_json::to_string(stored).expect("credentials serialize");
    store.put_setting(&setting_key(&stored.credential.name), Some(&value))
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "credential `{name}` not found; `tcadm credential list` shows them"
    ))
}

/// The named credentials of a controller.
#[derive(Debug)]
pub struct Credentials {
    by_name: Mutex<BTreeMap<String, StoredCredential>>,
    /// SHA-256 of the break-glass token.
    break_glass_hash: String,
}

impl Credentials {
    /// Loads the stored credentials. Blocking.
    pub fn open(store: &dyn Store, break_glass_hash: String) -> tc_store::Result<Credentials> {
        let mut by_name = BTreeMap::new();
        for (key, value) in store.list_settings(CREDENTIAL_SETTING)? {
            let stored: StoredCredential =
                serde_json::from_str(&value).map_err(|error| tc_store::StoreError::Corrupt {
                    key,
                    message: error.to_string(),
                })?;
            by_name.insert(stored.credential.name.clone(), stored);
        }
        Ok(Credentials {
            by_name: Mutex::new(by_name),
            break_glass_hash,
        })
    }

    /// The SHA-256 of the break-glass token (the identity of the console's one-time sign-in
    /// codes, which only the operator who started the controller sees).
    pub fn break_glass_hash(&self) -> &str {
        &self.break_glass_hash
    }

    /// Whether `token` is the break-glass token or a credential's (expired or not).
    pub fn is_known(&self, token: &str) -> bool {
        let hash = tokens::hash(token);
        hash == self.break_glass_hash
            || self
                .by_name
                .lock()
                .expect("credential lock")
                .values()
                .any(|stored| stored.sha256 == hash)
    }

    /// The identity of `token` at `now`: `Ok(None)` for a token that is no credential's,
    /// 401 for an expired one.
    pub fn authenticate(&self, token: &str, now: Timestamp) -> Result<Option<Identity>, ApiError> {
        self.authenticate_hash(&tokens::hash(token), now)
    }

    /// [`Credentials::authenticate`] by the SHA-256 of the token (lowercase hex): what a console
    /// session keeps, so that rotating or revoking the credential ends its sessions.
    pub fn authenticate_hash(
        &self,
        hash: &str,
        now: Timestamp,
    ) -> Result<Option<Identity>, ApiError> {
        if hash == self.break_glass_hash {
            return Ok(Some(Identity {
                name: BREAK_GLASS.into(),
                role: Role::Admin,
                break_glass: true,
            }));
        }
        let by_name = self.by_name.lock().expect("credential lock");
        let Some(stored) = by_name.values().find(|stored| stored.sha256 == hash) else {
            return Ok(None);
        };
        let credential = &stored.credential;
        if let Some(at) = credential.expires
            && now >= at
        {
            return Err(ApiError::unauthorized(format!(
                "credential \"{}\" expired at {at}; an admin can rotate it \
                 (`tcadm credential rotate {}`)",
                credential.name, credential.name
            )));
        }
        Ok(Some(Identity {
            name: credential.name.clone(),
            role: credential.role,
            break_glass: false,
        }))
    }

    /// Every credential, by name.
    pub fn list(&self) -> Vec<Credential> {
        self.by_name
            .lock()
            .expect("credential lock")
            .values()
            .map(|stored| stored.credential.clone())
            .collect()
    }

    /// Makes a credential; returns its token with it. Blocking.
    fn create(
        &self,
        store: &dyn Store,
        request: &CredentialRequest,
        now: Timestamp,
    ) -> Result<CredentialCreated, ApiError> {
        let invalid = |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message);
        let name = &request.name;
        if !tc_api::validate::is_dns_label(name) {
            return Err(invalid(format!(
                "name: `{name}` is not a valid name: use at most 63 lowercase letters, digits and \
                 `-`, starting and ending with a letter or digit"
            )));
        }
        if name == BREAK_GLASS {
            return Err(ApiError::conflict(format!(
                "credential `{BREAK_GLASS}` is the break-glass token of data/admin.token; \
                 choose another name"
            )));
        }
        if request.expires_seconds == Some(0) {
            return Err(invalid("expiresSeconds: must be at least 1".into()));
        }
        let expires = match request.expires_seconds {
            Some(seconds) => Some(expiry(now, seconds).ok_or_else(|| {
                invalid(format!(
                    "expiresSeconds: {seconds} is too far in the future"
                ))
            })?),
            None => None,
        };
        let mut by_name = self.by_name.lock().expect("credential lock");
        if by_name.contains_key(name) {
            return Err(ApiError::conflict(format!(
                "credential `{name}` already exists; revoke or rotate it, or choose another name"
            )));
        }
        let token = tokens::generate();
        let stored = StoredCredential {
            credential: Credential {
                name: name.clone(),
                role: request.role,
                creation_timestamp: now,
                rotated: None,
                expires,
            },
            expires_seconds: request.expires_seconds,
            sha256: tokens::hash(&token),
        };
        put(store, &stored)?;
        let credential = stored.credential.clone();
        by_name.insert(name.clone(), stored);
        Ok(CredentialCreated { token, credential })
    }

    /// Gives the credential `name` a new token (the old one stops working) and, when it was
    /// created with a lifetime, a new expiry. Blocking.
    fn rotate(
        &self,
        store: &dyn Store,
        name: &str,
        now: Timestamp,
    ) -> Result<CredentialCreated, ApiError> {
        let mut by_name = self.by_name.lock().expect("credential lock");
        let Some(current) = by_name.get(name) else {
            return Err(not_found(name));
        };
        let token = tokens::generate();
        let mut stored = current.clone();
        stored.sha256 = tokens::hash(&token);
        stored.credential.rotated = Some(now);
        stored.credential.expires = stored
            .expires_seconds
            .and_then(|seconds| expiry(now, seconds));
        put(store, &stored)?;
        let credential = stored.credential.clone();
        by_name.insert(name.to_string(), stored);
        Ok(CredentialCreated { token, credential })
    }

    /// Revokes (deletes) the credential `name`. Blocking.
    fn revoke(&self, store: &dyn Store, name: &str) -> Result<Credential, ApiError> {
        let mut by_name = self.by_name.lock().expect("credential lock");
        let Some(stored) = by_name.get(name) else {
            return Err(not_found(name));
        };
        let credential = stored.credential.clone();
        store.put_setting(&setting_key(name), None)?;
        by_name.remove(name);
        Ok(credential)
    }
}

fn expiry(now: Timestamp, seconds: u64) -> Option<Timestamp> {
    seconds
        .checked_mul(1000)
        .and_then(|millis| now.unix_millis().checked_add(millis))
        .map(|_| now.plus(Duration::from_secs(seconds)))
}

impl Controller {
    /// The identity of an admin request: 401 without a token, with an unknown or an expired
    /// one; 403 for a client's session token.
    pub fn authenticate_admin(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        let token = tokens::bearer(headers).ok_or_else(|| {
            ApiError::unauthorized(
                "missing bearer token: pass a credential's token (`tcadm credential create`) \
                 or the admin token (data/admin.token)",
            )
        })?;
        if let Some(identity) = self.credentials.authenticate(token, Timestamp::now())? {
            return Ok(identity);
        }
        if !matches!(
            self.session_key.verify(token, Timestamp::now()),
            Err(crate::session::SessionError::Invalid)
        ) {
            return Err(ApiError::forbidden(
                "a client's session token cannot be used on admin routes",
            ));
        }
        Err(ApiError::unauthorized(
            "invalid token: no credential has it (revoked, rotated or never issued)",
        ))
    }
}

/// Middleware of every admin route: authenticates, then checks the route's role in
/// [`ROUTE_ROLES`]; the [`Identity`] becomes a request extension.
pub async fn authorize(
    State(controller): State<Arc<Controller>>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = match controller.authenticate_admin(request.headers()) {
        Ok(identity) => identity,
        Err(error) => return error.into_response(),
    };
    let method = request.method().clone();
    let pattern = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_default();
    let Some(needed) = required_role(&method, &pattern) else {
        // A method the route does not have (what the router would answer after this layer),
        // or a route missing from the table: refused to everyone.
        let allowed = allowed_methods(&pattern);
        if !allowed.is_empty() {
            let mut response = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {}", request.uri().path()),
            )
            .into_response();
            if let Ok(value) = axum::http::HeaderValue::from_str(&allowed.join(",")) {
                response
                    .headers_mut()
                    .insert(axum::http::header::ALLOW, value);
            }
            return response;
        }
        tracing::error!(%method, route = %pattern, "an admin route has no role");
        return ApiError::forbidden(format!(
            "{method} {pattern} has no role in the controller's route table: refused to everyone"
        ))
        .into_response();
    };
    if identity.role < needed {
        let mut response = ApiError::forbidden(format!(
            "{} may not {method} {}: needs role {needed}",
            identity.describe(),
            request.uri().path()
        ))
        .into_response();
        response.extensions_mut().insert(identity);
        return response;
    }
    request.extensions_mut().insert(identity.clone());
    // On the answer too, for the audit trail (crate::audit::record).
    let mut response = next.run(request).await;
    response.extensions_mut().insert(identity);
    response
}

/// `GET /apis/thinfleet.io/v1/credentials`: every credential, without tokens (the break-glass
/// token is not listed).
pub async fn list(State(controller): State<Arc<Controller>>) -> Json<Value> {
    let items = controller.credentials.list();
    Json(json!({ "apiVersion": API_VERSION, "kind": "CredentialList", "items": items }))
}

/// `POST /apis/thinfleet.io/v1/credentials`: a new credential, answered with its token (the
/// only time it is shown).
pub async fn create(
    State(controller): State<Arc<Controller>>,
    body: axum::body::Bytes,
) -> Result<(Extension<Note>, Json<CredentialCreated>), ApiError> {
    let request: CredentialRequest = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("invalid credential request: {error}")))?;
    let now = Timestamp::now();
    let worker = controller.clone();
    let created = tokio::task::spawn_blocking(move || {
        worker.credentials.create(&*worker.store, &request, now)
    })
    .await??;
    let mut message = format!(
        "credential `{}` created with role {}",
        created.credential.name, created.credential.role
    );
    if let Some(at) = created.credential.expires {
        message.push_str(&format!(", expires {at}"));
    }
    let note = Note::object("Credential", &created.credential.name, message.clone());
    event(
        &controller,
        now,
        &created.credential.name,
        "Created",
        message,
    )
    .await;
    Ok((Extension(note), Json(created)))
}

/// `POST /apis/thinfleet.io/v1/credentials/{name}/rotate`: a new token for the credential (the
/// old one stops working), answered once.
pub async fn rotate(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<CredentialCreated>, ApiError> {
    let now = Timestamp::now();
    let worker = controller.clone();
    let lookup = name.clone();
    let rotated = tokio::task::spawn_blocking(move || {
        worker.credentials.rotate(&*worker.store, &lookup, now)
    })
    .await??;
    let message = format!("credential `{name}` was given a new token; the old one is refused");
    event(&controller, now, &name, "Rotated", message).await;
    Ok(Json(rotated))
}

/// `DELETE /apis/thinfleet.io/v1/credentials/{name}`: revokes a credential.
pub async fn revoke(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let worker = controller.clone();
    let lookup = name.clone();
    let credential =
        tokio::task::spawn_blocking(move || worker.credentials.revoke(&*worker.store, &lookup))
            .await??;
    let message = format!("credential `{name}` (role {}) revoked", credential.role);
    event(&controller, Timestamp::now(), &name, "Revoked", message).await;
    Ok(Json(credential))
}

async fn event(controller: &Controller, now: Timestamp, name: &str, reason: &str, message: String) {
    controller
        .record(vec![Event::new(
            now,
            ObjectRef {
                kind: "Credential".into(),
                name: name.to_string(),
            },
            EventType::Normal,
            reason,
            message,
        )])
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_store::RedbStore;

    #[test]
    fn credentials_survive_a_restart_as_hashes_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db.redb")).unwrap();
        let credentials = Credentials::open(&store, tokens::hash("break-glass")).unwrap();
        let now = Timestamp::from_unix_millis(1_000_000);
        let request = CredentialRequest {
            name: "helpdesk".into(),
            role: Role::Viewer,
            expires_seconds: Some(60),
        };
        let created = credentials.create(&store, &request, now).unwrap();
        assert_eq!(
            created.credential.expires,
            Some(now.plus(Duration::from_secs(60)))
        );
        let again = Credentials::open(&store, tokens::hash("break-glass")).unwrap();
        let identity = again.authenticate(&created.token, now).unwrap().unwrap();
        assert_eq!(
            (identity.name.as_str(), identity.role),
            ("helpdesk", Role::Viewer)
        );
        let stored = store.get_setting("credential/helpdesk").unwrap().unwrap();
        assert!(!stored.contains(&created.token), "{stored}");
        assert!(stored.contains(&tokens::hash(&created.token)), "{stored}");
        let later = now.plus(Duration::from_secs(60));
        let error = again.authenticate(&created.token, later).unwrap_err();
        assert_eq!(error.code, StatusCode::UNAUTHORIZED);
        // Rotation gives the same lifetime again, from the rotation.
        let rotated = again.rotate(&store, "helpdesk", later).unwrap();
        assert_eq!(
            rotated.credential.expires,
            Some(later.plus(Duration::from_secs(60)))
        );
        assert_eq!(again.authenticate(&created.token, later).unwrap(), None);
        assert!(again.authenticate(&rotated.token, later).unwrap().is_some());
        let bad = CredentialRequest {
            name: BREAK_GLASS.into(),
            role: Role::Admin,
            expires_seconds: None,
        };
        assert_eq!(
            again.create(&store, &bad, now).unwrap_err().code,
            StatusCode::CONFLICT
        );
    }

    #[test]
    fn every_pattern_in_the_table_is_listed_once_per_method() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, pattern, _) in ROUTE_ROLES {
            assert!(seen.insert((method, pattern)), "{method} {pattern} twice");
            assert!(
                pattern.starts_with("/apis/thinfleet.io/v1/") || pattern.starts_with("/blobs"),
                "{pattern}"
            );
        }
        assert_eq!(
            required_role(&Method::HEAD, "/apis/thinfleet.io/v1/{plural}"),
            Some(Role::Viewer)
        );
    }
}
