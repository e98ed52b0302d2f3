//! `tcadm get`: tables, documents and watch mode of objects and events (the audit trail and the
//! watched directories have their own modules).

use std::collections::BTreeMap;
use std::thread;

use serde::de::DeserializeOwned;
use serde_json::Value;
use tc_api::{API_VERSION, Client, ClientGroup, Kind, LabelSelector, PackageRelease, Timestamp};

use crate::api::{ApiClient, ApiError};
use crate::cli::{GetArgs, OutputFormat, Resource};
use crate::commands::{Context, WATCH_INTERVAL};
use crate::error::{CliError, EXIT_OK};
use crate::format::{Table, render_row};
use crate::output::{to_json, to_yaml};
use crate::views::{
    clients_table, events_table, groups_table, reference, releases_table, row_signature,
};

fn typed<T: DeserializeOwned>(items: &[Value]) -> Result<Vec<T>, CliError> {
    items
        .iter()
        .map(|item| {
            serde_json::from_value(item.clone()).map_err(|error| {
                CliError::Api(ApiError::Protocol {
                    url: "list".into(),
                    message: error.to_string(),
                })
            })
        })
        .collect()
}

/// The table of objects of `kind`.
fn objects_table(kind: Kind, items: &[Value], wide: bool) -> Result<Table, CliError> {
    let now = Timestamp::now();
    Ok(match kind {
        Kind::Client => clients_table(&typed::<Client>(items)?, wide, now),
        Kind::ClientGroup => groups_table(&typed::<ClientGroup>(items)?, wide, now),
        Kind::PackageRelease => releases_table(&typed::<PackageRelease>(items)?, wide, now),
        Kind::Task => crate::tasks::tasks_table(&typed::<tc_api::Task>(items)?, wide, now),
    })
}

fn object_name(item: &Value) -> String {
    item.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// The list document printed by `-o yaml|json`, with its fields in the usual order.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ListDocument<'a> {
    api_version: &'static str,
    kind: String,
    items: &'a [Value],
}

fn list_document<'a>(kind: &str, items: &'a [Value]) -> ListDocument<'a> {
    ListDocument {
        api_version: API_VERSION,
        kind: format!("{kind}List"),
        items,
    }
}

pub fn get(context: &mut Context<'_>, args: &GetArgs) -> Result<u8, CliError> {
    if let Some(selector) = &args.selector {
        if args.name.is_some() {
            return Err(CliError::Usage(
                "give either a NAME or a selector (-l), not both".into(),
            ));
        }
        LabelSelector::parse(selector).map_err(|error| CliError::Usage(error.to_string()))?;
    }
    if args.resource != Resource::Audit
        && (args.by.is_some() || args.action.is_some() || args.limit.is_some())
    {
        return Err(CliError::Usage(
            "--by, --action and --limit apply to `get audit` only".into(),
        ));
    }
    if args.resource != Resource::Audit && args.output == Some(OutputFormat::Jsonl) {
        return Err(CliError::Usage(
            "-o jsonl applies to `get audit` only; use -o json or yaml".into(),
        ));
    }
    match args.resource {
        Resource::Audit => crate::audit::get_audit(context, args),
        Resource::Events => get_events(context, args),
        Resource::Sources => {
            if args.for_object.is_some() {
                return Err(CliError::Usage("--for applies to events only".into()));
            }
            crate::sources::get_sources(context, args)
        }
        Resource::Kind(kind) => {
            if args.for_object.is_some() {
                return Err(CliError::Usage("--for applies to events only".into()));
            }
            get_objects(context, args, kind)
        }
    }
}

fn fetch_objects(
    client: &ApiClient,
    kind: Kind,
    name: Option<&str>,
    selector: Option<&str>,
) -> Result<Vec<Value>, CliError> {
    Ok(match name {
        Some(name) => vec![client.get(kind, name)?],
        None => {
            let list = client.list(kind, selector)?;
            list.get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        }
    })
}

fn get_objects(context: &mut Context<'_>, args: &GetArgs, kind: Kind) -> Result<u8, CliError> {
    let client = context.client()?;
    let name = args.name.as_deref();
    let selector = args.selector.as_deref();
    let items = fetch_objects(&client, kind, name, selector)?;
    let wide = args.output == Some(OutputFormat::Wide);
    let single = name.is_some();
    match args.output {
        None | Some(OutputFormat::Wide) => {
            let table = objects_table(kind, &items, wide)?;
            if table.rows.is_empty() && !args.watch {
                context.note("No resources found.");
                return Ok(EXIT_OK);
            }
            write!(context.out, "{}", table.render())?;
            if args.watch {
                watch_table(context, &client, kind, args, table)?;
            }
        }
        Some(format) => {
            let text = match (format, single) {
                (OutputFormat::Yaml, true) => to_yaml(&items[0]),
                (OutputFormat::Json, true) => to_json(&items[0]),
                (OutputFormat::Yaml, false) => to_yaml(&list_document(kind.as_str(), &items)),
                (OutputFormat::Json, false) => to_json(&list_document(kind.as_str(), &items)),
                _ => items
                    .iter()
                    .map(|item| format!("{}\n", reference(kind.as_str(), &object_name(item))))
                    .collect(),
            };
            write!(context.out, "{text}")?;
            if args.watch {
                watch_documents(context, &client, kind, args, format, items)?;
            }
        }
    }
    Ok(EXIT_OK)
}

/// Polls and prints the rows that changed (ignoring ages), keeping columns aligned with what was
/// printed before. Runs until interrupted.
fn watch_table(
    context: &mut Context<'_>,
    client: &ApiClient,
    kind: Kind,
    args: &GetArgs,
    first: Table,
) -> Result<(), CliError> {
    let wide = args.output == Some(OutputFormat::Wide);
    let mut widths = first.widths();
    let headers = first.headers.clone();
    let mut seen: BTreeMap<String, Vec<String>> = first
        .rows
        .iter()
        .map(|row| (row[0].clone(), row_signature(&headers, row)))
        .collect();
    loop {
        context.out.flush()?;
        thread::sleep(WATCH_INTERVAL);
        let items = fetch_objects(client, kind, args.name.as_deref(), args.selector.as_deref())?;
        let table = objects_table(kind, &items, wide)?;
        for (width, new) in widths.iter_mut().zip(table.widths()) {
            *width = (*width).max(new);
        }
        for row in &table.rows {
            let signature = row_signature(&headers, row);
            if seen.get(&row[0]) != Some(&signature) {
                write!(context.out, "{}", render_row(row, &widths))?;
                seen.insert(row[0].clone(), signature);
            }
        }
    }
}

/// Polls and prints each object whose content changed. Runs until interrupted.
fn watch_documents(
    context: &mut Context<'_>,
    client: &ApiClient,
    kind: Kind,
    args: &GetArgs,
    format: OutputFormat,
    first: Vec<Value>,
) -> Result<(), CliError> {
    let mut seen: BTreeMap<String, Value> = first
        .into_iter()
        .map(|item| (object_name(&item), item))
        .collect();
    loop {
        context.out.flush()?;
        thread::sleep(WATCH_INTERVAL);
        let items = fetch_objects(client, kind, args.name.as_deref(), args.selector.as_deref())?;
        for item in items {
            let name = object_name(&item);
            if seen.get(&name) == Some(&item) {
                continue;
            }
            let text = match format {
                OutputFormat::Yaml => format!("---\n{}", to_yaml(&item)),
                OutputFormat::Json => to_json(&item),
                _ => format!("{}\n", reference(kind.as_str(), &name)),
            };
            write!(context.out, "{text}")?;
            seen.insert(name, item);
        }
    }
}

fn get_events(context: &mut Context<'_>, args: &GetArgs) -> Result<u8, CliError> {
    if args.name.is_some() {
        return Err(CliError::Usage(
            "events have no names; use --for KIND/NAME to see the events of one object".into(),
        ));
    }
    if args.selector.is_some() {
        return Err(CliError::Usage(
            "events have no labels; use --for KIND/NAME to see the events of one object".into(),
        ));
    }
    if args.output == Some(OutputFormat::Name) {
        return Err(CliError::Usage(
            "events have no names; use -o wide, yaml or json".into(),
        ));
    }
    let client = context.client()?;
    let (kind, name) = match &args.for_object {
        Some(subject) => (Some(subject.kind.as_str()), Some(subject.name.as_str())),
        None => (None, None),
    };
    match args.output {
        Some(OutputFormat::Yaml) | Some(OutputFormat::Json) if !args.watch => {
            let list = client.events_raw_of(kind, name)?;
            let items = list
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let document = list_document("Event", &items);
            let text = if args.output == Some(OutputFormat::Yaml) {
                to_yaml(&document)
            } else {
                to_json(&document)
            };
            write!(context.out, "{text}")?;
            return Ok(EXIT_OK);
        }
        _ => {}
    }
    let wide = args.output == Some(OutputFormat::Wide);
    let events = client.events_of(kind, name, None, None)?;
    let mut last_seq = events.iter().map(|e| e.seq).max();
    match args.output {
        Some(OutputFormat::Yaml) => {
            for event in &events {
                write!(context.out, "---\n{}", to_yaml(event))?;
            }
        }
        Some(OutputFormat::Json) => {
            for event in &events {
                write!(context.out, "{}", to_json(event))?;
            }
        }
        _ => {
            let table = events_table(&events, wide, Timestamp::now());
            if table.rows.is_empty() && !args.watch {
                context.note("No events found.");
                return Ok(EXIT_OK);
            }
            write!(context.out, "{}", table.render())?;
        }
    }
    if !args.watch {
        return Ok(EXIT_OK);
    }
    let mut widths = events_table(&events, wide, Timestamp::now()).widths();
    loop {
        context.out.flush()?;
        thread::sleep(WATCH_INTERVAL);
        let events = client.events_of(kind, name, last_seq, None)?;
        if events.is_empty() {
            continue;
        }
        last_seq = events.iter().map(|e| e.seq).max().or(last_seq);
        match args.output {
            Some(OutputFormat::Yaml) => {
                for event in &events {
                    write!(context.out, "---\n{}", to_yaml(event))?;
                }
            }
            Some(OutputFormat::Json) => {
                for event in &events {
                    write!(context.out, "{}", to_json(event))?;
                }
            }
            _ => {
                let table = events_table(&events, wide, Timestamp::now());
                for (width, new) in widths.iter_mut().zip(table.widths()) {
                    *width = (*width).max(new);
                }
                for row in &table.rows {
                    write!(context.out, "{}", render_row(row, &widths))?;
                }
            }
        }
    }
}
