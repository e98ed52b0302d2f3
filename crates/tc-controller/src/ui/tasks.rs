//! The console's remote operations: the tasks page, a task's page with each client's result,
//! a client's tasks, and the buttons of a client's page (Reboot, Shut down, Wake, Collect
//! logs), which create a task through the API's own function, under the route table's role
//! and in the audit trail.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Form;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tc_api::task::{TaskActionKind, TaskClientState, TaskResult, TaskRunStatus};
use tc_api::{Kind, Object, Task, Timestamp};

use super::html::{self, ago, csrf_field, esc, live, may, url};
use super::pages::{failed, signed};
use super::session::{self, CsrfForm, UiSession, error_page};
use crate::Controller;
use crate::credentials::required_role;
use crate::error::ApiError;

/// The API route the buttons carry out.
const CREATE_ROUTE: &str = "/apis/thinfleet.io/v1/tasks";

/// Results shown on a task's page.
const RESULTS_SHOWN: usize = 500;

/// The actions a client's page offers, with their labels.
const BUTTONS: &[(TaskActionKind, &str)] = &[
    (TaskActionKind::Reboot, "Reboot"),
    (TaskActionKind::Shutdown, "Shut down"),
    (TaskActionKind::Wake, "Wake"),
    (TaskActionKind::CollectLogs, "Collect logs"),
];

fn counts(run: &TaskRunStatus) -> String {
    format!(
        "{}/{} succeeded · {} pending · {} running · {} failed · {} expired · {} interrupted",
        run.succeeded,
        run.targets,
        run.pending,
        run.running,
        run.failed,
        run.expired,
        run.interrupted
    )
}

fn state_class(state: TaskClientState) -> &'static str {
    match state {
        TaskClientState::Succeeded => "good",
        TaskClientState::Failed | TaskClientState::Expired | TaskClientState::Interrupted => "bad",
        TaskClientState::Pending | TaskClientState::Running => "muted",
    }
}

async fn load_tasks(controller: &Arc<Controller>) -> Result<Vec<Task>, ApiError> {
    let store = controller.store.clone();
    let objects = tokio::task::spawn_blocking(move || store.list(Kind::Task)).await??;
    Ok(objects
        .into_iter()
        .filter_map(|mut object| {
            controller.tasks.overlay(&mut object);
            match object {
                Object::Task(task) => Some(task),
                _ => None,
            }
        })
        .collect())
}

/// `GET /ui/tasks`: every task with its newest run.
pub async fn list(State(controller): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let mut tasks = match load_tasks(&controller).await {
        Ok(tasks) => tasks,
        Err(error) => return failed(error),
    };
    tasks.sort_by_key(|task| std::cmp::Reverse(task.metadata.creation_timestamp));
    let now = Timestamp::now();
    let mut region = String::from(
        "<table><thead><tr><th>Task</th><th>Action</th><th>Newest run</th><th>Results</th>\
         <th>Next run</th><th>Created</th></tr></thead><tbody>",
    );
    for task in &tasks {
        let status = task.status.clone().unwrap_or_default();
        let run = status.runs.first();
        let _ = write!(
            region,
            "<tr><td><a href=\"/ui/tasks/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&url(&task.metadata.name)),
            esc(&task.metadata.name),
            task.spec.action,
            run.map_or_else(|| "none yet".to_string(), |r| ago(Some(r.started_at), now)),
            run.map_or_else(String::new, |r| esc(&counts(r)).to_string()),
            status
                .next_run_time
                .map_or_else(|| "—".to_string(), |t| t.to_string()),
            ago(task.metadata.creation_timestamp, now),
        );
    }
    region.push_str("</tbody></table>");
    if tasks.is_empty() {
        region = "<p class=\"muted\">No task yet: run one with <code>tcadm run</code>, \
                  <code>tcadm reboot</code>, or a client's buttons.</p>"
            .into();
    }
    let body = format!("<h1>Tasks</h1>{}", live("live", "/ui/tasks", &region));
    if super::pages::is_htmx(&headers) {
        return session::html(StatusCode::OK, live("live", "/ui/tasks", &region));
    }
    session::html(
        StatusCode::OK,
        html::page("Tasks", "/ui/tasks", Some(&session), &body),
    )
}

/// Query of a task's page.
#[derive(Debug, Default, Deserialize)]
pub struct TaskQuery {
    /// Only results in this state.
    state: Option<String>,
}

/// `GET /ui/tasks/{name}`: a task, its runs and the newest run's result per client.
pub async fn show(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    Query(query): Query<TaskQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let store = controller.store.clone();
    let lookup = name.clone();
    let mut object = match tokio::task::spawn_blocking(move || store.get(Kind::Task, &lookup)).await
    {
        Ok(Ok(Some(object))) => object,
        Ok(Ok(None)) => {
            return error_page(StatusCode::NOT_FOUND, &format!("task/{name} not found"));
        }
        Ok(Err(error)) => return failed(error.into()),
        Err(error) => return failed(ApiError::internal(error)),
    };
    controller.tasks.overlay(&mut object);
    let Object::Task(task) = object else {
        return failed(ApiError::internal("not a task"));
    };
    let state = query
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(TaskClientState::parse);
    let page =
        match crate::tasks::api::run_results(&controller, &name, None, state, "", RESULTS_SHOWN)
            .await
        {
            Ok(page) => page,
            Err(error) => return failed(error),
        };
    let now = Timestamp::now();
    let status = task.status.clone().unwrap_or_default();
    let mut region = String::from("<dl class=\"facts\">");
    let _ = write!(
        region,
        "<dt>Action</dt><dd>{}</dd>",
        match &task.spec.exec {
            Some(exec) => format!("exec <code>{}</code>", esc(&exec.command.join(" "))),
            None => task.spec.action.to_string(),
        }
    );
    if let Some(schedule) = &task.spec.schedule {
        let _ = write!(
            region,
            "<dt>Schedule</dt><dd><code>{}</code> {}</dd>",
            esc(&schedule.cron),
            esc(schedule.time_zone.as_deref().unwrap_or("UTC"))
        );
    }
    if let Some(next) = status.next_run_time {
        let _ = write!(region, "<dt>Next run</dt><dd>{next}</dd>");
    }
    region.push_str("</dl><h2>Runs</h2><ul>");
    for run in &status.runs {
        let _ = write!(
            region,
            "<li>{} ({}): {}</li>",
            run.started_at,
            ago(Some(run.started_at), now),
            esc(&counts(run))
        );
    }
    if status.runs.is_empty() {
        region.push_str("<li class=\"muted\">none yet</li>");
    }
    region.push_str("</ul><h2>Newest run, by client</h2><p>");
    for filter in [None]
        .into_iter()
        .chain(TaskClientState::ALL.into_iter().map(Some))
    {
        let (href, label) = match filter {
            None => (format!("/ui/tasks/{}", url(&name)), "all".to_string()),
            Some(state) => (
                format!("/ui/tasks/{}?state={}", url(&name), state.as_str()),
                state.as_str().to_string(),
            ),
        };
        let here = if filter == state {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(region, "<a href=\"{}\"{here}>{label}</a> ", esc(&href));
    }
    region.push_str(
        "</p><table><thead><tr><th>Client</th><th>State</th><th>Exit</th><th>Message</th>\
         <th>Output</th></tr></thead><tbody>",
    );
    for result in &page.items {
        result_row(&mut region, result, true);
    }
    region.push_str("</tbody></table>");
    if page.more {
        let _ = write!(
            region,
            "<p class=\"muted\">The first {RESULTS_SHOWN} shown; <code>tcadm describe task {}</code> lists them all.</p>",
            esc(&name)
        );
    }
    let src = match state {
        Some(state) => format!("/ui/tasks/{}?state={}", url(&name), state.as_str()),
        None => format!("/ui/tasks/{}", url(&name)),
    };
    if super::pages::is_htmx(&headers) {
        return session::html(StatusCode::OK, live("live", &src, &region));
    }
    let body = format!(
        "<h1>Task {}</h1>{}",
        esc(&name),
        live("live", &src, &region)
    );
    session::html(
        StatusCode::OK,
        html::page(&format!("Task {name}"), "/ui/tasks", Some(&session), &body),
    )
}

/// One result as a table row (with the client's name, or the task's).
fn result_row(out: &mut String, result: &TaskResult, by_client: bool) {
    let who = if by_client {
        format!(
            "<a href=\"/ui/clients/{}\">{}</a>",
            esc(&url(&result.client)),
            esc(&result.client)
        )
    } else {
        format!(
            "<a href=\"/ui/tasks/{}\">{}</a>",
            esc(&url(&result.task)),
            esc(&result.task)
        )
    };
    let mut message = result.message.clone().unwrap_or_default();
    if let Some(by) = &result.by {
        message = format!("{message} (by {by})").trim().to_string();
    }
    let output = format!("{}{}", result.stdout, result.stderr);
    let output = tc_proto::task::tail(&output, 400);
    let _ = write!(
        out,
        "<tr><td>{who}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        state_class(result.state),
        result.state.as_str(),
        result.exit_code.map_or_else(String::new, |c| c.to_string()),
        esc(&message),
        if output.is_empty() {
            String::new()
        } else {
            format!("<pre>{}</pre>", esc(output))
        },
    );
}

/// The "Tasks" section of a client's page: its buttons (for those who may) and its results.
pub async fn client_section(
    controller: &Arc<Controller>,
    session: &UiSession,
    name: &str,
) -> String {
    let mut out = String::from("<h2>Tasks</h2>");
    if may(
        session.identity.role,
        required_role(&Method::POST, CREATE_ROUTE),
    ) {
        out.push_str("<div class=\"actions\">");
        for (action, label) in BUTTONS {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/ui/clients/{}/tasks/{}\" class=\"inline\">{}\
                 <button type=\"submit\">{label}</button></form>",
                esc(&url(name)),
                action.as_str(),
                csrf_field(session),
            );
        }
        out.push_str("</div>");
    }
    match controller
        .tasks
        .client_results(&controller.store, name)
        .await
    {
        Ok(results) if results.is_empty() => {
            out.push_str("<p class=\"muted\">No task ran on this client.</p>");
        }
        Ok(results) => {
            out.push_str(
                "<table><thead><tr><th>Task</th><th>State</th><th>Exit</th><th>Message</th>\
                 <th>Output</th></tr></thead><tbody>",
            );
            for result in results.iter().take(20) {
                result_row(&mut out, result, false);
            }
            out.push_str("</tbody></table>");
        }
        Err(error) => {
            let _ = write!(out, "<p class=\"bad\">{}</p>", esc(&error.to_string()));
        }
    }
    out
}

/// `POST /ui/clients/{name}/tasks/{action}`: a client's button: creates a task for that client
/// through the API's create function, for the session's identity (operators and admins).
pub async fn run_on_client(
    State(controller): State<Arc<Controller>>,
    Path((name, action)): Path<(String, String)>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match super::actions::signed_post(&controller, &headers, &form) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let Some((action, _)) = BUTTONS.iter().find(|(a, _)| a.as_str() == action) else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("`{action}` is not an action of the console"),
        );
    };
    if controller.fleet.get(&name).is_none() {
        return error_page(StatusCode::NOT_FOUND, &format!("client/{name} not found"));
    }
    let now = Timestamp::now();
    let task_name = format!(
        "ui-{}-{}",
        action.as_str().to_ascii_lowercase(),
        now.unix_millis()
    );
    let manifest = serde_json::json!({
        "apiVersion": tc_api::API_VERSION, "kind": "Task",
        "metadata": { "name": task_name },
        "spec": { "targets": { "clients": [name] }, "action": action.as_str(),
                  "deadlineSeconds": 900 },
    })
    .to_string();
    let worker = controller.clone();
    let identity = session.identity.clone();
    let answer = super::actions::act(
        &controller,
        &session,
        extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0),
        (
            CREATE_ROUTE,
            CREATE_ROUTE.to_string(),
            format!("POST /ui/clients/{}/tasks/{}", url(&name), action.as_str()),
        ),
        async move {
            match crate::tasks::api::create_task(&worker, &identity, &manifest).await {
                Ok(task) => {
                    let name = task.metadata.name.clone();
                    (
                        StatusCode::CREATED,
                        axum::Extension(crate::audit::Note::object("Task", &name, "created")),
                        axum::Json(serde_json::json!({ "name": name })),
                    )
                        .into_response()
                }
                Err(error) => error.into_response(),
            }
        },
    )
    .await;
    if answer.status() == StatusCode::CREATED {
        return (
            StatusCode::SEE_OTHER,
            [(
                axum::http::header::LOCATION,
                format!("/ui/tasks/{}", url(&task_name)),
            )],
        )
            .into_response();
    }
    let (code, message) = super::actions::answer_message(answer).await;
    error_page(code, &message)
}
