//! `tcadm describe`: everything a person needs to know about one object, as text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

use tc_api::{Client, ClientGroup, Condition, Event, Hook, ObjectMeta, PackageRelease, Timestamp};

use crate::format::{Table, age, human_duration, human_size, label_lines};
use crate::output::terminal_safe;
use crate::views::{one_line, reference, release_ready, selector_text};

/// Most events shown.
pub const MAX_EVENTS: usize = 20;

/// Most member clients listed for a group.
pub const MAX_MEMBERS: usize = 50;

/// Text built section by section, with `Key:` columns aligned within each block of fields.
#[derive(Default)]
struct Writer {
    text: String,
}

impl Writer {
    fn fields(&mut self, indent: usize, fields: &[(&str, String)]) {
        let width = fields.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0) + 2;
        for (key, value) in fields {
            let label = format!("{key}:");
            let mut lines = value.lines();
            let first = lines.next().unwrap_or("");
            self.line(indent, format!("{label:width$}{first}").trim_end());
            for more in lines {
                self.line(indent + width, more);
            }
        }
    }

    fn field(&mut self, indent: usize, key: &str, value: impl Display) {
        self.fields(indent, &[(key, value.to_string())]);
    }

    fn heading(&mut self, indent: usize, title: &str) {
        self.line(indent, &format!("{title}:"));
    }

    /// Every line of a description passes here: control characters in it (a value from a
    /// client) are shown as escapes.
    fn line(&mut self, indent: usize, text: &str) {
        self.text.push_str(&" ".repeat(indent));
        self.text.push_str(&terminal_safe(text));
        self.text.push('\n');
    }

    fn table(&mut self, indent: usize, table: &Table) {
        for line in table.render().lines() {
            self.line(indent, line);
        }
    }

    /// A heading followed by a table, or by `<none>` on the heading line when it has no rows.
    fn section(&mut self, title: &str, table: &Table) {
        if table.rows.is_empty() {
            self.field(0, title, "<none>");
        } else {
            self.heading(0, title);
            self.table(2, table);
        }
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        "<none>".into()
    } else {
        label_lines(labels).join("\n")
    }
}

fn time_text(time: Option<Timestamp>, now: Timestamp) -> String {
    match time {
        Some(time) => format!("{time} ({} ago)", age(Some(time), now, "")),
        None => "<unknown>".into(),
    }
}

/// The fields every object has: name, labels, annotations, creation and manager.
fn meta_fields(meta: &ObjectMeta, now: Timestamp) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("Name", meta.name.clone()),
        ("Labels", labels_text(&meta.labels)),
        ("Annotations", labels_text(&meta.annotations)),
        ("Created", time_text(meta.creation_timestamp, now)),
    ];
    if let Some(manager) = &meta.managed_by {
        fields.push(("Managed By", manager.clone()));
    }
    fields
}

fn conditions_table(conditions: &[Condition], now: Timestamp) -> Table {
    let mut table = Table::new(&["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]);
    for condition in conditions {
        table.push(vec![
            condition.type_.clone(),
            format!("{:?}", condition.status),
            condition.reason.clone(),
            age(Some(condition.last_transition_time), now, "<unknown>"),
            one_line(&condition.message),
        ]);
    }
    table
}

fn events_table(events: &[Event], now: Timestamp) -> Table {
    let mut table = Table::new(&["LAST SEEN", "TYPE", "REASON", "MESSAGE"]);
    let skip = events.len().saturating_sub(MAX_EVENTS);
    for event in &events[skip..] {
        table.push(vec![
            age(Some(event.time), now, "<unknown>"),
            event.type_.to_string(),
            event.reason.clone(),
            one_line(&event.message),
        ]);
    }
    table
}

/// Describes a client: identity, labels, inventory, load, installed against desired packages,
/// conditions and recent events.
pub fn describe_client(client: &Client, events: &[Event], now: Timestamp) -> String {
    describe_client_with(client, &[], events, now)
}

/// [`describe_client`] with more sections (a title and a table each) before the events.
pub fn describe_client_with(
    client: &Client,
    sections: &[(&str, &Table)],
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut out = Writer::default();
    let status = &client.status;
    let mut fields = meta_fields(&client.metadata, now);
    let spec = &client.spec;
    fields.extend([
        ("Machine ID", spec.machine_id.clone()),
        (
            "Public Key",
            if spec.public_key.is_empty() {
                "<none: enrolled before identities; its agent claims one at its next enrolment>"
                    .to_string()
            } else {
                spec.public_key.clone()
            },
        ),
        ("Phase", status.phase.to_string()),
        ("Last Seen", time_text(status.last_heartbeat, now)),
    ]);
    if let Some(token) = &spec.bootstrap_token {
        fields.push(("Enrolled With", format!("bootstrap token `{token}`")));
    }
    if let Some(pending) = &spec.pending {
        let mut text = format!("{}: {}", pending.reason, pending.message);
        text.push_str(&format!(
            " (`tcadm approve client {name}`{}, or `tcadm deny client {name}`)",
            match pending.enrolled_as.first() {
                Some(old) => format!(", `... --replace {old}`"),
                None => String::new(),
            },
            name = client.metadata.name
        ));
        fields.push(("Pending", text));
    }
    if spec.decommission {
        fields.push((
            "Decommission",
            "requested: the agent removes every package thinfleet installed, then the client is \
             deleted"
                .to_string(),
        ));
    }
    out.fields(0, &fields);
    match &status.inventory {
        None => out.field(0, "Inventory", "<not reported yet>"),
        Some(inventory) => {
            out.heading(0, "Inventory");
            let os = format!("{} {}", inventory.os_name, inventory.os_version);
            let cpu = if inventory.cpu_cores > 0 {
                format!("{} ({} cores)", inventory.cpu_model, inventory.cpu_cores)
            } else {
                inventory.cpu_model.clone()
            };
            let mut fields = vec![
                ("Hostname", inventory.hostname.clone()),
                ("OS", os.trim().to_string()),
                ("Kernel", inventory.kernel_version.clone()),
                ("Arch", inventory.arch.clone()),
                ("CPU", cpu),
                ("Memory", human_size(inventory.memory_total_bytes)),
                ("Agent", inventory.agent_version.clone()),
            ];
            if let Some(boot) = inventory.boot_time {
                fields.push(("Booted", time_text(Some(boot), now)));
            }
            out.fields(2, &fields);
            let mut disks = Table::new(&["NAME", "MOUNT", "FS", "SIZE", "FREE"]);
            for disk in &inventory.disks {
                disks.push(vec![
                    disk.name.clone(),
                    disk.mount_point.clone(),
                    disk.file_system.clone(),
                    human_size(disk.total_bytes),
                    human_size(disk.available_bytes),
                ]);
            }
            if !disks.rows.is_empty() {
                out.heading(2, "Disks");
                out.table(4, &disks);
            }
            let mut interfaces = Table::new(&["NAME", "MAC", "ADDRESSES"]);
            for interface in &inventory.network_interfaces {
                interfaces.push(vec![
                    interface.name.clone(),
                    interface.mac.clone(),
                    interface.addresses.join(","),
                ]);
            }
            if !interfaces.rows.is_empty() {
                out.heading(2, "Network");
                out.table(4, &interfaces);
            }
        }
    }
    if status.last_heartbeat.is_some() {
        out.heading(0, "Load");
        out.fields(
            2,
            &[
                ("CPU", format!("{:.1}%", status.load.cpu_percent)),
                ("Memory Used", human_size(status.load.memory_used_bytes)),
                (
                    "Uptime",
                    human_duration(std::time::Duration::from_secs(status.load.uptime_seconds)),
                ),
            ],
        );
    }
    out.section("Packages", &packages_table(client, now));
    out.field(
        0,
        "Groups",
        if status.groups.is_empty() {
            "<none>".to_string()
        } else {
            status.groups.join(", ")
        },
    );
    let mut why = Table::new(&["PACKAGE", "DESIRED", "ASSIGNED", "DECIDED BY", "WHY"]);
    for decision in &status.decisions {
        why.push(vec![
            decision.package.clone(),
            decision.desired.clone().unwrap_or_else(|| "-".into()),
            decision.assigned.clone().unwrap_or_else(|| "-".into()),
            match (&decision.group, &decision.requirement) {
                (Some(group), Some(requirement)) => format!("{group} ({requirement})"),
                (Some(group), None) => group.clone(),
                _ => "-".into(),
            },
            one_line(&decision.reason),
        ]);
    }
    out.section("Why", &why);
    out.section("Conditions", &conditions_table(&status.conditions, now));
    for (title, table) in sections {
        out.section(title, table);
    }
    out.section("Events", &events_table(events, now));
    out.text
}

/// Installed against desired packages of a client: one row per package that is desired or
/// reported.
pub fn packages_table(client: &Client, now: Timestamp) -> Table {
    let status = &client.status;
    let desired: BTreeMap<&str, &str> = status
        .desired
        .iter()
        .map(|p| (p.name.as_str(), p.version.as_str()))
        .collect();
    let names: BTreeSet<&str> = desired
        .keys()
        .copied()
        .chain(status.packages.iter().map(|p| p.name.as_str()))
        .collect();
    let mut table = Table::new(&["NAME", "DESIRED", "INSTALLED", "STATE", "SINCE", "MESSAGE"]);
    for name in names {
        let report = status.packages.iter().find(|p| p.name == name);
        let installed = report
            .and_then(|r| {
                r.active_version.clone().or_else(|| {
                    (r.state == tc_api::PackageState::Installed).then(|| r.version.clone())
                })
            })
            .unwrap_or_else(|| "-".into());
        let state = match report {
            Some(report) if report.version != installed => {
                format!("{} {}", report.state, report.version)
            }
            Some(report) => report.state.to_string(),
            None => "Pending".into(),
        };
        table.push(vec![
            name.to_string(),
            desired.get(name).map_or("-".into(), |v| v.to_string()),
            installed,
            state,
            report.map_or("-".into(), |r| age(Some(r.since), now, "")),
            report
                .and_then(|r| r.message.as_deref())
                .map(one_line)
                .unwrap_or_default(),
        ]);
    }
    table
}

/// Describes a group: selector, rollout settings, packages with what they resolve to, member
/// counts, member clients, conditions and recent events.
pub fn describe_group(
    group: &ClientGroup,
    members: &[Client],
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut out = Writer::default();
    let status = group.status.clone().unwrap_or_default();
    let spec = &group.spec;
    let mut fields = meta_fields(&group.metadata, now);
    fields.extend([
        (
            "Generation",
            format!(
                "{} (observed {})",
                group.metadata.generation.unwrap_or(0),
                status.observed_generation
            ),
        ),
        ("Selector", selector_text(group)),
        ("Priority", spec.priority.to_string()),
        ("Paused", paused_text(group)),
        ("Max Unavailable", spec.rollout.max_unavailable.to_string()),
        (
            "Progress Deadline",
            format!("{}s", spec.rollout.progress_deadline_seconds),
        ),
        ("Heartbeat", format!("{}s", spec.agent.heartbeat_seconds)),
        (
            "Members",
            format!(
                "{} desired, {} updated, {} ready, {} failed, {} unavailable, {} offline",
                status.desired,
                status.updated,
                status.ready,
                status.failed,
                status.unavailable,
                status.offline
            ),
        ),
        ("Last Progress", time_text(status.last_progress_time, now)),
    ]);
    out.fields(0, &fields);
    // Steps, windows or activation on reboot: where the current rollout stands.
    let rollout = crate::progressive::rollout_fields(group);
    if crate::progressive::is_progressive(group) && !rollout.is_empty() {
        out.heading(0, "Rollout");
        out.fields(2, &rollout);
    }
    let mut packages = Table::new(&[
        "NAME",
        "REQUIREMENT",
        "RESOLVED",
        "UPDATED",
        "UNAVAILABLE",
        "FAILED",
        "DECIDED ELSEWHERE",
    ]);
    for requirement in &spec.packages {
        let resolved = status.packages.iter().find(|p| p.name == requirement.name);
        let mut elsewhere: Vec<String> = vec![];
        if let Some(resolved) = resolved {
            if !resolved.overridden_by.is_empty() {
                elsewhere.push(format!(
                    "{} member(s) by {}",
                    resolved.overridden,
                    resolved.overridden_by.join(", ")
                ));
            }
            if !resolved.conflicts_with.is_empty() {
                elsewhere.push(format!(
                    "conflict with {}",
                    resolved.conflicts_with.join(", ")
                ));
            }
        }
        let failed = match resolved {
            Some(p) if !p.failed_versions.is_empty() => {
                format!("{} ({})", p.failed, p.failed_versions.join(", "))
            }
            Some(p) => p.failed.to_string(),
            None => "0".into(),
        };
        packages.push(vec![
            requirement.name.clone(),
            requirement.version.clone(),
            resolved
                .and_then(|p| p.resolved_version.clone())
                .unwrap_or_else(|| "<unresolved>".into()),
            resolved.map_or(0, |p| p.updated).to_string(),
            resolved.map_or(0, |p| p.unavailable).to_string(),
            failed,
            if elsewhere.is_empty() {
                "-".into()
            } else {
                elsewhere.join("; ")
            },
        ]);
    }
    out.section("Packages", &packages);
    if !status.waiting.is_empty() {
        let mut waiting = Table::new(&["CLIENT", "WAITING FOR"]);
        for member in &status.waiting {
            waiting.push(vec![member.name.clone(), one_line(&member.reason)]);
        }
        out.section("Waiting For", &waiting);
        let more = (status.desired.saturating_sub(status.ready) as usize)
            .saturating_sub(status.waiting.len());
        if more > 0 {
            out.line(2, &format!("... and {more} more"));
        }
    }
    let mut clients = Table::new(&["NAME", "PHASE", "LAST SEEN", "PACKAGES"]);
    for client in members.iter().take(MAX_MEMBERS) {
        let wanted: Vec<String> = spec
            .packages
            .iter()
            .map(|requirement| {
                match client
                    .status
                    .packages
                    .iter()
                    .find(|p| p.name == requirement.name)
                {
                    Some(p) => format!("{}@{}({})", p.name, p.version, p.state),
                    None => format!("{}(absent)", requirement.name),
                }
            })
            .collect();
        clients.push(vec![
            client.metadata.name.clone(),
            client.status.phase.to_string(),
            age(client.status.last_heartbeat, now, "<never>"),
            if wanted.is_empty() {
                "<none>".into()
            } else {
                wanted.join(",")
            },
        ]);
    }
    out.section("Member Clients", &clients);
    if members.len() > MAX_MEMBERS {
        out.line(2, &format!("... and {} more", members.len() - MAX_MEMBERS));
    }
    out.section("Conditions", &conditions_table(&status.conditions, now));
    out.section("Events", &events_table(events, now));
    out.text
}

fn hook_text(hook: &Option<Hook>) -> Option<String> {
    hook.as_ref().map(|hook| {
        format!(
            "{} (timeout {}s)",
            hook.command.join(" "),
            hook.timeout_seconds
        )
    })
}

/// Describes a release: package, version, artifact, hooks, readiness, the groups that resolve to
/// it, and recent events.
pub fn describe_release(
    release: &PackageRelease,
    groups: &[ClientGroup],
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut out = Writer::default();
    let spec = &release.spec;
    let mut fields = meta_fields(&release.metadata, now);
    fields.extend([
        ("Package", spec.package.clone()),
        ("Version", spec.version.clone()),
        ("Ready", release_ready(release)),
    ]);
    out.fields(0, &fields);
    out.heading(0, "Artifact");
    let mut artifact = vec![];
    if let Some(path) = &spec.artifact.path {
        artifact.push(("Path", path.clone()));
    }
    if let Some(url) = &spec.artifact.url {
        artifact.push(("URL", url.clone()));
    }
    let stored = release.status.as_ref().and_then(|s| s.artifact.clone());
    let sha = stored
        .as_ref()
        .map(|a| a.sha256.clone())
        .or_else(|| spec.artifact.sha256.clone())
        .unwrap_or_else(|| "<unknown>".into());
    artifact.push(("SHA256", sha));
    artifact.push((
        "Size",
        stored
            .map(|a| format!("{} ({} bytes)", human_size(a.size), a.size))
            .unwrap_or_else(|| "<not imported yet>".into()),
    ));
    out.fields(2, &artifact);
    let hooks: Vec<(&str, String)> = [
        ("preInstall", hook_text(&spec.hooks.pre_install)),
        ("postInstall", hook_text(&spec.hooks.post_install)),
        ("healthCheck", hook_text(&spec.hooks.health_check)),
        ("preRemove", hook_text(&spec.hooks.pre_remove)),
    ]
    .into_iter()
    .filter_map(|(name, text)| text.map(|t| (name, t)))
    .collect();
    if hooks.is_empty() {
        out.field(0, "Hooks", "<none>");
    } else {
        out.heading(0, "Hooks");
        out.fields(2, &hooks);
    }
    let conditions = release
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    out.section("Conditions", &conditions_table(&conditions, now));
    let users: Vec<String> = groups
        .iter()
        .filter(|group| {
            group.status.as_ref().is_some_and(|status| {
                status.packages.iter().any(|p| {
                    p.name == spec.package && p.resolved_version.as_deref() == Some(&spec.version)
                })
            })
        })
        .map(|group| reference("ClientGroup", &group.metadata.name))
        .collect();
    out.field(
        0,
        "Used By",
        if users.is_empty() {
            "<none>".into()
        } else {
            users.join("\n")
        },
    );
    out.section("Events", &events_table(events, now));
    out.text
}

/// `false`, `true` (spec.paused), or `true (by lead at 2026-12-06T08:00:00Z)` for a pause
/// asked for through the API.
pub fn paused_text(group: &ClientGroup) -> String {
    match group.status.as_ref().and_then(|s| s.paused_by.as_ref()) {
        Some(pause) => format!("true (by {} at {})", pause.by, pause.time),
        None => group.spec.paused.to_string(),
    }
}

/// Whether the group's rollout is paused, by its manifest or through the API.
pub fn is_paused(group: &ClientGroup) -> bool {
    group.spec.paused || group.status.as_ref().is_some_and(|s| s.paused_by.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tc_api::{
        AssignedPackage, ClientPhase, ClientSpec, ConditionStatus, EventType, Inventory, ObjectRef,
        PackageReport, PackageState,
    };

    const NOW: u64 = 1_800_000_000_000;

    fn ago(seconds: u64) -> Timestamp {
        Timestamp::from_unix_millis(NOW - seconds * 1000)
    }

    fn client() -> Client {
        let mut client = Client::new(
            "kiosk-1",
            ClientSpec {
                machine_id: "m-1".into(),
                ..Default::default()
            },
        );
        client.metadata.creation_timestamp = Some(ago(86_400));
        client.status.phase = ClientPhase::Online;
        client.status.last_heartbeat = Some(ago(12));
        client.status.inventory = Some(Inventory {
            hostname: "kiosk-1".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            cpu_model: "Atom".into(),
            cpu_cores: 4,
            memory_total_bytes: 2 << 30,
            agent_version: "0.1.0".into(),
            ..Default::default()
        });
        client.status.desired = vec![
            AssignedPackage {
                name: "kiosk".into(),
                version: "1.4.3".into(),
                attempt: 0,
            },
            AssignedPackage {
                name: "vpn".into(),
                version: "2.0.1".into(),
                attempt: 0,
            },
        ];
        client.status.packages = vec![
            PackageReport {
                staged: None,
                name: "kiosk".into(),
                version: "1.4.3".into(),
                state: PackageState::Failed,
                active_version: Some("1.4.2".into()),
                message: Some("health check exited 1".into()),
                since: ago(30),
            },
            PackageReport {
                staged: None,
                name: "old-tool".into(),
                version: "0.9.0".into(),
                state: PackageState::Removing,
                active_version: Some("0.9.0".into()),
                message: None,
                since: ago(5),
            },
        ];
        client.status.conditions = vec![Condition {
            type_: "Converged".into(),
            status: ConditionStatus::False,
            reason: "InstallFailed".into(),
            message: "kiosk 1.4.3 failed".into(),
            last_transition_time: ago(30),
            observed_generation: None,
        }];
        client.refresh_labels();
        client
    }

    #[test]
    fn installed_and_desired_packages_side_by_side() {
        let table = packages_table(&client(), Timestamp::from_unix_millis(NOW));
        assert_eq!(
            table.render(),
            "\
NAME       DESIRED   INSTALLED   STATE          SINCE   MESSAGE
kiosk      1.4.3     1.4.2       Failed 1.4.3   30s     health check exited 1
old-tool   -         0.9.0       Removing       5s
vpn        2.0.1     -           Pending        -
"
        );
    }

    #[test]
    fn describe_client_has_every_section() {
        let events = vec![Event::new(
            ago(30),
            ObjectRef {
                kind: "Client".into(),
                name: "kiosk-1".into(),
            },
            EventType::Warning,
            "InstallFailed",
            "kiosk 1.4.3 failed",
        )];
        let text = describe_client(&client(), &events, Timestamp::from_unix_millis(NOW));
        for expected in [
            "Name:         kiosk-1\n",
            "Labels:       thinfleet.io/agent-version=0.1.0\n",
            "              thinfleet.io/arch=x86_64\n",
            "              thinfleet.io/hostname=kiosk-1\n",
            "Phase:        Online\n",
            "Inventory:\n  Hostname:",
            "  CPU:       Atom (4 cores)\n",
            "  Memory:    2.0GiB\n",
            "Packages:\n  NAME ",
            "Conditions:\n  TYPE ",
            "Events:\n  LAST SEEN   TYPE      REASON          MESSAGE\n  30s         Warning   InstallFailed   kiosk 1.4.3 failed\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    #[test]
    fn empty_sections_say_none() {
        let client = Client::new("fresh", ClientSpec::default());
        let text = describe_client(&client, &[], Timestamp::from_unix_millis(NOW));
        assert!(text.contains("Inventory:  <not reported yet>\n"), "{text}");
        assert!(text.contains("Events:  <none>\n"), "{text}");
        assert!(!text.contains("Load:"), "{text}");
    }
}
