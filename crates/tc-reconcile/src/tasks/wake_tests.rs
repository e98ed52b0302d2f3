use std::collections::HashMap;
use std::net::Ipv4Addr;

use tc_api::Inventory;
use tc_proto::NetworkInterface;

use super::wake::{Candidate, WakeOutcome, WakePlan, WakeTarget, plan_wake};

fn inventory(interfaces: &[(&str, &str, &[&str])]) -> Inventory {
    Inventory {
        network_interfaces: interfaces
            .iter()
            .map(|(name, mac, addresses)| NetworkInterface {
                name: name.to_string(),
                mac: mac.to_string(),
                addresses: addresses.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        ..Default::default()
    }
}

fn send(neighbour: &str, mac: &str, broadcast: [u8; 4]) -> WakeOutcome {
    WakeOutcome::Send {
        neighbour: neighbour.into(),
        mac: mac.into(),
        broadcast: Ipv4Addr::from(broadcast),
    }
}

fn outcomes(plans: &[WakePlan]) -> Vec<(&str, &WakeOutcome)> {
    plans
        .iter()
        .map(|plan| (plan.target.as_str(), &plan.outcome))
        .collect()
}

#[test]
fn each_target_gets_an_outcome_and_a_neighbour_on_its_segment() {
    let lo = ("lo", "00:00:00:00:00:00", &["127.0.0.1/8"][..]);
    let sleeper = inventory(&[
        lo,
        (
            "eth0",
            "AA-BB-CC-DD-EE-01",
            &["192.0.2.10/24", "fe80::1/64"],
        ),
    ]);
    let awake = inventory(&[("eth0", "aa:bb:cc:dd:ee:02", &["192.0.2.11/24"])]);
    let no_mac = inventory(&[lo, ("eth0", "", &["192.0.2.12/24"]), ("eth1", "zz:zz", &[])]);
    let elsewhere = inventory(&[("eth0", "aa:bb:cc:dd:ee:04", &["198.51.100.7/25"])]);
    let ipv6_only = inventory(&[("eth0", "aa:bb:cc:dd:ee:05", &["2001:db8::5/64"])]);
    let point_to_point = inventory(&[("eth0", "aa:bb:cc:dd:ee:06", &["192.0.2.20/31"])]);
    let garbage = inventory(&[(
        "eth0",
        "aa:bb:cc:dd:ee:07",
        &[
            "192.0.2.300/24",
            "192.0.2.7",
            "192.0.2.7/33",
            "x/y",
            "/24",
            "",
        ],
    )]);
    let neighbour = inventory(&[
        lo,
        ("eth0", "aa:bb:cc:dd:ee:10", &["192.0.2.50/24"]),
        (
            "eth1",
            "aa:bb:cc:dd:ee:11",
            &["192.0.2.21/31", "2001:db8::50/64"],
        ),
    ]);
    // A candidate whose loopback is its only address in 127/8 wakes nobody there.
    let looped = inventory(&[lo]);
    let targets = [
        WakeTarget {
            name: "sleeper",
            inventory: Some(&sleeper),
            online: false,
        },
        WakeTarget {
            name: "awake",
            inventory: Some(&awake),
            online: true,
        },
        WakeTarget {
            name: "no-mac",
            inventory: Some(&no_mac),
            online: false,
        },
        WakeTarget {
            name: "unknown",
            inventory: None,
            online: false,
        },
        WakeTarget {
            name: "elsewhere",
            inventory: Some(&elsewhere),
            online: false,
        },
        WakeTarget {
            name: "ipv6-only",
            inventory: Some(&ipv6_only),
            online: false,
        },
        WakeTarget {
            name: "p2p",
            inventory: Some(&point_to_point),
            online: false,
        },
        WakeTarget {
            name: "garbage",
            inventory: Some(&garbage),
            online: false,
        },
    ];
    let candidates = [
        Candidate {
            name: "neighbour",
            inventory: &neighbour,
        },
        Candidate {
            name: "awake",
            inventory: &awake,
        },
        Candidate {
            name: "looped",
            inventory: &looped,
        },
    ];
    let plans = plan_wake(&targets, &candidates);
    assert_eq!(
        outcomes(&plans),
        [
            (
                "sleeper",
                &send("awake", "aa:bb:cc:dd:ee:01", [192, 0, 2, 255])
            ),
            ("awake", &WakeOutcome::AlreadyOnline),
            ("no-mac", &WakeOutcome::NoMac),
            ("unknown", &WakeOutcome::NoMac),
            ("elsewhere", &WakeOutcome::NoNeighbour),
            ("ipv6-only", &WakeOutcome::NoNeighbour),
            ("p2p", &WakeOutcome::NoNeighbour),
            ("garbage", &WakeOutcome::NoNeighbour),
        ]
    );
}

#[test]
fn a_segment_s_targets_are_spread_over_its_neighbours_never_themselves() {
    let on_lan = |last: u8| {
        inventory(&[(
            "eth0",
            &format!("aa:bb:cc:dd:ee:{last:02x}"),
            &[&format!("10.1.2.{last}/23")],
        )])
    };
    let inventories: Vec<Inventory> = (1..=6).map(on_lan).collect();
    let names = ["pc-1", "pc-2", "pc-3", "pc-4", "pc-5", "pc-6"];
    // pc-1 .. pc-3 are online and also (wrongly) listed as targets; pc-4 .. pc-6 sleep.
    let targets: Vec<WakeTarget<'_>> = (0..6)
        .map(|i| WakeTarget {
            name: names[i],
            inventory: Some(&inventories[i]),
            online: false,
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = (0..3)
        .rev()
        .map(|i| Candidate {
            name: names[i],
            inventory: &inventories[i],
        })
        .collect();
    let plans = plan_wake(&targets, &candidates);
    let senders: Vec<&str> = plans
        .iter()
        .map(|plan| match &plan.outcome {
            WakeOutcome::Send {
                neighbour,
                broadcast,
                ..
            } => {
                assert_eq!(*broadcast, Ipv4Addr::new(10, 1, 3, 255));
                neighbour.as_str()
            }
            other => panic!("{}: {other:?}", plan.target),
        })
        .collect();
    for (plan, sender) in plans.iter().zip(&senders) {
        assert_ne!(plan.target, *sender);
    }
    assert_eq!(senders, ["pc-2", "pc-3", "pc-1", "pc-2", "pc-3", "pc-1"]);
    assert_eq!(plans, plan_wake(&targets, &candidates), "deterministic");
}

#[test]
fn fifty_thousand_targets_and_candidates_plan_by_network() {
    let inventories: Vec<Inventory> = (0..100_000u32)
        .map(|i| {
            let address = Ipv4Addr::from(0x0a00_0000 + (i / 200) * 256 + i % 200 + 1);
            inventory(&[(
                "eth0",
                &format!(
                    "02:00:00:{:02x}:{:02x}:{:02x}",
                    i >> 16,
                    (i >> 8) & 0xff,
                    i & 0xff
                ),
                &[&format!("{address}/24")],
            )])
        })
        .collect();
    let names: Vec<String> = (0..100_000).map(|i| format!("c-{i:06}")).collect();
    // Even indexes sleep, odd ones are online: 100 per /24 of each.
    let targets: Vec<WakeTarget<'_>> = (0..100_000)
        .step_by(2)
        .map(|i| WakeTarget {
            name: &names[i],
            inventory: Some(&inventories[i]),
            online: false,
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = (1..100_000)
        .step_by(2)
        .map(|i| Candidate {
            name: &names[i],
            inventory: &inventories[i],
        })
        .collect();
    let plans = plan_wake(&targets, &candidates);
    let mut load: HashMap<&str, usize> = HashMap::new();
    for plan in &plans {
        let WakeOutcome::Send { neighbour, .. } = &plan.outcome else {
            panic!("{plan:?}");
        };
        *load.entry(neighbour.as_str()).or_default() += 1;
    }
    assert_eq!(load.len(), 50_000, "every neighbour sends one packet");
    assert!(load.values().all(|count| *count == 1));
}
