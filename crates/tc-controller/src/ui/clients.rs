//! The clients page (search, filters, sort, pages on the server) and a client's page.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tc_api::resources::AGENT_VERSION_LABEL;
use tc_api::{
    ClientPhase, Kind, LabelSelector, LabelSelectorRequirement, Object, SelectorOperator, Timestamp,
};
use tc_proto::{Inventory, PackageState};
use tc_store::EventFilter;

use super::chart;
use super::html::{ago, bytes, esc, url};
use super::pages::{View, events_table, failed, signed};
use super::query::{self, ClientQuery, PhaseFilter, Progress, Row, Sort};
use super::session::error_page;
use crate::Controller;
use crate::error::ApiError;

/// Rows per page.
const PAGE_ROWS: usize = 50;

/// What the table shows of a client's inventory (read from the store for the page's rows only).
#[derive(Clone, Debug, Default)]
pub struct Details {
    /// `Debian GNU/Linux 12`.
    pub os: String,
    /// CPU model, cores and memory.
    pub model: String,
}

impl Details {
    fn of(inventory: &Inventory) -> Details {
        Details {
            os: format!("{} {}", inventory.os_name, inventory.os_version)
                .trim()
                .to_string(),
            model: format!(
                "{} · {} cores · {}",
                inventory.cpu_model,
                inventory.cpu_cores,
                bytes(inventory.memory_total_bytes)
            ),
        }
    }
}

fn phase_cell(phase: ClientPhase, progress: Progress) -> String {
    let (class, alive) = match phase {
        ClientPhase::Online => ("good", "alive"),
        ClientPhase::Offline => ("bad", "not alive"),
        _ => ("muted", "not alive"),
    };
    let extra = match progress {
        Progress::UpToDate => "",
        Progress::Updating => " <span class=\"pill warn\">updating</span>",
        Progress::Failed => " <span class=\"pill bad\">failed</span>",
    };
    format!("<span class=\"{class}\" title=\"{alive}\">● {phase}</span>{extra}")
}

/// The table of client rows; `sort` gives column headers that sort (the page's query without
/// its sort, the current sort and direction).
pub fn rows_table(
    out: &mut String,
    rows: &[Row],
    details: &HashMap<String, Details>,
    now: Timestamp,
    sort: Option<(&str, Sort, bool)>,
) {
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">No clients match.</p>");
        return;
    }
    let header = |title: &str, key: Option<(&str, Sort)>| match (sort, key) {
        (Some((base, current, descending)), Some((word, this))) => {
            let next_desc = current == this && !descending;
            let arrow = if current == this {
                if descending { " ▼" } else { " ▲" }
            } else {
                ""
            };
            format!(
                "<th><a href=\"/ui/clients?{}sort={word}&amp;order={}\">{title}{arrow}</a></th>",
                esc(base),
                if next_desc { "desc" } else { "asc" }
            )
        }
        _ => format!("<th>{title}</th>"),
    };
    let _ = write!(
        out,
        "<table><thead><tr>{}<th>Host name</th>{}{}<th>OS</th><th>Agent</th><th>Model</th><th>Packages</th></tr></thead><tbody>",
        header("Name", Some(("name", Sort::Name))),
        header("State", Some(("phase", Sort::Phase))),
        header("Last seen", Some(("lastSeen", Sort::LastSeen))),
    );
    for row in rows {
        let detail = details.get(&*row.name).cloned().unwrap_or_default();
        let packages: Vec<String> = row
            .packages
            .iter()
            .map(|(name, version, state)| {
                let class = match state {
                    PackageState::Installed => "",
                    PackageState::Failed => " class=\"bad\"",
                    _ => " class=\"warn\"",
                };
                format!("<span{class}>{} {}</span>", esc(name), esc(version))
            })
            .collect();
        let _ = write!(
            out,
            "<tr><td><a href=\"/ui/clients/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"agent\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&url(&row.name)),
            esc(&row.name),
            esc(row.hostname.as_deref().unwrap_or("")),
            phase_cell(row.phase, row.progress),
            ago(row.last_seen, now),
            esc(&detail.os),
            esc(row.agent_version.as_deref().unwrap_or("")),
            esc(&detail.model),
            packages.join(", "),
        );
    }
    out.push_str("</tbody></table>");
}

/// The query of the clients page.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    selector: Option<String>,
    agent: Option<String>,
    phase: Option<String>,
    group: Option<String>,
    package: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    page: Option<usize>,
}

/// True when `text` looks like (part of) an IP or MAC address: such searches also look at the
/// stored inventories' interfaces.
fn looks_like_address(text: &str) -> bool {
    let ip = text.len() >= 3
        && text.contains('.')
        && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    let colon = text.len() >= 3
        && text.contains(':')
        && text
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '-');
    ip || colon
}

/// Names of the clients whose inventory has an address or MAC starting with `text`: a scan of
/// the stored inventories (only for searches that look like an address).
async fn address_matches(controller: &Controller, text: &str) -> Result<HashSet<String>, ApiError> {
    let store = controller.store.clone();
    let needle = text.to_ascii_lowercase();
    let names = tokio::task::spawn_blocking(move || {
        let mut names = HashSet::new();
        store.scan_inventories(&mut |name, inventory| {
            let hit = inventory.network_interfaces.iter().any(|interface| {
                interface.mac.to_ascii_lowercase().starts_with(&needle)
                    || interface.addresses.iter().any(|a| a.starts_with(&needle))
            });
            if hit {
                names.insert(name.to_string());
            }
        })?;
        Ok::<_, tc_store::StoreError>(names)
    })
    .await??;
    Ok(names)
}

/// The agent-version filter: a version (`0.2.0`: exactly it), or one with an operator in
/// front (`<0.2.0`, `<=`, `>`, `>=`, `=`, `!=`), as a requirement on
/// `thinfleet.io/agent-version`.
fn agent_filter(text: &str) -> Result<Vec<LabelSelectorRequirement>, String> {
    let operator = text.starts_with(['<', '>', '=', '!']);
    let term = if operator {
        format!("{AGENT_VERSION_LABEL}{text}")
    } else {
        format!("{AGENT_VERSION_LABEL}={text}")
    };
    let selector = LabelSelector::parse(&term).map_err(|error| error.message)?;
    // An equality as an expression too, so that it adds to the label selector's own.
    let equal = selector
        .match_labels
        .into_iter()
        .map(|(key, value)| LabelSelectorRequirement {
            key,
            operator: SelectorOperator::In,
            values: vec![value],
        });
    Ok(equal.chain(selector.match_expressions).collect())
}

fn clean(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// `GET /ui/clients`.
pub async fn list(
    State(controller): State<Arc<Controller>>,
    Query(raw): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let now = Timestamp::now();
    let (q, selector_text, agent_text, phase_text, group_name, package_text) = (
        clean(&raw.q),
        clean(&raw.selector),
        clean(&raw.agent),
        clean(&raw.phase),
        clean(&raw.group),
        clean(&raw.package),
    );
    let mut problems = vec![];
    let mut query = ClientQuery {
        search: q.clone(),
        limit: PAGE_ROWS,
        offset: raw
            .page
            .unwrap_or(1)
            .saturating_sub(1)
            .saturating_mul(PAGE_ROWS),
        descending: raw.order.as_deref() == Some("desc"),
        ..Default::default()
    };
    query.sort = raw
        .sort
        .as_deref()
        .and_then(|word| Sort::ALL.iter().find(|(w, _)| *w == word))
        .map_or(Sort::Name, |(_, sort)| *sort);
    if let Some(text) = &selector_text {
        match LabelSelector::parse(text) {
            Ok(selector) => query.selector = Some(selector),
            Err(error) => problems.push(format!("label selector: {error}")),
        }
    }
    if let Some(text) = &agent_text {
        match agent_filter(text) {
            Ok(requirements) => query
                .selector
                .get_or_insert_with(LabelSelector::default)
                .match_expressions
                .extend(requirements),
            Err(error) => problems.push(format!("agent version: `{text}`: {error}")),
        }
    }
    if let Some(word) = &phase_text {
        match PhaseFilter::parse(word) {
            Some(filter) => query.phase = Some(filter),
            None => problems.push(format!(
                "phase: `{word}` is not one of {}",
                PhaseFilter::ALL.map(|(w, _)| w).join(", ")
            )),
        }
    }
    if let Some(name) = &group_name {
        let store = controller.store.clone();
        let lookup = name.clone();
        match tokio::task::spawn_blocking(move || store.get(Kind::ClientGroup, &lookup)).await {
            Ok(Ok(Some(Object::ClientGroup(group)))) => query.group = Some(group.spec.selector),
            Ok(Ok(_)) => problems.push(format!("group: clientgroup/{name} not found")),
            Ok(Err(error)) => return failed(error.into()),
            Err(error) => return failed(ApiError::internal(error)),
        }
    }
    if let Some(text) = &package_text {
        query.package = Some(match text.split_once('=') {
            Some((name, version)) => (name.trim().to_string(), Some(version.trim().to_string())),
            None => (text.clone(), None),
        });
    }
    if let Some(text) = q.as_deref().filter(|t| looks_like_address(t)) {
        match address_matches(&controller, text).await {
            Ok(names) => query.address_matches = Some(names),
            Err(error) => return failed(error),
        }
    }
    // The page's own query, for the live region, the sort links and the pager.
    let mut base = String::new();
    for (key, value) in [
        ("q", &q),
        ("selector", &selector_text),
        ("agent", &agent_text),
        ("phase", &phase_text),
        ("group", &group_name),
        ("package", &package_text),
    ] {
        if let Some(value) = value {
            let _ = write!(base, "{key}={}&", url(value));
        }
    }
    let sort_word = Sort::ALL
        .iter()
        .find(|(_, s)| *s == query.sort)
        .map_or("name", |(w, _)| *w);
    let order = if query.descending { "desc" } else { "asc" };
    let page_number = query.offset / PAGE_ROWS + 1;
    let mut head = String::from("<h1>Clients</h1>");
    let field = |v: &Option<String>| esc(v.as_deref().unwrap_or_default()).to_string();
    let _ = write!(
        head,
        "<form method=\"get\" action=\"/ui/clients\" class=\"filters\">\
         <label>Search <input name=\"q\" value=\"{}\" placeholder=\"name, host name, IP or MAC\"></label>\
         <label>Label selector <input name=\"selector\" value=\"{}\" placeholder=\"site=berlin,tier!=test\"></label>\
         <label>Agent version <input name=\"agent\" value=\"{}\" placeholder=\"&lt;0.2.0\"></label>\
         <label>State <select name=\"phase\"><option value=\"\">any</option>{}</select></label>\
         <label>Group <input name=\"group\" value=\"{}\"></label>\
         <label>Package <input name=\"package\" value=\"{}\" placeholder=\"browser=1.4.2\"></label>\
         <input type=\"hidden\" name=\"sort\" value=\"{sort_word}\"><input type=\"hidden\" name=\"order\" value=\"{order}\">\
         <button type=\"submit\">Filter</button></form>",
        field(&q),
        field(&selector_text),
        field(&agent_text),
        PhaseFilter::ALL
            .iter()
            .map(|(word, _)| {
                let selected = if phase_text.as_deref() == Some(word) {
                    " selected"
                } else {
                    ""
                };
                format!("<option{selected}>{word}</option>")
            })
            .collect::<String>(),
        field(&group_name),
        field(&package_text),
    );
    let mut status = StatusCode::OK;
    let mut region = String::new();
    if !problems.is_empty() {
        status = StatusCode::BAD_REQUEST;
        for problem in &problems {
            let _ = write!(region, "<p class=\"bad\">{}</p>", esc(problem));
        }
    } else {
        let snapshot = controller.console.snapshots.get(&controller.fleet).await;
        let page =
            match tokio::task::spawn_blocking(move || query::clients(&snapshot, &query)).await {
                Ok(page) => page,
                Err(error) => return failed(ApiError::internal(error)),
            };
        let details = details(&controller, &page.rows).await;
        let _ = write!(
            region,
            "<p>{} client(s) match; page {page_number} of {}.{}</p>",
            page.matches,
            page.matches.div_ceil(PAGE_ROWS).max(1),
            if page.clamped {
                " Sorted pages stop here: narrow the filter to see further."
            } else {
                ""
            }
        );
        rows_table(
            &mut region,
            &page.rows,
            &details,
            now,
            Some((&base, sort_from(sort_word), order == "desc")),
        );
        let link = |n: usize, title: &str| {
            format!(
                "<a href=\"/ui/clients?{}sort={sort_word}&amp;order={order}&amp;page={n}\">{title}</a>",
                esc(&base)
            )
        };
        region.push_str("<div class=\"pager\">");
        if page_number > 1 {
            region.push_str(&link(page_number - 1, "← previous"));
        }
        if page_number * PAGE_ROWS < page.matches {
            region.push_str(&link(page_number + 1, "next →"));
        }
        region.push_str("</div>");
    }
    let src = format!("/ui/clients?{base}sort={sort_word}&order={order}&page={page_number}");
    let mut response = View {
        title: "Clients",
        current: "/ui/clients",
        head,
        src,
        region,
    }
    .respond(&headers, &session);
    *response.status_mut() = status;
    response
}

fn sort_from(word: &str) -> Sort {
    Sort::ALL
        .iter()
        .find(|(w, _)| *w == word)
        .map_or(Sort::Name, |(_, s)| *s)
}

/// OS and model of the page's rows, from the stored inventories (one read per row).
async fn details(controller: &Controller, rows: &[Row]) -> HashMap<String, Details> {
    let store = controller.store.clone();
    let names: Vec<String> = rows.iter().map(|r| r.name.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .filter_map(|name| {
                let client = store.get_client(&name).ok()??;
                let details = Details::of(client.status.inventory.as_ref()?);
                Some((name, details))
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// `GET /ui/clients/{name}`: inventory, labels by source, groups and why, installed vs
/// desired, update history and load charts.
pub async fn show(
    State(controller): State<Arc<Controller>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let session = match signed(&controller, &headers) {
        Ok(session) => session,
        Err(response) => return *response,
    };
    let missing = || error_page(StatusCode::NOT_FOUND, &format!("client/{name} not found"));
    let Some(slot) = controller.fleet.get(&name) else {
        return missing();
    };
    let store = controller.store.clone();
    let lookup = name.clone();
    let stored = match tokio::task::spawn_blocking(move || store.get_client(&lookup)).await {
        Ok(Ok(Some(client))) => client,
        Ok(Ok(None)) => return missing(),
        Ok(Err(error)) => return failed(error.into()),
        Err(error) => return failed(ApiError::internal(error)),
    };
    let (client, labels) = {
        let state = slot.state.lock().expect("client lock");
        (state.overlay(stored), state.labels.clone())
    };
    // The same "why" as `GET .../clients/{name}`.
    let client = match controller.explained(client).await {
        Ok(client) => client,
        Err(error) => return failed(error),
    };
    let now = Timestamp::now();
    let status = &client.status;
    let progress = {
        let state = slot.state.lock().expect("client lock");
        query::progress(&state)
    };
    let mut region = format!(
        "<p>{} · last seen {} · desired revision {} (observed {})</p>",
        phase_cell(status.phase, progress),
        ago(status.last_heartbeat, now),
        status.desired_revision,
        status.observed_revision
    );
    region.push_str("<h2>Inventory</h2>");
    inventory(&mut region, status.inventory.as_ref(), &client, now);
    region.push_str(
        "<h2>Labels</h2><table><thead><tr><th>Key</th><th>Value</th><th>Source</th></tr></thead><tbody>",
    );
    for (key, value) in &client.metadata.labels {
        let source = if labels.admin.get(key).is_some() {
            "admin"
        } else if labels.agent.get(key).is_some() {
            "agent"
        } else {
            "automatic"
        };
        let _ = write!(
            region,
            "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{source}</td></tr>",
            esc(key),
            esc(value)
        );
    }
    region.push_str("</tbody></table><h2>Groups</h2>");
    if status.groups.is_empty() {
        region.push_str("<p class=\"muted\">No group selects this client.</p>");
    } else {
        let links: Vec<String> = status
            .groups
            .iter()
            .map(|g| format!("<a href=\"/ui/groups/{}\">{}</a>", esc(&url(g)), esc(g)))
            .collect();
        let _ = write!(region, "<p>Selected by {}.</p>", links.join(", "));
    }
    packages(&mut region, &client);
    region.push_str("<h2>Update history</h2>");
    let filter = EventFilter {
        kind: Some("Client".into()),
        name: Some(name.clone()),
        limit: Some(50),
        ..Default::default()
    };
    let store = controller.store.clone();
    let mut events = match tokio::task::spawn_blocking(move || store.list_events(&filter)).await {
        Ok(Ok(events)) => events,
        Ok(Err(error)) => return failed(error.into()),
        Err(error) => return failed(ApiError::internal(error)),
    };
    events.reverse();
    events_table(&mut region, &events, now);
    let wait = if super::pages::is_htmx(&headers) {
        std::time::Duration::ZERO
    } else {
        std::time::Duration::from_secs(crate::history::DEFAULT_WAIT_SECONDS)
    };
    let history = chart::for_client(&controller, &name, wait).await;
    region.push_str(&chart::section(history.as_ref(), now));
    region.push_str(&super::tasks::client_section(&controller, &session, &name).await);
    View {
        title: &format!("Client {name}"),
        current: "/ui/clients",
        head: format!("<h1>Client {}</h1>", esc(&name)),
        src: format!("/ui/clients/{}", url(&name)),
        region,
    }
    .respond(&headers, &session)
}

fn inventory(
    out: &mut String,
    inventory: Option<&Inventory>,
    client: &tc_api::Client,
    now: Timestamp,
) {
    let Some(inv) = inventory else {
        out.push_str("<p class=\"muted\">No inventory reported yet.</p>");
        return;
    };
    let load = &client.status.load;
    let memory = if inv.memory_total_bytes > 0 {
        format!(
            "{} ({} in use)",
            bytes(inv.memory_total_bytes),
            bytes(load.memory_used_bytes)
        )
    } else {
        "?".into()
    };
    let facts: [(&str, String); 10] = [
        ("Host name", inv.hostname.clone()),
        ("OS", format!("{} {}", inv.os_name, inv.os_version)),
        ("Kernel", inv.kernel_version.clone()),
        ("Architecture", inv.arch.clone()),
        (
            "CPU",
            format!("{} ({} cores)", inv.cpu_model, inv.cpu_cores),
        ),
        ("Memory", memory),
        ("CPU use", format!("{:.0} %", load.cpu_percent)),
        ("Booted", ago(inv.boot_time, now)),
        ("Agent", inv.agent_version.clone()),
        ("Machine id", client.spec.machine_id.clone()),
    ];
    out.push_str("<dl class=\"facts\">");
    for (title, value) in facts {
        let _ = write!(out, "<dt>{title}</dt><dd>{}</dd>", esc(&value));
    }
    out.push_str("</dl>");
    if !inv.disks.is_empty() {
        out.push_str(
            "<h3>Disks</h3><table><thead><tr><th>Device</th><th>Mounted on</th><th>File system</th>\
             <th>Size</th><th>Free</th></tr></thead><tbody>",
        );
        for disk in &inv.disks {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&disk.name),
                esc(&disk.mount_point),
                esc(&disk.file_system),
                bytes(disk.total_bytes),
                bytes(disk.available_bytes)
            );
        }
        out.push_str("</tbody></table>");
    }
    if !inv.network_interfaces.is_empty() {
        out.push_str(
            "<h3>Network</h3><table><thead><tr><th>Interface</th><th>MAC</th><th>Addresses</th></tr></thead><tbody>",
        );
        for interface in &inv.network_interfaces {
            let _ = write!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                esc(&interface.name),
                esc(&interface.mac),
                esc(&interface.addresses.join(", "))
            );
        }
        out.push_str("</tbody></table>");
    }
}

/// Installed vs desired, with why each package has its version.
fn packages(out: &mut String, client: &tc_api::Client) {
    let status = &client.status;
    let mut names: Vec<&str> = status
        .desired
        .iter()
        .map(|p| p.name.as_str())
        .chain(status.packages.iter().map(|p| p.name.as_str()))
        .chain(status.decisions.iter().map(|d| d.package.as_str()))
        .collect();
    names.sort();
    names.dedup();
    out.push_str("<h2>Packages</h2>");
    if names.is_empty() {
        out.push_str("<p class=\"muted\">No packages assigned or reported.</p>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Package</th><th>Desired</th><th>Installed</th><th>State</th>\
         <th>Why</th></tr></thead><tbody>",
    );
    for name in names {
        let desired = status.desired.iter().find(|p| p.name == name);
        let report = status.packages.iter().find(|p| p.name == name);
        let decision = status.decisions.iter().find(|d| d.package == name);
        let installed = report
            .map(|r| match (&r.active_version, r.state) {
                (Some(active), _) => active.clone(),
                (None, PackageState::Installed) => r.version.clone(),
                (None, _) => "none".into(),
            })
            .unwrap_or_else(|| "none".into());
        let state = report.map_or(String::new(), |r| {
            let class = match r.state {
                PackageState::Failed => "bad",
                PackageState::Installed => "good",
                _ => "warn",
            };
            let mut cell = format!(
                "<span class=\"{class}\">{} {}</span>",
                r.state,
                esc(&r.version)
            );
            if let Some(message) = r.message.as_deref().filter(|m| !m.is_empty()) {
                let _ = write!(cell, "<pre>{}</pre>", esc(message));
            }
            cell
        });
        let why = decision.map_or(String::new(), |d| {
            let mut text = esc(&d.reason).to_string();
            if let Some(group) = &d.group {
                let _ = write!(
                    text,
                    " (group <a href=\"/ui/groups/{}\">{}</a>{})",
                    esc(&url(group)),
                    esc(group),
                    d.requirement
                        .as_deref()
                        .map(|r| format!(", requirement <code>{}</code>", esc(r)))
                        .unwrap_or_default()
                );
            }
            text
        });
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{why}</td></tr>",
            esc(name),
            esc(desired.map_or("none", |d| d.version.as_str())),
            esc(&installed),
        );
    }
    out.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_like_searches() {
        assert!(looks_like_address("192.168.1"));
        assert!(looks_like_address("aa:bb:cc"));
        assert!(!looks_like_address("kiosk-1"));
        assert!(!looks_like_address("ab"));
    }
}
