//! Table rows of each kind, as `tcadm get` prints them.

use tc_api::meta::find_condition;
use tc_api::{Client, ClientGroup, Event, Inventory, PackageRelease, Timestamp};

use crate::format::{Table, age, human_size, label_summary};

/// Column titles whose cells change with the clock alone; watch mode ignores them when deciding
/// whether a row changed.
pub const CLOCK_COLUMNS: [&str; 2] = ["AGE", "LAST SEEN"];

/// `kind/name` with the kind in lower case.
pub fn reference(kind: &str, name: &str) -> String {
    format!("{}/{}", kind.to_ascii_lowercase(), name)
}

/// The address most useful to a person: the first IPv4 address that is not loopback, else the
/// first IPv6 address that is neither loopback nor link-local, without its prefix length.
pub fn primary_ip(inventory: &Inventory) -> Option<String> {
    let addresses: Vec<&str> = inventory
        .network_interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .flat_map(|i| i.addresses.iter())
        .map(|a| a.split('/').next().unwrap_or(a))
        .collect();
    let v4 = addresses
        .iter()
        .find(|a| a.contains('.') && !a.starts_with("127."));
    let v6 = addresses
        .iter()
        .find(|a| a.contains(':') && **a != "::1" && !a.to_ascii_lowercase().starts_with("fe80"));
    v4.or(v6).map(|a| a.to_string())
}

/// `name@version(state)` for every package a client reports, comma-separated.
pub fn client_packages(client: &Client) -> String {
    let packages: Vec<String> = client
        .status
        .packages
        .iter()
        .map(|p| format!("{}@{}({})", p.name, p.version, p.state))
        .collect();
    if packages.is_empty() {
        "<none>".into()
    } else {
        packages.join(",")
    }
}

fn or_none(text: &str) -> String {
    if text.trim().is_empty() {
        "<none>".into()
    } else {
        text.to_string()
    }
}

/// The clients table: NAME, PHASE, LAST SEEN, IP, LABELS; wide adds OS, ARCH, AGENT (the
/// version the agent reports) and PACKAGES.
pub fn clients_table(clients: &[Client], wide: bool, now: Timestamp) -> Table {
    let mut table = if wide {
        Table::new(&[
            "NAME",
            "PHASE",
            "LAST SEEN",
            "IP",
            "OS",
            "ARCH",
            "AGENT",
            "PACKAGES",
            "LABELS",
        ])
    } else {
        Table::new(&["NAME", "PHASE", "LAST SEEN", "IP", "LABELS"])
    };
    for client in clients {
        let inventory = client.status.inventory.clone().unwrap_or_default();
        let mut row = vec![
            client.metadata.name.clone(),
            client.status.phase.to_string(),
            age(client.status.last_heartbeat, now, "<never>"),
            primary_ip(&inventory).unwrap_or_else(|| "<none>".into()),
        ];
        if wide {
            row.push(or_none(
                format!("{} {}", inventory.os_name, inventory.os_version).trim(),
            ));
            row.push(or_none(&inventory.arch));
            row.push(or_none(&inventory.agent_version));
            row.push(client_packages(client));
        }
        row.push(label_summary(&client.metadata.labels));
        table.push(row);
    }
    table
}

/// `name@resolved` for each package of a group, or `name@requirement(unresolved)`.
pub fn group_packages(group: &ClientGroup) -> String {
    let status = group.status.clone().unwrap_or_default();
    let packages: Vec<String> = group
        .spec
        .packages
        .iter()
        .map(|requirement| {
            let resolved = status
                .packages
                .iter()
                .find(|p| p.name == requirement.name)
                .and_then(|p| p.resolved_version.clone());
            match resolved {
                Some(version) => format!("{}@{version}", requirement.name),
                None => format!("{}@{}(unresolved)", requirement.name, requirement.version),
            }
        })
        .collect();
    if packages.is_empty() {
        "<none>".into()
    } else {
        packages.join(",")
    }
}

/// A selector in `-l` syntax, or `<all>` for the empty selector.
pub fn selector_text(group: &ClientGroup) -> String {
    if group.spec.selector.is_empty() {
        "<all>".into()
    } else {
        group.spec.selector.to_string()
    }
}

/// The groups table: NAME, MEMBERS, UP-TO-DATE, READY, FAILED, OFFLINE, PACKAGES, AGE; wide
/// adds SELECTOR and PRIORITY.
pub fn groups_table(groups: &[ClientGroup], wide: bool, now: Timestamp) -> Table {
    let mut headers = vec![
        "NAME",
        "MEMBERS",
        "UP-TO-DATE",
        "READY",
        "FAILED",
        "OFFLINE",
        "PACKAGES",
        "AGE",
    ];
    if wide {
        headers.extend(["SELECTOR", "PRIORITY"]);
    }
    let mut table = Table::new(&headers);
    for group in groups {
        let status = group.status.clone().unwrap_or_default();
        let mut row = vec![
            group.metadata.name.clone(),
            status.desired.to_string(),
            status.updated.to_string(),
            status.ready.to_string(),
            status.failed.to_string(),
            status.offline.to_string(),
            group_packages(group),
            age(group.metadata.creation_timestamp, now, "<unknown>"),
        ];
        if wide {
            row.push(selector_text(group));
            row.push(group.spec.priority.to_string());
        }
        table.push(row);
    }
    table
}

/// The status of a release's `Ready` condition: `True`, `False` or `Unknown`.
pub fn release_ready(release: &PackageRelease) -> String {
    release
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, "Ready"))
        .map(|c| format!("{:?}", c.status))
        .unwrap_or_else(|| "Unknown".into())
}

/// The releases table: NAME, PACKAGE, VERSION, READY, SIZE, AGE; wide adds SHA256 (shortened)
/// and SOURCE.
pub fn releases_table(releases: &[PackageRelease], wide: bool, now: Timestamp) -> Table {
    let mut headers = vec!["NAME", "PACKAGE", "VERSION", "READY", "SIZE", "AGE"];
    if wide {
        headers.extend(["SHA256", "SOURCE"]);
    }
    let mut table = Table::new(&headers);
    for release in releases {
        let artifact = release.status.as_ref().and_then(|s| s.artifact.clone());
        let mut row = vec![
            release.metadata.name.clone(),
            release.spec.package.clone(),
            release.spec.version.clone(),
            release_ready(release),
            artifact
                .as_ref()
                .map(|a| human_size(a.size))
                .unwrap_or_else(|| "<none>".into()),
            age(release.metadata.creation_timestamp, now, "<unknown>"),
        ];
        if wide {
            let sha = artifact
                .map(|a| a.sha256)
                .or_else(|| release.spec.artifact.sha256.clone());
            row.push(
                sha.map(|s| s.chars().take(12).collect())
                    .unwrap_or_else(|| "<none>".into()),
            );
            let spec = &release.spec.artifact;
            row.push(
                spec.path
                    .clone()
                    .or_else(|| spec.url.clone())
                    .unwrap_or_else(|| "<uploaded>".into()),
            );
        }
        table.push(row);
    }
    table
}

/// Text on one line: line breaks become spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The events table: LAST SEEN (wide: TIME), TYPE, REASON, OBJECT, MESSAGE.
pub fn events_table(events: &[Event], wide: bool, now: Timestamp) -> Table {
    let first = if wide { "TIME" } else { "LAST SEEN" };
    let mut table = Table::new(&[first, "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    for event in events {
        table.push(vec![
            if wide {
                event.time.to_string()
            } else {
                age(Some(event.time), now, "<unknown>")
            },
            event.type_.to_string(),
            event.reason.clone(),
            reference(&event.object.kind, &event.object.name),
            one_line(&event.message),
        ]);
    }
    table
}

/// A row with its clock columns blanked, to compare rows across polls.
pub fn row_signature(headers: &[String], row: &[String]) -> Vec<String> {
    row.iter()
        .zip(headers)
        .map(|(cell, header)| {
            if CLOCK_COLUMNS.contains(&header.as_str()) {
                String::new()
            } else {
                cell.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tc_api::{
        Artifact, ArtifactStatus, ClientGroupSpec, ClientGroupStatus, ClientPhase, ClientSpec,
        Condition, ConditionStatus, EventType, ObjectMeta, ObjectRef, PackageReleaseSpec,
        PackageReleaseStatus, PackageReport, PackageRequirement, PackageState, ResolvedPackage,
    };
    use tc_proto::NetworkInterface;

    const NOW: u64 = 1_800_000_000_000;

    fn now() -> Timestamp {
        Timestamp::from_unix_millis(NOW)
    }

    fn ago(seconds: u64) -> Timestamp {
        Timestamp::from_unix_millis(NOW - seconds * 1000)
    }

    fn client() -> Client {
        let mut client = Client::new(
            "kiosk-1",
            ClientSpec {
                machine_id: "m-1".into(),
                agent_labels: BTreeMap::from([("site".into(), "berlin".into())]),
                admin_labels: BTreeMap::from([("rack".into(), "7".into())]),
                ..Default::default()
            },
        );
        client.status.phase = ClientPhase::Online;
        client.status.last_heartbeat = Some(ago(12));
        client.status.inventory = Some(Inventory {
            hostname: "kiosk-1".into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            agent_version: "0.2.0".into(),
            network_interfaces: vec![
                NetworkInterface {
                    name: "lo".into(),
                    mac: String::new(),
                    addresses: vec!["127.0.0.1/8".into()],
                },
                NetworkInterface {
                    name: "eth0".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    addresses: vec!["fe80::1/64".into(), "192.0.2.10/24".into()],
                },
            ],
            ..Default::default()
        });
        client.status.packages = vec![PackageReport {
            staged: None,
            name: "kiosk-browser".into(),
            version: "1.4.2".into(),
            state: PackageState::Installed,
            active_version: Some("1.4.2".into()),
            message: None,
            since: ago(60),
        }];
        client.refresh_labels();
        client
    }

    #[test]
    fn clients_table_golden() {
        // Enrolled, no heartbeat yet.
        let mut enrolled = Client::new("kiosk-2", ClientSpec::default());
        enrolled.metadata.creation_timestamp = Some(ago(5));
        let table = clients_table(&[client(), enrolled.clone()], false, now());
        assert_eq!(
            table.render(),
            "\
NAME      PHASE      LAST SEEN   IP           LABELS
kiosk-1   Online     12s         192.0.2.10   rack=7,site=berlin
kiosk-2   Enrolled   <never>     <none>       <none>
"
        );
        let wide = clients_table(&[client(), enrolled], true, now());
        assert_eq!(
            wide.render(),
            "\
NAME      PHASE      LAST SEEN   IP           OS                    ARCH     AGENT    PACKAGES                         LABELS
kiosk-1   Online     12s         192.0.2.10   Debian GNU/Linux 12   x86_64   0.2.0    kiosk-browser@1.4.2(Installed)   rack=7,site=berlin
kiosk-2   Enrolled   <never>     <none>       <none>                <none>   <none>   <none>                           <none>
"
        );
    }

    fn group() -> ClientGroup {
        ClientGroup {
            api_version: "thinfleet.io/v1".into(),
            kind: "ClientGroup".into(),
            metadata: ObjectMeta {
                creation_timestamp: Some(ago(3 * 86_400)),
                ..ObjectMeta::named("front-desk")
            },
            spec: ClientGroupSpec {
                selector: tc_api::LabelSelector::parse("site=berlin").unwrap(),
                packages: vec![
                    PackageRequirement {
                        name: "kiosk-browser".into(),
                        version: "^1.4".into(),
                    },
                    PackageRequirement {
                        name: "vpn".into(),
                        version: "=2.0.1".into(),
                    },
                ],
                ..Default::default()
            },
            status: Some(ClientGroupStatus {
                observed_generation: 1,
                desired: 5,
                updated: 4,
                ready: 3,
                failed: 1,
                unavailable: 1,
                offline: 2,
                packages: vec![ResolvedPackage {
                    name: "kiosk-browser".into(),
                    version: "^1.4".into(),
                    resolved_version: Some("1.4.2".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn groups_table_golden() {
        let table = groups_table(&[group()], false, now());
        assert_eq!(
            table.render(),
            "\
NAME         MEMBERS   UP-TO-DATE   READY   FAILED   OFFLINE   PACKAGES                                     AGE
front-desk   5         4            3       1        2         kiosk-browser@1.4.2,vpn@=2.0.1(unresolved)   3d
"
        );
        let wide = groups_table(&[group()], true, now()).render();
        assert!(
            wide.lines()
                .next()
                .unwrap()
                .ends_with("AGE   SELECTOR      PRIORITY"),
            "{wide}"
        );
        assert!(
            wide.lines()
                .nth(1)
                .unwrap()
                .ends_with("3d    site=berlin   0"),
            "{wide}"
        );
    }

    fn release(ready: Option<ConditionStatus>) -> PackageRelease {
        PackageRelease {
            api_version: "thinfleet.io/v1".into(),
            kind: "PackageRelease".into(),
            metadata: ObjectMeta {
                creation_timestamp: Some(ago(90)),
                ..ObjectMeta::named("kiosk-browser-1.4.2")
            },
            spec: PackageReleaseSpec {
                package: "kiosk-browser".into(),
                version: "1.4.2".into(),
                artifact: Artifact {
                    path: Some("kiosk.zip".into()),
                    url: None,
                    sha256: Some(
                        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
                    ),
                    signature: None,
                },
                hooks: Default::default(),
            },
            status: ready.map(|status| PackageReleaseStatus {
                artifact: Some(ArtifactStatus {
                    sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                        .into(),
                    size: 1536,
                }),
                conditions: vec![Condition {
                    type_: "Ready".into(),
                    status,
                    reason: "Imported".into(),
                    message: String::new(),
                    last_transition_time: ago(90),
                    observed_generation: Some(1),
                }],
            }),
        }
    }

    #[test]
    fn releases_table_golden() {
        let table = releases_table(
            &[release(Some(ConditionStatus::True)), release(None)],
            false,
            now(),
        );
        assert_eq!(
            table.render(),
            "\
NAME                  PACKAGE         VERSION   READY     SIZE     AGE
kiosk-browser-1.4.2   kiosk-browser   1.4.2     True      1.5KiB   90s
kiosk-browser-1.4.2   kiosk-browser   1.4.2     Unknown   <none>   90s
"
        );
        let wide = releases_table(&[release(Some(ConditionStatus::True))], true, now()).render();
        assert!(wide.contains("90s   9f86d081884c   kiosk.zip"), "{wide}");
    }

    #[test]
    fn events_table_golden() {
        let events = [Event::new(
            ago(130),
            ObjectRef {
                kind: "Client".into(),
                name: "kiosk-1".into(),
            },
            EventType::Warning,
            "InstallFailed",
            "kiosk-browser 1.4.3 failed:\nhealth check exited 1",
        )];
        assert_eq!(
            events_table(&events, false, now()).render(),
            "\
LAST SEEN   TYPE      REASON          OBJECT           MESSAGE
2m10s       Warning   InstallFailed   client/kiosk-1   kiosk-browser 1.4.3 failed: health check exited 1
"
        );
        let wide = events_table(&events, true, now()).render();
        assert!(wide.starts_with("TIME"), "{wide}");
        assert!(wide.contains(&ago(130).to_string()), "{wide}");
    }

    #[test]
    fn row_signatures_ignore_the_clock() {
        let headers: Vec<String> = ["NAME", "LAST SEEN", "PHASE", "AGE"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a: Vec<String> = ["k", "1s", "Online", "3d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b: Vec<String> = ["k", "3s", "Online", "4d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c: Vec<String> = ["k", "3s", "Offline", "4d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(row_signature(&headers, &a), row_signature(&headers, &b));
        assert_ne!(row_signature(&headers, &a), row_signature(&headers, &c));
    }

    #[test]
    fn primary_ip_prefers_routable_ipv4() {
        let inventory = client().status.inventory.unwrap();
        assert_eq!(primary_ip(&inventory).as_deref(), Some("192.0.2.10"));
        let v6_only = Inventory {
            network_interfaces: vec![NetworkInterface {
                name: "eth0".into(),
                mac: String::new(),
                addresses: vec!["fe80::1/64".into(), "2001:db8::7/64".into()],
            }],
            ..Default::default()
        };
        assert_eq!(primary_ip(&v6_only).as_deref(), Some("2001:db8::7"));
        assert_eq!(primary_ip(&Inventory::default()), None);
    }
}
