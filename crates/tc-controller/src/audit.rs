//! The audit trail of the admin API: every write, who made it, from where, what it changed and
//! how it ended.
//!
//! [`record`] is the outermost middleware of the admin routes. For every request that is not a
//! read (`GET`, `HEAD`) it waits for the answer, then appends one [`AuditEntry`] — before the
//! answer leaves, so that an acknowledged change is in the trail. The identity comes from
//! [`crate::credentials::authorize`], which puts it on the response (also when it refuses the
//! request: a 403 is recorded as `Denied`); the objects and what changed come from the handler
//! as a [`Note`], or else from the route's path. Requests that did not authenticate (401) are
//! not recorded: anyone on the network could send them, and they would evict the entries of
//! the people the trail is about; they are logged instead.
//!
//! The watched directory's syncs that change something are recorded too, as its manager
//! (`dir:/srv/manifests`), see [`Controller::audit_sync`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tc_api::{API_VERSION, AuditEntry, AuditObject, AuditOutcome, Timestamp};
use tc_store::AuditFilter;

use crate::Controller;
use crate::apply::ApplyResult;
use crate::credentials::Identity;
use crate::error::ApiError;

/// What a handler tells the audit trail about the write it carried out (a response extension).
#[derive(Clone, Debug, Default)]
pub struct Note {
    /// The objects it changed, with what changed.
    pub objects: Vec<AuditObject>,
    /// A summary (a dry run, a sync's revision).
    pub message: Option<String>,
}

impl Note {
    /// A note naming one object and what happened to it.
    pub fn object(kind: &str, name: &str, change: impl Into<String>) -> Note {
        Note {
            objects: vec![AuditObject::new(kind, name).changed(change)],
            message: None,
        }
    }

    /// The note of an apply: each object and its outcome.
    pub fn apply(result: &ApplyResult) -> Note {
        Note {
            objects: result
                .items
                .iter()
                .map(|item| AuditObject::new(item.kind.as_str(), &item.name).changed(item.action))
                .collect(),
            message: result
                .dry_run
                .then(|| "dry run: nothing was written".to_string()),
        }
    }
}

/// The message of an error answer (a response extension set by [`ApiError`]).
#[derive(Clone, Debug)]
pub struct ErrorMessage(pub String);

/// Every admin write route (method, path pattern), its action word, and the kind of the object
/// its last path parameter names.
pub const ACTIONS: &[(&str, &str, &str, Option<&str>)] = &[
    ("POST", "/apis/thinfleet.io/v1/apply", "apply", None),
    (
        "POST",
        "/apis/thinfleet.io/v1/tasks",
        "create",
        Some("Task"),
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/tasks/{name}",
        "delete",
        Some("Task"),
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/{plural}/{name}",
        "delete",
        None,
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/clients/{name}",
        "delete",
        Some("Client"),
    ),
    (
        "PATCH",
        "/apis/thinfleet.io/v1/clients/{name}",
        "label",
        Some("Client"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/retry",
        "retry",
        Some("ClientGroup"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/pause",
        "pause",
        Some("ClientGroup"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/resume",
        "resume",
        Some("ClientGroup"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/undo",
        "undo",
        Some("ClientGroup"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clientgroups/{name}/activate-now",
        "activate-now",
        Some("ClientGroup"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/approve",
        "approve",
        Some("Client"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/deny",
        "deny",
        Some("Client"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/clients/{name}/decommission",
        "decommission",
        Some("Client"),
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/blockedmachines/{machine_id}",
        "allow",
        Some("BlockedMachine"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/bootstraptokens",
        "createBootstrapToken",
        None,
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/bootstraptokens/{name}",
        "revokeBootstrapToken",
        Some("BootstrapToken"),
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/credentials",
        "createCredential",
        None,
    ),
    (
        "POST",
        "/apis/thinfleet.io/v1/credentials/{name}/rotate",
        "rotateCredential",
        Some("Credential"),
    ),
    (
        "DELETE",
        "/apis/thinfleet.io/v1/credentials/{name}",
        "revokeCredential",
        Some("Credential"),
    ),
    ("PUT", "/blobs", "uploadBlob", None),
];

/// The action word and object kind of a write route; `None` for a route missing from
/// [`ACTIONS`] (recorded as its method and pattern).
fn action_of(method: &Method, pattern: &str) -> Option<(&'static str, Option<&'static str>)> {
    ACTIONS
        .iter()
        .find(|(m, p, _, _)| *m == method.as_str() && *p == pattern)
        .map(|(_, _, action, kind)| (*action, *kind))
}

/// The object the path names: the value of the pattern's last parameter, with the route's
/// kind (or, for `{plural}`, the kind of that plural).
fn path_object(pattern: &str, path: &str, kind: Option<&str>) -> Option<AuditObject> {
    let parts: Vec<&str> = pattern.split('/').collect();
    let segments: Vec<&str> = path.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut plural = None;
    let mut name = None;
    for (part, segment) in parts.iter().zip(&segments) {
        match *part {
            "{plural}" => plural = Some(*segment),
            p if p.starts_with('{') => name = Some(*segment),
            _ => {}
        }
    }
    let kind = match (kind, plural) {
        (Some(kind), _) => kind.to_string(),
        (None, Some(plural)) => tc_api::Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural)
            .map_or_else(|| plural.to_string(), |k| k.as_str().to_string()),
        (None, None) => return None,
    };
    // `%2F` → `/`: names as they were meant.
    let name = percent_encoding::percent_decode_str(name?)
        .decode_utf8_lossy()
        .into_owned();
    Some(AuditObject::new(kind, name))
}

/// Longest error message kept in an entry.
const MAX_MESSAGE_CHARS: usize = 2_000;

fn truncate(mut text: String) -> String {
    if let Some((at, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        text.truncate(at);
        text.push('…');
    }
    text
}

/// Middleware of the admin routes: records every write (see the module documentation).
pub async fn record(
    State(controller): State<Arc<Controller>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if method == Method::GET || method == Method::HEAD {
        return next.run(request).await;
    }
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |info| info.0.to_string());
    let pattern = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_default();
    let path = request.uri().path().to_string();
    let request_line = match request.uri().query() {
        Some(query) => format!("{method} {path}?{query}"),
        None => format!("{method} {path}"),
    };
    let response = next.run(request).await;
    let call = Call {
        method,
        pattern,
        path,
        request_line,
        source,
    };
    controller.audit_answer(call, response).await
}

/// A write request as the audit trail names it.
#[derive(Clone, Debug)]
pub struct Call {
    /// Its method.
    pub method: Method,
    /// The admin route's pattern (what [`ACTIONS`] and [`crate::credentials::ROUTE_ROLES`] list).
    pub pattern: String,
    /// The path of that route the request meant (the object is read from it).
    pub path: String,
    /// The request as it was sent (`POST /ui/groups/kiosk/retry` for the console's).
    pub request_line: String,
    /// The TCP peer.
    pub source: String,
}

impl Controller {
    /// Records the answer to a write (see [`record`]): the identity on the answer, the action of
    /// its route, the objects of its [`Note`] or its path, and the outcome. The console's
    /// actions come here too, with the admin route they carry out.
    pub async fn audit_answer(&self, call: Call, mut response: Response) -> Response {
        let Call {
            method,
            pattern,
            path,
            request_line,
            source,
        } = call;
        let controller = self;
        let Some(identity) = response.extensions_mut().remove::<Identity>() else {
            tracing::info!(%source, request = %request_line, code = response.status().as_u16(),
            "unauthenticated admin request (not in the audit trail)");
            return response;
        };
        let (action, kind) = action_of(&method, &pattern).map_or_else(
            || (format!("{method} {pattern}"), None),
            |(a, k)| (a.to_string(), k),
        );
        let note = response
            .extensions_mut()
            .remove::<Note>()
            .unwrap_or_default();
        let error = response.extensions_mut().remove::<ErrorMessage>();
        let objects = if note.objects.is_empty() {
            path_object(&pattern, &path, kind).into_iter().collect()
        } else {
            note.objects
        };
        let code = response.status().as_u16();
        let entry = AuditEntry {
            seq: 0,
            time: Timestamp::now(),
            user: identity.name.clone(),
            role: Some(identity.role),
            break_glass: identity.break_glass,
            source,
            action,
            request: truncate(request_line),
            objects,
            code,
            outcome: AuditOutcome::of_status(code),
            message: error.map(|e| truncate(e.0)).or(note.message),
        };
        controller.audit(vec![entry]).await;
        response
    }

    /// Appends entries to the audit trail (and applies its retention). A failure is logged and
    /// counted: the request it records has already been carried out.
    pub async fn audit(&self, entries: Vec<AuditEntry>) {
        let store = self.store.clone();
        let retention = self.config.audit_retention;
        let now = Timestamp::now();
        let appended =
            tokio::task::spawn_blocking(move || store.append_audit(entries, &retention, now)).await;
        match appended {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "recording the audit trail failed");
                self.metrics.audit_failed();
            }
            Err(error) => {
                tracing::error!(%error, "recording the audit trail failed");
                self.metrics.audit_failed();
            }
        }
    }

    /// Records a sync of the watched directory that changed objects (unchanged resyncs are
    /// not recorded).
    pub async fn audit_sync(
        &self,
        manager: &str,
        path: &str,
        revision: Option<&str>,
        result: &ApplyResult,
    ) {
        let changed: Vec<AuditObject> = result
            .items
            .iter()
            .filter(|item| item.action != "unchanged")
            .map(|item| AuditObject::new(item.kind.as_str(), &item.name).changed(item.action))
            .collect();
        if changed.is_empty() {
            return;
        }
        self.audit(vec![AuditEntry {
            seq: 0,
            time: Timestamp::now(),
            user: manager.to_string(),
            role: None,
            break_glass: false,
            source: "controller".into(),
            action: "sync".into(),
            request: format!("sync {path}"),
            objects: changed,
            code: 200,
            outcome: AuditOutcome::Succeeded,
            message: revision.map(|revision| format!("revision {revision}")),
        }])
        .await;
    }
}

/// How often entries past their age are dropped when nothing is appended.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Applies the audit trail's retention at start and every hour until shutdown (appends apply
/// it too), so that entries past their age go even when nobody writes.
pub async fn run_retention(
    controller: Arc<Controller>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let store = controller.store.clone();
        let retention = controller.config.audit_retention;
        let pruned =
            tokio::task::spawn_blocking(move || store.prune_audit(&retention, Timestamp::now()))
                .await;
        match pruned {
            Ok(Ok(0)) => {}
            Ok(Ok(count)) => tracing::info!(count, "audit entries past their retention dropped"),
            Ok(Err(error)) => tracing::warn!(%error, "applying the audit retention failed"),
            Err(error) => tracing::warn!(%error, "applying the audit retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Query of `GET /apis/thinfleet.io/v1/audit`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    /// Only this user's entries.
    by: Option<String>,
    /// Only entries naming an object of this kind.
    kind: Option<String>,
    /// Only entries naming an object of this name.
    name: Option<String>,
    /// Only this action.
    action: Option<String>,
    /// Only entries after this sequence number.
    after_seq: Option<u64>,
    /// At most this many, the newest (all when absent).
    limit: Option<usize>,
    /// `jsonl`: every matching entry as JSON lines (an export), oldest first.
    format: Option<String>,
}

/// Entries per store read of a JSON-lines export.
const EXPORT_PAGE: usize = 1_000;

/// `GET /apis/thinfleet.io/v1/audit`: the audit trail, oldest first; `?format=jsonl` exports it
/// as JSON lines (`application/jsonl`), streamed page by page.
pub async fn list(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let jsonl = match query.format.as_deref() {
        None | Some("json") => false,
        Some("jsonl") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format `{other}` is not known: use json (the default) or jsonl"
            )));
        }
    };
    let filter = AuditFilter {
        user: query.by,
        kind: query.kind,
        name: query.name,
        action: query.action,
        after_seq: query.after_seq,
        limit: query.limit,
        oldest_first: false,
    };
    if !jsonl || filter.limit.is_some() {
        let store = controller.store.clone();
        let items = tokio::task::spawn_blocking(move || store.list_audit(&filter)).await??;
        if jsonl {
            return Ok(jsonl_response(axum::body::Body::from(lines(&items))));
        }
        return Ok(
            Json(json!({ "apiVersion": API_VERSION, "kind": "AuditList", "items": items }))
                .into_response(),
        );
    }
    Ok(export(controller, filter))
}

fn lines(entries: &[AuditEntry]) -> String {
    let mut text = String::new();
    for entry in entries {
        text.push_str(&serde_json::to_string(entry).expect("audit entries serialize"));
        text.push('\n');
    }
    text
}

fn jsonl_response(body: axum::body::Body) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jsonl"),
    );
    response
}

/// Streams every entry matching `filter` (after its `after_seq`) as JSON lines, reading the
/// store a page at a time.
fn export(controller: Arc<Controller>, filter: AuditFilter) -> Response {
    let stream = futures_util::stream::unfold(Some(filter), move |state| {
        let controller = controller.clone();
        async move {
            let mut filter = state?;
            let store = controller.store.clone();
            let mut page = filter.clone();
            page.limit = Some(EXPORT_PAGE);
            page.oldest_first = true;
            let entries = match tokio::task::spawn_blocking(move || store.list_audit(&page)).await {
                Ok(Ok(entries)) => entries,
                Ok(Err(error)) => {
                    tracing::error!(%error, "exporting the audit trail failed");
                    return Some((Err(std::io::Error::other(error.to_string())), None));
                }
                Err(error) => return Some((Err(std::io::Error::other(error.to_string())), None)),
            };
            let last = entries.last()?.seq;
            filter.after_seq = Some(last);
            let more = entries.len() == EXPORT_PAGE;
            let text = axum::body::Bytes::from(lines(&entries));
            Some((Ok::<_, std::io::Error>(text), more.then_some(filter)))
        }
    });
    jsonl_response(axum::body::Body::from_stream(stream))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_route_has_an_action_and_every_action_a_route() {
        for (method, pattern, _) in crate::credentials::ROUTE_ROLES {
            if *method == "GET" {
                continue;
            }
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert!(
                action_of(&method, pattern).is_some(),
                "{method} {pattern} has no audit action"
            );
        }
        for (method, pattern, _, _) in ACTIONS {
            assert!(
                crate::credentials::ROUTE_ROLES
                    .iter()
                    .any(|(m, p, _)| m == method && p == pattern),
                "{method} {pattern} is not a route"
            );
        }
    }

    #[test]
    fn the_path_names_the_object() {
        let object = path_object(
            "/apis/thinfleet.io/v1/{plural}/{name}",
            "/apis/thinfleet.io/v1/clientgroups/kiosk",
            None,
        )
        .unwrap();
        assert_eq!(
            (object.kind.as_str(), object.name.as_str()),
            ("ClientGroup", "kiosk")
        );
        let object = path_object(
            "/apis/thinfleet.io/v1/blockedmachines/{machine_id}",
            "/apis/thinfleet.io/v1/blockedmachines/ab%2Fc",
            Some("BlockedMachine"),
        )
        .unwrap();
        assert_eq!(object.name, "ab/c");
        assert!(path_object("/blobs", "/blobs", None).is_none());
        assert_eq!(
            truncate("é".repeat(3_000)).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }
}
