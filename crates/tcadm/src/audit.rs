//! `tcadm get audit`: who changed what, from where, and how it ended.

use std::io::Read;

use serde_json::Value;
use tc_api::{AuditEntry, Timestamp};

use crate::api::ApiError;
use crate::cli::{GetArgs, OutputFormat};
use crate::commands::Context;
use crate::error::{CliError, EXIT_OK};
use crate::format::{Table, age};
use crate::output::{to_json, to_yaml};

/// The audit table: AGE (wide: TIME), USER, ACTION, OBJECTS, OUTCOME; wide adds SEQ, ROLE,
/// SOURCE and MESSAGE.
pub fn audit_table(entries: &[AuditEntry], wide: bool, now: Timestamp) -> Table {
    let mut table = if wide {
        Table::new(&[
            "SEQ", "TIME", "USER", "ROLE", "SOURCE", "ACTION", "OBJECTS", "OUTCOME", "MESSAGE",
        ])
    } else {
        Table::new(&["AGE", "USER", "ACTION", "OBJECTS", "OUTCOME"])
    };
    for entry in entries {
        let objects = objects(entry);
        let outcome = if entry.outcome == tc_api::AuditOutcome::Succeeded {
            entry.outcome.to_string()
        } else {
            format!("{} ({})", entry.outcome, entry.code)
        };
        if wide {
            let mut user = entry.user.clone();
            if entry.break_glass {
                user.push_str(" (break-glass)");
            }
            table.push(vec![
                entry.seq.to_string(),
                entry.time.to_string(),
                user,
                entry
                    .role
                    .map_or_else(|| "-".into(), |role| role.to_string()),
                entry.source.clone(),
                entry.action.clone(),
                objects,
                outcome,
                entry.message.clone().unwrap_or_default(),
            ]);
        } else {
            table.push(vec![
                age(Some(entry.time), now, "<unknown>"),
                entry.user.clone(),
                entry.action.clone(),
                objects,
                outcome,
            ]);
        }
    }
    table
}

/// `clientgroup/lab (configured), packagerelease/kiosk-1.0.0 (created)`; at most three, then
/// how many more.
fn objects(entry: &AuditEntry) -> String {
    let mut parts: Vec<String> = entry
        .objects
        .iter()
        .take(3)
        .map(|object| {
            let reference = format!("{}/{}", object.kind.to_ascii_lowercase(), object.name);
            match &object.change {
                Some(change) => format!("{reference} ({change})"),
                None => reference,
            }
        })
        .collect();
    if entry.objects.len() > 3 {
        parts.push(format!("and {} more", entry.objects.len() - 3));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// `tcadm get audit [--by NAME] [--for KIND/NAME] [--action A] [--limit N] [-o ...]`.
pub fn get_audit(context: &mut Context<'_>, args: &GetArgs) -> Result<u8, CliError> {
    if args.name.is_some() || args.selector.is_some() {
        return Err(CliError::Usage(
            "audit entries have no names or labels; use --by NAME, --for KIND/NAME or --action"
                .into(),
        ));
    }
    if args.watch {
        return Err(CliError::Usage(
            "the audit trail cannot be watched; run it again, or export it with -o jsonl".into(),
        ));
    }
    if args.output == Some(OutputFormat::Name) {
        return Err(CliError::Usage(
            "audit entries have no names; use -o wide, yaml, json or jsonl".into(),
        ));
    }
    let limit = args.limit.map(|limit| limit.to_string());
    let (kind, name) = match &args.for_object {
        Some(subject) => (Some(subject.kind.as_str()), Some(subject.name.as_str())),
        None => (None, None),
    };
    let query = [
        ("by", args.by.as_deref().unwrap_or("")),
        ("kind", kind.unwrap_or("")),
        ("name", name.unwrap_or("")),
        ("action", args.action.as_deref().unwrap_or("")),
        ("limit", limit.as_deref().unwrap_or("")),
    ];
    let client = context.client()?;
    if args.output == Some(OutputFormat::Jsonl) {
        // The controller's export, streamed as it comes: the whole trail need not fit in memory.
        let mut query = query.to_vec();
        query.push(("format", "jsonl"));
        let (url, mut response) = client.audit_export(&query)?;
        let mut buffer = [0u8; 64 * 1024];
        loop {
            let read = response
                .read(&mut buffer)
                .map_err(|error| ApiError::Protocol {
                    url: url.clone(),
                    message: format!("the export broke off: {error}"),
                })?;
            if read == 0 {
                break;
            }
            context.out.write_all(&buffer[..read])?;
        }
        return Ok(EXIT_OK);
    }
    let list = client.audit(&query)?;
    match args.output {
        Some(OutputFormat::Yaml) => write!(context.out, "{}", to_yaml(&list))?,
        Some(OutputFormat::Json) => write!(context.out, "{}", to_json(&list))?,
        _ => {
            let items = list.get("items").cloned().unwrap_or(Value::Null);
            let entries: Vec<AuditEntry> =
                serde_json::from_value(items).map_err(|error| ApiError::Protocol {
                    url: "/apis/thinfleet.io/v1/audit".into(),
                    message: format!("the audit list is not understood: {error}"),
                })?;
            if entries.is_empty() {
                context.note("No audit entries found.");
                return Ok(EXIT_OK);
            }
            let wide = args.output == Some(OutputFormat::Wide);
            write!(
                context.out,
                "{}",
                audit_table(&entries, wide, Timestamp::now()).render()
            )?;
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::{AuditObject, AuditOutcome, Role};

    #[test]
    fn the_audit_table_names_who_did_what_and_how_it_ended() {
        let now = Timestamp::from_unix_millis(10 * 60_000);
        let entries = vec![
            AuditEntry {
                seq: 7,
                time: Timestamp::from_unix_millis(8 * 60_000),
                user: "ops".into(),
                role: Some(Role::Admin),
                break_glass: false,
                source: "192.0.2.7:51234".into(),
                action: "apply".into(),
                request: "POST /apis/thinfleet.io/v1/apply".into(),
                objects: (0..5)
                    .map(|i| AuditObject::new("ClientGroup", format!("g{i}")).changed("created"))
                    .collect(),
                code: 200,
                outcome: AuditOutcome::Succeeded,
                message: None,
            },
            AuditEntry {
                seq: 8,
                time: Timestamp::from_unix_millis(9 * 60_000),
                user: "desk".into(),
                role: Some(Role::Operator),
                break_glass: false,
                source: "192.0.2.8:40000".into(),
                action: "delete".into(),
                request: "DELETE /apis/thinfleet.io/v1/clientgroups/lab".into(),
                objects: vec![AuditObject::new("ClientGroup", "lab")],
                code: 403,
                outcome: AuditOutcome::Denied,
                message: Some(
                    "credential \"desk\" (role operator) may not DELETE: needs role admin\x1b[2J"
                        .into(),
                ),
            },
        ];
        assert_eq!(
            audit_table(&entries, false, now).render(),
            "AGE   USER   ACTION   OBJECTS                                                                                    OUTCOME\n\
             2m    ops    apply    clientgroup/g0 (created), clientgroup/g1 (created), clientgroup/g2 (created), and 2 more   Succeeded\n\
             60s   desk   delete   clientgroup/lab                                                                            Denied (403)\n"
        );
        let wide = audit_table(&entries, true, now).render();
        assert!(wide.contains("192.0.2.8:40000"), "{wide}");
        assert!(wide.contains("needs role admin\\u{1b}[2J"), "{wide}");
        assert!(!wide.contains('\x1b'), "{wide}");
    }
}
