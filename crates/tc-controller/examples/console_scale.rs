//! Measures the web console's fleet queries on a fleet in memory (1,000,000 clients unless
//! given another count): the snapshot's build (in the background while a console is open), the
//! overview's counts and the clients page (first page, filtered, searched, sorted), each with
//! the HTML of its rows. Run in release mode:
//!
//! ```text
//! cargo run --release -p tc-controller --example console_scale [-- CLIENTS]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tc_api::{Client, ClientPhase, ClientSpec, LabelSelector, Timestamp};
use tc_controller::fleet::Fleet;
use tc_controller::ui::query::{self, ClientQuery, PhaseFilter, Sort};
use tc_controller::ui::snapshot::Snapshot;
use tc_proto::{PackageReport, PackageState};

fn client(i: usize, now: u64) -> Client {
    let name = format!("tc-{i:07}");
    let mut client = Client::new(
        &name,
        ClientSpec {
            machine_id: format!("machine-{i}"),
            agent_labels: BTreeMap::from([
                ("site".to_string(), format!("site-{}", i % 20)),
                (
                    "tier".to_string(),
                    ["kiosk", "office", "lab"][i % 3].to_string(),
                ),
            ]),
            ..Default::default()
        },
    );
    client.status.phase = if i.is_multiple_of(11) {
        ClientPhase::Offline
    } else {
        ClientPhase::Online
    };
    client.status.last_heartbeat = Some(Timestamp::from_unix_millis(
        now - (i as u64 * 7919) % 600_000,
    ));
    let version = if i.is_multiple_of(7) {
        "1.4.2"
    } else {
        "1.5.0"
    };
    client.status.packages = vec![
        PackageReport {
            staged: None,
            name: "kiosk-browser".into(),
            version: version.into(),
            state: if i.is_multiple_of(97) {
                PackageState::Failed
            } else {
                PackageState::Installed
            },
            active_version: None,
            message: None,
            since: Timestamp::from_unix_millis(now),
        },
        PackageReport {
            staged: None,
            name: "wallpaper".into(),
            version: "1.0.0".into(),
            state: PackageState::Installed,
            active_version: None,
            message: None,
            since: Timestamp::from_unix_millis(now),
        },
    ];
    client.refresh_labels();
    client
}

/// Resident memory of this process, KiB (Linux).
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn measure(title: &str, runs: usize, mut run: impl FnMut() -> String) {
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut summary = String::new();
    for _ in 0..runs {
        let start = Instant::now();
        summary = run();
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "{title:<44} median {:>7.1} ms  max {:>7.1} ms  ({summary})",
        times[runs / 2].as_secs_f64() * 1e3,
        times[runs - 1].as_secs_f64() * 1e3
    );
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let now = Timestamp::now().unix_millis();
    let fleet = Fleet::default();
    let start = Instant::now();
    for i in 0..count {
        fleet.insert(&client(i, now));
    }
    println!(
        "{count} clients in memory in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let runs = 7;
    // Built in the background, at most every few seconds, while a console is open.
    let before = resident_kib();
    let mut snapshot = Snapshot::default();
    measure("snapshot build (background)", 3, || {
        snapshot = Snapshot::build(&fleet);
        format!(
            "{} entries, {} KiB of text",
            snapshot.entries.len(),
            snapshot.text.len() / 1024
        )
    });
    println!(
        "snapshot in memory: about {} MiB",
        resident_kib().saturating_sub(before) / 1024
    );
    let snapshot = &snapshot;
    measure("overview (counts by phase)", runs, || {
        let o = &snapshot.overview;
        format!(
            "{} online, {} offline, {} failed",
            o.online, o.offline, o.failed
        )
    });
    let page = |query: ClientQuery| {
        let page = query::clients(snapshot, &query);
        let mut html = String::new();
        tc_controller::ui::clients::rows_table(
            &mut html,
            &page.rows,
            &HashMap::new(),
            Timestamp::from_unix_millis(now),
            Some(("", query.sort, query.descending)),
        );
        format!(
            "{} matches, {} rows, {} KiB of HTML",
            page.matches,
            page.rows.len(),
            html.len() / 1024
        )
    };
    let base = ClientQuery {
        limit: 50,
        ..Default::default()
    };
    measure("clients: first page by name", runs, || page(base.clone()));
    measure("clients: page 100 by name, descending", runs, || {
        page(ClientQuery {
            offset: 99 * 50,
            descending: true,
            ..base.clone()
        })
    });
    measure("clients: site=site-3,tier=kiosk + offline", runs, || {
        page(ClientQuery {
            selector: Some(LabelSelector::parse("site=site-3,tier=kiosk").unwrap()),
            phase: Some(PhaseFilter::Phase(ClientPhase::Offline)),
            ..base.clone()
        })
    });
    measure("clients: search \"tc-00999\"", runs, || {
        page(ClientQuery {
            search: Some("tc-00999".into()),
            ..base.clone()
        })
    });
    measure("clients: package kiosk-browser=1.4.2", runs, || {
        page(ClientQuery {
            package: Some(("kiosk-browser".into(), Some("1.4.2".into()))),
            ..base.clone()
        })
    });
    measure("clients: site!=site-3", runs, || {
        page(ClientQuery {
            selector: Some(LabelSelector::parse("site!=site-3").unwrap()),
            ..base.clone()
        })
    });
    measure("clients: failed", runs, || {
        page(ClientQuery {
            phase: Some(PhaseFilter::Failed),
            ..base.clone()
        })
    });
    measure("clients: sorted by last seen, first page", runs, || {
        page(ClientQuery {
            sort: Sort::LastSeen,
            descending: true,
            ..base.clone()
        })
    });
    measure("clients: sorted by last seen, page 200", runs, || {
        page(ClientQuery {
            sort: Sort::LastSeen,
            offset: 199 * 50,
            ..base.clone()
        })
    });
    measure("clients: sorted by phase, filtered", runs, || {
        page(ClientQuery {
            sort: Sort::Phase,
            selector: Some(LabelSelector::parse("tier in (kiosk,lab)").unwrap()),
            ..base.clone()
        })
    });
}
