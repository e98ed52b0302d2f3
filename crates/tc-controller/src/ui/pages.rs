//! The overview, groups, packages and events pages.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tc_api::{ClientGroup, Event, EventType, Kind, Object, PackageRelease, Timestamp};
use tc_store::EventFilter;

use super::html::{self, ago, csrf_field, esc, live, may, progress, url};
use super::query::{self, ClientQuery};
use super::session::{self, UiSession, error_page};
use crate::Controller;
use crate::credentials::required_role;
use crate::error::ApiError;

/// The session of a request, or the answer sending it to sign in.
pub(super) fn signed(
    controller: &Controller,
    headers: &HeaderMap,
) -> Result<UiSession, Box<Response>> {
    controller
        .ui_session(headers)
        .ok_or_else(|| Box::new(session::to_signin(headers)))
}

/// Whether htmx asks (for a live region alone).
pub(super) fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// A page whose `region` is live: the region alone to htmx, the whole page otherwise.
pub(super) struct View<'a> {
    pub title: &'a str,
    pub current: &'a str,
    /// Above the live region (forms a poll must not replace while someone types).
    pub head: String,
    /// The live region's URL (the page's own, with its query).
    pub src: String,
    pub region: String,
}

impl View<'_> {
    pub(super) fn respond(self, headers: &HeaderMap, session: &UiSession) -> Response {
        let region = live("live", &self.src, &self.region);
        if is_htmx(headers) {
            return session::html(StatusCode::OK, region);
        }
        let body = format!("{}{region}", self.head);
        session::html(
            StatusCode::OK,
            html::page(self.title, self.current, Some(session), &body),
        )
    }
}

/// An error of a read, as a page.
pub(super) fn failed(error: ApiError) -> Response {
    error_page(error.code, &error.message)
}

/// The groups, with their status as the reconcile loop last wrote it.
pub(super) async fn load_groups(controller: &Controller) -> Result<Vec<ClientGroup>, ApiError> {
    let store = controller.store.clone();
    Ok(tokio::task::spawn_blocking(move || crate::reconcile::list_groups(&*store)).await??)
}

async fn load_events(controller: &Controller, filter: EventFilter) -> Result<Vec<Event>, ApiError> {
    let store = controller.store.clone();
    let mut events = tokio::task::spawn_blocking(move || store.list_events(&filter)).await??;
    events.reverse();
    Ok(events)
}

/// An events table.
pub(super) fn events_table(out: &mut String, events: &[Event], now: Timestamp) {
    if events.is_empty() {
        out.push_str("<p class=\"muted\">No events.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>When</th><th>Type</th><th>Object</th><th>Reason</th><th>Message</th></tr></thead><tbody>",
    );
    for event in events {
        let class = if event.type_ == EventType::Warning {
            "bad"
        } else {
            ""
        };
        let object = object_link(&event.object.kind, &event.object.name);
        let _ = write!(
            out,
            "<tr><td title=\"{}\">{}</td><td class=\"{class}\">{:?}</td><td>{object}</td><td>{}</td><td>{}</td></tr>",
            esc(&event.time.to_string()),
            ago(Some(event.time), now),
            event.type_,
            esc(&event.reason),
            esc(&event.message)
        );
    }
    out.push_str("</tbody></table>");
}

/// A link to an object's page when the console has one.
fn object_link(kind: &str, name: &str) -> String {
    let page = match kind {
        "Client" => Some("clients"),
        "ClientGroup" => Some("groups"),
        _ => None,
    };
    match page {
        Some(page) => format!(
            "<a href=\"/ui/{page}/{}\">{}/{}</a>",
            esc(&url(name)),
            esc(kind),
            esc(name)
        ),
        None => format!("{}/{}", esc(kind), esc(name)),
    }
}

fn groups_table(out: &mut String, groups: &[ClientGroup]) {
    if groups.is_empty() {
        out.push_str("<p class=\"muted\">No groups yet: apply a ClientGroup.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Group</th><th>Rollout</th><th>Ready</th><th>Failed</th>\
         <th>Offline</th><th>Conditions</th></tr></thead><tbody>",
    );
    for group in groups {
        let status = group.status.clone().unwrap_or_default();
        let name = &group.metadata.name;
        let mut conditions = String::new();
        html::conditions(&mut conditions, &status.conditions);
        let paused = if group.spec.paused || status.paused_by.is_some() {
            " <span class=\"pill warn\">paused</span>"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/groups/{}\">{}</a>{paused}</td><td>{}</td><td>{}</td>\
             <td class=\"{}\">{}</td><td>{}</td><td>{conditions}</td></tr>",
            esc(&url(name)),
            esc(name),
            progress(status.updated, status.desired),
            status.ready,
            if status.failed > 0 { "bad" } else { "" },
            status.failed,
            status.offline,
        );
    }
    out.push_str("</tbody></table>");
}

/// `GET /ui`: clients by phase, every group's rollout, the newest events.
pub async fn overview(State(controller): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let now = Timestamp::now();
    let snapshot = controller.console.snapshots.get(&controller.fleet).await;
    let counts = &snapshot.overview;
    let groups = match load_groups(&controller).await {
        Ok(groups) => groups,
        Err(error) => return failed(error),
    };
    let filter = EventFilter {
        limit: Some(15),
        ..Default::default()
    };
    let events = match load_events(&controller, filter).await {
        Ok(events) => events,
        Err(error) => return failed(error),
    };
    let mut region = String::from("<div class=\"cards\">");
    let cards = [
        ("All clients", "", counts.total, ""),
        ("Online", "online", counts.online, "good"),
        ("Offline", "offline", counts.offline, "bad"),
        ("Updating", "updating", counts.updating, "warn"),
        ("Failed", "failed", counts.failed, "bad"),
        ("Enrolled", "enrolled", counts.enrolled, ""),
        ("Pending", "pending", counts.pending, ""),
    ];
    for (title, phase, count, class) in cards {
        let _ = write!(
            region,
            "<div class=\"card {class}\"><a href=\"/ui/clients?phase={phase}\"><b>{count}</b>{title}</a></div>"
        );
    }
    region.push_str("</div><h2>Groups</h2>");
    groups_table(&mut region, &groups);
    region.push_str("<h2>Newest events</h2>");
    events_table(&mut region, &events, now);
    let _ = write!(
        region,
        "<p class=\"muted\">Updated {} UTC.</p>",
        esc(&now.to_string())
    );
    View {
        title: "Overview",
        current: "/ui",
        head: "<h1>Overview</h1>".into(),
        src: "/ui".into(),
        region,
    }
    .respond(&headers, &session)
}

/// `GET /ui/groups`.
pub async fn groups(State(controller): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let groups = match load_groups(&controller).await {
        Ok(groups) => groups,
        Err(error) => return failed(error),
    };
    let mut region = String::new();
    groups_table(&mut region, &groups);
    View {
        title: "Groups",
        current: "/ui/groups",
        head: "<h1>Groups</h1>".into(),
        src: "/ui/groups".into(),
        region,
    }
    .respond(&headers, &session)
}

/// The route of the retry the group page's button carries out.
pub const RETRY_ROUTE: &str = "/apis/thinfleet.io/v1/clientgroups/{name}/retry";

/// `GET /ui/groups/{name}`: spec, status, members and (for operators) actions.
pub async fn group(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let store = controller.store.clone();
    let lookup = name.clone();
    let group =
        match tokio::task::spawn_blocking(move || store.get(Kind::ClientGroup, &lookup)).await {
            Ok(Ok(Some(Object::ClientGroup(group)))) => group,
            Ok(Ok(_)) => {
                return error_page(
                    StatusCode::NOT_FOUND,
                    &format!("clientgroup/{name} not found"),
                );
            }
            Ok(Err(error)) => return failed(error.into()),
            Err(error) => return failed(ApiError::internal(error)),
        };
    let now = Timestamp::now();
    let spec = &group.spec;
    let status = group.status.clone().unwrap_or_default();
    let mut head = format!("<h1>Group {}</h1>", esc(&name));
    // Actions: only the buttons the session's role may use (the server checks again); Pause
    // while the rollout runs, Resume while it is paused through the API (a group paused by its
    // manifest is resumed there).
    use super::actions::GroupAction;
    let mut buttons = vec![(GroupAction::Retry, "Retry failed releases")];
    // A rollout waiting at a pause step without a duration goes on with the same Resume.
    let at_pause_step = status
        .rollout
        .as_ref()
        .is_some_and(|r| r.paused_until.is_none() && r.message.contains("rollout resume"));
    if status.paused_by.is_some() || at_pause_step {
        buttons.push((GroupAction::Resume, "Resume rollout"));
    } else if !spec.paused {
        buttons.push((GroupAction::Pause, "Pause rollout"));
    }
    let mut actions = String::new();
    for (action, label) in buttons {
        if may(
            session.identity.role,
            required_role(&Method::POST, action.route()),
        ) {
            let _ = write!(
                actions,
                "<form method=\"post\" action=\"/ui/groups/{}/{}\" class=\"inline\">{}\
                 <button type=\"submit\" class=\"{}\">{label}</button></form>",
                esc(&url(&name)),
                action.verb(),
                csrf_field(&session),
                action.verb()
            );
        }
    }
    if !actions.is_empty() {
        let _ = write!(head, "<div class=\"actions\">{actions}</div>");
    }
    let mut region = String::from("<dl class=\"facts\">");
    let _ = write!(
        region,
        "<dt>Selector</dt><dd><code>{}</code></dd><dt>Priority</dt><dd>{}</dd>\
         <dt>Max unavailable</dt><dd>{}</dd><dt>Paused</dt><dd>{}</dd>\
         <dt>Members</dt><dd>{} (<a href=\"/ui/clients?group={}\">list</a>)</dd>\
         <dt>Rollout</dt><dd>{}</dd><dt>Ready</dt><dd>{}</dd><dt>Failed</dt><dd>{}</dd>\
         <dt>Unavailable</dt><dd>{}</dd><dt>Offline</dt><dd>{}</dd><dt>Last progress</dt><dd>{}</dd></dl>",
        esc(&spec.selector.to_string()),
        spec.priority,
        esc(&spec.rollout.max_unavailable.to_string()),
        esc(&match (&status.paused_by, spec.paused) {
            (Some(pause), _) => format!("yes, by {} at {}", pause.by, pause.time),
            (None, true) => "yes (spec.paused)".to_string(),
            (None, false) => "no".to_string(),
        }),
        status.desired,
        esc(&url(&name)),
        progress(status.updated, status.desired),
        status.ready,
        status.failed,
        status.unavailable,
        status.offline,
        ago(status.last_progress_time, now),
    );
    if let Some(rollout) = &status.rollout {
        region.push_str(&rollout_facts(rollout, status.desired));
    }
    region.push_str("<h2>Conditions</h2>");
    html::conditions(&mut region, &status.conditions);
    region.push_str(
        "<h2>Packages</h2><table><thead><tr><th>Package</th><th>Requirement</th><th>Resolved</th>\
         <th>Rollout</th><th>Failed</th><th>Held back</th><th>Decided elsewhere</th></tr></thead><tbody>",
    );
    for requirement in &spec.packages {
        let resolved = status.packages.iter().find(|p| p.name == requirement.name);
        let _ = write!(
            region,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&requirement.name),
            esc(&requirement.version),
            esc(resolved
                .and_then(|r| r.resolved_version.as_deref())
                .unwrap_or("none ready")),
            progress(resolved.map_or(0, |r| r.updated), status.desired),
            resolved.map_or(0, |r| r.failed),
            esc(&resolved
                .map(|r| r.failed_versions.join(", "))
                .unwrap_or_default()),
            esc(&resolved
                .map(|r| {
                    let mut others = r.overridden_by.clone();
                    others.extend(r.conflicts_with.iter().cloned());
                    others.join(", ")
                })
                .unwrap_or_default()),
        );
    }
    region.push_str("</tbody></table>");
    if !status.waiting.is_empty() {
        region.push_str("<h2>Waiting for</h2><ul>");
        for member in &status.waiting {
            let _ = write!(
                region,
                "<li><a href=\"/ui/clients/{}\">{}</a>: {}</li>",
                esc(&url(&member.name)),
                esc(&member.name),
                esc(&member.reason)
            );
        }
        region.push_str("</ul>");
    }
    let snapshot = controller.console.snapshots.get(&controller.fleet).await;
    let selector = spec.selector.clone();
    let members = tokio::task::spawn_blocking(move || {
        query::clients(
            &snapshot,
            &ClientQuery {
                group: Some(selector),
                limit: 50,
                ..Default::default()
            },
        )
    })
    .await
    .unwrap_or_default();
    let _ = write!(
        region,
        "<h2>Members ({}; the first {} by name)</h2>",
        members.matches,
        members.rows.len()
    );
    super::clients::rows_table(&mut region, &members.rows, &HashMap::new(), now, None);
    let filter = EventFilter {
        kind: Some("ClientGroup".into()),
        name: Some(name.clone()),
        limit: Some(20),
        ..Default::default()
    };
    let events = load_events(&controller, filter).await.unwrap_or_default();
    region.push_str("<h2>Events</h2>");
    events_table(&mut region, &events, now);
    View {
        title: &format!("Group {name}"),
        current: "/ui/groups",
        head,
        src: format!("/ui/groups/{}", url(&name)),
        region,
    }
    .respond(&headers, &session)
}

/// `GET /ui/packages`: every release, where it is used, its size, sha256 and a download link.
pub async fn packages(State(controller): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let store = controller.store.clone();
    let releases = match tokio::task::spawn_blocking(move || store.list(Kind::PackageRelease)).await
    {
        Ok(Ok(objects)) => objects
            .into_iter()
            .filter_map(|object| match object {
                Object::PackageRelease(release) => Some(release),
                _ => None,
            })
            .collect::<Vec<PackageRelease>>(),
        Ok(Err(error)) => return failed(error.into()),
        Err(error) => return failed(ApiError::internal(error)),
    };
    let groups = match load_groups(&controller).await {
        Ok(groups) => groups,
        Err(error) => return failed(error),
    };
    // Clients reporting or assigned each release, from the console's snapshot.
    let snapshot = controller.console.snapshots.get(&controller.fleet).await;
    let mut region = String::from(
        "<table><thead><tr><th>Package</th><th>Version</th><th>Used by groups</th><th>Clients (running or assigned)</th>\
         <th>Size</th><th>sha256</th><th>Download</th></tr></thead><tbody>",
    );
    let mut sorted = releases;
    sorted.sort_by(|a, b| {
        (a.spec.package.as_str(), b.spec.semver()).cmp(&(b.spec.package.as_str(), a.spec.semver()))
    });
    for release in &sorted {
        let spec = &release.spec;
        let users: Vec<String> = groups
            .iter()
            .filter(|g| {
                g.status.iter().flat_map(|s| &s.packages).any(|p| {
                    p.name == spec.package && p.resolved_version.as_deref() == Some(&spec.version)
                })
            })
            .map(|g| {
                format!(
                    "<a href=\"/ui/groups/{}\">{}</a>",
                    esc(&url(&g.metadata.name)),
                    esc(&g.metadata.name)
                )
            })
            .collect();
        let count = snapshot
            .packages
            .get(&spec.package)
            .and_then(|versions| versions.get(&spec.version))
            .map_or(0, Vec::len);
        let sha = spec.artifact.sha256.clone().unwrap_or_default();
        let size = if sha.is_empty() {
            None
        } else {
            controller.blobs.stat(&sha).await
        };
        let download = if size.is_some() {
            format!("<a href=\"/ui/blobs/{}\" download>zip</a>", esc(&sha))
        } else {
            "<span class=\"muted\">not stored</span>".to_string()
        };
        let _ = write!(
            region,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/ui/clients?package={}\">{count} client(s)</a></td>\
             <td>{}</td><td><code>{}</code></td><td>{download}</td></tr>",
            esc(&spec.package),
            esc(&spec.version),
            if users.is_empty() {
                "<span class=\"muted\">none</span>".to_string()
            } else {
                users.join(", ")
            },
            esc(&url(&format!("{}={}", spec.package, spec.version))),
            size.map_or_else(|| "?".to_string(), html::bytes),
            esc(&sha),
        );
    }
    region.push_str("</tbody></table>");
    if sorted.is_empty() {
        region.push_str("<p class=\"muted\">No releases yet: apply a PackageRelease.</p>");
    }
    View {
        title: "Packages",
        current: "/ui/packages",
        head: "<h1>Packages</h1>".into(),
        src: "/ui/packages".into(),
        region,
    }
    .respond(&headers, &session)
}

/// Filters of the events page.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    kind: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    type_: Option<String>,
    reason: Option<String>,
}

/// Newest events shown.
const EVENTS_SHOWN: usize = 200;

/// `GET /ui/events`: the newest events, live, with filters.
pub async fn events(
    State(controller): State<Arc<Controller>>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let nonempty = |value: &Option<String>| {
        value
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let (kind, name, type_, reason) = (
        nonempty(&query.kind),
        nonempty(&query.name),
        nonempty(&query.type_),
        nonempty(&query.reason),
    );
    let filtered = type_.is_some() || reason.is_some();
    let filter = EventFilter {
        kind: kind
            .clone()
            .map(|k| Kind::parse(&k).map(|k| k.as_str().to_string()).unwrap_or(k)),
        name: name.clone(),
        after_seq: None,
        limit: Some(if filtered { 5_000 } else { EVENTS_SHOWN }),
    };
    let now = Timestamp::now();
    let events = match load_events(&controller, filter).await {
        Ok(events) => events,
        Err(error) => return failed(error),
    };
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| {
            type_
                .as_deref()
                .is_none_or(|t| format!("{:?}", e.type_).eq_ignore_ascii_case(t))
                && reason
                    .as_deref()
                    .is_none_or(|r| e.reason.eq_ignore_ascii_case(r))
        })
        .take(EVENTS_SHOWN)
        .collect();
    let value = |v: &Option<String>| esc(v.as_deref().unwrap_or_default()).to_string();
    let mut head = String::from(
        "<h1>Events</h1><form method=\"get\" action=\"/ui/events\" class=\"filters\">",
    );
    let _ = write!(
        head,
        "<label>Kind <input name=\"kind\" value=\"{}\" placeholder=\"Client\"></label>\
         <label>Name <input name=\"name\" value=\"{}\"></label>\
         <label>Type <select name=\"type\"><option value=\"\">any</option>{}</select></label>\
         <label>Reason <input name=\"reason\" value=\"{}\" placeholder=\"UpdateFailed\"></label>\
         <button type=\"submit\">Filter</button></form>",
        value(&kind),
        value(&name),
        ["Normal", "Warning"]
            .iter()
            .map(|t| {
                let selected = if type_.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(t)) {
                    " selected"
                } else {
                    ""
                };
                format!("<option{selected}>{t}</option>")
            })
            .collect::<String>(),
        value(&reason),
    );
    let mut region = String::new();
    events_table(&mut region, &events, now);
    let mut src = String::from("/ui/events?");
    for (key, v) in [
        ("kind", &kind),
        ("name", &name),
        ("type", &type_),
        ("reason", &reason),
    ] {
        if let Some(v) = v {
            let _ = write!(src, "{key}={}&", url(v));
        }
    }
    View {
        title: "Events",
        current: "/ui/events",
        head,
        src: src.trim_end_matches(['&', '?']).to_string(),
        region,
    }
    .respond(&headers, &session)
}

/// The progressive-delivery facts of a group's current rollout: its step, members and what it
/// waits for; the staged members and when they activate.
fn rollout_facts(rollout: &tc_api::rollout::RolloutStatus, members: u32) -> String {
    let versions: Vec<String> = rollout
        .versions
        .iter()
        .map(|(package, version)| format!("{package} {version}"))
        .collect();
    let mut facts = format!(
        "<h2>Rollout {}</h2><dl class=\"facts rollout\"><dt>Versions</dt><dd>{}</dd>",
        rollout.revision,
        esc(&versions.join(", "))
    );
    if let Some(step) = rollout.step {
        let _ = write!(
            facts,
            "<dt>Step</dt><dd>{}</dd><dt>Admitted</dt><dd>{} of {members}</dd>",
            if step >= rollout.steps {
                format!("past the last of {}", rollout.steps)
            } else {
                format!("{} of {}", step + 1, rollout.steps)
            },
            rollout.admitted
        );
    }
    let _ = write!(
        facts,
        "<dt>Updated</dt><dd>{}</dd><dt>Failed</dt><dd>{}</dd>",
        rollout.updated, rollout.failed
    );
    if rollout.staged > 0 {
        let _ = write!(
            facts,
            "<dt>Staged</dt><dd>staged on {} of {members}{}</dd>",
            rollout.staged,
            esc(&rollout
                .activates_at
                .map(|at| format!(", activates {at}"))
                .unwrap_or_default())
        );
    }
    if let Some(undone) = &rollout.undone_to {
        let versions: Vec<String> = undone.iter().map(|(p, v)| format!("{p} {v}")).collect();
        let _ = write!(
            facts,
            "<dt>Undone to</dt><dd>{}</dd>",
            esc(&versions.join(", "))
        );
    }
    if let Some(now) = &rollout.activate_now {
        let _ = write!(
            facts,
            "<dt>Activate now</dt><dd>asked by {} at {}</dd>",
            esc(&now.by),
            now.time
        );
    }
    let _ = write!(
        facts,
        "<dt>Waiting for</dt><dd>{}</dd></dl>",
        esc(&rollout.message)
    );
    facts
}
