//! Watched manifest directories: `tcadm get sources`, `tcadm describe source NAME`, and whether a
//! group must wait for its directory's pending sync before its rollout can be judged.

use serde_json::{Value, json};
use tc_api::{API_VERSION, Event, SkippedObject, SourceStatus, Timestamp};

use crate::api::{ApiClient, ApiError};
use crate::cli::{GetArgs, OutputFormat};
use crate::commands::Context;
use crate::describe::MAX_EVENTS;
use crate::error::{CliError, EXIT_OK};
use crate::format::{Table, age};
use crate::output::{to_json, to_yaml};
use crate::views::{events_table, one_line, reference};

/// The kind events name a source by.
pub const SOURCE_EVENT_KIND: &str = "ManifestSource";

/// One word for a source's state: `Failed` (nothing applied, the last good state stays),
/// `Pending` (changes wait for a sync), `Degraded` (objects in conflict, the others applied) or
/// `Synced`.
pub fn source_state(source: &SourceStatus) -> &'static str {
    if source.error.is_some() {
        "Failed"
    } else if source.sync_pending {
        "Pending"
    } else if !source.conflicts.is_empty() {
        "Degraded"
    } else {
        "Synced"
    }
}

/// A revision shortened for a table: 12 hex digits of a commit, or of a content digest after
/// `sha256:`.
pub fn short_revision(revision: Option<&str>) -> String {
    match revision {
        None => "<none>".into(),
        Some(text) => match text.strip_prefix("sha256:") {
            Some(digest) => format!("sha256:{}", &digest[..digest.len().min(12)]),
            None => text[..text.len().min(12)].to_string(),
        },
    }
}

/// The sources table: NAME, STATUS, REVISION, OBJECTS, SKIPPED, CONFLICTS, DRIFT, APPLIED; wide
/// adds REF and PATH.
pub fn sources_table(sources: &[SourceStatus], wide: bool, now: Timestamp) -> Table {
    let mut headers = vec![
        "NAME",
        "STATUS",
        "REVISION",
        "OBJECTS",
        "SKIPPED",
        "CONFLICTS",
        "DRIFT",
        "APPLIED",
    ];
    if wide {
        headers.extend(["REF", "PATH"]);
    }
    let mut table = Table::new(&headers);
    for source in sources {
        let mut row = vec![
            source.name.clone(),
            source_state(source).to_string(),
            short_revision(source.revision.as_deref()),
            source.objects.len().to_string(),
            source.skipped.len().to_string(),
            source.conflicts.len().to_string(),
            source.drift_corrections.to_string(),
            age(source.last_applied_time, now, "<never>"),
        ];
        if wide {
            row.push(source.git_ref.clone().unwrap_or_else(|| "<none>".into()));
            row.push(source.path.clone());
        }
        table.push(row);
    }
    table
}

fn time_text(time: Option<Timestamp>, now: Timestamp) -> String {
    match time {
        Some(time) => format!("{time} ({} ago)", age(Some(time), now, "")),
        None => "<never>".into(),
    }
}

fn place(item: &SkippedObject) -> String {
    match (&item.file, item.line, item.column) {
        (Some(file), Some(line), Some(column)) => format!("{file}:{line}:{column}"),
        (Some(file), _, _) => file.clone(),
        _ => "<stored object>".into(),
    }
}

/// Everything about one source, with its recent events.
pub fn describe_source(source: &SourceStatus, events: &[Event], now: Timestamp) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("Name", source.name.clone()),
        ("Path", source.path.clone()),
        ("Manager", source.manager.clone()),
        ("Status", source_state(source).to_string()),
        (
            "Revision",
            match (&source.revision, &source.git_ref) {
                (Some(revision), Some(reference)) => format!("{revision} ({reference})"),
                (Some(revision), None) => revision.clone(),
                (None, _) => "<none>".into(),
            },
        ),
        ("Last Applied", time_text(source.last_applied_time, now)),
        ("Last Attempt", time_text(source.last_attempt_time, now)),
        (
            "Sync Pending",
            if source.sync_pending { "yes" } else { "no" }.into(),
        ),
        ("Drift Corrections", source.drift_corrections.to_string()),
    ];
    if source.last_attempted_revision.is_some() && source.last_attempted_revision != source.revision
    {
        fields.push((
            "Attempted Revision",
            source.last_attempted_revision.clone().unwrap_or_default(),
        ));
    }
    match &source.error {
        None => fields.push(("Error", "<none>".into())),
        Some(error) => {
            fields.push(("Error", one_line(error)));
            fields.push(("Failures", source.failures.to_string()));
            if let Some(retry) = source.next_retry_time {
                fields.push(("Next Retry", retry.to_string()));
            }
        }
    }
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out = String::new();
    for (key, value) in &fields {
        out.push_str(&format!("{:width$}{value}\n", format!("{key}:")));
    }
    if !source.causes.is_empty() {
        out.push_str("Causes:\n");
        for cause in &source.causes {
            out.push_str(&format!("  {cause}\n"));
        }
    }
    let mut section = |title: &str, table: Table| {
        if table.rows.is_empty() {
            out.push_str(&format!("{title}: <none>\n"));
        } else {
            out.push_str(&format!("{title}:\n"));
            for line in table.render().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    };
    let mut objects = Table::new(&["OBJECT", "FILE"]);
    for object in &source.objects {
        objects.push(vec![
            reference(object.kind.as_str(), &object.name),
            object.file.clone(),
        ]);
    }
    section("Objects", objects);
    let mut skipped = Table::new(&["OBJECT", "MARKED IN"]);
    for item in &source.skipped {
        skipped.push(vec![reference(item.kind.as_str(), &item.name), place(item)]);
    }
    section("Skipped (thinfleet.io/reconcile: disabled)", skipped);
    let mut conflicts = Table::new(&["OBJECT", "AT", "MESSAGE"]);
    for item in &source.conflicts {
        conflicts.push(vec![
            reference(item.kind.as_str(), &item.name),
            place(item),
            one_line(&item.message),
        ]);
    }
    section("Conflicts", conflicts);
    let mut prunes = Table::new(&["OBJECT", "CLIENTS"]);
    for prune in &source.pending_prunes {
        prunes.push(vec![
            reference(prune.kind.as_str(), &prune.name),
            prune.clients.to_string(),
        ]);
    }
    section("Pending Prunes", prunes);
    section("Events", events_table(events, false, now));
    out
}

fn typed(item: Value) -> Result<SourceStatus, CliError> {
    serde_json::from_value(item).map_err(|error| {
        CliError::Api(ApiError::Protocol {
            url: "sources".into(),
            message: error.to_string(),
        })
    })
}

/// `tcadm get sources [NAME]`.
pub fn get_sources(context: &mut Context<'_>, args: &GetArgs) -> Result<u8, CliError> {
    if args.selector.is_some() {
        return Err(CliError::Usage(
            "sources have no labels; give a NAME or none".into(),
        ));
    }
    if args.watch {
        return Err(CliError::Usage(
            "sources cannot be watched; use `tcadm get events --for source/NAME -w`".into(),
        ));
    }
    let client = ApiClient::new(context.connection.clone())?;
    let items = match &args.name {
        Some(name) => vec![client.source(name)?],
        None => client.sources()?,
    };
    let text = match (args.output, &args.name) {
        (Some(OutputFormat::Yaml), Some(_)) => to_yaml(&items[0]),
        (Some(OutputFormat::Json), Some(_)) => to_json(&items[0]),
        (Some(OutputFormat::Yaml | OutputFormat::Json), None) => {
            let list =
                json!({ "apiVersion": API_VERSION, "kind": "ManifestSourceList", "items": items });
            if args.output == Some(OutputFormat::Yaml) {
                to_yaml(&list)
            } else {
                to_json(&list)
            }
        }
        (Some(OutputFormat::Name), _) => items
            .iter()
            .map(|item| format!("source/{}\n", item["name"].as_str().unwrap_or("")))
            .collect(),
        // Refused before (`-o jsonl` is for the audit trail).
        (None | Some(OutputFormat::Wide | OutputFormat::Jsonl), _) => {
            let sources = items
                .into_iter()
                .map(typed)
                .collect::<Result<Vec<_>, _>>()?;
            if sources.is_empty() {
                eprintln!("No sources found: the controller watches no manifest directory.");
                return Ok(EXIT_OK);
            }
            let wide = args.output == Some(OutputFormat::Wide);
            sources_table(&sources, wide, Timestamp::now()).render()
        }
    };
    write!(context.out, "{text}")?;
    Ok(EXIT_OK)
}

/// `tcadm describe source NAME`.
pub fn describe(context: &mut Context<'_>, name: &str) -> Result<u8, CliError> {
    let client = ApiClient::new(context.connection.clone())?;
    let source = typed(client.source(name)?)?;
    let events = client.events_of(Some(SOURCE_EVENT_KIND), Some(name), None, Some(MAX_EVENTS))?;
    write!(
        context.out,
        "{}",
        describe_source(&source, &events, Timestamp::now())
    )?;
    Ok(EXIT_OK)
}

/// The sources of a controller, typed; an error reading them (an older controller) counts as none.
pub fn fetch_sources(client: &ApiClient) -> Vec<SourceStatus> {
    client
        .sources()
        .map(|items| {
            items
                .into_iter()
                .filter_map(|item| serde_json::from_value(item).ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> SourceStatus {
        serde_json::from_value(serde_json::json!({
            "name": "manifests", "path": "/srv/manifests", "manager": "dir:/srv/manifests",
            "revision": "0123456789abcdef0123456789abcdef01234567", "ref": "refs/heads/main",
            "lastAppliedTime": "2026-11-22T10:00:00Z", "syncPending": false,
            "objects": [{ "kind": "ClientGroup", "name": "front-desk", "file": "/srv/manifests/groups.yaml" }],
            "skipped": [{ "kind": "ClientGroup", "name": "lab", "reason": "ReconcileDisabled", "message": "m", "file": "/srv/manifests/lab.yaml", "line": 1, "column": 1 }],
            "conflicts": [{ "kind": "PackageRelease", "name": "kiosk-1.0.0", "reason": "Conflict", "message": "packagerelease/kiosk-1.0.0 is immutable",
                            "file": "/srv/manifests/releases.yaml", "line": 12, "column": 1 }],
            "pendingPrunes": [{ "kind": "PackageRelease", "name": "wallpaper-1.0.0", "clients": 2 }],
            "driftCorrections": 3
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(1_795_341_630_000)
    }

    #[test]
    fn sources_table_golden() {
        let table = sources_table(&[source()], false, now()).render();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "STATUS",
                "REVISION",
                "OBJECTS",
                "SKIPPED",
                "CONFLICTS",
                "DRIFT",
                "APPLIED"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "manifests",
                "Degraded",
                "0123456789ab",
                "1",
                "1",
                "1",
                "3",
                "30s"
            ]
        );
    }

    #[test]
    fn the_state_word_puts_failures_first() {
        let mut status = source();
        status.conflicts.clear();
        assert_eq!(source_state(&status), "Synced");
        status.sync_pending = true;
        assert_eq!(source_state(&status), "Pending");
        status.error = Some("b.yaml:6:3: spec.paused: invalid".into());
        assert_eq!(source_state(&status), "Failed");
    }

    #[test]
    fn revisions_are_shortened_for_tables() {
        assert_eq!(short_revision(None), "<none>");
        assert_eq!(
            short_revision(Some(&format!("sha256:{}", "ab".repeat(32)))),
            "sha256:abababababab"
        );
    }

    #[test]
    fn describe_source_has_every_section() {
        let text = describe_source(&source(), &[], now());
        for expected in [
            "Name:",
            "Revision:",
            "0123456789abcdef0123456789abcdef01234567 (refs/heads/main)",
            "Drift Corrections:",
            "clientgroup/front-desk",
            "/srv/manifests/lab.yaml:1:1",
            "/srv/manifests/releases.yaml:12:1",
            "packagerelease/wallpaper-1.0.0",
            "Events: <none>",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
    }
}
