//! The admin routes of tasks besides the generic object routes: creating one (operators may;
//! applying manifests is for admins), deleting one, the results of a run, a client's logs, and
//! a client's tasks.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use tc_api::task::{TaskClientState, TaskResult};
use tc_api::{API_VERSION, Kind, Object};

use crate::Controller;
use crate::apply::{ApplyRequest, ArtifactPaths, ManifestFile};
use crate::audit::Note;
use crate::credentials::Identity;
use crate::error::ApiError;

/// Most results one page holds.
const MAX_PAGE: usize = 5000;

/// `GET /apis/thinfleet.io/v1/tasks` (the generic list, on the route `POST` shares).
pub async fn list(
    state: State<Arc<Controller>>,
    query: Query<crate::api::ListQuery>,
) -> Result<Json<Value>, ApiError> {
    crate::api::list(state, Path("tasks".to_string()), query).await
}

/// `GET /apis/thinfleet.io/v1/tasks/{name}` (the generic read, on the route `DELETE` shares).
pub async fn get(
    state: State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    crate::api::get(state, Path(("tasks".to_string(), name))).await
}

/// `POST /apis/thinfleet.io/v1/tasks`: creates a task (a JSON or YAML `Task`); an existing
/// name is a conflict (tasks are created, not changed, through this route).
pub async fn create(
    State(controller): State<Arc<Controller>>,
    Extension(identity): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Extension<Note>, Json<Value>), ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let task = create_task(&controller, &identity, text).await?;
    let name = task.metadata.name.clone();
    Ok((
        StatusCode::CREATED,
        Extension(Note::object("Task", &name, "created")),
        Json(serde_json::to_value(Object::Task(task)).expect("objects serialize")),
    ))
}

/// Creates the task `text` (one `Task` manifest) as `identity`, through the one apply path;
/// the API's create route and the console's buttons call it.
pub(crate) async fn create_task(
    controller: &Arc<Controller>,
    identity: &Identity,
    text: &str,
) -> Result<tc_api::Task, ApiError> {
    let file = ManifestFile {
        name: "request".into(),
        content: text.to_owned(),
    };
    let decoded = crate::apply::decode(std::slice::from_ref(&file))?;
    let [object] = decoded.as_slice() else {
        return Err(ApiError::bad_request(format!(
            "give exactly one Task, not {} objects",
            decoded.len()
        )));
    };
    let Object::Task(task) = &object.object else {
        return Err(ApiError::bad_request(format!(
            "this route creates tasks, not a {}",
            object.object.kind()
        )));
    };
    let name = task.metadata.name.clone();
    let store = controller.store.clone();
    let lookup = name.clone();
    if tokio::task::spawn_blocking(move || store.get(Kind::Task, &lookup))
        .await??
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "task/{name} already exists; choose another name"
        )));
    }
    let result = controller
        .apply(ApplyRequest {
            files: vec![file],
            manager: identity.field_manager(),
            dry_run: false,
            force: false,
            prune: false,
            artifact_paths: ArtifactPaths::UploadedOnly,
            authoritative: false,
            artifact_cache: None,
        })
        .await?;
    controller.tasks.objects_changed();
    let item = result
        .items
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the apply returned no object"))?;
    // Another request created it between the check and the apply.
    if item.action != "created" {
        return Err(ApiError::conflict(format!(
            "task/{name} already exists; choose another name"
        )));
    }
    let mut object = item.object;
    controller.tasks.overlay(&mut object);
    match object {
        Object::Task(task) => Ok(task),
        _ => Err(ApiError::internal("the apply returned another kind")),
    }
}

/// `DELETE /apis/thinfleet.io/v1/tasks/{name}` (operators may: it cancels what has not
/// started).
pub async fn delete(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<(HeaderMap, Extension<Note>, Json<Value>), ApiError> {
    crate::api::delete(State(controller), Path(("tasks".to_string(), name))).await
}

/// Query of the results route.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultsQuery {
    /// The run (the newest when absent).
    run: Option<u64>,
    /// Only results in this state (`Failed`, any case).
    state: Option<String>,
    /// Only clients after this name (paging).
    after: Option<String>,
    /// At most this many (5000 at most).
    limit: Option<usize>,
}

/// `GET /apis/thinfleet.io/v1/tasks/{name}/results`: the targets of a run with their states
/// and, for those that reported, exit codes, output tails and messages, by client name.
pub async fn results(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(query): Query<ResultsQuery>,
) -> Result<Json<Value>, ApiError> {
    let state = match query.state.as_deref() {
        Some(text) => Some(TaskClientState::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state `{text}` is not one of Pending, Running, Succeeded, Failed, Expired, \
                 Interrupted"
            ))
        })?),
        None => None,
    };
    let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let page = run_results(
        &controller,
        &name,
        query.run,
        state,
        query.after.as_deref().unwrap_or(""),
        limit,
    )
    .await?;
    let mut answer = json!({
        "apiVersion": API_VERSION,
        "kind": "TaskResultList",
        "items": page.items,
    });
    if let Some(run) = page.run {
        answer["run"] = json!(run);
    }
    if page.more
        && let Some(last) = page.items.last()
    {
        answer["continue"] = json!(last.client);
    }
    Ok(Json(answer))
}

/// One page of a run's results.
pub(crate) struct ResultsPage {
    /// The run (none yet: no items).
    pub run: Option<u64>,
    /// The results, by client name.
    pub items: Vec<TaskResult>,
    /// More follow the last one.
    pub more: bool,
}

/// The results of run `run` of task `name` (its newest when `None`), in `state` when given, of
/// clients after `after`, at most `limit`: the book's states with the store's details. The API
/// and the console read them through this one function.
pub(crate) async fn run_results(
    controller: &Arc<Controller>,
    name: &str,
    run: Option<u64>,
    state: Option<TaskClientState>,
    after: &str,
    limit: usize,
) -> Result<ResultsPage, ApiError> {
    let (found, targets) = {
        let book = controller.tasks.book.lock().expect("task book");
        match book.run(name, run) {
            None => (None, Vec::new()),
            Some(found) => {
                let mut targets = Vec::new();
                for (index, target) in found.stored.targets.iter().enumerate() {
                    if target.client.as_str() <= after {
                        continue;
                    }
                    let current = found.clients[index].state;
                    if state.is_some_and(|wanted| wanted != current) {
                        continue;
                    }
                    targets.push((
                        target.client.clone(),
                        current,
                        target.wake.as_ref().map(|(neighbour, _)| neighbour.clone()),
                    ));
                    if targets.len() > limit {
                        break;
                    }
                }
                (Some(found.stored.run), targets)
            }
        }
    };
    let Some(found) = found else {
        let store = controller.store.clone();
        let lookup = name.to_owned();
        if tokio::task::spawn_blocking(move || store.get(Kind::Task, &lookup))
            .await??
            .is_none()
        {
            return Err(ApiError::not_found(format!("task/{name} not found")));
        }
        return match run {
            Some(run) => Err(ApiError::not_found(format!(
                "task/{name} has no run {run} (runs beyond the newest {} are dropped)",
                tc_api::task::MAX_TASK_RUNS_KEPT
            ))),
            None => Ok(ResultsPage {
                run: None,
                items: Vec::new(),
                more: false,
            }),
        };
    };
    let more = targets.len() > limit;
    let targets: Vec<_> = targets.into_iter().take(limit).collect();
    let store = controller.store.clone();
    let task = name.to_owned();
    let items = tokio::task::spawn_blocking(move || -> tc_store::Result<Vec<TaskResult>> {
        let stored = if targets.len() > 64 {
            store.task_results(&task, found)?
        } else {
            let mut stored = Vec::new();
            for (client, _, _) in &targets {
                stored.extend(store.task_result(&task, found, client)?);
            }
            stored
        };
        let mut stored = stored.into_iter().peekable();
        let mut items = Vec::with_capacity(targets.len());
        for (client, state, by) in targets {
            while stored.next_if(|r| r.client < client).is_some() {}
            let detail = stored.next_if(|r| r.client == client);
            let mut item = detail.unwrap_or_else(|| TaskResult {
                task: task.clone(),
                run: found,
                client: client.clone(),
                by: by.clone(),
                ..Default::default()
            });
            // The book is ahead of the store only by writes in flight; it is the truth.
            item.state = state;
            items.push(item);
        }
        Ok(items)
    })
    .await??;
    Ok(ResultsPage {
        run: Some(found),
        items,
        more,
    })
}

/// Query of the logs route.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    /// The run (the newest when absent).
    run: Option<u64>,
}

/// `GET /apis/thinfleet.io/v1/tasks/{name}/results/{client}/logs`: what a client's
/// `collectLogs` sent, as text.
pub async fn logs(
    State(controller): State<Arc<Controller>>,
    Path((name, client)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let run = controller
        .tasks
        .book
        .lock()
        .expect("task book")
        .run(&name, query.run)
        .map(|run| run.stored.run)
        .ok_or_else(|| ApiError::not_found(format!("task/{name} has no such run")))?;
    let store = controller.store.clone();
    let (task, who) = (name.clone(), client.clone());
    let text = tokio::task::spawn_blocking(move || store.task_logs(&task, run, &who))
        .await??
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "client/{client} sent no logs for task/{name} run {run}"
            ))
        })?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /apis/thinfleet.io/v1/clients/{name}/tasks`: the client's results in the runs the
/// controller keeps, newest first.
pub async fn client_tasks(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if controller.fleet.get(&name).is_none() {
        return Err(ApiError::not_found(format!("client/{name} not found")));
    }
    let items = controller
        .tasks
        .client_results(&controller.store, &name)
        .await?;
    Ok(Json(json!({
        "apiVersion": API_VERSION,
        "kind": "TaskResultList",
        "items": items,
    })))
}
