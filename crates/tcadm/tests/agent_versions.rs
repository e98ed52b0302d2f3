//! Finding outdated agents with the real `tcadm` against a real controller: `get clients -o wide`
//! shows each agent's version, and `-l 'thinfleet.io/agent-version<…'` compares it by semver.

mod common;

use common::agents::SimAgent;
use common::{Fleet, Run};
use serde_json::json;

/// Enrols `machine` as an agent of `version` (None: one that reports no version) and heartbeats.
fn agent(fleet: &Fleet, machine: &str, version: Option<&str>) -> SimAgent {
    let mut agent = SimAgent::enroll_silent(fleet, machine, json!({ "site": "berlin" }));
    agent.inventory =
        json!({ "hostname": machine, "arch": "x86_64", "osName": "Debian GNU/Linux" });
    if let Some(version) = version {
        agent.inventory["agentVersion"] = json!(version);
    }
    agent.orders();
    agent
}

fn names(fleet: &Fleet, selector: &str) -> String {
    Run::of(&mut fleet.command(&["get", "clients", "-l", selector, "-o", "name"]))
        .ok()
        .to_string()
}

#[test]
fn get_clients_wide_shows_agent_versions_and_selects_outdated_ones() {
    let fleet = Fleet::start();
    agent(&fleet, "kiosk-a", Some("0.1.0"));
    agent(&fleet, "kiosk-b", Some("0.2.0-rc.1"));
    agent(&fleet, "kiosk-c", Some("0.2.0"));
    agent(&fleet, "kiosk-d", Some("0.10.0"));
    agent(&fleet, "kiosk-e", Some("dev"));
    agent(&fleet, "kiosk-f", None);

    let wide = Run::of(&mut fleet.command(&["get", "clients", "-o", "wide"]));
    let lines: Vec<Vec<&str>> = wide
        .ok()
        .lines()
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    let header = &lines[0];
    let agent_at = header
        .iter()
        .position(|c| *c == "AGENT")
        .expect("an AGENT column");
    assert_eq!(header[agent_at - 1], "ARCH", "{header:?}");
    let versions: Vec<(&str, &str)> = lines[1..]
        .iter()
        .map(|cells| (cells[0], cells[agent_at]))
        .collect();
    assert_eq!(
        versions,
        [
            ("kiosk-a", "0.1.0"),
            ("kiosk-b", "0.2.0-rc.1"),
            ("kiosk-c", "0.2.0"),
            ("kiosk-d", "0.10.0"),
            ("kiosk-e", "dev"),
            ("kiosk-f", "<none>"),
        ],
        "{}",
        wide.stdout
    );
    // The narrow table is unchanged: no AGENT column, and the label is not summarised.
    let narrow = Run::of(&mut fleet.command(&["get", "clients"]));
    assert!(!narrow.ok().contains("AGENT"), "{}", narrow.stdout);
    assert!(!narrow.ok().contains("agent-version"), "{}", narrow.stdout);

    for (selector, expected) in [
        (
            "thinfleet.io/agent-version<0.2.0",
            "client/kiosk-a\nclient/kiosk-b\n",
        ),
        (
            "thinfleet.io/agent-version<=0.2.0",
            "client/kiosk-a\nclient/kiosk-b\nclient/kiosk-c\n",
        ),
        ("thinfleet.io/agent-version>0.2.0", "client/kiosk-d\n"),
        (
            "thinfleet.io/agent-version>=0.2.0,site=berlin",
            "client/kiosk-c\nclient/kiosk-d\n",
        ),
        ("thinfleet.io/agent-version=0.2.0", "client/kiosk-c\n"),
        (
            "thinfleet.io/agent-version!=0.2.0,thinfleet.io/agent-version",
            "client/kiosk-a\nclient/kiosk-b\nclient/kiosk-d\nclient/kiosk-e\n",
        ),
        (
            "thinfleet.io/agent-version in (0.1.0,dev)",
            "client/kiosk-a\nclient/kiosk-e\n",
        ),
        ("!thinfleet.io/agent-version", "client/kiosk-f\n"),
    ] {
        assert_eq!(names(&fleet, selector), expected, "{selector}");
    }

    // Refused before any request, saying what and where; exit code 2 as for other usage errors.
    for (selector, wanted) in [
        (
            "site<3",
            "applies only to `thinfleet.io/agent-version`, not to `site`",
        ),
        ("thinfleet.io/agent-version<1.2", "needs a semantic version"),
    ] {
        let run = Run::of(&mut fleet.command(&["get", "clients", "-l", selector]));
        assert_eq!(run.code, 2, "{run:#?}");
        assert!(
            run.stderr.contains(wanted) && run.stderr.contains("selector.matchExpressions[0]"),
            "{run:#?}"
        );
    }
    // And an admin cannot set the label.
    let run = Run::of(&mut fleet.command(&[
        "label",
        "client",
        "kiosk-a",
        "thinfleet.io/agent-version=9.9.9",
    ]));
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("set by the controller"), "{run:#?}");
    assert_eq!(
        names(&fleet, "thinfleet.io/agent-version=0.1.0"),
        "client/kiosk-a\n"
    );
}
