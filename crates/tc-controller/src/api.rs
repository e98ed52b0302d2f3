//! Admin API routes (`/apis/thinfleet.io/v1/...`), blobs, health and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tc_api::{API_VERSION, Client, Event, EventType, Kind, LabelSelector, ObjectRef, Timestamp};
use tc_store::{EventFilter, Write, WriteOutcome};

use crate::apply::{ApplyRequest, ArtifactPaths, ManifestFile};
use crate::audit::Note;
use crate::error::ApiError;
use crate::fleet::{ClientSlot, Labels};
use crate::{Controller, tokens};

fn parse_kind(plural: &str) -> Result<Kind, ApiError> {
    Kind::ALL
        .into_iter()
        .find(|k| k.plural() == plural)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown resource `{plural}`; use clientgroups, packagereleases or clients"
            ))
        })
}

/// Query of list calls.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// kubectl `-l` syntax.
    pub label_selector: Option<String>,
}

/// `GET /apis/thinfleet.io/v1/{plural}`.
pub async fn list(
    State(controller): State<Arc<Controller>>,
    Path(plural): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&plural)?;
    let selector = match query.label_selector.as_deref() {
        Some(text) => {
            LabelSelector::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))?
        }
        None => LabelSelector::everything(),
    };
    let items: Vec<Value> = if kind == Kind::Client {
        // Selected on the live labels; read from the store (metadata, spec, inventory) with
        // the live labels and status.
        let selected: Vec<Arc<ClientSlot>> = controller
            .fleet
            .slots()
            .into_iter()
            .filter(|slot| {
                slot.state
                    .lock()
                    .expect("client lock")
                    .labels
                    .matches(&selector)
            })
            .collect();
        let store = controller.store.clone();
        let stored = tokio::task::spawn_blocking(move || -> tc_store::Result<Vec<Client>> {
            if selected.len() > 64 {
                let mut wanted = selected.iter().map(|slot| &*slot.name).peekable();
                let mut clients = Vec::with_capacity(selected.len());
                for client in store.list_clients()? {
                    while wanted
                        .next_if(|name| **name < *client.metadata.name)
                        .is_some()
                    {}
                    if wanted
                        .peek()
                        .is_some_and(|name| **name == *client.metadata.name)
                    {
                        clients.push(client);
                    }
                }
                return Ok(clients);
            }
            let mut clients = Vec::with_capacity(selected.len());
            for slot in &selected {
                clients.extend(store.get_client(&slot.name)?);
            }
            Ok(clients)
        })
        .await??;
        stored
            .into_iter()
            .filter_map(|client| {
                let slot = controller.fleet.get(&client.metadata.name)?;
                let client = slot.state.lock().expect("client lock").overlay(client);
                Some(serde_json::to_value(client).expect("clients serialize"))
            })
            .collect()
    } else {
        let store = controller.store.clone();
        tokio::task::spawn_blocking(move || store.list(kind))
            .await??
            .into_iter()
            .filter(|o| selector.matches(&o.meta().labels))
            .map(|mut o| {
                controller.tasks.overlay(&mut o);
                serde_json::to_value(o).expect("objects serialize")
            })
            .collect()
    };
    Ok(Json(
        json!({ "apiVersion": API_VERSION, "kind": format!("{}List", kind.as_str()), "items": items }),
    ))
}

/// `GET /apis/thinfleet.io/v1/{plural}/{name}`.
pub async fn get(
    State(controller): State<Arc<Controller>>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let kind = parse_kind(&plural)?;
    let missing = || {
        ApiError::not_found(format!(
            "{}/{name} not found",
            kind.as_str().to_ascii_lowercase()
        ))
    };
    if kind == Kind::Client {
        let slot = controller.fleet.get(&name).ok_or_else(missing)?;
        let store = controller.store.clone();
        let lookup = name.clone();
        let stored = tokio::task::spawn_blocking(move || store.get_client(&lookup))
            .await??
            .ok_or_else(missing)?;
        let client = slot.state.lock().expect("client lock").overlay(stored);
        let client = controller.explained(client).await?;
        return Ok(Json(
            serde_json::to_value(client).expect("clients serialize"),
        ));
    }
    let store = controller.store.clone();
    let lookup = name.clone();
    let mut object = tokio::task::spawn_blocking(move || store.get(kind, &lookup))
        .await??
        .ok_or_else(missing)?;
    controller.tasks.overlay(&mut object);
    Ok(Json(
        serde_json::to_value(object).expect("objects serialize"),
    ))
}

/// `DELETE /apis/thinfleet.io/v1/{plural}/{name}`.
///
/// An object the watched directory defines (and keeps in its hands) is written back from the
/// directory in the same transaction, so its clients never lose their packages in between; the
/// answer carries a `Warning` header saying so and how to delete it for good.
pub async fn delete(
    State(controller): State<Arc<Controller>>,
    Path((plural, name)): Path<(String, String)>,
) -> Result<(HeaderMap, Extension<Note>, Json<Value>), ApiError> {
    let kind = parse_kind(&plural)?;
    let reference = format!("{}/{name}", kind.as_str().to_ascii_lowercase());
    let now = Timestamp::now();
    let mut events = vec![];
    let mut headers = HeaderMap::new();
    let deleted: Value = if kind == Kind::Client {
        // Answered as it was last: its live labels and status, and its newest inventory.
        let slot = controller.fleet.get(&name);
        let _guard = controller.enroll_lock.lock().await;
        // Deleting a client revokes its credential: its sessions stop at once, and its key is
        // refused until an admin allows the machine again.
        let (client, block) = crate::admission::delete_and_block(
            &controller,
            &name,
            tc_api::BlockReason::Deleted,
            false,
            now,
        )
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{reference} not found")))?;
        if let Some(block) = block {
            add_warning(
                &mut headers,
                &format!(
                    "{reference}'s credential is revoked: its agent is refused until `tcadm allow \
                     machine {}`",
                    block.machine_id
                ),
            );
            events.push(Event::new(
                now,
                ObjectRef::new(kind, &name),
                EventType::Normal,
                "CredentialRevoked",
                format!(
                    "its key is refused until `tcadm allow machine {}`",
                    block.machine_id
                ),
            ));
        }
        let client = match slot {
            Some(slot) => slot.state.lock().expect("client lock").overlay(client),
            None => client,
        };
        serde_json::to_value(client).expect("clients serialize")
    } else {
        let _guard = controller.apply_lock.lock().await;
        let store = controller.store.clone();
        let lookup = name.clone();
        let existing = tokio::task::spawn_blocking(move || store.get(kind, &lookup))
            .await??
            .ok_or_else(|| ApiError::not_found(format!("{reference} not found")))?;
        if let tc_api::Object::PackageRelease(release) = &existing
            && let Some(users) =
                controller.release_users(&release.spec.package, &release.spec.version)
        {
            return Err(ApiError::conflict(format!(
                "{reference} is assigned to {users} client(s); change the groups that select it first"
            )));
        }
        // Marked on the stored object: the mark goes with it, and the next sync brings the
        // file's version back.
        let defining = controller.sources.defining(kind, &name);
        let restore = defining
            .as_ref()
            .filter(|_| !tc_reconcile::reconcile_disabled(&existing))
            .and_then(|defining| {
                let object = defining.restore.clone()?;
                Some((defining.clone(), object))
            });
        let store = controller.store.clone();
        let mut writes = vec![Write::Delete {
            kind,
            name: name.clone(),
            // Deletes hold the apply lock: only the reconcile loop's status writes can have
            // touched the object since it was read, and they must not make a delete fail (409).
            precondition: None,
        }];
        if let Some((defining, object)) = &restore {
            writes.extend(defining.restore_writes(object));
        }
        let outcome = tokio::task::spawn_blocking(move || store.write(writes, now)).await??;
        let deleted = match outcome.into_iter().next() {
            Some(WriteOutcome::Deleted(object)) => {
                serde_json::to_value(object).expect("objects serialize")
            }
            _ => return Err(ApiError::not_found(format!("{reference} not found"))),
        };
        if kind == Kind::ClientGroup && restore.is_none() {
            // A group of that name created later starts unpaused.
            let store = controller.store.clone();
            let group = name.clone();
            tokio::task::spawn_blocking(move || crate::rollout::forget_pause(&*store, &group))
                .await??;
        }
        match (&restore, defining) {
            (Some((defining, object)), _) => {
                events.push(defining.restoration_event(object, "deleted through the API", now));
                add_warning(&mut headers, &defining.restored_warning(&reference));
            }
            (None, Some(defining)) => {
                add_warning(
                    &mut headers,
                    &defining.takeover_warning(&reference, controller.config.watch_debounce),
                );
                defining.source.request_sync();
            }
            (None, None) => {}
        }
        deleted
    };
    events.insert(
        0,
        Event::new(
            now,
            ObjectRef::new(kind, &name),
            EventType::Normal,
            "Deleted",
            format!("{reference} deleted"),
        ),
    );
    controller.record(events).await;
    controller.reconcile_wake.notify_one();
    controller.tasks.objects_changed();
    let note = Note::object(kind.as_str(), &name, "deleted");
    Ok((headers, Extension(note), Json(deleted)))
}

/// Adds a `Warning: 299 - "text"` header (RFC 7234, as Kubernetes sends them). Text that cannot be
/// a header value is left out.
pub fn add_warning(headers: &mut HeaderMap, text: &str) {
    let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
    if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
        headers.append(header::WARNING, value);
    }
}

/// `GET /apis/thinfleet.io/v1/clients/{name}` (this path also carries PATCH, so it has its own route).
pub async fn get_client(
    state: State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    get(state, Path(("clients".to_string(), name))).await
}

/// `DELETE /apis/thinfleet.io/v1/clients/{name}`.
pub async fn delete_client(
    state: State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Extension<Note>, Json<Value>), ApiError> {
    delete(state, Path(("clients".to_string(), name))).await
}

/// `PATCH /apis/thinfleet.io/v1/clients/{name}`: JSON merge patch of admin labels.
pub async fn patch_client(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Json(patch): Json<Value>,
) -> Result<(Extension<Note>, Json<Client>), ApiError> {
    let Some(patch) = patch.as_object() else {
        return Err(ApiError::bad_request("the patch must be a JSON object"));
    };
    let allowed = patch.keys().all(|k| k == "metadata")
        && patch
            .get("metadata")
            .and_then(Value::as_object)
            .is_none_or(|m| m.keys().all(|k| k == "labels"));
    if !allowed {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "only metadata.labels of a client can be patched",
        ));
    }
    let labels = patch
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut set = BTreeMap::new();
    let mut remove = vec![];
    for (key, value) in &labels {
        match value {
            Value::Null => remove.push(key.clone()),
            Value::String(v) => {
                set.insert(key.clone(), v.clone());
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "label `{key}` must be a string or null, not {other}"
                )));
            }
        }
    }
    let mut errors = tc_api::validate::Errors::default();
    tc_api::validate::validate_labels(&set, "metadata.labels", &mut errors);
    let touched: BTreeMap<String, String> = labels
        .keys()
        .map(|key| (key.clone(), String::new()))
        .collect();
    tc_api::resources::refuse_system_labels(&touched, "metadata.labels", &mut errors);
    if let Err(errors) = errors.into_result() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            errors.to_string(),
        ));
    }
    let not_found = || ApiError::not_found(format!("client/{name} not found"));
    let slot = controller.fleet.get(&name).ok_or_else(not_found)?;
    // One label change at a time, so that concurrent patches do not undo each other.
    let _guard = controller.enroll_lock.lock().await;
    let store = controller.store.clone();
    let lookup = name.clone();
    let stored = tokio::task::spawn_blocking(move || store.get_client(&lookup))
        .await??
        .ok_or_else(not_found)?;
    let client = {
        let mut state = slot.state.lock().expect("client lock");
        let mut client = state.overlay(stored);
        let spec = &mut client.spec;
        for key in &remove {
            spec.admin_labels.remove(key);
        }
        spec.admin_labels.extend(set);
        client.refresh_labels();
        state.labels.admin =
            Labels::settable(&client.spec.admin_labels, &controller.fleet.interner);
        client
    };
    controller
        .persister
        .write_objects(vec![client.clone()])
        .await
        .map_err(ApiError::internal)?;
    controller
        .record(vec![Event::new(
            Timestamp::now(),
            ObjectRef::new(Kind::Client, &name),
            EventType::Normal,
            "Labelled",
            format!(
                "labels: {}",
                LabelSelector {
                    match_labels: client.metadata.labels.clone(),
                    ..Default::default()
                }
            ),
        )])
        .await;
    controller.reconcile_wake.notify_one();
    let mut changes: Vec<String> = labels
        .iter()
        .map(|(key, value)| match value.as_str() {
            Some(value) => format!("+{key}={value}"),
            None => format!("-{key}"),
        })
        .collect();
    changes.sort();
    let note = Note::object("Client", &name, format!("labels: {}", changes.join(" ")));
    Ok((Extension(note), Json(client)))
}

/// Query of the apply call.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyQuery {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    prune: bool,
    field_manager: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilesBody {
    files: Vec<FileBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBody {
    name: String,
    content: String,
}

/// `POST /apis/thinfleet.io/v1/apply`.
pub async fn apply(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<crate::credentials::Identity>,
    Query(query): Query<ApplyQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(Extension<Note>, Json<crate::apply::ApplyResult>), ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let files = match is_json
        .then(|| serde_json::from_str::<FilesBody>(text))
        .and_then(Result::ok)
    {
        Some(body) => body
            .files
            .into_iter()
            .map(|f| ManifestFile {
                name: f.name,
                content: f.content,
            })
            .collect(),
        None => vec![ManifestFile {
            name: "request".into(),
            content: text.to_string(),
        }],
    };
    // Without a fieldManager, the objects are managed by the credential that applied them.
    let manager = query
        .field_manager
        .unwrap_or_else(|| identity.field_manager());
    if manager.is_empty() || manager.starts_with("dir:") {
        return Err(ApiError::bad_request(
            "fieldManager must be non-empty and must not start with `dir:`",
        ));
    }
    let result = controller
        .apply(ApplyRequest {
            files,
            manager,
            dry_run: query.dry_run,
            force: query.force,
            prune: query.prune,
            artifact_paths: ArtifactPaths::UploadedOnly,
            authoritative: false,
            artifact_cache: None,
        })
        .await?;
    Ok((Extension(Note::apply(&result)), Json(result)))
}

/// Query of the events call.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventQuery {
    kind: Option<String>,
    name: Option<String>,
    after_seq: Option<u64>,
    limit: Option<usize>,
}

/// `GET /apis/thinfleet.io/v1/events`.
pub async fn events(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<EventQuery>,
) -> Result<Json<Value>, ApiError> {
    let kind = query
        .kind
        .map(|k| Kind::parse(&k).map(|k| k.as_str().to_string()).unwrap_or(k));
    let filter = EventFilter {
        kind,
        name: query.name,
        after_seq: query.after_seq,
        limit: Some(query.limit.unwrap_or(500).min(10_000)),
    };
    let store = controller.store.clone();
    let items: Vec<Event> =
        tokio::task::spawn_blocking(move || store.list_events(&filter)).await??;
    Ok(Json(
        json!({ "apiVersion": API_VERSION, "kind": "EventList", "items": items }),
    ))
}

/// `GET /apis/thinfleet.io/v1/sources`: the watched directories' status.
pub async fn sources(State(controller): State<Arc<Controller>>) -> Json<Value> {
    let items: Vec<Value> = controller
        .sources
        .all()
        .iter()
        .map(|source| json!(source.status()))
        .collect();
    Json(json!({ "apiVersion": API_VERSION, "kind": "ManifestSourceList", "items": items }))
}

/// `GET /apis/thinfleet.io/v1/sources/{name}`: one watched directory's status.
pub async fn source(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let source = controller.sources.get(&name).ok_or_else(|| {
        let known: Vec<String> = controller
            .sources
            .all()
            .iter()
            .map(|s| s.name.clone())
            .collect();
        ApiError::not_found(format!(
            "source/{name} not found; the sources are: {}",
            if known.is_empty() {
                "none (the controller watches no directory)".to_string()
            } else {
                known.join(", ")
            }
        ))
    })?;
    let mut status = json!(source.status());
    status["kind"] = json!("ManifestSource");
    status["apiVersion"] = json!(API_VERSION);
    Ok(Json(status))
}

/// Query of `PUT /blobs`.
#[derive(Debug, Default, Deserialize)]
pub struct PutBlobQuery {
    sha256: Option<String>,
}

/// `PUT /blobs`.
pub async fn put_blob(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<PutBlobQuery>,
    body: Body,
) -> Result<(Extension<Note>, Json<crate::blobs::BlobInfo>), ApiError> {
    if let Some(sha) = &query.sha256
        && !tc_api::resources::is_sha256_hex(sha)
    {
        return Err(ApiError::bad_request(format!(
            "`{sha}` is not 64 lowercase hex digits"
        )));
    }
    let stream = body.into_data_stream();
    let info = controller
        .blobs
        .put_stream(stream, query.sha256.as_deref())
        .await
        .map_err(|error| match error {
            crate::blobs::BlobError::DigestMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
            crate::blobs::BlobError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
            }
            crate::blobs::BlobError::Source(_) => ApiError::bad_request(error.to_string()),
            crate::blobs::BlobError::Io(_) | crate::blobs::BlobError::Database(_) => {
                ApiError::internal(error)
            }
        })?;
    let note = Note::object(
        "Blob",
        &info.sha256,
        format!("stored ({} bytes)", info.size),
    );
    Ok((Extension(note), Json(info)))
}

impl Controller {
    fn check_blob_reader(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.config.public_blobs {
            return Ok(());
        }
        let token = tokens::bearer(headers)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        // Any credential may read blobs (the least role of the route in the table).
        if self
            .credentials
            .authenticate(token, Timestamp::now())?
            .is_some()
        {
            return Ok(());
        }
        crate::enroll::authenticate_client(self, headers).map(|_| ())
    }
}

/// `GET|HEAD /blobs/sha256/{hex}`: Range, ETag, immutable caching.
pub async fn get_blob(
    State(controller): State<Arc<Controller>>,
    Path(sha256): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    controller.check_blob_reader(&headers)?;
    serve_blob(&controller, &sha256, &method, &headers).await
}

/// Answers a blob (Range, ETag, immutable caching) to a reader already authenticated: an API
/// credential, an agent's session, or a console session (`crate::ui`).
pub async fn serve_blob(
    controller: &Controller,
    sha256: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    answer_blob(&controller.blobs, sha256, method, headers, |length| {
        controller.metrics.blob_bytes_served.inc_by(length);
    })
    .await
}

/// [`serve_blob`] from `blobs`, calling `served` with the number of bytes a body sends.
pub async fn answer_blob(
    blobs: &crate::blobs::BlobStore,
    sha256: &str,
    method: &axum::http::Method,
    headers: &HeaderMap,
    served: impl FnOnce(u64),
) -> Result<Response, ApiError> {
    let sha256 = sha256.to_string();
    let size = blobs
        .try_stat(&sha256)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("blob sha256:{sha256} not found")))?;
    let etag = format!("\"sha256:{sha256}\"");
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/zip");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) => match crate::blobs::parse_range(value, size) {
            Ok(range) => range,
            Err(()) => {
                return Ok(Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .expect("valid response"));
            }
        },
        None => None,
    };
    let (start, length) = match range {
        Some(r) => {
            response = response.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end),
            );
            (r.start, r.end - r.start + 1)
        }
        None => (0, size),
    };
    response = response.header(header::CONTENT_LENGTH, length);
    if *method == axum::http::Method::HEAD {
        return Ok(response.body(Body::empty()).expect("valid response"));
    }
    let body = blobs
        .body(&sha256, start, length)
        .await
        .map_err(ApiError::internal)?;
    served(length);
    Ok(response.body(body).expect("valid response"))
}

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 503 until the store is open and the watched directory was applied once.
pub async fn readyz(State(controller): State<Arc<Controller>>) -> Response {
    if controller.ready.load(std::sync::atomic::Ordering::SeqCst) {
        "ok".into_response()
    } else {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
    }
}

/// `GET /metrics`.
pub async fn metrics(State(controller): State<Arc<Controller>>) -> Response {
    let mut response = controller.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// `GET /version`.
/// `GET /version`: the controller's version and, over HTTPS, the fingerprint of its CA
/// (`caCertHash`, what agents and `tcadm` pin; it is public, like the certificate itself).
pub async fn version(State(controller): State<Arc<Controller>>) -> Json<Value> {
    let mut answer = json!({ "version": env!("CARGO_PKG_VERSION") });
    if let Some(hash) = controller.ca_cert_hash() {
        answer["caCertHash"] = Value::String(hash);
    }
    Json(answer)
}

/// Fallback for unknown routes: a JSON 404.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}
